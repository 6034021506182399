//! The envelope of a snapshot's state file: what the VMM writes around its
//! state and what both the VMM and the runtime check before trusting it.
//!
//! ```text
//! magic "MVMSNAP\0" | format version (u32 LE) | payload length (u64 LE)
//! | SHA-256 of the payload (32 bytes) | payload
//! ```
//!
//! The payload is the VMM's own business (`mvm-vmm`'s `snapshot` module);
//! it lives here so the runtime can refuse a truncated, corrupt or
//! foreign-version checkpoint with a clear error before it starts a VMM
//! for it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The state file's first bytes.
pub const MAGIC: [u8; 8] = *b"MVMSNAP\0";
/// The version of the state file's format this build reads and writes.
/// Any change to the payload's types changes it.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, version, length, checksum.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// The largest state file read (a few vCPUs take tens of KiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Why a state file is refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// It could not be read.
    #[error("reading snapshot state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Shorter than its header.
    #[error("snapshot state {0} is truncated: shorter than its header")]
    TooShort(PathBuf),
    /// Not a state file.
    #[error("{0} is not a mvm snapshot state file (bad magic)")]
    BadMagic(PathBuf),
    /// Another format version.
    #[error(
        "snapshot state {path} has format version {found}; this mvm reads version \
         {FORMAT_VERSION} only (take the snapshot again with this version)"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Truncated (or trailing bytes).
    #[error(
        "snapshot state {path} is truncated or has trailing bytes: {found} payload bytes where \
         its header says {expected}"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// What the header says.
        expected: u64,
        /// What there is.
        found: u64,
    },
    /// Too large to be one.
    #[error("snapshot state {path} is larger than {MAX_STATE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The contents do not match the checksum.
    #[error("snapshot state {0} is corrupt: its checksum does not match its contents")]
    Checksum(PathBuf),
}

/// `payload` in its envelope.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed state (`path` names it in errors).
pub fn open<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], SnapshotFileError> {
    let p = || path.to_path_buf();
    if bytes.len() < MAGIC.len() {
        return Err(SnapshotFileError::TooShort(p()));
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotFileError::BadMagic(p()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotFileError::TooShort(p()));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    let mut version = [0u8; 4];
    version.copy_from_slice(&header[8..12]);
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(SnapshotFileError::Version {
            path: p(),
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let expected = u64::from_le_bytes(len);
    if expected != payload.len() as u64 {
        return Err(SnapshotFileError::Length {
            path: p(),
            expected,
            found: payload.len() as u64,
        });
    }
    if Sha256::digest(payload).as_slice() != &header[20..HEADER_LEN] {
        return Err(SnapshotFileError::Checksum(p()));
    }
    Ok(payload)
}

/// Read a state file and return its checked payload.
pub fn read(path: &Path) -> Result<Vec<u8>, SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    open(&bytes, path)?;
    Ok(bytes.split_off(HEADER_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/snap/state")
    }

    #[test]
    fn a_sealed_payload_opens() {
        let sealed = seal(b"hello state");
        assert_eq!(open(&sealed, p()).unwrap(), b"hello state");
    }

    #[test]
    fn every_truncation_is_refused() {
        let sealed = seal(&[7u8; 100]);
        for n in 0..sealed.len() {
            let err = open(&sealed[..n], p()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotFileError::TooShort(_) | SnapshotFileError::Length { .. }
                ),
                "cut at {n}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let sealed = seal(&[7u8; 100]);
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 0x5a;
            assert!(open(&b, p()).is_err(), "flip at {i} accepted");
        }
        let mut b = sealed.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        let err = open(&b, p()).unwrap_err();
        assert!(matches!(err, SnapshotFileError::Checksum(_)), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn another_version_is_refused_by_number() {
        let mut sealed = seal(b"x");
        sealed[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let err = open(&sealed, p()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
    }

    #[test]
    fn other_files_are_not_snapshots() {
        let err = open(br#"{"kernel": "/boot/vmlinux", "more": 1}"#, p()).unwrap_err();
        assert!(matches!(err, SnapshotFileError::BadMagic(_)), "{err}");
    }

    #[test]
    fn oversized_files_are_refused_before_they_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, seal(b"ok")).unwrap();
        assert_eq!(read(&path).unwrap(), b"ok");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_STATE_BYTES + 10).unwrap();
        assert!(matches!(
            read(&path),
            Err(SnapshotFileError::TooLarge { .. })
        ));
    }
}
