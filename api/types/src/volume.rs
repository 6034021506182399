//! Volumes and the mounts of a sandbox, in the shapes of Docker's Engine
//! API (lower snake case): `POST /v1/volumes`, `GET /v1/volumes`,
//! `GET/DELETE /v1/volumes/{name}`, `POST /v1/volumes/prune`, the
//! `mounts` of a create request and the `mounts` of an inspect; and
//! mvm's backup and restore, `GET /v1/volumes/{name}/export` (a tar
//! stream) and `POST /v1/volumes/{name}/import` (answered with
//! [`VolumeImportResponse`] as the result of a progress stream).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/volumes`: create a volume (an existing one of that name is
/// returned as it is, as Docker does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateRequest {
    /// Name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`); a random one when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// `local` (the default): a directory under mvmd's state root,
    /// shared over virtio-fs; `block`: an ext4 disk image attached as a
    /// virtio-blk disk (one writer at a time; no host export/import).
    #[serde(default)]
    pub driver: Option<String>,
    /// Driver options; `local` takes none, `block` needs `size` (bytes
    /// with an optional unit k, m, g, t: `1g`; 16m to 16t).
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A volume, as `GET /v1/volumes/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name.
    pub name: String,
    /// `local` or `block`.
    pub driver: String,
    /// The host directory holding the data (`local`), or the disk image
    /// (`block`).
    pub mountpoint: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options given at creation.
    pub options: BTreeMap<String, String>,
    /// Always `local` (this host).
    pub scope: String,
    /// Made for one sandbox (`-v /path`, an image VOLUME): removed with it
    /// by `rm -v` and `--rm`.
    pub anonymous: bool,
    /// Disk use and references (list with `?size=true`, and inspect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_data: Option<VolumeUsage>,
}

/// How much a volume holds and who uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    /// Bytes on the host.
    pub size: u64,
    /// Sandboxes (any state) that mount it.
    pub ref_count: u64,
    /// A block volume's size as its guests see it (the ext4 disk's
    /// length); `size` is what its sparse image takes on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

/// `GET /v1/volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeList {
    /// The volumes matching the filters, by name.
    pub volumes: Vec<Volume>,
    /// Non-fatal remarks.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /v1/volumes/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePruneResponse {
    /// Names removed.
    pub volumes_deleted: Vec<String>,
    /// Bytes freed.
    pub space_reclaimed: u64,
}

/// The result of `POST /v1/volumes/{name}/import` (the `result` line of
/// its progress stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeImportResponse {
    /// The volume.
    pub name: String,
    /// The volume did not exist and was made.
    pub created: bool,
    /// An existing volume's content was replaced (`force=true`).
    pub replaced: bool,
    /// Tar entries read.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Device nodes left out (never made in a volume).
    #[serde(default)]
    pub skipped_devices: u64,
    /// Extended attributes left out (only `user.*` ones are restored).
    #[serde(default)]
    pub xattrs_dropped: u64,
}

/// One `--volumes-from` value, `SANDBOX[:ro|:rw]`: the sandbox and the
/// forced mode (`Some(true)` read-only, `Some(false)` read-write, `None`
/// as the source has it). Shared by mvctl (to refuse a bad flag before
/// any request) and mvmd (which gets it from any client).
pub fn parse_volumes_from(v: &str) -> Result<(&str, Option<bool>), String> {
    let (key, mode) = match v.rsplit_once(':') {
        Some((k, "ro")) => (k, Some(true)),
        Some((k, "rw")) => (k, Some(false)),
        Some((_, m)) => {
            return Err(format!(
                "--volumes-from {v:?}: unknown mode {m:?}; use SANDBOX, SANDBOX:ro or SANDBOX:rw"
            ))
        }
        None => (v, None),
    };
    if key.is_empty() {
        return Err(format!(
            "--volumes-from {v:?}: no sandbox given; use SANDBOX[:ro|:rw]"
        ));
    }
    Ok((key, mode))
}

/// The kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A host directory.
    Bind,
    /// A named or anonymous volume.
    Volume,
    /// A tmpfs in the guest.
    Tmpfs,
}

/// One mount of a create request (`-v`, `--mount`, `--tmpfs` of mvctl;
/// Docker's `HostConfig.Mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    /// bind, volume or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// bind: an absolute host directory; volume: its name (absent: a new
    /// anonymous volume); tmpfs: none.
    #[serde(default)]
    pub source: Option<String>,
    /// Absolute path in the sandbox.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs: size limit in bytes.
    #[serde(default)]
    pub tmpfs_size: Option<u64>,
    /// tmpfs: mode of its root (octal bits as a number, e.g. 1777 octal =
    /// 1023).
    #[serde(default)]
    pub tmpfs_mode: Option<u32>,
    /// tmpfs: mount options beyond size and mode (`exec`, `noexec`,
    /// `suid`, `nosuid`, `dev`, `nodev`); Docker's defaults are
    /// `noexec,nosuid,nodev`.
    #[serde(default)]
    pub tmpfs_options: Vec<String>,
}

/// One mount of an inspected sandbox (Docker's `Mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// bind, volume or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// The volume's name (volumes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The host directory (empty for tmpfs).
    pub source: String,
    /// The path in the sandbox.
    pub destination: String,
    /// `local` for volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `ro` or `rw` (with tmpfs' options).
    pub mode: String,
    /// Writable.
    pub rw: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_from_values_parse_like_dockers() {
        assert_eq!(parse_volumes_from("web").unwrap(), ("web", None));
        assert_eq!(parse_volumes_from("web:ro").unwrap(), ("web", Some(true)));
        assert_eq!(parse_volumes_from("web:rw").unwrap(), ("web", Some(false)));
        for bad in ["web:rx", ":ro", "", "web:"] {
            let e = parse_volumes_from(bad).unwrap_err();
            assert!(e.contains("--volumes-from"), "{bad}: {e}");
        }
    }
}
