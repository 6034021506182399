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
//!
//! Unix sockets there are connected to the same way ([`Dir::connect`]):
//! `connect(2)` takes a path and follows every link in it, so a
//! compromised VMM could replace its vsock socket `v.sock` with a link to
//! another socket of the host (mvmd's API socket, containerd's), and the
//! host would send that socket what it meant for the guest agent. The
//! name is opened beneath the directory with `O_PATH | O_NOFOLLOW` (no
//! link followed, the final component included), `fstat` must say
//! socket, and the connection goes through that very descriptor
//! (`/proc/self/fd/N`, which names the inode that was checked): there is
//! no window between the check and the connect in which the name could
//! be swapped.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::net as rnet;

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
    /// Something other than a Unix socket is where a socket was expected.
    #[error("refusing {path}: it is a {kind}, not a Unix socket")]
    NotSocket {
        /// The name refused.
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
        .map_err(|e| self.open_error(e, &path, op))?;
        match file_type(&fd, &path)? {
            FileType::RegularFile => {}
            t => {
                return Err(BeneathError::NotRegular {
                    path,
                    kind: type_name(t),
                })
            }
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

    /// Connects to the Unix stream socket `name` without following any
    /// link (see the module doc): a non-blocking stream, connected. A
    /// link, a name leaving the directory or anything but a socket is
    /// refused before any connection is made; a socket nobody listens on
    /// is the usual `ECONNREFUSED`, and a listener whose backlog is full
    /// `EAGAIN` (never a blocked caller).
    pub fn connect(&self, name: impl AsRef<Path>) -> Result<UnixStream, BeneathError> {
        let name = name.as_ref();
        let path = self.path.join(name);
        // O_PATH opens the name without opening the socket (which a
        // socket does not allow anyway); O_NOFOLLOW with RESOLVE_NO_SYMLINKS
        // gives a link's own descriptor, told apart below.
        let fd = rfs::openat2(
            &self.fd,
            name.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| self.open_error(e, &path, "opening the socket"))?;
        match file_type(&fd, &path)? {
            FileType::Socket => {}
            FileType::Symlink => {
                return Err(BeneathError::Symlink {
                    path,
                    dir: self.path.clone(),
                })
            }
            t => {
                return Err(BeneathError::NotSocket {
                    path,
                    kind: type_name(t),
                })
            }
        }
        let io = |op, e: Errno| BeneathError::Io {
            op,
            path: path.clone(),
            source: e.into(),
        };
        let sock = rnet::socket_with(
            rnet::AddressFamily::UNIX,
            rnet::SocketType::STREAM,
            rnet::SocketFlags::NONBLOCK | rnet::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io("creating a socket to connect to", e))?;
        // The magic link names the inode checked above, whatever the
        // name in the directory points to by now.
        let via = rnet::SocketAddrUnix::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| io("naming", e))?;
        rnet::connect(&sock, &via)
            .map_err(|e| io("connecting (through its descriptor in /proc/self/fd) to", e))?;
        Ok(UnixStream::from(sock))
    }

    /// An `openat2` error of the name `path` as a refusal or an I/O error.
    fn open_error(&self, e: Errno, path: &Path, op: &'static str) -> BeneathError {
        match e {
            Errno::LOOP => BeneathError::Symlink {
                path: path.into(),
                dir: self.path.clone(),
            },
            Errno::XDEV => BeneathError::Escapes {
                path: path.into(),
                dir: self.path.clone(),
            },
            // A directory opened for writing; a FIFO with no reader.
            Errno::ISDIR => BeneathError::NotRegular {
                path: path.into(),
                kind: "directory",
            },
            Errno::NXIO => BeneathError::NotRegular {
                path: path.into(),
                kind: "FIFO or socket",
            },
            e => BeneathError::Io {
                op,
                path: path.into(),
                source: e.into(),
            },
        }
    }
}

/// The type of what `fd` (opened as `path`) is.
fn file_type(fd: &OwnedFd, path: &Path) -> Result<FileType, BeneathError> {
    let st = rfs::fstat(fd).map_err(|e| BeneathError::Io {
        op: "inspecting",
        path: path.into(),
        source: e.into(),
    })?;
    Ok(FileType::from_raw_mode(st.st_mode))
}

/// A file type for messages.
fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symbolic link",
        FileType::Unknown => "file of unknown type",
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

/// Connects to the Unix socket at `path` as [`Dir::connect`] does,
/// without following a link in its last two components (the socket and
/// its directory). For a socket in a directory another, less trusted
/// process writes (a VMM's vsock socket).
pub fn connect_socket(path: &Path) -> Result<UnixStream, BeneathError> {
    let (dir, name) = split(path)?;
    Dir::open(dir)?.connect(name)
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

    /// A listener that accepts nothing unless asked, to tell whether a
    /// connection reached it.
    fn listener(path: &Path) -> std::os::unix::net::UnixListener {
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    fn reached(l: &std::os::unix::net::UnixListener) -> bool {
        match l.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }

    #[test]
    fn a_socket_is_connected_through_its_descriptor() {
        let (_t, _s, dir) = setup();
        let p = dir.join("v.sock");
        let l = listener(&p);
        let mut c = connect_socket(&p).unwrap();
        assert!(c.set_nonblocking(false).is_ok());
        let (mut a, _) = {
            l.set_nonblocking(false).unwrap();
            l.accept().unwrap()
        };
        c.write_all(b"CONNECT 1024\n").unwrap();
        let mut got = [0u8; 13];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"CONNECT 1024\n");
        // Nobody listening: refused as usual, not as a link.
        drop(l);
        let e = connect_socket(&p).unwrap_err();
        assert!(
            matches!(&e, BeneathError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
        // Absent.
        assert!(connect_socket(&dir.join("none.sock"))
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn a_link_planted_for_the_socket_is_refused_and_its_target_not_reached() {
        let (t, _s, dir) = setup();
        // Another socket of the host (mvmd's API socket, say).
        let other = t.path().join("other.sock");
        let l = listener(&other);
        let p = dir.join("v.sock");
        symlink(&other, &p).unwrap();
        let e = connect_socket(&p).unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e:?}");
        assert!(e.to_string().contains("v.sock"), "{e}");
        assert!(!reached(&l), "the link's target got a connection");
        // Relative, too.
        let rel = dir.join("rel.sock");
        symlink("../other.sock", &rel).unwrap();
        assert!(matches!(
            connect_socket(&rel),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(!reached(&l));
        // A linked socket directory.
        let linked = t.path().join("linked");
        symlink(t.path(), &linked).unwrap();
        assert!(matches!(
            connect_socket(&linked.join("other.sock")),
            Err(BeneathError::Symlink { .. })
        ));
        assert!(!reached(&l));
        // The same socket by its own name is reached: the refusals above
        // were the links'.
        let _c = connect_socket(&other).unwrap();
        assert!(reached(&l));
    }

    #[test]
    fn anything_but_a_socket_is_refused() {
        let (_t, secret, dir) = setup();
        let f = dir.join("v.sock");
        std::fs::write(&f, "not a socket").unwrap();
        let e = connect_socket(&f).unwrap_err();
        assert!(
            matches!(
                e,
                BeneathError::NotSocket {
                    kind: "regular file",
                    ..
                }
            ),
            "{e:?}"
        );
        let d = dir.join("d.sock");
        std::fs::create_dir(&d).unwrap();
        assert!(matches!(
            connect_socket(&d),
            Err(BeneathError::NotSocket {
                kind: "directory",
                ..
            })
        ));
        let dir = Dir::open(&dir).unwrap();
        assert!(matches!(
            dir.connect("../secret"),
            Err(BeneathError::Escapes { .. })
        ));
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "the secret\n");
    }
}
