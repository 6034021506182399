//! What the host offers: CPUs, memory, KVM.
//!
//! Read from `/proc` on every call: limits are checked against the host as
//! it is now, not as it was when mvmd started.

use std::fs;
use std::path::Path;

/// Host CPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    /// Online CPUs available to this process.
    pub cpus: u32,
    /// `MemTotal` in MiB.
    pub mem_total_mib: u64,
    /// `MemAvailable` in MiB.
    pub mem_available_mib: u64,
}

impl HostResources {
    /// Read them from the running system.
    pub fn probe() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib / 1024)
        };
        let total = field("MemTotal:").unwrap_or(0);
        Self {
            cpus,
            mem_total_mib: total,
            mem_available_mib: field("MemAvailable:").unwrap_or(total),
        }
    }
}

/// How this host can run KVM guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmSupport {
    /// Hardware virtualization (VT-x / AMD-V, native or nested).
    Hardware,
    /// `/dev/kvm` is PVM, which cannot boot a stock guest kernel.
    Pvm,
    /// No `/dev/kvm`.
    None,
}

impl KvmSupport {
    /// Detect the mode the way `mvm-vmm --check-kvm` does, from files only.
    pub fn detect() -> Self {
        if !Path::new("/dev/kvm").exists() {
            return Self::None;
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if Path::new("/sys/module/kvm_pvm").exists() || !hw {
            return Self::Pvm;
        }
        Self::Hardware
    }

    /// A line for `mvctl system info`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Hardware => "hardware virtualization (VT-x/AMD-V) on /dev/kvm",
            Self::Pvm => "/dev/kvm is PVM or lacks vmx/svm: it cannot boot the guest kernel; use the emulated KVM host (mvctl machine start)",
            Self::None => "no /dev/kvm: load kvm_intel or kvm_amd, or use the emulated KVM host (mvctl machine start)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_proc() {
        let h = HostResources::probe();
        assert!(h.cpus >= 1);
        assert!(h.mem_total_mib > 0);
        assert!(h.mem_available_mib <= h.mem_total_mib);
    }
}
