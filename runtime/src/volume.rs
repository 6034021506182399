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

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
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
        !matches!(self, Self::Io { .. })
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
        fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io("setting the mode of", &self.root))?;
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
}
