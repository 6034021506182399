//! What the host offers: CPUs and memory (whether its KVM can boot a
//! guest is `mvm_vmm_api::kvm`'s one probe).
//!
//! Read from `/proc` on every call: limits are checked against the host as
//! it is now, not as it was when mvmd started.

use std::fs;

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
