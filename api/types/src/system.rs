//! `GET /v1/info`, `GET /v1/version` and `GET /v1/system/df`.

use serde::{Deserialize, Serialize};

/// How mvmd reaches KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmMode {
    /// Hardware virtualization on this host.
    Hardware,
    /// Inside the emulated KVM host ("machine"), because the real host has
    /// none.
    Machine,
    /// No usable KVM; sandboxes cannot start.
    Unavailable,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// mvmd version.
    pub version: String,
    /// API version (`1`).
    pub api_version: String,
    /// KVM mode.
    pub kvm_mode: KvmMode,
    /// Free-text detail (vendor, PVM hint...).
    pub kvm_detail: String,
    /// Guest kernel path.
    pub kernel: String,
    /// Guest init path.
    pub init: String,
    /// VMM binary path.
    pub vmm: String,
    /// Whether VMMs run jailed (false: mvmd --no-jail).
    #[serde(default)]
    pub jail: bool,
    /// The jail's uid range (`100000-165535`), empty without a jail.
    #[serde(default)]
    pub jail_uids: String,
    /// Whether VMM threads run under their seccomp filters (false: mvmd
    /// --no-seccomp, or a daemon from before the filters).
    #[serde(default)]
    pub seccomp: bool,
    /// State root (`/var/lib/mvm`).
    pub root: String,
    /// Runtime dir (`/run/mvm`).
    pub run_dir: String,
    /// Sandboxes by state.
    pub sandboxes: SandboxCounts,
    /// Number of images.
    pub images: u64,
    /// Host CPUs and memory, for limits.
    pub host_cpus: u32,
    /// Host memory in MiB.
    pub host_memory_mib: u64,
    /// Host networking: `ok`, or why sandboxes get no network (mvmd not
    /// root).
    #[serde(default)]
    pub networking: String,
}

/// Counts shown by `mvctl system info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCounts {
    /// All.
    pub total: u64,
    /// Running.
    pub running: u64,
    /// Exited or created.
    pub stopped: u64,
}

/// `GET /v1/system/df`: disk use by kind, as `docker system df` shows it
/// (the rows of its table, then each kind's items for `-v`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Images: active = used by a sandbox (any state); reclaimable = the
    /// others' size.
    pub images: UsageSummary,
    /// Sandboxes (their own disks and logs): active = running;
    /// reclaimable = the stopped ones'.
    pub sandboxes: UsageSummary,
    /// Volumes (both drivers): active = used by a sandbox (any state);
    /// reclaimable = the unused ones'.
    pub volumes: UsageSummary,
    /// Each image.
    #[serde(default)]
    pub image_list: Vec<ImageUsage>,
    /// Each sandbox.
    #[serde(default)]
    pub sandbox_list: Vec<SandboxUsage>,
    /// Each volume.
    #[serde(default)]
    pub volume_list: Vec<VolumeUsageRow>,
}

/// One row of `system df`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// How many.
    pub total: u64,
    /// How many are in use.
    pub active: u64,
    /// Bytes they take on the host.
    pub size: u64,
    /// Bytes that removing the unused ones would free.
    pub reclaimable: u64,
}

/// An image in `system df -v`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUsage {
    /// Image ID.
    pub id: String,
    /// Its names.
    pub repo_tags: Vec<String>,
    /// Stored bytes (config and layers).
    pub size: u64,
    /// Sandboxes (any state) made from it.
    pub sandboxes: u64,
}

/// A sandbox in `system df -v`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUsage {
    /// Sandbox ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image as given.
    pub image: String,
    /// State (`running`, `exited`...).
    pub status: String,
    /// Bytes its directory takes (scratch disk as allocated, logs).
    pub size: u64,
}

/// A volume in `system df -v`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsageRow {
    /// Name.
    pub name: String,
    /// `local` or `block`.
    pub driver: String,
    /// Sandboxes (any state) that mount it.
    pub sandboxes: u64,
    /// Bytes it takes on the host.
    pub size: u64,
}
