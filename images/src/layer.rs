//! Applying OCI layer tarballs onto a directory, safely.
//!
//! Layers come from registries and archives: hostile input. Every path is
//! resolved beneath the target root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and every change is made with `*at` calls
//! relative to the resolved parent directory, so no entry can reach outside
//! the root, not through `..`, absolute paths, symlinked parents or hard
//! links. Policy decisions (documented in the crate README):
//!
//! - absolute paths and `..` components are refused (Docker strips a
//!   leading `/`; registries never produce either, so refusing is safer);
//! - an entry whose *parent* path runs through a symlink is refused, even
//!   when the symlink stays inside the tree (containerd would follow it;
//!   layers produced by `docker build` never need it);
//! - hard links must name an earlier, non-directory entry inside the tree;
//! - character and block devices are skipped by default (the guest mounts
//!   devtmpfs over /dev, and device nodes in a host-side directory are a
//!   needless risk); FIFOs are created. [`DevicePolicy`] changes this;
//! - xattrs from PAX `SCHILY.xattr.*` are applied, except the
//!   `trusted.overlay.*` namespace, which would steer the guest's overlayfs;
//! - ownership is kept as in the archive when running as root.
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` deletes NAME from lower
//! layers; `.wh..wh..opq` hides all lower-layer content of its directory
//! while keeping what the same layer put there, whether those entries come
//! before or after the marker.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use crate::digest::{Digest, HashingReader};
use crate::manifest::Compression;

/// Limits on what one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file.
    pub max_entry_size: u64,
    /// Largest total of file data over all layers of an image.
    pub max_total_size: u64,
    /// Most entries over all layers.
    pub max_entries: u64,
    /// Longest entry path, in bytes.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
        }
    }
}

/// What to do with character and block device entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Leave them out and count them (default).
    #[default]
    Skip,
    /// Create them with `mknod`.
    Create,
    /// Fail the unpack, naming the entry.
    Refuse,
}

/// Unpack options.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Size and count limits.
    pub limits: Limits,
    /// Device node policy.
    pub devices: DevicePolicy,
    /// Keep uid/gid from the archive (needs root). Default: true when the
    /// process runs as root.
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            limits: Limits::default(),
            devices: DevicePolicy::default(),
            preserve_ownership: rustix::process::geteuid().is_root(),
        }
    }
}

/// Running totals over the layers of one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries processed.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Device nodes skipped by policy.
    pub skipped_devices: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
}

/// Errors from unpacking a layer. Entry names are shown as in the archive.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry tries to escape the root or is otherwise unsafe.
    #[error("refusing layer entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// A file is larger than the per-entry limit.
    #[error("layer entry {entry:?} is {size} bytes, over the limit of {limit} bytes per file")]
    EntryTooLarge {
        /// The entry.
        entry: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image's files exceed the total limit.
    #[error("unpacking layer entry {entry:?} would exceed the limit of {limit} bytes for the whole image")]
    TotalTooLarge {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// Too many entries.
    #[error("layer entry {entry:?} exceeds the limit of {limit} entries per image")]
    TooManyEntries {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// A device node, refused by policy.
    #[error("layer entry {entry:?} is a device node, refused by the device policy")]
    DeviceRefused {
        /// The entry.
        entry: String,
    },
    /// An entry type we do not handle.
    #[error("layer entry {entry:?} has unsupported tar entry type {kind:?}")]
    UnsupportedType {
        /// The entry.
        entry: String,
        /// The type byte.
        kind: char,
    },
    /// The archive is corrupt or truncated.
    #[error("corrupt or truncated layer archive {}: {source}", after.as_deref().map(|e| format!("after entry {e:?}")).unwrap_or_else(|| "at its start".into()))]
    Archive {
        /// The last entry read successfully.
        after: Option<String>,
        /// The error.
        source: io::Error,
    },
    /// A filesystem operation on an entry failed.
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        /// The entry.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Out of space while unpacking.
    #[error("no space left on device while unpacking layer entry {entry:?}: free disk space (or prune images) and retry")]
    NoSpace {
        /// The entry.
        entry: String,
    },
    /// The uncompressed content does not match the config's diff_id.
    #[error("layer content hashes to {actual} but the image config gives diff_id {expected}; the layer is corrupt")]
    DiffIdMismatch {
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
}

type Result<T, E = LayerError> = std::result::Result<T, E>;

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            LayerError::NoSpace {
                entry: entry.to_string(),
            }
        } else {
            LayerError::Io {
                entry: entry.to_string(),
                op,
                source,
            }
        }
    }
}

fn errno_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> LayerError + 'a {
    move |e| io_err(entry, op)(e.into())
}

/// Wraps `raw` in the decompressor its first bytes call for. The magic
/// bytes win over the declared compression: archives in the wild (e.g.
/// `docker save` output) label uncompressed layers as gzip and vice versa.
pub fn decompress<'a>(
    raw: impl Read + 'a,
    declared: Option<Compression>,
) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut br = BufReader::with_capacity(256 * 1024, raw);
    let head = br.fill_buf()?;
    let detected = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(d) = declared {
        if d != detected {
            tracing::debug!(
                ?declared,
                ?detected,
                "layer compression differs from its media type"
            );
        }
    }
    Ok(match detected {
        Compression::Gzip => (Box::new(flate2::bufread::MultiGzDecoder::new(br)), detected),
        Compression::Zstd => (
            Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
            detected,
        ),
        Compression::None => (Box::new(br), detected),
    })
}

/// Applies one layer (compressed or not) onto `root`. Returns the digest
/// of the uncompressed stream (the layer's diff_id); if `expected_diff_id`
/// is given, a mismatch is an error (after the layer was applied: callers
/// unpack into a temp dir they discard on error).
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    declared: Option<Compression>,
    expected_diff_id: Option<&Digest>,
    opts: &UnpackOptions,
    stats: &mut UnpackStats,
) -> Result<Digest> {
    let (plain, _) = decompress(layer, declared).map_err(|source| LayerError::Archive {
        after: None,
        source,
    })?;
    let mut hashing = HashingReader::new(plain);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut applier = Applier::new(root, opts, stats)?;
        applier.run(&mut archive)?;
    }
    let (actual, _) = hashing
        .drain_and_finish()
        .map_err(|source| LayerError::Archive {
            after: Some("end of archive".into()),
            source,
        })?;
    if let Some(exp) = expected_diff_id {
        if *exp != actual {
            return Err(LayerError::DiffIdMismatch {
                expected: *exp,
                actual,
            });
        }
    }
    Ok(actual)
}

/// A layer entry path, split into validated components.
struct EntryPath {
    /// The name as shown in errors.
    display: String,
    /// Components, none empty, `.` or `..`.
    comps: Vec<Vec<u8>>,
}

impl EntryPath {
    fn parse(raw: &[u8], limits: &Limits, what: &'static str) -> Result<EntryPath> {
        let display = String::from_utf8_lossy(raw).into_owned();
        if raw.len() > limits.max_path_len {
            return Err(LayerError::Unsafe {
                entry: display,
                reason: "path longer than the limit",
            });
        }
        if raw.first() == Some(&b'/') {
            return Err(LayerError::Unsafe {
                entry: display,
                reason: if what == "link" {
                    "hard link target is an absolute path"
                } else {
                    "absolute path"
                },
            });
        }
        let mut comps = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => {
                    return Err(LayerError::Unsafe {
                        entry: display,
                        reason: if what == "link" {
                            "hard link target has a '..' component (would point outside the tree)"
                        } else {
                            "path has a '..' component"
                        },
                    })
                }
                c if c.contains(&0) => {
                    return Err(LayerError::Unsafe {
                        entry: display,
                        reason: "NUL byte in path",
                    })
                }
                c => comps.push(c.to_vec()),
            }
        }
        Ok(EntryPath { display, comps })
    }

    fn key(&self) -> Vec<u8> {
        self.comps.join(&b'/')
    }

    fn name(&self) -> &[u8] {
        self.comps.last().map(Vec::as_slice).unwrap_or(b".")
    }
}

/// Extra attributes from PAX records.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";

struct Applier<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    stats: &'a mut UnpackStats,
    /// Paths this layer wrote (entries and opaque dirs).
    written: HashSet<Vec<u8>>,
    /// Ancestors of written paths.
    ancestors: HashSet<Vec<u8>>,
    /// Directory mtimes, applied once the layer's writes are done.
    dir_times: Vec<(Vec<Vec<u8>>, String, i64)>,
    /// The last resolved parent directory.
    cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    fn new(root: &Path, opts: &'a UnpackOptions, stats: &'a mut UnpackStats) -> Result<Self> {
        let disp = root.display().to_string();
        let fd = rfs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&disp, "opening unpack root")(e.into()))?;
        Ok(Applier {
            root: fd,
            opts,
            stats,
            written: HashSet::new(),
            ancestors: HashSet::new(),
            dir_times: Vec::new(),
            cache: None,
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let mut last: Option<String> = None;
        let entries = archive.entries().map_err(|source| LayerError::Archive {
            after: None,
            source,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| LayerError::Archive {
                after: last.clone(),
                source,
            })?;
            let name = self.apply_entry(&mut entry)?;
            last = Some(name);
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let times = std::mem::take(&mut self.dir_times);
        for (comps, display, mtime) in times.iter().rev() {
            if comps.is_empty() {
                set_times(self.root.as_fd(), ".", *mtime, display)?;
                continue;
            }
            let (parent, name) = comps.split_at(comps.len() - 1);
            // The directory may have been removed by a later whiteout.
            let Ok(pfd) = self.open_dir_nocreate(parent, display) else {
                continue;
            };
            match set_times(pfd.as_fd(), OsStr::from_bytes(&name[0]), *mtime, display) {
                Err(LayerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<String> {
        let limits = self.opts.limits;
        let raw_path = entry.path_bytes().into_owned();
        let path = EntryPath::parse(&raw_path, &limits, "entry")?;
        let display = path.display.clone();
        self.stats.entries += 1;
        if self.stats.entries > limits.max_entries {
            return Err(LayerError::TooManyEntries {
                entry: display,
                limit: limits.max_entries,
            });
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(display);
        }

        // Whiteouts.
        let name = path.name().to_vec();
        if name.starts_with(WH_PREFIX) && !path.comps.is_empty() {
            self.apply_whiteout(&path, &name)?;
            self.stats.whiteouts += 1;
            return Ok(display);
        }

        let pax = read_pax(entry);
        let mode = header.mode().map_err(|source| LayerError::Archive {
            after: Some(display.clone()),
            source,
        })? & 0o7777;
        let uid = pax.uid.or_else(|| header.uid().ok()).unwrap_or(0);
        let gid = pax.gid.or_else(|| header.gid().ok()).unwrap_or(0);
        let mtime = pax
            .mtime
            .or_else(|| header.mtime().ok().map(|m| m as i64))
            .unwrap_or(0);

        if path.comps.is_empty() {
            // The root itself ("./"): only metadata, and only from a dir.
            if kind != tar::EntryType::Directory {
                return Err(LayerError::Unsafe {
                    entry: display,
                    reason: "entry would replace the root directory",
                });
            }
            self.set_meta(
                self.root.try_clone_fd(&display)?.as_fd(),
                ".",
                &display,
                uid,
                gid,
                Some(mode),
                &pax,
            )?;
            self.dir_times.push((Vec::new(), display.clone(), mtime));
            return Ok(display);
        }

        let (parent_comps, _) = path.comps.split_at(path.comps.len() - 1);
        let parent = self.open_parent(parent_comps, &path)?;
        let pfd = parent.as_fd();
        let cname = OsStr::from_bytes(&name);

        let existing = match rfs::statat(pfd, cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(errno_err(&display, "inspecting existing entry")(e)),
        };
        let is_dir_entry = kind == tar::EntryType::Directory;
        if let Some(t) = existing {
            if !(is_dir_entry && t == FileType::Directory) {
                remove_at(pfd, cname, t == FileType::Directory, &display)?;
                self.cache = None;
            }
        }

        match kind {
            tar::EntryType::Directory => {
                if existing != Some(FileType::Directory) {
                    rfs::mkdirat(pfd, cname, Mode::from_raw_mode(0o700))
                        .map_err(errno_err(&display, "creating directory"))?;
                }
                self.set_meta(pfd, cname, &display, uid, gid, Some(mode), &pax)?;
                self.dir_times
                    .push((path.comps.clone(), display.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                if size > limits.max_entry_size {
                    return Err(LayerError::EntryTooLarge {
                        entry: display,
                        size,
                        limit: limits.max_entry_size,
                    });
                }
                if self.stats.bytes.saturating_add(size) > limits.max_total_size {
                    return Err(LayerError::TotalTooLarge {
                        entry: display,
                        limit: limits.max_total_size,
                    });
                }
                let fd = rfs::openat(
                    pfd,
                    cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno_err(&display, "creating file"))?;
                let mut file = std::fs::File::from(fd);
                let written = self.copy_data(entry, &mut file, size, &display)?;
                self.stats.bytes += written;
                drop(file);
                self.set_meta(pfd, cname, &display, uid, gid, Some(mode), &pax)?;
                set_times(pfd, cname, mtime, &display)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.len() > limits.max_path_len || target.contains(&0) {
                    return Err(LayerError::Unsafe {
                        entry: display,
                        reason: "symlink target is empty, too long or has a NUL byte",
                    });
                }
                // The target is stored, never followed by us: absolute and
                // `..` targets are legitimate (resolved in the guest).
                rfs::symlinkat(OsStr::from_bytes(&target), pfd, cname)
                    .map_err(errno_err(&display, "creating symlink"))?;
                self.set_meta(pfd, cname, &display, uid, gid, None, &pax)?;
                set_times(pfd, cname, mtime, &display)?;
            }
            tar::EntryType::Link => {
                let target_raw =
                    entry
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .ok_or_else(|| LayerError::Unsafe {
                            entry: display.clone(),
                            reason: "hard link without a target",
                        })?;
                let target =
                    EntryPath::parse(&target_raw, &limits, "link").map_err(|e| match e {
                        LayerError::Unsafe { reason, .. } => LayerError::Unsafe {
                            entry: display.clone(),
                            reason,
                        },
                        other => other,
                    })?;
                if target.comps.is_empty() {
                    return Err(LayerError::Unsafe {
                        entry: display,
                        reason: "hard link to the root directory",
                    });
                }
                let (tparent, tname) = target.comps.split_at(target.comps.len() - 1);
                let tfd = self
                    .open_dir_nocreate(tparent, &display)
                    .map_err(|e| match e {
                        LayerError::Io { source, .. }
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            LayerError::Unsafe {
                                entry: display.clone(),
                                reason: "hard link target does not exist in the tree",
                            }
                        }
                        other => other,
                    })?;
                let tname = OsStr::from_bytes(&tname[0]);
                match rfs::statat(&tfd, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(LayerError::Unsafe {
                            entry: display,
                            reason: "hard link to a directory",
                        })
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(LayerError::Unsafe {
                            entry: display,
                            reason: "hard link target does not exist in the tree",
                        })
                    }
                    Err(e) => return Err(errno_err(&display, "inspecting hard link target")(e)),
                }
                // Flags 0: a link to a symlink links the symlink itself,
                // never what it points to.
                rfs::linkat(&tfd, tname, pfd, cname, AtFlags::empty())
                    .map_err(errno_err(&display, "creating hard link"))?;
            }
            tar::EntryType::Fifo => {
                rfs::mknodat(pfd, cname, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(errno_err(&display, "creating fifo"))?;
                self.set_meta(pfd, cname, &display, uid, gid, Some(mode), &pax)?;
                set_times(pfd, cname, mtime, &display)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => match self.opts.devices {
                DevicePolicy::Skip => {
                    self.stats.skipped_devices += 1;
                    let ename: &str = &display;
                    tracing::debug!("skipping device node {ename}");
                    return Ok(display);
                }
                DevicePolicy::Refuse => return Err(LayerError::DeviceRefused { entry: display }),
                DevicePolicy::Create => {
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let ft = if kind == tar::EntryType::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    rfs::mknodat(
                        pfd,
                        cname,
                        ft,
                        Mode::from_raw_mode(0o600),
                        rfs::makedev(major, minor),
                    )
                    .map_err(errno_err(&display, "creating device node"))?;
                    self.set_meta(pfd, cname, &display, uid, gid, Some(mode), &pax)?;
                    set_times(pfd, cname, mtime, &display)?;
                }
            },
            other => {
                return Err(LayerError::UnsupportedType {
                    entry: display,
                    kind: other.as_byte() as char,
                })
            }
        }
        self.note_written(&path);
        Ok(display)
    }

    fn note_written(&mut self, path: &EntryPath) {
        self.written.insert(path.key());
        for i in 1..path.comps.len() {
            self.ancestors.insert(path.comps[..i].join(&b'/'));
        }
    }

    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        size: u64,
        display: &str,
    ) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LayerError::Archive {
                        after: Some(display.to_string()),
                        source,
                    })
                }
            };
            total += n as u64;
            let limits = &self.opts.limits;
            if total > limits.max_entry_size {
                return Err(LayerError::EntryTooLarge {
                    entry: display.to_string(),
                    size: total,
                    limit: limits.max_entry_size,
                });
            }
            if self.stats.bytes.saturating_add(total) > limits.max_total_size {
                return Err(LayerError::TotalTooLarge {
                    entry: display.to_string(),
                    limit: limits.max_total_size,
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(io_err(display, "writing file"))?;
        }
        if total < size && entry.header().entry_type() != tar::EntryType::GNUSparse {
            return Err(LayerError::Archive {
                after: Some(display.to_string()),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "file data is truncated"),
            });
        }
        Ok(total)
    }

    fn apply_whiteout(&mut self, path: &EntryPath, name: &[u8]) -> Result<()> {
        let display = &path.display;
        let (dir_comps, _) = path.comps.split_at(path.comps.len() - 1);
        if name == OPAQUE {
            // The marker implies the directory: create it if missing.
            let dir_key = dir_comps.join(&b'/');
            let dfd = self.open_parent(dir_comps, path)?;
            self.clean_opaque(dfd.as_fd(), &dir_key, display)?;
            self.cache = None;
            self.written.insert(dir_key);
            for i in 1..dir_comps.len() {
                self.ancestors.insert(dir_comps[..i].join(&b'/'));
            }
            return Ok(());
        }
        if name.starts_with(WH_META_PREFIX) {
            // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): ignore.
            return Ok(());
        }
        let victim = &name[WH_PREFIX.len()..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(LayerError::Unsafe {
                entry: display.clone(),
                reason: "whiteout names no file",
            });
        }
        let mut victim_key = dir_comps.join(&b'/');
        if !victim_key.is_empty() {
            victim_key.push(b'/');
        }
        victim_key.extend_from_slice(victim);
        if self.written.contains(&victim_key) || self.ancestors.contains(&victim_key) {
            // Whiteouts only hide lower layers (OCI image spec).
            return Ok(());
        }
        let dfd = match self.open_dir_nocreate(dir_comps, display) {
            Ok(fd) => fd,
            Err(LayerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let vname = OsStr::from_bytes(victim);
        match rfs::statat(&dfd, vname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                remove_at(dfd.as_fd(), vname, is_dir, display)?;
                self.cache = None;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(errno_err(display, "inspecting whiteout target")(e)),
        }
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not write.
    fn clean_opaque(
        &self,
        dir: rustix::fd::BorrowedFd<'_>,
        dir_key: &[u8],
        display: &str,
    ) -> Result<()> {
        let names = list_dir(dir, display)?;
        for n in names {
            let mut key = dir_key.to_vec();
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(&n);
            let cname = OsStr::from_bytes(&n);
            let st = rfs::statat(dir, cname, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno_err(display, "inspecting opaque directory"))?;
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            let ours = self.written.contains(&key) || self.ancestors.contains(&key);
            if ours && is_dir {
                let sub = rfs::openat(
                    dir,
                    cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_err(display, "opening directory"))?;
                self.clean_opaque(sub.as_fd(), &key, display)?;
            } else if !ours {
                remove_at(dir, cname, is_dir, display)?;
            }
        }
        Ok(())
    }

    /// Resolves (creating missing directories) the parent of `path`.
    fn open_parent(&mut self, comps: &[Vec<u8>], path: &EntryPath) -> Result<OwnedFd> {
        let key = comps.join(&b'/');
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return fd.try_clone_fd(&path.display);
            }
        }
        let fd = self.walk(comps, &path.display, true)?;
        self.cache = Some((key, fd.try_clone_fd(&path.display)?));
        Ok(fd)
    }

    /// Resolves an existing directory beneath the root.
    fn open_dir_nocreate(&self, comps: &[Vec<u8>], display: &str) -> Result<OwnedFd> {
        self.walk(comps, display, false)
    }

    fn walk(&self, comps: &[Vec<u8>], display: &str, create: bool) -> Result<OwnedFd> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if comps.is_empty() {
            return self.root.try_clone_fd(display);
        }
        let joined = comps.join(&b'/');
        match rfs::openat2(
            &self.root,
            OsStr::from_bytes(&joined),
            flags,
            Mode::empty(),
            how,
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if create => {}
            Err(e) => return Err(resolve_err(e, display)),
        }
        // Walk component by component, creating what is missing.
        let mut cur = self.root.try_clone_fd(display)?;
        for c in comps {
            let name = OsStr::from_bytes(c);
            let next = match rfs::openat2(&cur, name, flags, Mode::empty(), how) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rfs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno_err(display, "creating parent directory")(e)),
                    }
                    rfs::openat2(&cur, name, flags, Mode::empty(), how)
                        .map_err(|e| resolve_err(e, display))?
                }
                Err(e) => return Err(resolve_err(e, display)),
            };
            cur = next;
        }
        Ok(cur)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_meta<P: rustix::path::Arg + Copy>(
        &self,
        dir: rustix::fd::BorrowedFd<'_>,
        name: P,
        display: &str,
        uid: u64,
        gid: u64,
        mode: Option<u32>,
        pax: &Pax,
    ) -> Result<()> {
        if self.opts.preserve_ownership {
            let (Ok(u), Ok(g)) = (u32::try_from(uid), u32::try_from(gid)) else {
                return Err(LayerError::Unsafe {
                    entry: display.to_string(),
                    reason: "uid or gid out of range",
                });
            };
            if u == u32::MAX || g == u32::MAX {
                return Err(LayerError::Unsafe {
                    entry: display.to_string(),
                    reason: "uid or gid is -1",
                });
            }
            rfs::chownat(
                dir,
                name,
                Some(rfs::Uid::from_raw(u)),
                Some(rfs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno_err(display, "setting owner"))?;
        }
        // chown clears setuid/setgid, so the mode comes after it.
        if let Some(m) = mode {
            rfs::chmodat(dir, name, Mode::from_raw_mode(m), AtFlags::empty())
                .map_err(errno_err(display, "setting mode"))?;
        }
        if !pax.xattrs.is_empty() {
            let base = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let target = name.into_with_c_str(|c| {
                let mut p = PathBuf::from(&base);
                p.push(OsStr::from_bytes(c.to_bytes()));
                Ok(p)
            });
            let target = target.map_err(errno_err(display, "setting xattr"))?;
            for (k, v) in &pax.xattrs {
                if !xattr_allowed(k) {
                    let ename: &str = display;
                    tracing::warn!(
                        "layer entry {ename}: dropping xattr {}",
                        String::from_utf8_lossy(k)
                    );
                    continue;
                }
                match rfs::lsetxattr(&target, OsStr::from_bytes(k), v, rfs::XattrFlags::empty()) {
                    Ok(()) => {}
                    // As Docker does: the unpack filesystem may not support
                    // xattrs, and user.* is not allowed on symlinks. Losing
                    // such an xattr is not worth failing the image.
                    Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                        let ename: &str = display;
                        tracing::warn!(
                            "layer entry {ename}: cannot set xattr {}, skipped",
                            String::from_utf8_lossy(k)
                        );
                    }
                    Err(e) => return Err(errno_err(display, "setting xattr")(e)),
                }
            }
        }
        Ok(())
    }
}

/// xattr namespaces a layer may set.
fn xattr_allowed(name: &[u8]) -> bool {
    if name.starts_with(b"trusted.overlay.") {
        return false;
    }
    name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name.starts_with(b"trusted.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

fn resolve_err(e: Errno, display: &str) -> LayerError {
    match e {
        Errno::LOOP => LayerError::Unsafe {
            entry: display.to_string(),
            reason:
                "path goes through a symlink (writes through symlinked directories are refused)",
        },
        Errno::XDEV => LayerError::Unsafe {
            entry: display.to_string(),
            reason: "path escapes the root",
        },
        Errno::NOTDIR => LayerError::Unsafe {
            entry: display.to_string(),
            reason: "a parent path component is not a directory",
        },
        e => errno_err(display, "resolving parent directory")(e),
    }
}

trait TryCloneFd {
    fn try_clone_fd(&self, display: &str) -> Result<OwnedFd>;
}

impl TryCloneFd for OwnedFd {
    fn try_clone_fd(&self, display: &str) -> Result<OwnedFd> {
        self.try_clone()
            .map_err(io_err(display, "duplicating descriptor"))
    }
}

fn set_times<P: rustix::path::Arg>(
    dir: rustix::fd::BorrowedFd<'_>,
    name: P,
    mtime: i64,
    display: &str,
) -> Result<()> {
    let ts = rfs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rfs::utimensat(
        dir,
        name,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno_err(display, "setting times"))
}

fn list_dir(dir: rustix::fd::BorrowedFd<'_>, display: &str) -> Result<Vec<Vec<u8>>> {
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
fn remove_at(
    dir: rustix::fd::BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
    display: &str,
) -> Result<()> {
    if is_dir {
        let sub = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_err(display, "opening directory to remove"))?;
        for n in list_dir(sub.as_fd(), display)? {
            let cn = OsStr::from_bytes(&n);
            let st = rfs::statat(&sub, cn, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno_err(display, "inspecting"))?;
            remove_at(
                sub.as_fd(),
                cn,
                FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                display,
            )?;
        }
        rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(errno_err(display, "removing directory"))
    } else {
        rfs::unlinkat(dir, name, AtFlags::empty()).map_err(errno_err(display, "removing"))
    }
}

fn read_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Pax {
    let mut pax = Pax::default();
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return pax;
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let val = ext.value_bytes();
        if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
            pax.xattrs.push((x.as_bytes().to_vec(), val.to_vec()));
        } else {
            let s = std::str::from_utf8(val).unwrap_or("");
            match key {
                "uid" => pax.uid = s.parse().ok(),
                "gid" => pax.gid = s.parse().ok(),
                "mtime" => {
                    pax.mtime = s.split('.').next().and_then(|i| i.parse().ok());
                }
                _ => {}
            }
        }
    }
    pax
}
