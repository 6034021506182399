//! A RUN step's changes, on their way from the guest into a layer.
//!
//! The guest agent sends the overlay's upper directory as an OCI layer tar
//! (`mvm_protocol::layer`). Everything the guest sends is hostile: this
//! module reads that tar entry by entry and writes a new one holding only
//! what passes the checks, so the layer the store keeps is one the host
//! wrote. Nothing is unpacked on the host's filesystem.
//!
//! Checks: entry names are relative, without `..`, NUL or over-long
//! components (normalised: `./` and trailing `/` dropped); types are
//! regular files, directories, symlinks, hard links and FIFOs (device
//! nodes are dropped and counted: a build's layer has no use for them and
//! the host never creates them); a hard link names an earlier
//! non-directory entry of the same tar; whiteouts are empty regular files
//! with a real name after `.wh.`; sizes, entry counts and xattrs are
//! bounded; only the xattrs `mvm_protocol::layer::keep_xattr` allows pass.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use mvm_protocol::layer::{keep_xattr, OPAQUE_MARKER, WHITEOUT_PREFIX};
use tar::EntryType;

use crate::tarlayer::{LayerWriter, Meta, Xattrs};

/// Largest file in a RUN step's changes.
pub const MAX_FILE: u64 = 16 << 30;
/// Most entries in a RUN step's changes.
pub const MAX_ENTRIES: u64 = 4_000_000;
/// Longest entry name or link target, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest name component.
pub const MAX_COMPONENT: usize = 255;
/// Largest xattr value, and the most xattrs on one entry.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
const MAX_XATTRS: usize = 64;

/// Why the changes are not a usable layer.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// Not a tar, or cut short.
    #[error("the guest's tar stream is malformed: {0}")]
    Tar(io::Error),
    /// An entry broke a rule.
    #[error("entry {entry:?}: {reason}")]
    Entry {
        /// The entry's name as the guest sent it.
        entry: String,
        /// What was wrong.
        reason: String,
    },
    /// Too much of something.
    #[error("the changes exceed the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Too many entries.
    #[error("the changes have more than {MAX_ENTRIES} entries")]
    TooManyEntries,
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
    /// Entries written (whiteouts and markers included).
    pub entries: u64,
    /// Deletions (`.wh.` entries).
    pub whiteouts: u64,
    /// Opaque directories.
    pub opaque: u64,
    /// Device nodes left out.
    pub devices_dropped: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

fn entry_err(entry: &[u8], reason: impl Into<String>) -> ChangesError {
    ChangesError::Entry {
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason: reason.into(),
    }
}

/// A checked, normalised relative name: `a/b/c`.
fn clean_name(raw: &[u8]) -> Result<String, String> {
    if raw.len() > MAX_PATH {
        return Err(format!("the name is longer than {MAX_PATH} bytes"));
    }
    if raw.contains(&0) {
        return Err("the name contains a NUL byte".into());
    }
    if raw.starts_with(b"/") {
        return Err("the name is absolute".into());
    }
    let mut parts = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("the name contains \"..\"".into()),
            c if c.len() > MAX_COMPONENT => {
                return Err(format!(
                    "a name component is longer than {MAX_COMPONENT} bytes"
                ))
            }
            c => {
                parts.push(std::str::from_utf8(c).map_err(|_| "the name is not UTF-8".to_string())?)
            }
        }
    }
    if parts.is_empty() {
        return Err("the name is empty (the root itself)".into());
    }
    Ok(parts.join("/"))
}

/// The kept xattrs of an entry, from its PAX records.
fn xattrs_of<R: Read>(e: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Xattrs, ChangesError> {
    let mut out = Vec::new();
    let Some(exts) = e.pax_extensions().map_err(ChangesError::Tar)? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(ChangesError::Tar)?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if !keep_xattr(name) {
            continue;
        }
        if ext.value_bytes().len() > MAX_XATTR_VALUE {
            return Err(entry_err(
                raw,
                format!("an xattr value is over {MAX_XATTR_VALUE} bytes"),
            ));
        }
        out.push((name.to_vec(), ext.value_bytes().to_vec()));
        if out.len() > MAX_XATTRS {
            return Err(entry_err(raw, format!("more than {MAX_XATTRS} xattrs")));
        }
    }
    Ok(out)
}

/// Check the guest's changes tar at `raw` and write the layer to `out`.
pub fn to_layer(raw: &Path, out: &Path) -> Result<ChangeStats, ChangesError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ChangesError::Io { op, path, source }
    };
    let f = File::open(raw).map_err(io_err("opening", raw))?;
    let mut w = LayerWriter::create(out).map_err(io_err("creating", out))?;
    let stats = copy_checked(BufReader::with_capacity(256 * 1024, f), &mut w)?;
    w.finish().map_err(io_err("writing", out))?;
    Ok(stats)
}

/// Copy the entries of `tar` that pass the checks into `w`.
pub fn copy_checked<R: Read>(tar: R, w: &mut LayerWriter) -> Result<ChangeStats, ChangesError> {
    let mut ar = tar::Archive::new(tar);
    let mut st = ChangeStats::default();
    // Names written that a hard link may name (non-directories).
    let mut linkable: HashSet<String> = HashSet::new();
    let write_err = |name: &str| {
        let name = name.to_string();
        move |source: io::Error| ChangesError::Entry {
            entry: name,
            reason: format!("cannot write it to the layer: {source}"),
        }
    };
    for e in ar.entries().map_err(ChangesError::Tar)? {
        let mut e = e.map_err(ChangesError::Tar)?;
        if st.entries >= MAX_ENTRIES {
            return Err(ChangesError::TooManyEntries);
        }
        let raw = e.path_bytes().into_owned();
        let name = clean_name(&raw).map_err(|r| entry_err(&raw, r))?;
        let h = e.header();
        let meta = Meta {
            mode: h.mode().map_err(ChangesError::Tar)? & 0o7777,
            uid: h.uid().map_err(ChangesError::Tar)?.min(u64::from(u32::MAX)),
            gid: h.gid().map_err(ChangesError::Tar)?.min(u64::from(u32::MAX)),
            mtime: h.mtime().map_err(ChangesError::Tar)?,
        };
        let kind = h.entry_type();
        let size = e.size();
        let base = name.rsplit('/').next().unwrap_or(&name);
        if let Some(victim) = base.strip_prefix(WHITEOUT_PREFIX) {
            let marker_ok = kind.is_file() && size == 0;
            if !marker_ok {
                return Err(entry_err(&raw, "a whiteout must be an empty regular file"));
            }
            if base == OPAQUE_MARKER {
                st.opaque += 1;
            } else if victim.is_empty() || victim == "." || victim == ".." {
                return Err(entry_err(&raw, "a whiteout must name what it deletes"));
            } else {
                st.whiteouts += 1;
            }
            w.file(&name, &meta, 0, io::empty(), &[])
                .map_err(write_err(&name))?;
            st.entries += 1;
            continue;
        }
        match kind {
            EntryType::Directory => {
                let x = xattrs_of(&mut e, &raw)?;
                w.dir(&name, &meta, &x).map_err(write_err(&name))?;
                linkable.remove(&name);
            }
            EntryType::Regular | EntryType::Continuous => {
                if size > MAX_FILE {
                    return Err(entry_err(
                        &raw,
                        format!("the file is over {MAX_FILE} bytes"),
                    ));
                }
                let x = xattrs_of(&mut e, &raw)?;
                let mut counted = CountingReader {
                    inner: &mut e,
                    n: 0,
                };
                w.file(&name, &meta, size, &mut counted, &x)
                    .map_err(write_err(&name))?;
                if counted.n != size {
                    return Err(entry_err(&raw, "the file's data is cut short"));
                }
                st.bytes += size;
                linkable.insert(name.clone());
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&raw, "a symlink without a target"))?;
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(entry_err(
                        &raw,
                        "the symlink target is empty, too long or has a NUL",
                    ));
                }
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(&target));
                w.symlink(&name, &target, &meta).map_err(write_err(&name))?;
                linkable.insert(name.clone());
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&raw, "a hard link without a target"))?;
                let target = clean_name(&target)
                    .map_err(|r| entry_err(&raw, format!("the hard link's target: {r}")))?;
                if !linkable.contains(&target) {
                    return Err(entry_err(
                        &raw,
                        format!("the hard link names {target:?}, which is not an earlier file of this layer"),
                    ));
                }
                w.hardlink(&name, &target, &meta)
                    .map_err(write_err(&name))?;
                linkable.insert(name.clone());
            }
            EntryType::Fifo => {
                w.special(&name, EntryType::Fifo, &meta, (0, 0))
                    .map_err(write_err(&name))?;
                linkable.insert(name.clone());
            }
            EntryType::Char | EntryType::Block => {
                st.devices_dropped += 1;
                continue;
            }
            other => {
                return Err(entry_err(
                    &raw,
                    format!("entries of type {other:?} are not allowed in a layer"),
                ));
            }
        }
        st.entries += 1;
    }
    Ok(st)
}

/// Counts what passes through, to catch a stream that ends early.
struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("layer.tar");
        let mut w = LayerWriter::create(&out).unwrap();
        let st = copy_checked(tar, &mut w)?;
        w.finish().unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&out).unwrap());
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
        assert_eq!((st.whiteouts, st.opaque, st.devices_dropped), (1, 1, 1));
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
                "not an earlier file",
            ),
            (
                &[
                    (b"d/", EntryType::Directory, b"", None),
                    (b"a", EntryType::Link, b"", Some(b"d")),
                ],
                "not an earlier file",
            ),
            (
                &[(b"a/.wh.x", EntryType::Regular, b"data", None)],
                "empty regular file",
            ),
            (
                &[(b"a/.wh.", EntryType::Regular, b"", None)],
                "name what it deletes",
            ),
            (
                &[(b"a/.wh...", EntryType::Regular, b"", None)],
                "name what it deletes",
            ),
            (&[(b".", EntryType::Directory, b"", None)], "root itself"),
            (
                &[(b"s", EntryType::Symlink, b"", Some(b""))],
                "without a target",
            ),
            (&[(b"x", EntryType::new(b'Z'), b"", None)], "not allowed"),
        ];
        for (entries, want) in cases {
            let e = check(&tar_of(entries)).unwrap_err().to_string();
            assert!(e.contains(want), "{entries:?}: {e}");
        }
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
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) },
            0,
            "needs root"
        );
        let (tar, _) = mvm_init::agent::changes::write(&up, Vec::new()).unwrap();
        let out = d.path().join("layer.tar");
        let mut w = LayerWriter::create(&out).unwrap();
        let st = copy_checked(&tar[..], &mut w).unwrap();
        w.finish().unwrap();
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
