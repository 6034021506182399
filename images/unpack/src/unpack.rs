//! Extracting an archive into a directory, beneath it.
//!
//! One [`Unpacker`] per archive. Entries are applied in order; directory
//! owners, modes and times are applied at the end, deepest first, so an
//! archive can fill a directory it makes read-only (and a non-root caller
//! is not locked out by a mode like 0555 half-way).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::budget;
use crate::entry::{self, Meta};
use crate::error::{errno_err, io_err, Error, Result};
use crate::fsops::{self, Root};
use crate::options::{DevicePolicy, Existing, Options, Stats};
use crate::path::{self, EntryPath, TopRename};

/// Owner, mode and time of a directory, applied when the archive is done.
struct DirMeta {
    comps: Vec<Vec<u8>>,
    display: String,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
}

pub(crate) struct Unpacker<'a> {
    pub(crate) root: Root,
    pub(crate) opts: &'a Options,
    pub(crate) stats: &'a mut Stats,
    /// Whether to chown: asked for, and running as root.
    chown: bool,
    /// Paths this archive wrote, and their ancestors (whiteouts only hide
    /// lower layers; only kept when whiteouts are on).
    pub(crate) written: HashSet<Vec<u8>>,
    pub(crate) ancestors: HashSet<Vec<u8>>,
    /// Non-directories this archive created ([`Existing::Merge`] hard
    /// links may only name these).
    linkable: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    dir_index: HashMap<Vec<u8>, usize>,
    /// Directories made as missing parents of entries (they are ours, for
    /// [`Existing::Merge`], though no entry named them yet).
    implicit_dirs: HashSet<Vec<u8>>,
    /// [`Options::rename_top`].
    top: TopRename,
    /// The last resolved parent directory.
    pub(crate) cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(dest: &Path, opts: &'a Options, stats: &'a mut Stats) -> Result<Self> {
        if let Some(n) = &opts.rename_top {
            if !path::is_component(n) {
                return Err(Error::unsafe_entry(
                    &String::from_utf8_lossy(n),
                    "the name to give the archive's top-level entry must be a single path component",
                ));
            }
        }
        Ok(Unpacker {
            root: Root::open(dest)?,
            opts,
            stats,
            chown: opts.preserve_ownership && rustix::process::geteuid().is_root(),
            written: HashSet::new(),
            ancestors: HashSet::new(),
            linkable: HashSet::new(),
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            implicit_dirs: HashSet::new(),
            top: TopRename::new(opts.rename_top.clone()),
            cache: None,
            buf: vec![0u8; 256 * 1024],
        })
    }

    pub(crate) fn run<R: Read>(mut self, reader: R) -> Result<()> {
        budget::for_each_entry(reader, self.opts.limits.max_header_size, |entry| {
            self.apply_entry(entry)
        })?;
        self.finish()
    }

    /// Applies the deferred directory metadata, deepest first.
    fn finish(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
        for d in &dirs {
            // Gone (a later whiteout) or replaced by a non-directory.
            let Some(fd) = self.root.open_dir_rw(&d.comps, &d.display)? else {
                continue;
            };
            self.set_owner_mode_fd(fd.as_fd(), &d.display, d.uid, d.gid, d.mode)?;
            rfs::futimens(&fd, &fsops::timestamps(d.mtime))
                .map_err(errno_err(&d.display, "setting times"))?;
        }
        Ok(())
    }

    /// Applies one entry; returns its name (for errors about what follows)
    /// and the bytes it occupies in the archive.
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(String, u64)> {
        let limits = self.opts.limits;
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let mut path = EntryPath::parse(&raw, limits.max_path_len)
            .map_err(|e| Error::unsafe_entry(&display, e.reason(false)))?;
        self.stats.entries += 1;
        if self.stats.entries > limits.max_entries {
            return Err(Error::TooManyEntries {
                entry: display,
                limit: limits.max_entries,
            });
        }
        let meta = entry::read(entry, &display)?;
        let stored = meta.stored_size;
        let kind = meta.kind;
        use tar::EntryType as T;
        match kind {
            T::XGlobalHeader | T::XHeader => return Ok((display, stored)),
            T::Directory
            | T::Regular
            | T::Continuous
            | T::GNUSparse
            | T::Symlink
            | T::Link
            | T::Fifo
            | T::Char
            | T::Block => {}
            other => {
                return Err(Error::UnsupportedType {
                    entry: display,
                    kind: other.as_byte() as char,
                })
            }
        }
        self.top
            .apply(&mut path, false)
            .map_err(|reason| Error::unsafe_entry(&display, reason))?;

        if self.opts.whiteouts
            && !path.is_root()
            && path.file_name().starts_with(crate::whiteout::PREFIX)
        {
            self.apply_whiteout(&path, &display)?;
            self.stats.whiteouts += 1;
            return Ok((display, stored));
        }
        if path.is_root() {
            self.apply_root(&meta, &display)?;
            return Ok((display, stored));
        }
        let is_device = matches!(kind, T::Char | T::Block);
        if is_device {
            match self.opts.devices {
                DevicePolicy::Refuse => return Err(Error::DeviceRefused { entry: display }),
                // Merge: skipped before anything existing is touched.
                DevicePolicy::Skip if self.opts.existing == Existing::Merge => {
                    self.stats.skipped_devices += 1;
                    return Ok((display, stored));
                }
                _ => {}
            }
        }
        // A hard link's target is checked before anything is changed.
        let link_target = if kind == T::Link {
            Some(self.link_target(entry, &display)?)
        } else {
            None
        };

        let parent = self.open_parent(path.parent(), &display)?;
        let pfd = parent.as_fd();
        let name = OsStr::from_bytes(path.file_name());
        let key = path.to_bytes();
        let existing = fsops::kind_at(pfd, name, &display)?;
        let is_dir_entry = kind == T::Directory;
        if let Some(t) = existing {
            let is_dir = t == FileType::Directory;
            if !(is_dir_entry && is_dir) {
                if self.opts.existing == Existing::Merge && (is_dir || is_dir_entry) {
                    return Err(Error::Conflict {
                        entry: display,
                        reason: if is_dir {
                            "a directory exists at this path and would be replaced by a non-directory"
                        } else {
                            "a non-directory exists at this path and would be replaced by a directory"
                        },
                    });
                }
                fsops::remove_at(pfd, name, is_dir, &display)?;
                self.cache = None;
            }
        }

        match kind {
            T::Directory => {
                let ours = self.dir_index.contains_key(&key) || self.implicit_dirs.contains(&key);
                let created = existing != Some(FileType::Directory);
                if created {
                    rfs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))
                        .map_err(errno_err(&display, "creating directory"))?;
                }
                if created || ours || self.opts.existing == Existing::Replace {
                    let fd = rfs::openat(
                        pfd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno_err(&display, "opening directory"))?;
                    self.set_xattrs_fd(fd.as_fd(), &meta, &display)?;
                    self.defer_dir(path.components().to_vec(), display.clone(), &meta);
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let size = entry.size();
                self.check_size(size, &display)?;
                let fd = rfs::openat(
                    pfd,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno_err(&display, "creating file"))?;
                let mut file = File::from(fd);
                let written = self.copy_data(entry, &mut file, size, kind, &display)?;
                self.stats.bytes += written;
                self.set_owner_mode_fd(file.as_fd(), &display, meta.uid, meta.gid, meta.mode)?;
                self.set_xattrs_fd(file.as_fd(), &meta, &display)?;
                rfs::futimens(&file, &fsops::timestamps(meta.mtime))
                    .map_err(errno_err(&display, "setting times"))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.len() > limits.max_path_len || target.contains(&0) {
                    return Err(Error::unsafe_entry(
                        &display,
                        "symlink target is empty, too long or has a NUL byte",
                    ));
                }
                // The target is stored, never followed by us: absolute and
                // `..` targets are legitimate (resolved where the tree is
                // used, e.g. in the guest).
                rfs::symlinkat(OsStr::from_bytes(&target), pfd, name)
                    .map_err(errno_err(&display, "creating symlink"))?;
                if self.chown {
                    chown_at(pfd, name, meta.uid, meta.gid, &display)?;
                }
                self.set_xattrs_at(pfd, name, &meta, &display)?;
                fsops::set_times_at(pfd, name, meta.mtime, &display)?;
            }
            T::Link => {
                let (tdir, tname) = link_target.expect("set for hard links");
                // Flags 0: a link to a symlink links the symlink itself,
                // never what it points to.
                rfs::linkat(
                    &tdir,
                    OsStr::from_bytes(&tname),
                    pfd,
                    name,
                    AtFlags::empty(),
                )
                .map_err(errno_err(&display, "creating hard link"))?;
            }
            T::Fifo => {
                rfs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(errno_err(&display, "creating fifo"))?;
                // Opening a FIFO read-only and non-blocking never waits.
                let fd = rfs::openat(
                    pfd,
                    name,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_err(&display, "opening fifo"))?;
                self.set_owner_mode_fd(fd.as_fd(), &display, meta.uid, meta.gid, meta.mode)?;
                self.set_xattrs_fd(fd.as_fd(), &meta, &display)?;
                rfs::futimens(&fd, &fsops::timestamps(meta.mtime))
                    .map_err(errno_err(&display, "setting times"))?;
            }
            T::Char | T::Block => match self.opts.devices {
                DevicePolicy::Skip => {
                    self.stats.skipped_devices += 1;
                    return Ok((display, stored));
                }
                DevicePolicy::Refuse => unreachable!("refused above"),
                DevicePolicy::Create => {
                    let header = entry.header();
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let ft = if kind == T::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    rfs::mknodat(
                        pfd,
                        name,
                        ft,
                        Mode::from_raw_mode(0o600),
                        rfs::makedev(major, minor),
                    )
                    .map_err(errno_err(&display, "creating device node"))?;
                    // Not opened: opening a device can have effects.
                    if self.chown {
                        chown_at(pfd, name, meta.uid, meta.gid, &display)?;
                    }
                    let (mode, dropped) = entry::effective_mode(meta.mode, self.opts);
                    self.stats.setid_dropped += u64::from(dropped);
                    rfs::chmodat(pfd, name, Mode::from_raw_mode(mode), AtFlags::empty())
                        .map_err(errno_err(&display, "setting mode"))?;
                    self.set_xattrs_at(pfd, name, &meta, &display)?;
                    fsops::set_times_at(pfd, name, meta.mtime, &display)?;
                }
            },
            _ => unreachable!("entry types are checked above"),
        }
        if kind != T::Directory && self.opts.existing == Existing::Merge {
            self.linkable.insert(key);
        }
        self.note_written(&path);
        Ok((display, stored))
    }

    /// The root entry (`./`): only a directory, and only metadata, which
    /// [`Existing::Merge`] leaves alone.
    fn apply_root(&mut self, meta: &Meta, display: &str) -> Result<()> {
        if meta.kind != tar::EntryType::Directory {
            return Err(Error::unsafe_entry(
                display,
                "entry would replace the root directory",
            ));
        }
        if self.opts.existing == Existing::Replace {
            if let Some(fd) = self.root.open_dir_rw(&[], display)? {
                self.set_xattrs_fd(fd.as_fd(), meta, display)?;
            }
            self.defer_dir(Vec::new(), display.to_string(), meta);
        }
        Ok(())
    }

    fn defer_dir(&mut self, comps: Vec<Vec<u8>>, display: String, meta: &Meta) {
        let d = DirMeta {
            comps,
            display,
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            mtime: meta.mtime,
        };
        let key = d.comps.join(&b'/');
        match self.dir_index.get(&key) {
            Some(&i) => self.dirs[i] = d,
            None => {
                self.dir_index.insert(key, self.dirs.len());
                self.dirs.push(d);
            }
        }
    }

    /// Validates a hard link's target and resolves its directory.
    fn link_target<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        display: &str,
    ) -> Result<(OwnedFd, Vec<u8>)> {
        let raw = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .ok_or_else(|| Error::unsafe_entry(display, "hard link without a target"))?;
        let mut target = EntryPath::parse(&raw, self.opts.limits.max_path_len)
            .map_err(|e| Error::unsafe_entry(display, e.reason(true)))?;
        self.top
            .apply(&mut target, true)
            .map_err(|reason| Error::unsafe_entry(display, reason))?;
        if target.is_root() {
            return Err(Error::unsafe_entry(
                display,
                "hard link to the root directory",
            ));
        }
        if self.opts.existing == Existing::Merge && !self.linkable.contains(&target.to_bytes()) {
            return Err(Error::unsafe_entry(
                display,
                "hard link target is not a file created earlier by this archive",
            ));
        }
        let missing =
            || Error::unsafe_entry(display, "hard link target does not exist in the tree");
        let tdir = match self.root.dir(target.parent(), display, false, None) {
            Ok(fd) => fd,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(missing())
            }
            Err(e) => return Err(e),
        };
        let tname = target.file_name().to_vec();
        match fsops::kind_at(tdir.as_fd(), OsStr::from_bytes(&tname), display)? {
            Some(FileType::Directory) => {
                Err(Error::unsafe_entry(display, "hard link to a directory"))
            }
            Some(_) => Ok((tdir, tname)),
            None => Err(missing()),
        }
    }

    pub(crate) fn note_written(&mut self, path: &EntryPath) {
        if !self.opts.whiteouts {
            return;
        }
        let comps = path.components();
        self.written.insert(path.to_bytes());
        for i in 1..comps.len() {
            self.ancestors.insert(comps[..i].join(&b'/'));
        }
    }

    fn check_size(&self, size: u64, display: &str) -> Result<()> {
        let limits = &self.opts.limits;
        if size > limits.max_entry_size {
            return Err(Error::EntryTooLarge {
                entry: display.to_string(),
                size,
                limit: limits.max_entry_size,
            });
        }
        if self.stats.bytes.saturating_add(size) > limits.max_total_size {
            return Err(Error::TotalTooLarge {
                entry: display.to_string(),
                limit: limits.max_total_size,
            });
        }
        Ok(())
    }

    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        size: u64,
        kind: tar::EntryType,
        display: &str,
    ) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Archive {
                        after: Some(display.to_string()),
                        source,
                    })
                }
            };
            total += n as u64;
            // The declared size was checked; a sparse entry's data is
            // produced by the tar crate and checked as it comes.
            self.check_size(total, display)?;
            file.write_all(&self.buf[..n])
                .map_err(io_err(display, "writing file"))?;
        }
        if total < size && kind != tar::EntryType::GNUSparse {
            return Err(Error::Archive {
                after: Some(display.to_string()),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "file data is truncated"),
            });
        }
        Ok(total)
    }

    /// Resolves (creating missing directories) the parent `comps`.
    pub(crate) fn open_parent(&mut self, comps: &[Vec<u8>], display: &str) -> Result<OwnedFd> {
        let key = comps.join(&b'/');
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return fsops::dup(fd, display);
            }
        }
        let made = match self.opts.existing {
            Existing::Merge => Some(&mut self.implicit_dirs),
            Existing::Replace => None,
        };
        let fd = self.root.dir(comps, display, true, made)?;
        self.cache = Some((key, fsops::dup(&fd, display)?));
        Ok(fd)
    }

    /// Owner (if asked and root) then mode: chown clears setuid/setgid.
    fn set_owner_mode_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        display: &str,
        uid: u64,
        gid: u64,
        mode: u32,
    ) -> Result<()> {
        if self.chown {
            let (u, g) = ids(uid, gid, display)?;
            rfs::fchown(fd, Some(u), Some(g)).map_err(errno_err(display, "setting owner"))?;
        }
        let (mode, dropped) = entry::effective_mode(mode, self.opts);
        self.stats.setid_dropped += u64::from(dropped);
        rfs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(errno_err(display, "setting mode"))
    }

    fn set_xattrs_fd(&mut self, fd: BorrowedFd<'_>, meta: &Meta, display: &str) -> Result<()> {
        for (k, v) in &meta.xattrs {
            if !entry::xattr_allowed(k, self.opts) {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            let r = rfs::fsetxattr(fd, OsStr::from_bytes(k), v, rfs::XattrFlags::empty());
            self.xattr_result(r, display)?;
        }
        Ok(())
    }

    /// For symlinks and device nodes, which are not opened: the xattr call
    /// names the entry through the parent's descriptor in /proc and does
    /// not follow the final component.
    fn set_xattrs_at(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        display: &str,
    ) -> Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let mut target = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        target.push(name);
        for (k, v) in &meta.xattrs {
            if !entry::xattr_allowed(k, self.opts) {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            let r = rfs::lsetxattr(&target, OsStr::from_bytes(k), v, rfs::XattrFlags::empty());
            self.xattr_result(r, display)?;
        }
        Ok(())
    }

    /// As Docker does: the destination filesystem may not support xattrs,
    /// and `user.*` is not allowed on symlinks or FIFOs. Losing such an
    /// xattr is not worth failing the archive; it is counted.
    fn xattr_result(&mut self, r: rustix::io::Result<()>, display: &str) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                self.stats.xattrs_dropped += 1;
                Ok(())
            }
            Err(e) => Err(errno_err(display, "setting xattr")(e)),
        }
    }
}

fn ids(uid: u64, gid: u64, display: &str) -> Result<(rfs::Uid, rfs::Gid)> {
    let (Ok(u), Ok(g)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err(Error::unsafe_entry(display, "uid or gid out of range"));
    };
    if u == u32::MAX || g == u32::MAX {
        return Err(Error::unsafe_entry(display, "uid or gid is -1"));
    }
    Ok((rfs::Uid::from_raw(u), rfs::Gid::from_raw(g)))
}

fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u64, gid: u64, display: &str) -> Result<()> {
    let (u, g) = ids(uid, gid, display)?;
    rfs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno_err(display, "setting owner"))
}
