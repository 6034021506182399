//! Applying OCI layer tarballs onto a directory, safely.
//!
//! Layers come from registries and archives: hostile input. The work is
//! done by [`mvm_unpack`], the one hardened unpacker of mvm's host code,
//! with its layer preset; this module adds what is specific to image
//! layers (decompression, the diff_id check) and keeps this crate's API.
//! Policy decisions (documented in the crate README and in `mvm_unpack`):
//!
//! - every path is resolved beneath the target root with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` and every change is made with `*at` calls
//!   relative to the resolved parent directory, so no entry can reach
//!   outside the root, not through `..`, absolute paths, symlinked parents
//!   or hard links;
//! - absolute paths and `..` components are refused (Docker strips a
//!   leading `/`; registries never produce either, so refusing is safer);
//! - an entry whose *parent* path runs through a symlink is refused, even
//!   when the symlink stays inside the tree (containerd would follow it;
//!   layers produced by `docker build` never need it);
//! - hard links must name an earlier, non-directory entry inside the tree;
//! - character and block devices are skipped by default (the guest mounts
//!   devtmpfs over /dev, and device nodes in a host-side directory are a
//!   needless risk); FIFOs are created. [`DevicePolicy`] changes this;
//! - setuid and setgid bits are kept (`RUN chmod u+s` is legitimate);
//! - xattrs from PAX `SCHILY.xattr.*` are applied, except the
//!   `trusted.overlay.*` namespace, which would steer the guest's overlayfs;
//! - ownership is kept as in the archive when running as root.
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` deletes NAME from lower
//! layers; `.wh..wh..opq` hides all lower-layer content of its directory
//! while keeping what the same layer put there, whether those entries come
//! before or after the marker.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::digest::{Digest, HashingReader};
use crate::manifest::Compression;

pub use mvm_unpack::DevicePolicy;

/// Limits on what one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file.
    pub max_entry_size: u64,
    /// Largest total of file data over all layers of an image.
    pub max_total_size: u64,
    /// Most entries over all layers.
    pub max_entries: u64,
    /// Longest entry path, in bytes.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
        }
    }
}

/// Unpack options.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Size and count limits.
    pub limits: Limits,
    /// Device node policy.
    pub devices: DevicePolicy,
    /// Keep uid/gid from the archive (needs root). Default: true when the
    /// process runs as root.
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            limits: Limits::default(),
            devices: DevicePolicy::default(),
            preserve_ownership: rustix::process::geteuid().is_root(),
        }
    }
}

/// Running totals over the layers of one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries processed.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Device nodes skipped by policy.
    pub skipped_devices: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
}

/// Errors from unpacking a layer. Entry names are shown as in the archive.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry tries to escape the root or is otherwise unsafe.
    #[error("refusing layer entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// A file is larger than the per-entry limit.
    #[error("layer entry {entry:?} is {size} bytes, over the limit of {limit} bytes per file")]
    EntryTooLarge {
        /// The entry.
        entry: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image's files exceed the total limit.
    #[error("unpacking layer entry {entry:?} would exceed the limit of {limit} bytes for the whole image")]
    TotalTooLarge {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// Too many entries.
    #[error("layer entry {entry:?} exceeds the limit of {limit} entries per image")]
    TooManyEntries {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// A device node, refused by policy.
    #[error("layer entry {entry:?} is a device node, refused by the device policy")]
    DeviceRefused {
        /// The entry.
        entry: String,
    },
    /// An entry type we do not handle.
    #[error("layer entry {entry:?} has unsupported tar entry type {kind:?}")]
    UnsupportedType {
        /// The entry.
        entry: String,
        /// The type byte.
        kind: char,
    },
    /// The archive is corrupt or truncated.
    #[error("corrupt or truncated layer archive {}: {source}", after.as_deref().map(|e| format!("after entry {e:?}")).unwrap_or_else(|| "at its start".into()))]
    Archive {
        /// The last entry read successfully.
        after: Option<String>,
        /// The error.
        source: io::Error,
    },
    /// A filesystem operation on an entry failed.
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        /// The entry.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Out of space while unpacking.
    #[error("no space left on device while unpacking layer entry {entry:?}: free disk space (or prune images) and retry")]
    NoSpace {
        /// The entry.
        entry: String,
    },
    /// The uncompressed content does not match the config's diff_id.
    #[error("layer content hashes to {actual} but the image config gives diff_id {expected}; the layer is corrupt")]
    DiffIdMismatch {
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
}

type Result<T, E = LayerError> = std::result::Result<T, E>;

/// Wraps `raw` in the decompressor its first bytes call for. The magic
/// bytes win over the declared compression: archives in the wild (e.g.
/// `docker save` output) label uncompressed layers as gzip and vice versa.
pub fn decompress<'a>(
    raw: impl Read + 'a,
    declared: Option<Compression>,
) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut br = BufReader::with_capacity(256 * 1024, raw);
    let head = br.fill_buf()?;
    let detected = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(d) = declared {
        if d != detected {
            tracing::debug!(
                ?declared,
                ?detected,
                "layer compression differs from its media type"
            );
        }
    }
    Ok(match detected {
        Compression::Gzip => (Box::new(flate2::bufread::MultiGzDecoder::new(br)), detected),
        Compression::Zstd => (
            Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
            detected,
        ),
        Compression::None => (Box::new(br), detected),
    })
}

/// Applies one layer (compressed or not) onto `root`. Returns the digest
/// of the uncompressed stream (the layer's diff_id); if `expected_diff_id`
/// is given, a mismatch is an error (after the layer was applied: callers
/// unpack into a temp dir they discard on error).
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    declared: Option<Compression>,
    expected_diff_id: Option<&Digest>,
    opts: &UnpackOptions,
    stats: &mut UnpackStats,
) -> Result<Digest> {
    let (plain, _) = decompress(layer, declared).map_err(|source| LayerError::Archive {
        after: None,
        source,
    })?;
    let mut hashing = HashingReader::new(plain);
    let uopts = opts.to_unpack();
    let mut ustats = stats.to_unpack();
    let result = mvm_unpack::unpack(&mut hashing, root, &uopts, &mut ustats);
    let dropped = ustats.xattrs_dropped;
    *stats = UnpackStats::from(ustats);
    result?;
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "layer xattrs dropped (trusted.overlay.*, or refused by the filesystem)"
        );
    }
    let (actual, _) = hashing
        .drain_and_finish()
        .map_err(|source| LayerError::Archive {
            after: Some("end of archive".into()),
            source,
        })?;
    if let Some(exp) = expected_diff_id {
        if *exp != actual {
            return Err(LayerError::DiffIdMismatch {
                expected: *exp,
                actual,
            });
        }
    }
    Ok(actual)
}

impl From<Limits> for mvm_unpack::Limits {
    fn from(l: Limits) -> Self {
        mvm_unpack::Limits {
            max_entry_size: l.max_entry_size,
            max_total_size: l.max_total_size,
            max_entries: l.max_entries,
            max_path_len: l.max_path_len,
            ..mvm_unpack::Limits::default()
        }
    }
}

impl UnpackOptions {
    /// The [`mvm_unpack`] options these stand for: its layer preset.
    pub fn to_unpack(&self) -> mvm_unpack::Options {
        mvm_unpack::Options {
            limits: self.limits.into(),
            devices: self.devices,
            preserve_ownership: self.preserve_ownership,
            ..mvm_unpack::Options::layer()
        }
    }
}

impl UnpackStats {
    fn to_unpack(self) -> mvm_unpack::Stats {
        mvm_unpack::Stats {
            entries: self.entries,
            bytes: self.bytes,
            skipped_devices: self.skipped_devices,
            whiteouts: self.whiteouts,
            ..mvm_unpack::Stats::default()
        }
    }
}

impl From<mvm_unpack::Stats> for UnpackStats {
    fn from(s: mvm_unpack::Stats) -> Self {
        UnpackStats {
            entries: s.entries,
            bytes: s.bytes,
            skipped_devices: s.skipped_devices,
            whiteouts: s.whiteouts,
        }
    }
}

impl From<mvm_unpack::Error> for LayerError {
    fn from(e: mvm_unpack::Error) -> Self {
        use mvm_unpack::Error as U;
        match e {
            U::Unsafe { entry, reason } | U::Conflict { entry, reason } => {
                LayerError::Unsafe { entry, reason }
            }
            U::EntryTooLarge { entry, size, limit } => {
                LayerError::EntryTooLarge { entry, size, limit }
            }
            U::TotalTooLarge { entry, limit } => LayerError::TotalTooLarge { entry, limit },
            U::TooManyEntries { entry, limit } => LayerError::TooManyEntries { entry, limit },
            U::DeviceRefused { entry } => LayerError::DeviceRefused { entry },
            U::UnsupportedType { entry, kind } => LayerError::UnsupportedType { entry, kind },
            U::Archive { after, source } => LayerError::Archive { after, source },
            U::Io { entry, op, source } => LayerError::Io { entry, op, source },
            U::NoSpace { entry } => LayerError::NoSpace { entry },
        }
    }
}
