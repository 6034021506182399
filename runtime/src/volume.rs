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
            Self::Io { .. } | Self::Export { .. } => false,
            Self::Import { source, .. } => !matches!(
                source,
                mvm_unpack::Error::Io { .. } | mvm_unpack::Error::NoSpace { .. }
            ),
            _ => true,
        }
    }

    /// The volume exists and is not empty (a conflict, not a bad request).
    pub fn is_not_empty(&self) -> bool {
        matches!(self, Self::NotEmpty(_))
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
                if self.data(name).is_dir() {
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
        validate_name(name)?;
        let data = self.data(name);
        if !data.is_dir() {
            return Err(VolumeError::Missing(name.to_string()));
        }
        mvm_unpack::pack(&data, out).map_err(|source| VolumeError::Export {
            name: name.to_string(),
            source,
        })
    }

    /// Checks that an import into `name` under `mode` may start: a valid
    /// name, and the volume missing or empty unless [`ImportMode::Replace`].
    /// [`Self::import`] checks again when it puts the data in place; this
    /// lets a caller refuse before reading any of the archive.
    pub fn check_import(&self, name: &str, mode: ImportMode) -> Result<(), VolumeError> {
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

    /// Bytes the volume's files take on the host (symlinks not followed).
    pub fn size(&self, name: &str) -> u64 {
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

    /// The virtio-fs shares of a sandbox's bind and volume mounts (tags
    /// `mvol0`, `mvol1`... in mount order); a volume whose directory is
    /// gone is an error.
    pub fn shares(&self, mounts: &[MountSpec]) -> Result<Vec<HostShare>, VolumeError> {
        let mut out = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
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
