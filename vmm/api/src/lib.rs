//! The contract between `mvm-vmm` and the programs that start it (the
//! runtime library behind `mvmd` and the containerd shim, the Dockerfile
//! builder through the runtime, the test suites), in one place:
//!
//! - [`config`]: the VM configuration file (`mvm-vmm --config FILE`),
//!   typed and serialisable both ways, so the runtime writes exactly what
//!   the VMM reads;
//! - [`status`]: the status file the VMM writes when the VM ends, and the
//!   VMM's process exit codes;
//! - [`disk_lock`]: whether a disk image is in use by a VMM (the lock
//!   every VMM holds on its drives);
//! - [`kvm`]: whether this host's `/dev/kvm` can boot a stock guest
//!   kernel (hardware, PVM or none), the one probe `mvm-vmm`, `mvmd`,
//!   `mvctl` and the tests share.
//!
//! A crate of its own, as Firecracker keeps `vmm_config` apart from the
//! VMM: callers link this and not the VMM (its KVM, memory and device
//! code). What only the VMM can check (the kernel's PVH note, host
//! limits, the files themselves) stays in `mvm-vmm`'s validation.

pub mod config;
pub mod control;
pub mod disk_lock;
pub mod kvm;
pub mod snapshot;
pub mod status;

pub use config::{
    Artifacts, Console, DriveConfig, FsConfig, MacAddr, NetConfig, RateLimit, RestoreConfig,
    TapConfig, TokenBucket, VmConfig, VsockConfig,
};
pub use kvm::KvmMode;
pub use status::{GuestState, StatusReport, WorkloadReport};

/// Write `data` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over `path`, so a reader sees the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
