//! A RUN step's changes, on their way from the guest into a layer.
//!
//! The guest agent sends the overlay's upper directory as an OCI layer tar
//! (`mvm_protocol::layer`). Everything the guest sends is hostile: the tar
//! goes through `mvm-unpack`'s re-serialiser with its layer rules (the
//! host's one set of tar checks), which writes a new tar holding only what
//! passes, so the layer the store keeps is one the host wrote. Nothing is
//! unpacked on the host's filesystem.
//!
//! The layer rules: relative names without `..`, NUL or over-long parts;
//! regular files, directories, symlinks, hard links to earlier files of
//! the same tar, FIFOs; nothing beneath an entry that an earlier one made a
//! symlink or file; whiteouts that are empty files naming what they
//! delete; device nodes left out (and counted); setuid bits and owners
//! kept (`RUN chmod u+s` is legitimate); overlayfs' own xattrs dropped;
//! sizes and counts bounded.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use mvm_unpack::{Options, Stats};

/// Why the changes are not a usable layer.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// An entry broke a rule, or the tar is malformed.
    #[error("{0}")]
    Refused(#[from] mvm_unpack::Error),
    /// More than the limit arrived.
    #[error("the changes exceed the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading or writing a file on the host.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What a layer of changes holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeStats {
    /// Entries read.
    pub entries: u64,
    /// Whiteouts and opaque markers.
    pub whiteouts: u64,
    /// Device nodes left out.
    pub devices_dropped: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

impl From<Stats> for ChangeStats {
    fn from(s: Stats) -> Self {
        Self {
            entries: s.entries,
            whiteouts: s.whiteouts,
            devices_dropped: s.skipped_devices,
            bytes: s.bytes,
        }
    }
}

/// Check the guest's changes tar at `raw` and write the layer to `out`.
pub fn to_layer(raw: &Path, out: &Path) -> Result<ChangeStats, ChangesError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ChangesError::Io { op, path, source }
    };
    let f = File::open(raw).map_err(io_err("opening", raw))?;
    let w = BufWriter::with_capacity(
        256 * 1024,
        File::create(out).map_err(io_err("creating", out))?,
    );
    let (w, stats) = copy_checked(BufReader::with_capacity(256 * 1024, f), w)?;
    let f = w
        .into_inner()
        .map_err(|e| io_err("writing", out)(e.into_error()))?;
    f.sync_all().map_err(io_err("writing", out))?;
    Ok(stats)
}

/// Copy the entries of `tar` that pass the layer rules to `out`.
pub fn copy_checked<R: Read, W: Write>(tar: R, out: W) -> Result<(W, ChangeStats), ChangesError> {
    let mut stats = Stats::default();
    let out = mvm_unpack::sanitize(tar, out, &Options::layer(), &mut stats)?;
    Ok((out, stats.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use tar::EntryType;

    /// (name, type, data, link target) of a raw tar entry.
    type Raw<'a> = (&'a [u8], EntryType, &'a [u8], Option<&'a [u8]>);

    /// A tar with raw headers, as a hostile guest could write it.
    fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(1);
            h.set_size(data.len() as u64);
            // Raw name bytes: set_path would refuse what we want to test.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                gnu.linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn check(tar: &[u8]) -> Result<(ChangeStats, Vec<String>), ChangesError> {
        let (out, st) = copy_checked(tar, Vec::new())?;
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&out[..]);
        for e in ar.entries().unwrap() {
            names.push(String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned());
        }
        Ok((st, names))
    }

    #[test]
    fn a_well_formed_layer_passes_and_is_normalised() {
        let t = tar_of(&[
            (b"./app/", EntryType::Directory, b"", None),
            (b"app/bin", EntryType::Regular, b"#!/bin/sh\n", None),
            (b"app/again", EntryType::Link, b"", Some(b"./app/bin")),
            (b"app/link", EntryType::Symlink, b"", Some(b"/etc/passwd")),
            (b"app/.wh.gone", EntryType::Regular, b"", None),
            (b"app/.wh..wh..opq", EntryType::Regular, b"", None),
            (b"app/fifo", EntryType::Fifo, b"", None),
            (b"dev/null", EntryType::Char, b"", None),
        ]);
        let (st, names) = check(&t).unwrap();
        assert_eq!(
            names,
            [
                "app/",
                "app/bin",
                "app/again",
                "app/link",
                "app/.wh.gone",
                "app/.wh..wh..opq",
                "app/fifo"
            ]
        );
        assert_eq!((st.whiteouts, st.devices_dropped), (2, 1));
        assert_eq!(st.bytes, 10);
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        let cases: &[(&[Raw<'_>], &str)] = &[
            (
                &[(b"/etc/passwd", EntryType::Regular, b"x", None)],
                "absolute",
            ),
            (
                &[(b"a/../../etc/passwd", EntryType::Regular, b"x", None)],
                "..",
            ),
            (
                &[(b"a/b", EntryType::Link, b"", Some(b"/etc/shadow"))],
                "absolute",
            ),
            (
                &[(b"a/b", EntryType::Link, b"", Some(b"never/written"))],
                "not an earlier entry",
            ),
            (
                &[
                    (b"d/", EntryType::Directory, b"", None),
                    (b"a", EntryType::Link, b"", Some(b"d")),
                ],
                "hard link to a directory",
            ),
            (
                &[(b"a/.wh.", EntryType::Regular, b"", None)],
                "whiteout names no file",
            ),
            (
                &[(b"a/.wh...", EntryType::Regular, b"", None)],
                "whiteout names no file",
            ),
            (
                &[(b"s", EntryType::Symlink, b"", Some(b""))],
                "symlink target is empty",
            ),
            (
                &[(b"x", EntryType::new(b'Z'), b"", None)],
                "unsupported tar entry type",
            ),
        ];
        for (entries, want) in cases {
            let e = check(&tar_of(entries)).unwrap_err().to_string();
            assert!(e.contains(want), "{entries:?}: {e}");
        }
        // A whiteout carries no data into the layer, whatever was sent.
        let (st, names) =
            check(&tar_of(&[(b"a/.wh.x", EntryType::Regular, b"data", None)])).unwrap();
        assert_eq!((names, st.bytes), (vec!["a/.wh.x".to_string()], 0));
        // A stream cut in the middle of a file.
        let mut t = tar_of(&[(b"big", EntryType::Regular, &[7u8; 4096], None)]);
        t.truncate(1024);
        assert!(check(&t).is_err());
        // Garbage.
        assert!(check(&[0x55u8; 2048]).is_err());
    }

    #[test]
    fn the_guests_writer_and_the_hosts_checks_agree() {
        // What mvm-init sends for an upper directory passes the checks and
        // applies with the store's unpacker, whiteouts included.
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("upper");
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::create_dir_all(up.join("app")).unwrap();
        std::fs::write(up.join("app/new.txt"), "new").unwrap();
        std::fs::hard_link(up.join("app/new.txt"), up.join("app/again.txt")).unwrap();
        let c = std::ffi::CString::new(up.join("etc/deleted").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; mknod has no other memory effects.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(r, 0, "needs root");
        let (tar, _) = mvm_init::agent::changes::write(&up, Vec::new()).unwrap();
        let raw = d.path().join("changes.tar");
        std::fs::write(&raw, &tar).unwrap();
        let out = d.path().join("layer.tar");
        let st = to_layer(&raw, &out).unwrap();
        assert_eq!(st.whiteouts, 1);
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/deleted"), "old").unwrap();
        let mut stats = mvm_images::layer::UnpackStats::default();
        mvm_images::layer::apply_layer(
            &root,
            File::open(&out).unwrap(),
            None,
            None,
            &Default::default(),
            &mut stats,
        )
        .unwrap();
        assert!(!root.join("etc/deleted").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("app/again.txt")).unwrap(),
            "new"
        );
    }
}
