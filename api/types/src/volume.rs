//! Volumes and the mounts of a sandbox, in the shapes of Docker's Engine
//! API (lower snake case): `POST /v1/volumes`, `GET /v1/volumes`,
//! `GET/DELETE /v1/volumes/{name}`, `POST /v1/volumes/prune`, the
//! `mounts` of a create request and the `mounts` of an inspect.

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
    /// `local` (the default): a directory under mvmd's state root.
    #[serde(default)]
    pub driver: Option<String>,
    /// Driver options; `local` takes none.
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
    /// `local`.
    pub driver: String,
    /// The host directory holding the data.
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
