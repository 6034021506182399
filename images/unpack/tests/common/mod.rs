//! Hostile tar fixtures, written header by header so that names the `tar`
//! crate's builder refuses (`..`, absolute) survive, and a destination
//! with a sentinel directory next to it that must never change.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry of a fixture.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// A file with owner and PAX xattrs.
    Owned {
        path: &'a str,
        data: &'a [u8],
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: &'a [(&'a str, &'a [u8])],
    },
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    Fifo(&'a str),
    /// A header claiming `size` bytes, with no data.
    Claim(&'a str, u64),
    /// A GNU long name record of `len` bytes (then a file entry).
    LongName(usize),
    /// Raw entry type byte (e.g. b'7', b'V').
    Raw(&'a str, u8),
}

pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match e {
            E::Dir(p, m) => push(&mut out, p, tar::EntryType::Directory, *m, b"", None, 0, 0),
            E::File(p, d, m) => push(&mut out, p, tar::EntryType::Regular, *m, d, None, 0, 0),
            E::Owned {
                path,
                data,
                mode,
                uid,
                gid,
                xattrs,
            } => {
                if !xattrs.is_empty() {
                    let mut pax = Vec::new();
                    for (k, v) in xattrs.iter() {
                        let mut rec = format!(" SCHILY.xattr.{k}=").into_bytes();
                        rec.extend_from_slice(v);
                        rec.push(b'\n');
                        let mut len = rec.len() + 1;
                        while format!("{len}").len() + rec.len() != len {
                            len += 1;
                        }
                        pax.extend_from_slice(format!("{len}").as_bytes());
                        pax.extend_from_slice(&rec);
                    }
                    push(
                        &mut out,
                        "PaxHeaders/x",
                        tar::EntryType::XHeader,
                        0o644,
                        &pax,
                        None,
                        0,
                        0,
                    );
                }
                push(
                    &mut out,
                    path,
                    tar::EntryType::Regular,
                    *mode,
                    data,
                    None,
                    *uid,
                    *gid,
                )
            }
            E::Symlink(p, t) => push(
                &mut out,
                p,
                tar::EntryType::Symlink,
                0o777,
                b"",
                Some(t),
                0,
                0,
            ),
            E::Hardlink(p, t) => push(&mut out, p, tar::EntryType::Link, 0o644, b"", Some(t), 0, 0),
            E::Char(p, maj, min) | E::Block(p, maj, min) => {
                let kind = if matches!(e, E::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(p, kind, 0o666, 0, None, 0, 0);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
            }
            E::Fifo(p) => push(&mut out, p, tar::EntryType::Fifo, 0o644, b"", None, 0, 0),
            E::Claim(p, size) => {
                let h = header(p, tar::EntryType::Regular, 0o644, *size, None, 0, 0);
                out.extend_from_slice(h.as_bytes());
            }
            E::LongName(len) => {
                let name = vec![b'n'; *len];
                push(
                    &mut out,
                    "././@LongLink",
                    tar::EntryType::GNULongName,
                    0o644,
                    &name,
                    None,
                    0,
                    0,
                );
                push(
                    &mut out,
                    "short",
                    tar::EntryType::Regular,
                    0o644,
                    b"",
                    None,
                    0,
                    0,
                );
            }
            E::Raw(p, t) => push(&mut out, p, tar::EntryType::new(*t), 0o644, b"", None, 0, 0),
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&str>,
    uid: u64,
    gid: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = path.as_bytes();
    assert!(name.len() < 100, "fixture path too long");
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Vec<u8>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
    uid: u64,
    gid: u64,
) {
    let h = header(path, kind, mode, data.len() as u64, link, uid, gid);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
}

/// A temp dir holding `root/` (the destination) and `sentinel/` (which
/// must never change), side by side.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sentinel: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let sentinel = dir.path().join("sentinel");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("passwd"), b"original").unwrap();
        Sandbox {
            dir,
            root,
            sentinel,
        }
    }

    /// Nothing was written outside `root`: the sentinel holds only its
    /// file, unchanged and unlinked, and nothing appeared next to `root`.
    pub fn assert_outside_untouched(&self) {
        assert_eq!(
            names(&self.sentinel),
            ["passwd"],
            "something was written into the sentinel"
        );
        let md = fs::symlink_metadata(self.sentinel.join("passwd")).unwrap();
        assert_eq!(fs::read(self.sentinel.join("passwd")).unwrap(), b"original");
        assert_eq!(md.nlink(), 1, "the sentinel file gained a hard link");
        assert_eq!(
            names(self.dir.path()),
            ["root", "sentinel"],
            "something was created next to the root"
        );
        assert_etc_passwd_untouched();
    }

    pub fn sentinel_str(&self) -> String {
        self.sentinel.display().to_string()
    }
}

/// /etc/passwd is a would-be target of absolute names and hard links.
pub fn assert_etc_passwd_untouched() {
    let md = fs::symlink_metadata("/etc/passwd").unwrap();
    assert_eq!(md.nlink(), 1, "/etc/passwd gained a hard link");
    assert!(
        !fs::read_to_string("/etc/passwd").unwrap().contains("pwned"),
        "/etc/passwd was written"
    );
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
