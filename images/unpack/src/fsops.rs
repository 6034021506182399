//! Filesystem operations beneath a root directory descriptor.
//!
//! Every lookup goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)` from the root, so no path can leave it: not
//! through `..`, an absolute name, or a symlink (one in the archive or one
//! that was already in the destination; even a symlink that stays inside
//! is refused, which keeps the rule simple). Changes are then made with
//! `*at` calls relative to the resolved parent and `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW` on the final component, so nothing is written
//! through a link either.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::error::{errno_err, io_err, Error, Result};

use crate::beneath::RESOLVE;

/// The destination root.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `dir` (following symlinks: the caller chose it).
    pub(crate) fn open(dir: &Path) -> Result<Root> {
        let disp = dir.display().to_string();
        let fd = rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&disp, "opening the destination directory")(e.into()))?;
        Ok(Root { fd })
    }

    /// Resolves the directory `comps` beneath the root (an `O_PATH`
    /// descriptor), creating missing components (mode 0755) if `create`;
    /// the paths of the directories made are added to `made` if given.
    pub(crate) fn dir(
        &self,
        comps: &[Vec<u8>],
        display: &str,
        create: bool,
        mut made: Option<&mut HashSet<Vec<u8>>>,
    ) -> Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if comps.is_empty() {
            return dup(&self.fd, display);
        }
        let joined = comps.join(&b'/');
        match rfs::openat2(
            &self.fd,
            OsStr::from_bytes(&joined),
            flags,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if create => {}
            Err(e) => return Err(resolve_err(e, display)),
        }
        // Walk component by component, creating what is missing.
        let mut cur = dup(&self.fd, display)?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let next = match rfs::openat2(&cur, name, flags, Mode::empty(), RESOLVE) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {
                            if let Some(v) = made.as_deref_mut() {
                                v.insert(comps[..=i].join(&b'/'));
                            }
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno_err(display, "creating parent directory")(e)),
                    }
                    rfs::openat2(&cur, name, flags, Mode::empty(), RESOLVE)
                        .map_err(|e| resolve_err(e, display))?
                }
                Err(e) => return Err(resolve_err(e, display)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Opens the directory `comps` for reading (for `fchmod` and friends),
    /// or `None` if it is gone or no longer a directory.
    pub(crate) fn open_dir_rw(&self, comps: &[Vec<u8>], display: &str) -> Result<Option<OwnedFd>> {
        let path: Vec<u8> = if comps.is_empty() {
            b".".to_vec()
        } else {
            comps.join(&b'/')
        };
        match rfs::openat2(
            &self.fd,
            OsStr::from_bytes(&path),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => Ok(None),
            Err(e) => Err(errno_err(display, "opening directory")(e)),
        }
    }
}

pub(crate) fn dup(fd: &OwnedFd, display: &str) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(io_err(display, "duplicating descriptor"))
}

pub(crate) fn resolve_err(e: Errno, display: &str) -> Error {
    match e {
        Errno::LOOP => Error::unsafe_entry(
            display,
            "path goes through a symlink (writes through symlinked directories are refused)",
        ),
        Errno::XDEV => Error::unsafe_entry(display, "path escapes the destination"),
        Errno::NOTDIR => Error::unsafe_entry(display, "a parent path component is not a directory"),
        e => errno_err(display, "resolving parent directory")(e),
    }
}

/// The type of `name` in `dir`, not following a symlink; `None` if absent.
pub(crate) fn kind_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    display: &str,
) -> Result<Option<FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(errno_err(display, "inspecting existing entry")(e)),
    }
}

pub(crate) fn timestamps(mtime: i64) -> Timestamps {
    let ts = rfs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// Sets the times of `name` in `dir` without following a symlink.
pub(crate) fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mtime: i64,
    display: &str,
) -> Result<()> {
    rfs::utimensat(dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno_err(display, "setting times"))
}

/// The names in `dir` (an `O_PATH` descriptor is fine).
pub(crate) fn list_dir(dir: BorrowedFd<'_>, display: &str) -> Result<Vec<Vec<u8>>> {
    let fd = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(display, "opening directory"))?;
    let mut d = rfs::Dir::new(fd).map_err(errno_err(display, "listing directory"))?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(errno_err(display, "listing directory"))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir`, recursively if it is a directory, never
/// following symlinks.
pub(crate) fn remove_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
    display: &str,
) -> Result<()> {
    if !is_dir {
        return rfs::unlinkat(dir, name, AtFlags::empty()).map_err(errno_err(display, "removing"));
    }
    let sub = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(display, "opening directory to remove"))?;
    for n in list_dir(sub.as_fd(), display)? {
        let cn = OsStr::from_bytes(&n);
        let t = kind_at(sub.as_fd(), cn, display)?;
        if let Some(t) = t {
            remove_at(sub.as_fd(), cn, t == FileType::Directory, display)?;
        }
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno_err(display, "removing directory"))
}
