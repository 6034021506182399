//! Docker's volume copy-up, done in the guest for block volumes: when a
//! fresh (empty) volume is mounted where the image has content, that
//! content is copied into the volume first, so the workload finds the
//! files it shipped with (a database's initial directory, say).
//!
//! The host cannot do this for a block volume: it never looks inside a
//! filesystem a guest has written. The guest can: the source is the
//! image's directory in the overlay root, opened *before* the volume is
//! mounted over it (an open directory keeps pointing at what was there),
//! and the destination is the freshly mounted volume.
//!
//! Everything is done with `*at` calls relative to open directories and
//! `O_NOFOLLOW`, so neither side's symlinks are followed: a symlink is
//! copied as a symlink. Owners, modes (setuid included: it is the image's
//! file, in the image's own guest), times, FIFOs and device nodes are
//! kept; hard links within the tree stay hard links; sockets are skipped
//! (they mean nothing without their process). Extended attributes are not
//! copied (the image disk is made without them).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys::cvt;

/// Deepest directory nesting copied (a guard against pathological trees;
/// the kernel's own path limit is far below what this allows).
const MAX_DEPTH: usize = 512;

/// Why a copy-up failed.
#[derive(Debug, thiserror::Error)]
#[error("copying {path} into the volume: {what}: {source}")]
pub struct CopyUpError {
    /// The path below the mount point being copied.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// Why.
    pub source: io::Error,
}

/// What a copy-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries copied (directories, files, links, nodes).
    pub entries: u64,
    /// File bytes copied.
    pub bytes: u64,
}

/// Whether the directory `dir` holds nothing a user put there: nothing at
/// all, or only ext4's `lost+found`. Docker copies into a volume only
/// when it is empty.
pub fn is_empty_volume(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copy the contents of the open directory `src` into the directory
/// `dest`, and give `dest` itself `src`'s owner and mode.
pub fn copy_tree(src: &File, dest: &Path) -> Result<CopyStats, CopyUpError> {
    let dest_dir = open_dir(libc::AT_FDCWD, &cstr(dest.as_os_str().as_bytes(), dest)?)
        .map_err(err(dest, "opening the volume"))?;
    let mut c = Copier {
        root: dest_dir.as_raw_fd(),
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    // Borrowed for this call only; `src` stays the caller's.
    let src_fd = src.as_raw_fd();
    c.copy_dir(src_fd, dest_dir.as_raw_fd(), Path::new(""), 0)?;
    let st = fstat(src_fd).map_err(err(Path::new("."), "inspecting the image directory"))?;
    set_meta_fd(dest_dir.as_raw_fd(), &st)
        .map_err(err(Path::new("."), "setting owner and mode"))?;
    Ok(c.stats)
}

struct Copier {
    /// The destination root, which hard links are resolved from.
    root: RawFd,
    /// (dev, ino) of multiply-linked files already copied -> their path
    /// relative to the destination root.
    links: HashMap<(u64, u64), CString>,
    stats: CopyStats,
}

impl Copier {
    fn copy_dir(
        &mut self,
        src: RawFd,
        dest: RawFd,
        rel: &Path,
        depth: usize,
    ) -> Result<(), CopyUpError> {
        if depth > MAX_DEPTH {
            return Err(CopyUpError {
                path: rel.to_path_buf(),
                what: "walking the image directory",
                source: io::Error::other("nested too deeply"),
            });
        }
        for name in list(src).map_err(err(rel, "listing"))? {
            let path = rel.join(OsStr::from_bytes(name.as_bytes()));
            let st = fstatat(src, &name).map_err(err(&path, "inspecting"))?;
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt == libc::S_IFSOCK {
                continue;
            }
            if fmt != libc::S_IFDIR && st.st_nlink > 1 {
                let key = (st.st_dev, st.st_ino);
                if let Some(first) = self.links.get(&key) {
                    // `first` is relative to the destination root, through
                    // directories this copy made (never a symlink: only
                    // leaves are symlinks), so the link stays inside.
                    // SAFETY: valid dirfds and C strings; flags 0 never
                    // follows a symlink at `first`.
                    cvt(unsafe { libc::linkat(self.root, first.as_ptr(), dest, name.as_ptr(), 0) })
                        .map_err(err(&path, "linking"))?;
                    self.stats.entries += 1;
                    continue;
                }
                let rel_c = cstr(path.as_os_str().as_bytes(), &path)?;
                self.links.insert(key, rel_c);
            }
            match fmt {
                libc::S_IFDIR => {
                    // SAFETY: mkdirat with a valid dirfd and C string.
                    match cvt(unsafe { libc::mkdirat(dest, name.as_ptr(), 0o700) }) {
                        Ok(_) => {}
                        // `lost+found` of a fresh ext4 meets the image's:
                        // merged.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) && depth == 0 => {}
                        Err(e) => return Err(err(&path, "creating directory")(e)),
                    }
                    let s = open_dir(src, &name).map_err(err(&path, "opening"))?;
                    let d = open_dir(dest, &name).map_err(err(&path, "opening the copy"))?;
                    self.copy_dir(s.as_raw_fd(), d.as_raw_fd(), &path, depth + 1)?;
                    set_meta_fd(d.as_raw_fd(), &st).map_err(err(&path, "setting metadata"))?;
                }
                libc::S_IFREG => {
                    let s = open_at(src, &name, libc::O_RDONLY).map_err(err(&path, "opening"))?;
                    let d = open_at(dest, &name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
                        .map_err(err(&path, "creating"))?;
                    let mut s = File::from(s);
                    let mut d = File::from(d);
                    self.stats.bytes +=
                        io::copy(&mut s, &mut d).map_err(err(&path, "copying data"))?;
                    set_meta_fd(d.as_raw_fd(), &st).map_err(err(&path, "setting metadata"))?;
                }
                libc::S_IFLNK => {
                    let target = readlinkat(src, &name).map_err(err(&path, "reading link"))?;
                    // SAFETY: valid C strings and dirfd.
                    cvt(unsafe { libc::symlinkat(target.as_ptr(), dest, name.as_ptr()) })
                        .map_err(err(&path, "creating symlink"))?;
                    set_meta_at(dest, &name, &st, false).map_err(err(&path, "setting metadata"))?;
                }
                _ => {
                    // FIFOs, character and block devices.
                    // SAFETY: valid dirfd and C string; mode and dev from fstatat.
                    cvt(unsafe { libc::mknodat(dest, name.as_ptr(), fmt | 0o600, st.st_rdev) })
                        .map_err(err(&path, "creating node"))?;
                    set_meta_at(dest, &name, &st, true).map_err(err(&path, "setting metadata"))?;
                }
            }
            self.stats.entries += 1;
        }
        Ok(())
    }
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CopyUpError + 'a {
    move |source| CopyUpError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn cstr(bytes: &[u8], path: &Path) -> Result<CString, CopyUpError> {
    crate::sys::cstring(bytes).map_err(err(path, "naming"))
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid dirfd and C string; the returned fd is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, C string and out pointer.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<CString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid dirfd and C string; the buffer's length is passed.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    crate::sys::cstring(&buf)
}

/// The names in directory `fd`, without `.` and `..`.
fn list(fd: RawFd) -> io::Result<Vec<CString>> {
    // A second descriptor: fdopendir takes ownership of the one it gets.
    // SAFETY: dup of a valid fd.
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is ours; on success the DIR owns it.
    let dirp = unsafe { libc::fdopendir(dup) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: closing our dup after fdopendir refused it.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: rewind so a descriptor read before starts over.
    unsafe { libc::rewinddir(dirp) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `dirp` is a valid DIR until closedir below.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated array inside the entry,
        // valid until the next readdir; copied out at once.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: closing the DIR (and the dup) once.
    unsafe { libc::closedir(dirp) };
    names.sort();
    Ok(names)
}

fn set_meta_fd(fd: RawFd, st: &libc::stat) -> io::Result<()> {
    // SAFETY: valid fd; owners and mode from fstat.
    cvt(unsafe { libc::fchown(fd, st.st_uid, st.st_gid) })?;
    // chown clears setuid/setgid: the mode goes after it.
    // SAFETY: as above.
    cvt(unsafe { libc::fchmod(fd, st.st_mode & 0o7777) })?;
    let times = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    // SAFETY: valid fd and a two-element array.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
    Ok(())
}

fn set_meta_at(dir: RawFd, name: &CStr, st: &libc::stat, chmod: bool) -> io::Result<()> {
    // SAFETY: valid dirfd and C string; never follows a final symlink.
    cvt(unsafe {
        libc::fchownat(
            dir,
            name.as_ptr(),
            st.st_uid,
            st.st_gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if chmod {
        // A node, never a symlink here (symlinks have no mode of their own).
        // SAFETY: valid dirfd and C string.
        cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), st.st_mode & 0o7777, 0) })?;
    }
    let times = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    // SAFETY: valid dirfd, C string and a two-element array.
    cvt(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_tree_is_copied_with_links_nodes_and_metadata_and_no_symlink_is_followed() {
        let src = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("a/b")).unwrap();
        std::fs::write(s.join("a/b/f"), "data").unwrap();
        std::fs::set_permissions(s.join("a/b/f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
        std::fs::hard_link(s.join("a/b/f"), s.join("a/hard")).unwrap();
        std::os::unix::fs::symlink(outside.path(), s.join("a/out")).unwrap();
        std::os::unix::fs::symlink("../nowhere", s.join("dangling")).unwrap();
        std::fs::set_permissions(s.join("a"), std::fs::Permissions::from_mode(0o710)).unwrap();
        let fifo = crate::sys::cpath(&s.join("fifo")).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::create_dir(dest.path().join("lost+found")).unwrap();
        assert!(is_empty_volume(dest.path()).unwrap());

        let stats = copy_tree(&File::open(s).unwrap(), dest.path()).unwrap();
        let d = dest.path();
        assert_eq!(std::fs::read_to_string(d.join("a/b/f")).unwrap(), "data");
        let f = std::fs::metadata(d.join("a/b/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4751);
        assert_eq!(f.ino(), std::fs::metadata(d.join("a/hard")).unwrap().ino());
        assert_eq!(std::fs::read_link(d.join("a/out")).unwrap(), outside.path());
        assert!(
            std::fs::symlink_metadata(d.join("a/out/secret")).is_ok(),
            "a symlink, as in the image"
        );
        assert!(!d.join("a/secret").exists());
        assert_eq!(
            std::fs::read_link(d.join("dangling")).unwrap(),
            Path::new("../nowhere")
        );
        use std::os::unix::fs::FileTypeExt;
        let fm = std::fs::symlink_metadata(d.join("fifo")).unwrap();
        assert!(fm.file_type().is_fifo());
        assert_eq!(fm.mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::metadata(d.join("a")).unwrap().mode() & 0o7777,
            0o710
        );
        assert_eq!(
            std::fs::metadata(d).unwrap().mode() & 0o7777,
            0o750,
            "the root takes the image dir's mode"
        );
        assert_eq!(
            std::fs::metadata(d.join("a/b/f")).unwrap().mtime(),
            std::fs::metadata(s.join("a/b/f")).unwrap().mtime()
        );
        assert_eq!(stats.bytes, 4);
        assert!(stats.entries >= 7, "{stats:?}");
        assert!(!is_empty_volume(d).unwrap());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "host"
        );
    }
}
