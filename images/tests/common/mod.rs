//! Test fixtures: tarballs built with the `tar` crate, stores in temp dirs.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use mvm_images::{Reference, Store};

/// One entry of a fixture tarball.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// A file with owner, mtime and PAX xattrs.
    FileEx {
        path: &'a str,
        data: &'a [u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        xattrs: &'a [(&'a str, &'a [u8])],
    },
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    /// A header claiming `size` bytes with no data (for limit tests the
    /// check must fire before reading).
    Claim(&'a str, u64),
}

/// Builds an uncompressed tar from entries, written raw so that hostile
/// names (`..`, absolute) survive (tar::Builder would refuse them).
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match e {
            E::Dir(p, mode) => push(
                &mut out,
                p,
                tar::EntryType::Directory,
                *mode,
                b"",
                None,
                0,
                0,
                0,
            ),
            E::File(p, data, mode) => push(
                &mut out,
                p,
                tar::EntryType::Regular,
                *mode,
                data,
                None,
                0,
                0,
                0,
            ),
            E::FileEx {
                path,
                data,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            } => {
                if !xattrs.is_empty() {
                    let mut pax = Vec::new();
                    for (k, v) in xattrs.iter() {
                        let mut rec = format!(" SCHILY.xattr.{k}=").into_bytes();
                        rec.extend_from_slice(v);
                        rec.push(b'\n');
                        // The length prefix counts itself.
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
                    *mtime,
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
                0,
            ),
            E::Hardlink(p, t) => push(
                &mut out,
                p,
                tar::EntryType::Link,
                0o644,
                b"",
                Some(t),
                0,
                0,
                0,
            ),
            E::Char(p, maj, min) => {
                let mut h = header(p, tar::EntryType::Char, 0o666, 0, None, 0, 0, 0);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
            }
            E::Fifo(p) => push(&mut out, p, tar::EntryType::Fifo, 0o644, b"", None, 0, 0, 0),
            E::Claim(p, size) => {
                let h = header(p, tar::EntryType::Regular, 0o644, *size, None, 0, 0, 0);
                out.extend_from_slice(h.as_bytes());
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[allow(clippy::too_many_arguments)]
fn header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&str>,
    uid: u64,
    gid: u64,
    mtime: u64,
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
    h.set_mtime(mtime);
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
    mtime: u64,
) {
    let h = header(path, kind, mode, data.len() as u64, link, uid, gid, mtime);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("images")).unwrap();
    (dir, store)
}

pub fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// Asserts the store passes a full consistency check (content re-hashed).
pub fn assert_consistent(store: &Store) {
    let rep = store.fsck(true).unwrap();
    assert!(rep.is_clean(), "store inconsistent: {:?}", rep.problems);
}

/// Names of the blobs present.
pub fn blob_names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn require_root() {
    assert!(
        rustix_is_root(),
        "these tests need root (mount, mknod, chown); run them as root as `make test` does"
    );
}

fn rustix_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is the tool installed? `make deps` installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// debugfs -R 'stat PATH' output.
pub fn debugfs(img: &Path, req: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", req])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// e2fsck -fn must report no problem.
pub fn e2fsck_clean(img: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(img));
}

/// A minimal busybox-like rootfs tarball (uses the host's static busybox
/// when present so the image is runnable).
pub fn small_rootfs() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").unwrap_or_else(|_| b"#!/bin/sh\necho fake\n".to_vec());
    tar(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", &bb, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("etc", 0o755),
        E::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        E::Dir("tmp", 0o1777),
    ])
}
