//! Volumes and the other mounts of a sandbox, as Docker's `local` driver
//! has them: what a sandbox asks to mount ([`MountSpec`]), the checks a
//! request passes before anything is made ([`validate`]), and the host
//! directories that hold named and anonymous volumes ([`VolumeDirs`]).
//!
//! # Where volumes live
//!
//! A directory volume is `<root>/volumes/<name>/_data` (Docker's layout),
//! the parent private to the state root's owner (0700) as the rest of the
//! runtime's state, `_data` itself 0755 root-owned until a sandbox's first
//! copy-up or write changes it. A sandbox sees it over virtio-fs, served
//! by a sandboxed `virtiofsd` ([`crate::share`]) like a bind mount: the
//! host never parses a filesystem image a guest wrote, only a directory
//! whose entries are treated as hostile by whoever reads them.
//!
//! # Block volumes
//!
//! A block volume (`volume create --driver block --opt size=1G`) is
//! `<root>/volumes/<name>/disk.ext4` instead of `_data`: a sparse ext4
//! image made by the host with `mkfs.ext4` ([`VolumeDirs::create_block`]),
//! attached to a sandbox as a virtio-blk disk and mounted by init at the
//! target, with the same copy-up of the image's content into an empty
//! disk ([`VolumeDirs::blocks`]). Which kind a volume is, is read from
//! its directory ([`VolumeDirs::kind`]), so a stored mount spec
//! (`MountSpec::Volume`) names either kind. Once a guest has written the
//! image, host code never mounts or parses it again: it only passes the
//! file to a VMM, measures its size and deletes it. That is why a block
//! volume cannot be exported or imported by the host (the error says how
//! to do it from a sandbox, [`VolumeError::BlockBackup`]). One writer at a
//! time: every VMM holds an OFD lock on its disks (exclusive when
//! writable), and mvmd refuses a second start before it boots.
//!
//! Who tracks which volumes exist (names, labels, creation time) is the
//! caller's database (mvmd's); this module only makes, finds and deletes
//! the directories, so the containerd shim can share them later.
//!
//! # Backup and restore
//!
//! [`VolumeDirs::export`] writes a volume's `_data` as a tar stream with
//! `mvm_unpack::pack` (symlinks stored, never followed; owners, modes,
//! times and hard links kept). A volume in use may be exported, as `docker
//! run --volumes-from x tar c` would: no snapshot, so a file written
//! meanwhile may be caught half way. [`VolumeDirs::import`] unpacks a tar
//! with `mvm_unpack::unpack` (the one hardened unpacker,
//! `Options::volume`) into a private staging directory beside the
//! volumes, `.import-<random>` (a name no volume can have), and only a
//! complete import is put in place: renamed to a new volume, or swapped
//! with an existing volume's `_data` in one `renameat2(RENAME_EXCHANGE)`
//! ([`ImportMode::Replace`]), so a failed import leaves nothing behind and
//! an existing volume is either untouched or wholly replaced.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mvm_protocol::launch::{normalize_target, TmpfsMount, MIN_TMPFS_SIZE};
use serde::{Deserialize, Serialize};

use crate::share::HostShare;

/// The image of a block volume, in the volume's directory.
pub const BLOCK_IMAGE: &str = "disk.ext4";
/// The smallest block volume: an ext4 with a journal needs a few MiB.
pub const MIN_BLOCK_SIZE: u64 = 16 << 20;
/// The largest block volume (what a sparse file and ext4 defaults handle
/// without special options).
pub const MAX_BLOCK_SIZE: u64 = 16 << 40;
/// The ext4 label of block volumes.
const BLOCK_LABEL: &str = "mvm-volume";

/// What a volume's directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// `_data`, shared over virtio-fs (Docker's `local` driver).
    Directory,
    /// `disk.ext4`, attached as a virtio-blk disk (driver `block`).
    Block,
}

impl VolumeKind {
    /// The driver name mvmd shows for it.
    pub fn driver(self) -> &'static str {
        match self {
            Self::Directory => "local",
            Self::Block => "block",
        }
    }
}

/// A block volume's size as `--opt size=` gives it: a number of bytes with
/// an optional binary unit `k`, `m`, `g`, `t` (any case, optionally
/// followed by `b` or `ib`), between [`MIN_BLOCK_SIZE`] and
/// [`MAX_BLOCK_SIZE`]; rounded up to 4 KiB (ext4's block).
pub fn parse_block_size(s: &str) -> Result<u64, VolumeError> {
    let bad = |why: &str| VolumeError::BlockSize(format!("{s:?} {why}"));
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad("is not a size: use a whole number with an optional unit k, m, g or t (for example 512m or 2g)")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| bad("is not a size: use a whole number with an optional unit k, m, g or t (for example 512m or 2g)"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .filter(|b| (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(b))
        .ok_or_else(|| bad("is out of range: a block volume has 16m to 16t"))?;
    Ok(bytes.div_ceil(4096) * 4096)
}

/// A block volume attached to one boot: the VMM's drive and init's mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDisk {
    /// The disk image.
    pub path: PathBuf,
    /// What init mounts (its `drive` is the virtio-blk serial).
    pub mount: mvm_protocol::launch::BlockMount,
}

/// The longest volume name accepted (Docker has no limit; 128 keeps
/// paths and listings sane).
pub const MAX_VOLUME_NAME: usize = 128;

/// One mount of a sandbox, as stored with its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MountSpec {
    /// A host directory shared as it is (`-v /host:/path`).
    Bind {
        /// Absolute host directory (canonical once resolved).
        source: PathBuf,
        /// Where the guest sees it.
        target: String,
        /// Neither guest nor backend may write.
        #[serde(default)]
        read_only: bool,
    },
    /// A directory volume (`-v name:/path`, `-v /path`).
    Volume {
        /// The volume's name.
        name: String,
        /// Where the guest sees it.
        target: String,
        /// Neither guest nor backend may write.
        #[serde(default)]
        read_only: bool,
        /// Made for this sandbox alone (`-v /path` or the image's VOLUME):
        /// removed with it by `rm -v` and `--rm`.
        #[serde(default)]
        anonymous: bool,
    },
    /// A tmpfs in the guest (`--tmpfs`, `--mount type=tmpfs`).
    Tmpfs(TmpfsMount),
}

impl MountSpec {
    /// Where the guest sees it.
    pub fn target(&self) -> &str {
        match self {
            Self::Bind { target, .. } | Self::Volume { target, .. } => target,
            Self::Tmpfs(t) => &t.target,
        }
    }

    /// The volume's name, for volume mounts.
    pub fn volume_name(&self) -> Option<&str> {
        match self {
            Self::Volume { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Docker's copy-up for directory volumes: the launch spec's shares of
/// writable volume mounts (tag `mvol<i>` for mount `i`, [`VolumeDirs::shares`])
/// get `copy_up`, so init fills an empty volume with what the image has
/// at the target before the workload starts. The guest decides whether
/// the volume is empty and copies through its own share: the host never
/// reads the image's files for this. Bind mounts and read-only mounts are
/// left as they are.
pub fn mark_copy_up(mounts: &[MountSpec], shares: &mut [mvm_protocol::launch::Mount]) {
    for s in shares {
        let i = s
            .tag
            .strip_prefix("mvol")
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(MountSpec::Volume {
            read_only: false, ..
        }) = i.and_then(|i| mounts.get(i))
        {
            s.copy_up = true;
        }
    }
}

/// A tmpfs with Docker's defaults for `--tmpfs`: `noexec`, `nosuid`,
/// `nodev`, the kernel's size.
pub fn default_tmpfs(target: &str) -> TmpfsMount {
    TmpfsMount {
        target: target.to_string(),
        noexec: true,
        nosuid: true,
        nodev: true,
        ..Default::default()
    }
}

/// Why a mount or a volume was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {0:?}: use 2 to 128 characters [a-zA-Z0-9][a-zA-Z0-9_.-]")]
    Name(String),
    #[error("mount target {target:?} {why}")]
    Target { target: String, why: &'static str },
    #[error("bind mount source {path:?} {why}")]
    BindSource { path: String, why: String },
    #[error("tmpfs on {target:?}: {why}")]
    Tmpfs { target: String, why: String },
    #[error("no such volume: {0} (it was removed; create it again or recreate the sandbox)")]
    Missing(String),
    #[error("volume {0} exists and is not empty: import into a new name, or pass --force (force=true) to replace its whole content")]
    NotEmpty(String),
    #[error("importing into volume {name}: {source}")]
    Import {
        name: String,
        #[source]
        source: mvm_unpack::Error,
    },
    #[error("exporting volume {name}: {source}")]
    Export {
        name: String,
        #[source]
        source: mvm_unpack::PackError,
    },
    #[error("invalid block volume size {0}")]
    BlockSize(String),
    #[error("volume {name} exists as a {existing} volume; remove it first (mvctl volume rm {name}) or choose another name")]
    Exists {
        name: String,
        existing: &'static str,
    },
    #[error("volume {name} is a block volume: its ext4 image was written by a guest and the host does not read it, so it cannot be {op} by the host; do it from a sandbox instead: {hint}")]
    BlockBackup {
        name: String,
        op: &'static str,
        hint: String,
    },
    #[error("formatting block volume {name}: {source}")]
    Format {
        name: String,
        #[source]
        source: Box<mvm_images::RootDiskError>,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl VolumeError {
    /// Whether the request was wrong (vs. the host failing).
    pub fn is_invalid(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Export { .. } | Self::Format { .. } => false,
            Self::Import { source, .. } => !matches!(
                source,
                mvm_unpack::Error::Io { .. } | mvm_unpack::Error::NoSpace { .. }
            ),
            _ => true,
        }
    }

    /// The volume exists and is not empty, or exists as the other kind (a
    /// conflict, not a bad request).
    pub fn is_not_empty(&self) -> bool {
        matches!(self, Self::NotEmpty(_) | Self::Exists { .. })
    }

    /// A block volume asked to be exported or imported by the host.
    fn block_backup(name: &str, export: bool) -> Self {
        let (op, hint) = if export {
            (
                "exported",
                format!("mvctl run --rm -v {name}:/data:ro busybox tar -c -C /data . > {name}.tar"),
            )
        } else {
            (
                "imported into",
                format!("mvctl run --rm -i -v {name}:/data busybox tar -x -C /data < {name}.tar (or import into a directory volume of another name)"),
            )
        };
        Self::BlockBackup {
            name: name.to_string(),
            op,
            hint,
        }
    }
}

/// Docker's volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= MAX_VOLUME_NAME
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Name(name.to_string()))
    }
}

/// Check `mounts` as a request gives them: targets absolute, without
/// `..`, not `/`, each used once; bind sources absolute existing
/// directories, without `..`; volume names valid; tmpfs sizes and modes
/// sane. Bind sources are replaced by their canonical paths, so what is
/// stored is what was checked.
pub fn validate(mounts: &mut [MountSpec]) -> Result<(), VolumeError> {
    let mut seen = std::collections::HashSet::new();
    for m in mounts.iter_mut() {
        let target = m.target().to_string();
        let bad = |why| VolumeError::Target {
            target: target.clone(),
            why,
        };
        if !target.starts_with('/') {
            return Err(bad("is not an absolute path"));
        }
        if target.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if target.split('/').any(|c| c == "..") {
            return Err(bad("contains a '..' component"));
        }
        let normal = normalize_target(&target);
        if normal == "/" {
            return Err(bad(
                "is the root directory; mount volumes below it (use --read-only for a read-only root)",
            ));
        }
        if !seen.insert(normal) {
            return Err(bad("is used by two mounts; give each mount its own target"));
        }
        match m {
            MountSpec::Bind { source, .. } => *source = check_bind_source(source)?,
            MountSpec::Volume { name, .. } => validate_name(name)?,
            MountSpec::Tmpfs(t) => {
                let tbad = |why: String| VolumeError::Tmpfs {
                    target: t.target.clone(),
                    why,
                };
                if t.size_bytes.is_some_and(|s| s < MIN_TMPFS_SIZE) {
                    return Err(tbad(format!(
                        "size must be at least {MIN_TMPFS_SIZE} bytes"
                    )));
                }
                if t.mode.is_some_and(|m| m > 0o7777) {
                    return Err(tbad(
                        "mode must be octal permission bits, at most 7777".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A bind mount's source: absolute, no `..`, an existing directory (a
/// virtio-fs share is a directory); its canonical path.
fn check_bind_source(source: &Path) -> Result<PathBuf, VolumeError> {
    let shown = source.display().to_string();
    let bad = |why: String| VolumeError::BindSource {
        path: shown.clone(),
        why,
    };
    if !source.is_absolute() {
        return Err(bad(
            "is not an absolute path; give the full path (e.g. \"$PWD/dir\")".into(),
        ));
    }
    use std::os::unix::ffi::OsStrExt;
    if source.as_os_str().as_bytes().contains(&0) {
        return Err(bad("contains a NUL byte".into()));
    }
    if source
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad(
            "contains a '..' component; give the path without it".into()
        ));
    }
    let canonical = fs::canonicalize(source).map_err(|e| {
        bad(if e.kind() == io::ErrorKind::NotFound {
            "does not exist on the host; create the directory first".into()
        } else {
            format!("cannot be resolved: {e}")
        })
    })?;
    if !canonical.is_dir() {
        return Err(bad(
            "is not a directory; only directories can be shared into a microVM".into(),
        ));
    }
    Ok(canonical)
}

/// How an import meets an existing volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// Into a new or empty volume only; a volume with content is refused
    /// ([`VolumeError::NotEmpty`]), so nothing stored is lost by mistake.
    #[default]
    New,
    /// The archive replaces an existing volume's whole content (`mvctl
    /// volume import --force`). Not a merge: a merge that failed half way
    /// would leave a mix no backup ever held.
    Replace,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The volume's directory was made by this import.
    pub created: bool,
    /// An existing volume's content was replaced.
    pub replaced: bool,
    /// The unpacker's counters (entries, bytes, devices skipped...).
    pub stats: mvm_unpack::Stats,
}

/// Names of the staging directories of imports under `<root>`; a volume
/// name cannot start with a dot.
const STAGING_PREFIX: &str = ".import-";

/// A staging directory, deleted when dropped (an import that failed, or
/// the old content after a swap) unless forgotten.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), "removing a staging directory: {e}");
            }
        }
    }
}

/// The directories of directory volumes under a state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDirs {
    /// `<root>/volumes`.
    pub root: PathBuf,
}

impl VolumeDirs {
    /// The volumes under `root` (`<state root>/volumes`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of volume `name` (holding `_data`).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// What a sandbox mounts: `<root>/<name>/_data`.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir(name).join("_data")
    }

    /// Make volume `name`'s directories if missing; true when made now
    /// (a new volume, empty).
    pub fn create(&self, name: &str) -> Result<bool, VolumeError> {
        validate_name(name)?;
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io { op, path, source }
        };
        self.make_root()?;
        let dir = self.dir(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Either kind: an existing volume is used as it is.
                if self.kind(name).is_some() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        let data = self.data(name);
        match fs::create_dir(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io("creating", &data)(e)),
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", &data))?;
        Ok(true)
    }

    /// The image of block volume `name`.
    pub fn block_image(&self, name: &str) -> PathBuf {
        self.dir(name).join(BLOCK_IMAGE)
    }

    /// Which kind volume `name` is, from what its directory holds (`None`:
    /// no such volume). Symlinks are not followed: only mvmd writes here.
    pub fn kind(&self, name: &str) -> Option<VolumeKind> {
        if validate_name(name).is_err() {
            return None;
        }
        let is = |p: PathBuf, dir: bool| {
            fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
        };
        if is(self.block_image(name), false) {
            Some(VolumeKind::Block)
        } else if is(self.data(name), true) {
            Some(VolumeKind::Directory)
        } else {
            None
        }
    }

    /// Make block volume `name` of `size` bytes ([`parse_block_size`]) if
    /// missing: a sparse file formatted as ext4 by `mkfs.ext4`, put in
    /// place only once complete. True when made now; an existing block
    /// volume is kept as it is (its size unchanged); a directory volume
    /// of that name is refused.
    pub fn create_block(&self, name: &str, size: u64) -> Result<bool, VolumeError> {
        validate_name(name)?;
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
            return Err(VolumeError::BlockSize(format!(
                "{size} bytes is out of range: a block volume has 16m to 16t"
            )));
        }
        match self.kind(name) {
            Some(VolumeKind::Block) => return Ok(false),
            Some(VolumeKind::Directory) => {
                return Err(VolumeError::Exists {
                    name: name.to_string(),
                    existing: "directory (local)",
                })
            }
            None => {}
        }
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io { op, path, source }
        };
        self.make_root()?;
        let dir = self.dir(name);
        let made_dir = match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io("creating", &dir)(e)),
        };
        let tmp = dir.join(format!(".{BLOCK_IMAGE}-{}", &crate::names::new_id()[..16]));
        let image = self.block_image(name);
        let r = mvm_images::rootdisk::mkfs_writable(&tmp, size, BLOCK_LABEL)
            .map_err(|source| VolumeError::Format {
                name: name.to_string(),
                source: Box::new(source),
            })
            .and_then(|()| {
                // Readable by the uid of a read-only user's VMM (the
                // jailer makes a writer's VMM the owner); the directory
                // above is private.
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
                    .map_err(io("setting the mode of", &tmp))?;
                use rustix::fs::{renameat_with, RenameFlags, CWD};
                renameat_with(CWD, &tmp, CWD, &image, RenameFlags::NOREPLACE)
                    .map_err(|e| io("putting in place", &image)(e.into()))
            });
        match r {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                if made_dir {
                    let _ = fs::remove_dir(&dir);
                }
                Err(e)
            }
        }
    }

    /// The size a block volume's guest sees (the image's length), `None`
    /// for a directory volume or a missing one.
    pub fn block_capacity(&self, name: &str) -> Option<u64> {
        if self.kind(name) != Some(VolumeKind::Block) {
            return None;
        }
        fs::metadata(self.block_image(name)).ok().map(|m| m.len())
    }

    /// Whether volume `name` has a `_data` directory with nothing in it
    /// (`None`: no such directory).
    pub fn is_empty(&self, name: &str) -> Result<Option<bool>, VolumeError> {
        validate_name(name)?;
        let data = self.data(name);
        match fs::read_dir(&data) {
            Ok(mut rd) => Ok(Some(rd.next().is_none())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VolumeError::Io {
                op: "listing",
                path: data,
                source,
            }),
        }
    }

    /// Writes volume `name`'s content to `out` as a tar stream (see the
    /// module documentation, Backup and restore).
    pub fn export(
        &self,
        name: &str,
        out: impl Write,
    ) -> Result<mvm_unpack::PackStats, VolumeError> {
        self.check_export(name)?;
        let data = self.data(name);
        if !data.is_dir() {
            return Err(VolumeError::Missing(name.to_string()));
        }
        mvm_unpack::pack(&data, out).map_err(|source| VolumeError::Export {
            name: name.to_string(),
            source,
        })
    }

    /// Checks that volume `name` may be exported by the host: not a block
    /// volume ([`VolumeError::BlockBackup`]). [`Self::export`] checks
    /// again; this lets a caller refuse before a stream starts.
    pub fn check_export(&self, name: &str) -> Result<(), VolumeError> {
        validate_name(name)?;
        if self.kind(name) == Some(VolumeKind::Block) {
            return Err(VolumeError::block_backup(name, true));
        }
        Ok(())
    }

    /// Checks that an import into `name` under `mode` may start: a valid
    /// name, and the volume missing or empty unless [`ImportMode::Replace`].
    /// [`Self::import`] checks again when it puts the data in place; this
    /// lets a caller refuse before reading any of the archive.
    pub fn check_import(&self, name: &str, mode: ImportMode) -> Result<(), VolumeError> {
        if self.kind(name) == Some(VolumeKind::Block) {
            return Err(VolumeError::block_backup(name, false));
        }
        if self.is_empty(name)? == Some(false) && mode == ImportMode::New {
            return Err(VolumeError::NotEmpty(name.to_string()));
        }
        Ok(())
    }

    /// Restores the tar stream `archive` as volume `name` (see the module
    /// documentation, Backup and restore): made if missing; an existing
    /// empty one, or with [`ImportMode::Replace`] any existing one, gets
    /// the archive as its whole content. On any error nothing has changed.
    pub fn import(
        &self,
        name: &str,
        archive: impl Read,
        mode: ImportMode,
    ) -> Result<Imported, VolumeError> {
        self.check_import(name, mode)?;
        self.make_root()?;
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io { op, path, source }
        };
        let staging = Staging(
            self.root
                .join(format!("{STAGING_PREFIX}{}", &crate::names::new_id()[..16])),
        );
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging.0)
            .map_err(io("creating", &staging.0))?;
        let data = staging.0.join("_data");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&data)
            .map_err(io("creating", &data))?;
        let mut stats = mvm_unpack::Stats::default();
        mvm_unpack::unpack(archive, &data, &mvm_unpack::Options::volume(), &mut stats).map_err(
            |source| VolumeError::Import {
                name: name.to_string(),
                source,
            },
        )?;
        let mut out = Imported {
            created: false,
            replaced: false,
            stats,
        };
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        let dir = self.dir(name);
        // A new volume: the staging directory becomes it, unless one of
        // that name appeared meanwhile.
        match renameat_with(CWD, &staging.0, CWD, &dir, RenameFlags::NOREPLACE) {
            Ok(()) => {
                std::mem::forget(staging);
                out.created = true;
                return Ok(out);
            }
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {}
            Err(e) => return Err(io("renaming into place", &dir)(e.into())),
        }
        self.create(name)?;
        match self.is_empty(name)? {
            Some(false) if mode == ImportMode::New => {
                return Err(VolumeError::NotEmpty(name.to_string()))
            }
            Some(false) => out.replaced = true,
            _ => {}
        }
        // One atomic swap: the volume holds either its old content or the
        // whole archive, never a mix; the old content is then deleted with
        // the staging directory.
        let target = self.data(name);
        renameat_with(CWD, &data, CWD, &target, RenameFlags::EXCHANGE)
            .map_err(|e| io("swapping into place", &target)(e.into()))?;
        Ok(out)
    }

    /// Deletes what interrupted imports left (a daemon killed half way);
    /// call at start-up, before any import runs.
    pub fn clean_staging(&self) {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                if let Err(err) = fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), "removing a staging directory: {err}");
                }
            }
        }
    }

    /// `<root>`, private to its owner.
    fn make_root(&self) -> Result<(), VolumeError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io { op, path, source }
        };
        fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io("setting the mode of", &self.root))
    }

    /// Delete volume `name` and its data (missing: nothing to do).
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        validate_name(name)?;
        let dir = self.dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VolumeError::Io {
                op: "removing",
                path: dir,
                source,
            }),
        }
    }

    /// Bytes the volume's files take on the host (symlinks not followed;
    /// a block volume: the blocks its sparse image has allocated).
    pub fn size(&self, name: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        if self.kind(name) == Some(VolumeKind::Block) {
            return fs::symlink_metadata(self.block_image(name))
                .map(|m| m.blocks() * 512)
                .unwrap_or(0);
        }
        fn walk(p: &Path, depth: usize) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = fs::symlink_metadata(p) else {
                return 0;
            };
            let own = m.blocks() * 512;
            if !m.is_dir() || depth > 256 {
                return own;
            }
            own + fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path(), depth + 1)).sum())
                .unwrap_or(0)
        }
        walk(&self.data(name), 0)
    }

    /// The block volumes of a sandbox's mounts, as disks (serials `mvb0`,
    /// `mvb1`... by mount index), read-only ones attached read-only, the
    /// others with copy-up (init copies the image's content at the target
    /// into a disk that holds nothing yet).
    pub fn blocks(&self, mounts: &[MountSpec]) -> Vec<BlockDisk> {
        mounts
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m {
                MountSpec::Volume {
                    name,
                    target,
                    read_only,
                    ..
                } if self.kind(name) == Some(VolumeKind::Block) => Some(BlockDisk {
                    path: self.block_image(name),
                    mount: mvm_protocol::launch::BlockMount {
                        drive: format!("mvb{i}"),
                        target: target.clone(),
                        read_only: *read_only,
                        copy_up: !*read_only,
                    },
                }),
                _ => None,
            })
            .collect()
    }

    /// The virtio-fs shares of a sandbox's bind and directory volume
    /// mounts (tags `mvol0`, `mvol1`... in mount order; block volumes are
    /// [`Self::blocks`]); a volume whose directory is gone is an error.
    pub fn shares(&self, mounts: &[MountSpec]) -> Result<Vec<HostShare>, VolumeError> {
        let mut out = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if m.volume_name()
                .is_some_and(|n| self.kind(n) == Some(VolumeKind::Block))
            {
                continue;
            }
            let (source, target, read_only) = match m {
                MountSpec::Bind {
                    source,
                    target,
                    read_only,
                } => (source.clone(), target, *read_only),
                MountSpec::Volume {
                    name,
                    target,
                    read_only,
                    ..
                } => {
                    let data = self.data(name);
                    if !data.is_dir() {
                        return Err(VolumeError::Missing(name.clone()));
                    }
                    (data, target, *read_only)
                }
                MountSpec::Tmpfs(_) => continue,
            };
            out.push(HostShare {
                tag: format!("mvol{i}"),
                source,
                target: target.clone(),
                read_only,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, target: &str) -> MountSpec {
        MountSpec::Volume {
            name: name.into(),
            target: target.into(),
            read_only: false,
            anonymous: false,
        }
    }

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["ab", "data", "my-vol_1.x", &"a".repeat(128)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "a",
            "-ab",
            ".ab",
            "a/b",
            "..",
            "a b",
            "a\0b",
            &"a".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_mounts_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        let bind = |s: &str, t: &str| MountSpec::Bind {
            source: s.into(),
            target: t.into(),
            read_only: false,
        };
        let d = dir.path().display().to_string();
        let cases: Vec<(Vec<MountSpec>, &str)> = vec![
            (vec![vol("data", "rel")], "absolute"),
            (vec![vol("data", "/a/../etc")], "'..'"),
            (vec![vol("data", "/")], "root directory"),
            (vec![vol("data", "//./")], "root directory"),
            (vec![vol("data", "/x\0")], "NUL"),
            (vec![vol("data", "/a"), vol("other", "/a/")], "two mounts"),
            (vec![vol("../x", "/a")], "invalid volume name"),
            (vec![bind("rel/dir", "/a")], "absolute"),
            (vec![bind(&format!("{d}/../x"), "/a")], "'..'"),
            (vec![bind("/nonexistent/dir", "/a")], "does not exist"),
            (
                vec![bind(&file.display().to_string(), "/a")],
                "not a directory",
            ),
            (
                vec![MountSpec::Tmpfs(TmpfsMount {
                    size_bytes: Some(0),
                    ..default_tmpfs("/t")
                })],
                "at least",
            ),
            (
                vec![MountSpec::Tmpfs(TmpfsMount {
                    mode: Some(0o17777),
                    ..default_tmpfs("/t")
                })],
                "7777",
            ),
        ];
        for (mut mounts, why) in cases {
            let e = validate(&mut mounts).unwrap_err();
            assert!(e.to_string().contains(why), "{mounts:?}: {e}");
            assert!(e.is_invalid());
        }
        // A symlinked source is stored resolved.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let mut ok = vec![bind(&link.display().to_string(), "/src"), vol("data", "/d")];
        validate(&mut ok).unwrap();
        assert_eq!(
            ok[0],
            bind(
                &fs::canonicalize(dir.path()).unwrap().display().to_string(),
                "/src"
            )
        );
    }

    #[test]
    fn volume_dirs_are_made_once_private_and_shared_by_tag() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let v = VolumeDirs::new(root.path().join("volumes"));
        assert!(v.create("data").unwrap());
        fs::write(v.data("data").join("f"), "kept").unwrap();
        assert!(!v.create("data").unwrap(), "existing: kept as it is");
        assert_eq!(
            fs::read_to_string(v.data("data").join("f")).unwrap(),
            "kept"
        );
        assert_eq!(fs::metadata(&v.root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(v.data("data")).unwrap().mode() & 0o777, 0o755);
        assert!(v.size("data") > 0);
        assert!(v.create("../x").is_err());

        let mounts = vec![
            MountSpec::Tmpfs(default_tmpfs("/run")),
            vol("data", "/d"),
            MountSpec::Bind {
                source: root.path().into(),
                target: "/src".into(),
                read_only: true,
            },
        ];
        let shares = v.shares(&mounts).unwrap();
        assert_eq!(shares.len(), 2);
        let mut launch: Vec<mvm_protocol::launch::Mount> = shares
            .iter()
            .map(|s| mvm_protocol::launch::Mount {
                tag: s.tag.clone(),
                target: s.target.clone(),
                read_only: s.read_only,
                copy_up: false,
            })
            .collect();
        mark_copy_up(&mounts, &mut launch);
        assert!(launch[0].copy_up, "the writable volume copies up");
        assert!(!launch[1].copy_up, "a bind mount never does");
        assert_eq!(
            (shares[0].tag.as_str(), &shares[0].source),
            ("mvol1", &v.data("data"))
        );
        assert_eq!(shares[1].tag, "mvol2");
        assert!(shares[1].read_only);
        v.remove("data").unwrap();
        v.remove("data").unwrap();
        assert!(matches!(v.shares(&mounts), Err(VolumeError::Missing(_))));

        // Stored specs round-trip with Docker's type names.
        let json = serde_json::to_string(&mounts).unwrap();
        assert!(json.contains(r#""type":"tmpfs""#), "{json}");
        let back: Vec<MountSpec> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, mounts);
    }

    #[test]
    fn block_sizes_parse_with_units_and_limits() {
        assert_eq!(parse_block_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_block_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_block_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_block_size("16777217").unwrap(), (16 << 20) + 4096);
        for bad in [
            "",
            "1x",
            "-1g",
            "1.5g",
            "15m",
            "17t",
            "99999999999999999999",
        ] {
            let e = parse_block_size(bad).unwrap_err();
            assert!(e.to_string().contains("block volume size"), "{bad}: {e}");
            assert!(e.is_invalid());
        }
    }

    #[test]
    fn block_volumes_are_ext4_images_attached_as_disks_and_never_exported() {
        let root = tempfile::tempdir().unwrap();
        let v = VolumeDirs::new(root.path().join("volumes"));
        assert!(v.create_block("blk", 32 << 20).unwrap());
        assert_eq!(v.kind("blk"), Some(VolumeKind::Block));
        assert!(!v.create_block("blk", 64 << 20).unwrap(), "kept as it is");
        assert_eq!(v.block_capacity("blk"), Some(32 << 20));
        // Made by mkfs.ext4: the superblock's magic at 1024 + 56.
        let img = fs::read(v.block_image("blk")).unwrap();
        assert_eq!(&img[1024 + 56..1024 + 58], &[0x53, 0xef]);
        let size = v.size("blk");
        assert!(size > 0 && size < 32 << 20, "sparse: {size}");
        // Using it by name keeps it a block volume (no _data is made).
        assert!(!v.create("blk").unwrap());
        assert!(!v.data("blk").exists());
        // A directory volume of that name is another volume.
        v.create("dir").unwrap();
        let e = v.create_block("dir", 32 << 20).unwrap_err();
        assert!(
            e.is_not_empty() && e.to_string().contains("directory"),
            "{e}"
        );

        let mounts = vec![
            vol("dir", "/d"),
            vol("blk", "/b"),
            MountSpec::Volume {
                name: "blk".into(),
                target: "/ro".into(),
                read_only: true,
                anonymous: false,
            },
        ];
        let shares = v.shares(&mounts).unwrap();
        assert_eq!(shares.len(), 1, "only the directory volume is shared");
        let disks = v.blocks(&mounts);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].path, v.block_image("blk"));
        assert_eq!(disks[0].mount.drive, "mvb1");
        assert!(disks[0].mount.copy_up && !disks[0].mount.read_only);
        assert_eq!(disks[1].mount.drive, "mvb2");
        assert!(disks[1].mount.read_only && !disks[1].mount.copy_up);

        // The host never reads a guest-written image back: export and
        // import are refused with what to do instead.
        let e = v.export("blk", Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("from a sandbox") && e.to_string().contains("tar -c"),
            "{e}"
        );
        let e = v.import("blk", &[][..], ImportMode::Replace).unwrap_err();
        assert!(e.to_string().contains("tar -x"), "{e}");
        v.remove("blk").unwrap();
        assert_eq!(v.kind("blk"), None);
        for bad in [0, 1 << 20, 17 << 40] {
            assert!(v.create_block("x1", bad).is_err());
        }
        assert_eq!(v.kind("x1"), None, "nothing left by a refused size");
    }

    /// A tar entry with a raw name (no checks: `..`, absolute names and
    /// links pass as given), optional link target and declared size.
    fn raw(
        out: &mut Vec<u8>,
        name: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
        size: u64,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    /// Every path below `dir` with its kind, size and content (symlinks
    /// not followed): what "nothing changed" compares.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let md = fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
                format!("dir {:o}", md.mode())
            } else if md.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else {
                format!(
                    "file {:o} {:?}",
                    md.mode(),
                    fs::read(&p).unwrap_or_default()
                )
            };
            out.push((p, what));
        }
        out.sort();
        out
    }

    #[test]
    fn export_then_import_gives_the_same_tree_and_the_same_bytes() {
        use std::os::unix::fs::{symlink, MetadataExt};
        let root = tempfile::tempdir().unwrap();
        let v = VolumeDirs::new(root.path().join("volumes"));
        v.create("src").unwrap();
        let d = v.data("src");
        fs::create_dir_all(d.join("etc/app")).unwrap();
        fs::write(d.join("etc/app/conf"), "key=value\n").unwrap();
        fs::write(d.join("big"), vec![7u8; 300_000]).unwrap();
        fs::write(d.join("empty"), "").unwrap();
        symlink("etc/app/conf", d.join("conf-link")).unwrap();
        symlink("/etc/shadow", d.join("abs-link")).unwrap();
        fs::hard_link(d.join("big"), d.join("big-again")).unwrap();
        fs::set_permissions(d.join("etc/app/conf"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(d.join("big"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(d.join("etc"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(d.join("etc/app/conf"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(d.join("conf-link"), Some(42), Some(43)).unwrap();
        }
        let mut first = Vec::new();
        v.export("src", &mut first).unwrap();

        let got = v.import("copy", &first[..], ImportMode::New).unwrap();
        assert!(got.created && !got.replaced);
        let c = v.data("copy");
        assert_eq!(
            fs::read_to_string(c.join("etc/app/conf")).unwrap(),
            "key=value\n"
        );
        assert_eq!(
            fs::read_link(c.join("abs-link")).unwrap(),
            Path::new("/etc/shadow")
        );
        let md = |p: &Path| fs::symlink_metadata(p).unwrap();
        assert_eq!(md(&c.join("big")).mode() & 0o7777, 0o4755);
        assert_eq!(md(&c.join("etc")).mode() & 0o7777, 0o1777);
        assert_eq!(md(&c).mode() & 0o7777, 0o750, "the root's mode comes back");
        assert_eq!(md(&c.join("big")).ino(), md(&c.join("big-again")).ino());
        assert_eq!(md(&c.join("big")).mtime(), md(&d.join("big")).mtime());
        if rustix::process::geteuid().is_root() {
            assert_eq!(md(&c.join("etc/app/conf")).uid(), 1234);
            assert_eq!(md(&c.join("conf-link")).gid(), 43);
        }
        let mut second = Vec::new();
        v.export("copy", &mut second).unwrap();
        assert!(first == second, "a re-export is byte-identical");
        let leftovers: Vec<_> = fs::read_dir(&v.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "no staging directory is left: {leftovers:?}"
        );
    }

    #[test]
    fn an_existing_volume_is_refused_unless_empty_or_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let v = VolumeDirs::new(root.path().join("volumes"));
        let mut tar = Vec::new();
        raw(&mut tar, b"new", tar::EntryType::Regular, None, 3, b"new");
        end(&mut tar);

        v.create("empty").unwrap();
        let got = v.import("empty", &tar[..], ImportMode::New).unwrap();
        assert!(!got.created && !got.replaced);
        assert_eq!(fs::read(v.data("empty").join("new")).unwrap(), b"new");

        v.create("full").unwrap();
        fs::write(v.data("full").join("old"), "kept").unwrap();
        let e = v.import("full", &tar[..], ImportMode::New).unwrap_err();
        assert!(e.is_not_empty(), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read(v.data("full").join("old")).unwrap(), b"kept");

        // A failed replace leaves the old content as it was.
        let mut bad = Vec::new();
        raw(&mut bad, b"f", tar::EntryType::Regular, None, 3, b"new");
        raw(
            &mut bad,
            b"../escape",
            tar::EntryType::Regular,
            None,
            1,
            b"x",
        );
        end(&mut bad);
        assert!(v.import("full", &bad[..], ImportMode::Replace).is_err());
        assert_eq!(snapshot(&v.data("full")).len(), 2);

        let got = v.import("full", &tar[..], ImportMode::Replace).unwrap();
        assert!(got.replaced);
        assert!(!v.data("full").join("old").exists(), "replaced, not merged");
        assert_eq!(fs::read(v.data("full").join("new")).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(&v.root).unwrap().count(),
            2,
            "old content deleted"
        );
    }

    #[test]
    fn hostile_archives_never_write_outside_and_leave_no_volume() {
        use tar::EntryType as T;
        let base = tempfile::tempdir().unwrap();
        // Something outside the volumes to attack, beside them.
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "untouched").unwrap();
        let v = VolumeDirs::new(base.path().join("volumes"));
        let victim = outside.join("victim");
        let victim = victim.to_str().unwrap().as_bytes();

        type Case = (&'static str, Vec<u8>, &'static str);
        let mut cases: Vec<Case> = Vec::new();
        let mut t = Vec::new();
        raw(
            &mut t,
            b"../../outside/victim",
            T::Regular,
            None,
            4,
            b"evil",
        );
        end(&mut t);
        cases.push(("dotdot", t, ".."));
        let mut t = Vec::new();
        raw(&mut t, victim, T::Regular, None, 4, b"evil");
        end(&mut t);
        cases.push(("absolute", t, "absolute"));
        let mut t = Vec::new();
        raw(
            &mut t,
            b"link",
            T::Symlink,
            Some(outside.to_str().unwrap().as_bytes()),
            0,
            b"",
        );
        raw(&mut t, b"link/victim", T::Regular, None, 4, b"evil");
        end(&mut t);
        cases.push(("symlink then file", t, "symlink"));
        let mut t = Vec::new();
        raw(&mut t, b"hard", T::Link, Some(victim), 0, b"");
        end(&mut t);
        cases.push(("hard link out", t, "absolute"));
        let mut t = Vec::new();
        raw(&mut t, b"hard", T::Link, Some(b"../outside/victim"), 0, b"");
        end(&mut t);
        cases.push(("hard link up", t, ".."));
        let mut t = Vec::new();
        raw(&mut t, b"huge", T::Regular, None, 1 << 40, b"only this");
        end(&mut t);
        cases.push(("huge size", t, "over the limit"));
        let mut t = Vec::new();
        raw(&mut t, b"short", T::Regular, None, 4096, b"only this");
        cases.push(("truncated", t, "truncated"));
        cases.push(("not a tar", vec![b'x'; 1000], "tar"));

        // Another volume beside the target must not change either.
        v.create("keep").unwrap();
        fs::write(v.data("keep").join("f"), "kept").unwrap();
        let before = snapshot(base.path());
        for (what, tar, why) in cases {
            let e = v
                .import("target", &tar[..], ImportMode::New)
                .expect_err(what);
            assert!(e.to_string().contains(why), "{what}: {e}");
            assert!(
                e.to_string().contains("target"),
                "{what}: names the volume: {e}"
            );
            assert!(v.is_empty("target").unwrap().is_none(), "{what}: no volume");
            assert_eq!(snapshot(base.path()), before, "{what}: something changed");
        }

        // Devices are left out, not made; the rest of the archive is kept.
        let mut t = Vec::new();
        raw(&mut t, b"null", T::Char, None, 0, b"");
        raw(&mut t, b"disk", T::Block, None, 0, b"");
        raw(&mut t, b"f", T::Regular, None, 2, b"ok");
        end(&mut t);
        let got = v.import("dev", &t[..], ImportMode::New).unwrap();
        assert_eq!(got.stats.skipped_devices, 2);
        assert!(!v.data("dev").join("null").exists());
        assert_eq!(fs::read(v.data("dev").join("f")).unwrap(), b"ok");
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"untouched");
    }

    #[test]
    fn leftovers_of_an_interrupted_import_are_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let v = VolumeDirs::new(root.path().join("volumes"));
        v.create("keep").unwrap();
        fs::create_dir_all(v.root.join(".import-0123/_data/x")).unwrap();
        v.clean_staging();
        let names: Vec<_> = fs::read_dir(&v.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep"]);
    }
}
