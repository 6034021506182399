//! `copy_in` and `copy_out`: tar streams in and out of the guest, with the
//! semantics of Docker's archive API (what `docker cp` is built on).
//!
//! * `copy_in {path}` extracts the tar into the existing directory `path`.
//!   Modes (setuid included), numeric owners, modification times, symlinks,
//!   hard links, devices and FIFOs are kept. The tar comes from the host
//!   but is still treated as hostile: entries with `..` are refused, and
//!   every path is resolved with `openat2(RESOLVE_IN_ROOT)` against the
//!   destination, so a symlink in the archive (or already on disk) pointing
//!   to `/etc` resolves to `<dest>/etc`: nothing is written outside the
//!   destination. Final components are created with `O_NOFOLLOW` /
//!   `*at(..., AT_SYMLINK_NOFOLLOW)`, never through a link.
//! * `copy_out {path}` sends a tar of `path` named by its last component
//!   (a symlink is archived as the link, not its target); `path/.` sends
//!   the directory's contents. Hard links within the tree are archived as
//!   links, sockets are skipped.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use mvm_protocol::agent::frame::{FrameError, FrameReader};
use mvm_protocol::agent::{ErrorCode, Kind, MAX_PAYLOAD};
use tar::EntryType;

use super::conn::Conn;
use super::session::SharedWriter;
use crate::sys::cvt;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error("{0} is not a directory: copy_in extracts into an existing directory")]
    NotDir(PathBuf),
    #[error("tar entry {0:?} would land outside the destination (it contains \"..\")")]
    Escape(PathBuf),
    #[error("tar entry {entry:?}: {msg}")]
    Entry { entry: PathBuf, msg: String },
    #[error("the tar stream is malformed: {0}")]
    Tar(io::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("sending the tar stream: {0}")]
    Send(io::Error),
}

impl CopyError {
    /// The code the host gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NotDir(_) | Self::Escape(_) | Self::Entry { .. } | Self::Tar(_) => {
                ErrorCode::BadRequest
            }
            Self::Io { .. } | Self::Send(_) => ErrorCode::Io,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// The DATA frames of a `copy_in` as a byte stream.
pub struct DataReader<'a> {
    rd: &'a mut FrameReader<Conn>,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    broken: Option<String>,
}

impl<'a> DataReader<'a> {
    pub fn new(rd: &'a mut FrameReader<Conn>) -> Self {
        Self {
            rd,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            broken: None,
        }
    }

    /// Consume frames up to DATA_EOF, so the connection is back at a
    /// request boundary. An error means the stream broke the protocol.
    pub fn drain(mut self) -> Result<(), String> {
        let mut sink = [0u8; 64 * 1024];
        while !self.eof && self.broken.is_none() {
            let _ = self.read(&mut sink);
        }
        match self.broken {
            Some(msg) => Err(msg),
            None => Ok(()),
        }
    }

    fn fail(&mut self, msg: String) -> io::Error {
        self.broken = Some(msg.clone());
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }
}

impl Read for DataReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            if let Some(msg) = &self.broken {
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()));
            }
            match self.rd.read_frame() {
                Ok(Some((Kind::Data, p))) => {
                    self.buf.clear();
                    self.buf.extend_from_slice(p);
                    self.pos = 0;
                }
                Ok(Some((Kind::DataEof, _))) => self.eof = true,
                Ok(Some((k, _))) => {
                    let msg = format!("a {} frame arrived inside a copy_in tar stream", k.name());
                    return Err(self.fail(msg));
                }
                Ok(None) => {
                    return Err(
                        self.fail("the connection closed inside a copy_in tar stream".into())
                    )
                }
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }
}

/// A path from the archive, relative and without `.`; `None` for the
/// archive's root entry (`./`).
fn sanitize(path: &Path) -> Result<Option<PathBuf>, CopyError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CopyError::Escape(path.into()))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    crate::sys::cstring(s.as_bytes())
}

/// Open directory `rel` beneath `root` as if `root` were `/` (symlinks
/// included), creating missing directories (0755, root-owned, as tar
/// does) when `create`.
fn open_dir(root: &OwnedFd, rel: &Path, create: bool) -> io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return root.try_clone();
    }
    match openat2_in_root(root.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY) {
        Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
            let parent = open_dir(root, rel.parent().unwrap_or(Path::new("")), true)?;
            let name = cstr(rel.file_name().unwrap_or_default())?;
            // SAFETY: mkdirat with our descriptor and a C string.
            let r = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) };
            if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::last_os_error());
            }
            openat2_in_root(root.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY)
        }
        r => r,
    }
}

/// `openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in_root(root: RawFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = cstr(rel.as_os_str())?;
    // SAFETY: open_how is plain data; zero is a valid start.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, C string and open_how of the
    // size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 just returned this descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Make room for a new entry `name` in `dir`: remove a non-directory, or
/// an empty directory when the new entry is not one. A directory that
/// stays (the new entry is a directory too) is merged into.
fn clear(dir: &OwnedFd, name: &CString, new_is_dir: bool) -> io::Result<()> {
    // SAFETY: stat is plain data; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with our descriptor, a C string and a valid out pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(())
        } else {
            Err(e)
        };
    }
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if is_dir && new_is_dir {
        return Ok(());
    }
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: unlinkat with our descriptor and a C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

fn times(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
        tv_nsec: 0,
    };
    [t, t]
}

/// Owner, mode (after the owner: chown clears setuid) and times of `name`
/// in `dir`, without following it if it is a link.
fn set_meta_at(
    dir: &OwnedFd,
    name: &CString,
    uid: u32,
    gid: u32,
    mode: Option<u32>,
    mtime: u64,
) -> io::Result<()> {
    // SAFETY: fchownat with our descriptor and a C string.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if let Some(mode) = mode {
        // SAFETY: fchmodat with our descriptor and a C string (never a
        // symlink here: modes are only set on other kinds).
        cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })?;
    }
    let ts = times(mtime);
    // SAFETY: utimensat with our descriptor, a C string and two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// Extract the tar stream `src` into the existing directory `dest`.
pub fn copy_in(dest: &Path, src: &mut impl Read) -> Result<(), CopyError> {
    let cdest = crate::sys::cpath(dest).map_err(io_err("open", dest))?;
    // SAFETY: open with a C string; the result is checked.
    let fd = unsafe {
        libc::open(
            cdest.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => CopyError::NotFound(dest.into()),
            Some(libc::ENOTDIR) => CopyError::NotDir(dest.into()),
            _ => io_err("open", dest)(e),
        });
    }
    // SAFETY: open just returned this descriptor; we own it.
    let root = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut archive = tar::Archive::new(src);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(CopyError::Tar)? {
        let mut entry = entry.map_err(CopyError::Tar)?;
        let raw = entry.path().map_err(CopyError::Tar)?.into_owned();
        let Some(rel) = sanitize(&raw)? else {
            continue; // the archive's "./": the destination itself
        };
        let bad = |msg: String| CopyError::Entry {
            entry: raw.clone(),
            msg,
        };
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().map_err(CopyError::Tar)? & 0o7777;
        let uid = u32::try_from(h.uid().map_err(CopyError::Tar)?)
            .map_err(|_| bad("uid out of range".into()))?;
        let gid = u32::try_from(h.gid().map_err(CopyError::Tar)?)
            .map_err(|_| bad("gid out of range".into()))?;
        let mtime = h.mtime().map_err(CopyError::Tar)?;
        let dev = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let link = entry
            .link_name()
            .map_err(CopyError::Tar)?
            .map(|l| l.into_owned());

        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let dir = open_dir(&root, parent_rel, true)
            .map_err(|e| bad(format!("cannot open its directory: {e}")))?;
        let name = cstr(rel.file_name().unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
        let fail = |what: &str, e: io::Error| bad(format!("{what}: {e}"));
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                clear(&dir, &name, false).map_err(|e| fail("cannot replace it", e))?;
                // SAFETY: openat with our descriptor and a C string; the
                // name is created afresh and never followed.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(fail("cannot create it", io::Error::last_os_error()));
                }
                // SAFETY: openat just returned this descriptor; we own it.
                let mut file = unsafe { File::from_raw_fd(fd) };
                io::copy(&mut entry, &mut file).map_err(|e| fail("cannot write it", e))?;
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| fail("chown", e))?;
                // SAFETY: fchmod and futimens on our descriptor.
                cvt(unsafe { libc::fchmod(file.as_raw_fd(), mode) })
                    .map_err(|e| fail("chmod", e))?;
                let ts = times(mtime);
                // SAFETY: as above, with two timespecs.
                cvt(unsafe { libc::futimens(file.as_raw_fd(), ts.as_ptr()) })
                    .map_err(|e| fail("utimes", e))?;
            }
            EntryType::Directory => {
                clear(&dir, &name, true).map_err(|e| fail("cannot replace it", e))?;
                // SAFETY: mkdirat with our descriptor and a C string.
                let r = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) };
                if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return Err(fail("cannot create it", io::Error::last_os_error()));
                }
                set_meta_at(&dir, &name, uid, gid, Some(mode), mtime)
                    .map_err(|e| fail("metadata", e))?;
                // Its time is set again at the end: its contents change it.
                dirs.push((rel.clone(), mtime));
            }
            EntryType::Symlink => {
                let target = link.ok_or_else(|| bad("symlink without a target".into()))?;
                let target = cstr(target.as_os_str()).map_err(|e| fail("target", e))?;
                clear(&dir, &name, false).map_err(|e| fail("cannot replace it", e))?;
                // SAFETY: symlinkat with two C strings and our descriptor.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
                    .map_err(|e| fail("cannot create it", e))?;
                set_meta_at(&dir, &name, uid, gid, None, mtime).map_err(|e| fail("metadata", e))?;
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| bad("hard link without a target".into()))?;
                let target_rel = sanitize(&target)?
                    .ok_or_else(|| bad("hard link to the destination itself".into()))?;
                let tdir = open_dir(&root, target_rel.parent().unwrap_or(Path::new("")), false)
                    .map_err(|e| fail("link target", e))?;
                let tname = cstr(target_rel.file_name().unwrap_or_default())
                    .map_err(|e| fail("link target", e))?;
                clear(&dir, &name, false).map_err(|e| fail("cannot replace it", e))?;
                // SAFETY: linkat with our descriptors and C strings; no
                // AT_SYMLINK_FOLLOW, so a symlink target is linked itself.
                cvt(unsafe {
                    libc::linkat(
                        tdir.as_raw_fd(),
                        tname.as_ptr(),
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        0,
                    )
                })
                .map_err(|e| fail("cannot link it", e))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                clear(&dir, &name, false).map_err(|e| fail("cannot replace it", e))?;
                let rdev = libc::makedev(dev.0, dev.1);
                // SAFETY: mknodat with our descriptor and a C string.
                cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), fmt | mode, rdev) })
                    .map_err(|e| fail("cannot create it", e))?;
                set_meta_at(&dir, &name, uid, gid, Some(mode), mtime)
                    .map_err(|e| fail("metadata", e))?;
            }
            // Extension headers are consumed by the tar reader; anything
            // else (sockets do not exist in tar) is skipped.
            _ => {}
        }
    }
    // Directory times last, deepest first, once nothing changes them.
    for (rel, mtime) in dirs.iter().rev() {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Ok(dir) = open_dir(&root, parent, false) else {
            continue;
        };
        let Ok(name) = cstr(rel.file_name().unwrap_or_default()) else {
            continue;
        };
        let ts = times(*mtime);
        // SAFETY: utimensat with our descriptor, a C string and two timespecs.
        unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
    Ok(())
}

/// Sends what the tar builder writes as DATA frames.
/// A `Write` that sends what it gets as DATA frames.
pub(crate) struct DataWriter<'a> {
    out: &'a SharedWriter,
}

impl<'a> DataWriter<'a> {
    pub(crate) fn new(out: &'a SharedWriter) -> Self {
        Self { out }
    }
}

impl Write for DataWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_PAYLOAD);
        self.out
            .frame(Kind::Data, &buf[..n])
            .map_err(|e: FrameError| io::Error::other(e.to_string()))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Send a tar of `src` as DATA frames, then DATA_EOF.
pub fn copy_out(src: &Path, out: &SharedWriter) -> Result<(), CopyError> {
    let bytes = src.as_os_str().as_bytes();
    let (base, contents) = match bytes.strip_suffix(b"/.") {
        Some(b) if !b.is_empty() => (Path::new(OsStr::from_bytes(b)), true),
        Some(_) => (Path::new("/"), true),
        None => (src, src == Path::new("/")),
    };
    let meta = std::fs::symlink_metadata(base).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CopyError::NotFound(src.into()),
        _ => io_err("stat", base)(e),
    })?;
    if contents && !meta.is_dir() {
        return Err(CopyError::NotDir(base.into()));
    }
    let name = if contents {
        PathBuf::new()
    } else {
        PathBuf::from(base.file_name().unwrap_or(OsStr::new(".")))
    };
    let sink = BufWriter::with_capacity(256 * 1024, DataWriter::new(out));
    let mut builder = tar::Builder::new(sink);
    let mut links = HashMap::new();
    append(&mut builder, base, &name, &meta, &mut links)?;
    let mut sink = builder.into_inner().map_err(CopyError::Send)?;
    sink.flush().map_err(CopyError::Send)?;
    drop(sink);
    out.frame(Kind::DataEof, &[])
        .map_err(|e| CopyError::Send(io::Error::other(e.to_string())))
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    meta: &Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), CopyError> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    let ft = meta.file_type();
    let send = CopyError::Send;
    if ft.is_dir() {
        if !name.as_os_str().is_empty() {
            h.set_entry_type(EntryType::Directory);
            b.append_data(&mut h, name, io::empty()).map_err(send)?;
        }
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(io_err("read directory", path))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        children.sort();
        for child in children {
            let cpath = path.join(&child);
            let cmeta = match std::fs::symlink_metadata(&cpath) {
                Ok(m) => m,
                // Vanished since the listing: as if it never was.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &cpath)(e)),
            };
            append(b, &cpath, &name.join(&child), &cmeta, links)?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io_err("read link", path))?;
        h.set_entry_type(EntryType::Symlink);
        b.append_link(&mut h, name, target).map_err(send)?;
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, name, first).map_err(send)?;
                return Ok(());
            }
            links.insert(key, name.into());
        }
        let file = File::open(path).map_err(io_err("open", path))?;
        let size = meta.len();
        h.set_entry_type(EntryType::Regular);
        h.set_size(size);
        // Exactly `size` bytes whatever the file does meanwhile: a file
        // that shrank is padded with zeros, one that grew is cut, and the
        // archive stays well-formed.
        let data = file.take(size).chain(io::repeat(0)).take(size);
        b.append_data(&mut h, name, data).map_err(send)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        h.set_entry_type(kind);
        let rdev = meta.rdev();
        h.set_device_major(libc::major(rdev)).map_err(send)?;
        h.set_device_minor(libc::minor(rdev)).map_err(send)?;
        b.append_data(&mut h, name, io::empty()).map_err(send)?;
    }
    // Sockets cannot be archived; like Docker, skip them.
    Ok(())
}
