//! One file opened beneath a directory a less trusted process writes.
//!
//! The same resolution as the unpacker's ([`RESOLVE`]), for host code
//! that reads or appends to files in a directory it does not control: a
//! sandbox's `vm/` directory belongs to the VMM's unprivileged uid, and a
//! compromised VMM can put a symlink (`console.log -> /etc/shadow`), a
//! FIFO (a reader that blocks forever) or a directory where the host
//! expects its console, log or status file. Opened here, the name is
//! resolved beneath the directory without following any symlink (the
//! final component included), and anything but a regular file is
//! refused, with an error that says which file and why.
//!
//! The directory itself is opened with `O_NOFOLLOW` on its last
//! component: its parents are the caller's (root's) and trusted.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// `openat2` resolution for everything beneath a root: never above it,
/// never through a symlink, never through a `/proc` magic link.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Why a file beneath a directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// The file (or the directory) is a symbolic link, or the name goes
    /// through one.
    #[error(
        "refusing {path}: it is a symbolic link (files in {dir} are written by a less trusted \
         process, and links there are never followed)"
    )]
    Symlink {
        /// The file refused.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The name leaves the directory (`..`, an absolute name).
    #[error("refusing {path}: the name leaves {dir}")]
    Escapes {
        /// The file refused.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Something other than a regular file is there.
    #[error("refusing {path}: it is a {kind}, not a regular file")]
    NotRegular {
        /// The file refused.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Opening failed otherwise (absent, permissions, I/O).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl BeneathError {
    /// Whether the file (or its directory) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl From<BeneathError> for io::Error {
    fn from(e: BeneathError) -> io::Error {
        let kind = match &e {
            BeneathError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

/// A directory whose entries are opened without following links.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory `path` (refused if its last component is a
    /// symlink).
    pub fn open(path: &Path) -> Result<Dir, BeneathError> {
        let io = |op, e: Errno| BeneathError::Io {
            op,
            path: path.into(),
            source: e.into(),
        };
        // O_PATH | O_NOFOLLOW opens a symlink itself, so its type can be
        // told (O_DIRECTORY would make it a bare ENOTDIR).
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("opening the directory", e))?;
        let st = rfs::fstat(&fd).map_err(|e| io("inspecting", e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Ok(Dir {
                fd,
                path: path.into(),
            }),
            FileType::Symlink => Err(BeneathError::Symlink {
                path: path.into(),
                dir: path.parent().unwrap_or(path).into(),
            }),
            _ => Err(BeneathError::NotRegular {
                path: path.into(),
                kind: "non-directory where a directory was expected",
            }),
        }
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `name` for reading; `None` if there is none.
    pub fn read(&self, name: impl AsRef<Path>) -> Result<Option<File>, BeneathError> {
        match self.open_file(name.as_ref(), OFlags::RDONLY, Mode::empty(), "opening") {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the regular file `name` for appending, creating it with
    /// `mode` (less the umask) if there is none.
    pub fn append(&self, name: impl AsRef<Path>, mode: u32) -> Result<File, BeneathError> {
        self.open_file(
            name.as_ref(),
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            Mode::from_raw_mode(mode),
            "opening for append",
        )
    }

    fn open_file(
        &self,
        name: &Path,
        flags: OFlags,
        mode: Mode,
        op: &'static str,
    ) -> Result<File, BeneathError> {
        let path = self.path.join(name);
        // O_NONBLOCK: opening a FIFO must not wait for a writer (or a
        // reader); it is refused below. O_NOCTTY: nor may a terminal
        // become ours.
        let fd = rfs::openat2(
            &self.fd,
            name.as_os_str(),
            flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            mode,
            RESOLVE,
        )
        .map_err(|e| match e {
            Errno::LOOP => BeneathError::Symlink {
                path: path.clone(),
                dir: self.path.clone(),
            },
            Errno::XDEV => BeneathError::Escapes {
                path: path.clone(),
                dir: self.path.clone(),
            },
            // A directory opened for writing; a FIFO with no reader.
            Errno::ISDIR => BeneathError::NotRegular {
                path: path.clone(),
                kind: "directory",
            },
            Errno::NXIO => BeneathError::NotRegular {
                path: path.clone(),
                kind: "FIFO or socket",
            },
            e => BeneathError::Io {
                op,
                path: path.clone(),
                source: e.into(),
            },
        })?;
        let st = rfs::fstat(&fd).map_err(|e| BeneathError::Io {
            op: "inspecting",
            path: path.clone(),
            source: e.into(),
        })?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => None,
            FileType::Directory => Some("directory"),
            FileType::Fifo => Some("FIFO"),
            FileType::Socket => Some("socket"),
            FileType::CharacterDevice => Some("character device"),
            FileType::BlockDevice => Some("block device"),
            FileType::Symlink => Some("symbolic link"),
            FileType::Unknown => Some("file of unknown type"),
        };
        if let Some(kind) = kind {
            return Err(BeneathError::NotRegular { path, kind });
        }
        // Back to blocking I/O: the flag was only for the open.
        let fl = rfs::fcntl_getfl(&fd).map_err(|e| BeneathError::Io {
            op: "reading the flags of",
            path: path.clone(),
            source: e.into(),
        })?;
        rfs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| BeneathError::Io {
            op: "setting the flags of",
            path,
            source: e.into(),
        })?;
        Ok(File::from(fd))
    }
}

/// Opens the regular file at `path` for reading without following a
/// symlink in its last two components (the file and its directory);
/// `None` if there is none. For a file in a directory another, less
/// trusted process writes.
pub fn read_file(path: &Path) -> Result<Option<File>, BeneathError> {
    let (dir, name) = split(path)?;
    match Dir::open(dir) {
        Ok(d) => d.read(name),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the regular file at `path` for appending (created with `mode`
/// if absent), as [`read_file`] resolves it.
pub fn append_file(path: &Path, mode: u32) -> Result<File, BeneathError> {
    let (dir, name) = split(path)?;
    Dir::open(dir)?.append(name, mode)
}

fn split(path: &Path) -> Result<(&Path, &OsStr), BeneathError> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => Ok((
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        )),
        _ => Err(BeneathError::Escapes {
            path: path.into(),
            dir: path.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "the secret\n").unwrap();
        let dir = t.path().join("vm");
        std::fs::create_dir(&dir).unwrap();
        (t, secret, dir)
    }

    #[test]
    fn a_regular_file_is_read_and_appended_to() {
        let (_t, _s, dir) = setup();
        let p = dir.join("log");
        assert!(read_file(&p).unwrap().is_none());
        append_file(&p, 0o600).unwrap().write_all(b"one\n").unwrap();
        append_file(&p, 0o600).unwrap().write_all(b"two\n").unwrap();
        let mut s = String::new();
        read_file(&p)
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "one\ntwo\n");
        // Blocking again after the open.
        let f = read_file(&p).unwrap().unwrap();
        assert!(!rfs::fcntl_getfl(&f).unwrap().contains(OFlags::NONBLOCK));
        // A missing directory is no file either.
        assert!(read_file(&dir.join("gone/log")).unwrap().is_none());
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let (_t, secret, dir) = setup();
        let p = dir.join("console.log");
        symlink(&secret, &p).unwrap();
        let e = read_file(&p).unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("console.log") && msg.contains("symbolic link"),
            "{msg}"
        );
        assert!(!msg.contains("the secret"));
        let e = append_file(&p, 0o600).unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e:?}");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "the secret\n");
        // A relative link, and a dangling one (append would create its
        // target), likewise.
        let rel = dir.join("rel");
        symlink("../secret", &rel).unwrap();
        assert!(matches!(read_file(&rel), Err(BeneathError::Symlink { .. })));
        let dangling = dir.join("dangling");
        symlink(dir.join("created"), &dangling).unwrap();
        assert!(matches!(
            append_file(&dangling, 0o600),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(!dir.join("created").exists());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let (t, _secret, dir) = setup();
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("status.json"), "{}").unwrap();
        std::fs::remove_dir(&dir).unwrap();
        symlink(&other, &dir).unwrap();
        let e = read_file(&dir.join("status.json")).unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e:?}");
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_blocking() {
        let (_t, _secret, dir) = setup();
        let fifo = dir.join("console.log");
        rustix::fs::mknodat(
            rfs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = read_file(&fifo).unwrap_err();
        assert!(
            matches!(e, BeneathError::NotRegular { kind: "FIFO", .. }),
            "{e:?}"
        );
        let e = append_file(&fifo, 0o600).unwrap_err();
        assert!(matches!(e, BeneathError::NotRegular { .. }), "{e:?}");
        let sub = dir.join("vmm.log");
        std::fs::create_dir(&sub).unwrap();
        let e = read_file(&sub).unwrap_err();
        assert!(
            matches!(
                e,
                BeneathError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = append_file(&sub, 0o600).unwrap_err();
        assert!(matches!(e, BeneathError::NotRegular { .. }), "{e:?}");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let (_t, _secret, dir) = setup();
        let d = Dir::open(&dir).unwrap();
        assert!(matches!(
            d.read("../secret"),
            Err(BeneathError::Escapes { .. })
        ));
        assert!(matches!(
            d.read("/etc/passwd"),
            Err(BeneathError::Escapes { .. })
        ));
    }
}
