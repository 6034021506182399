//! `GET /v1/info` and `GET /v1/version`.

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
