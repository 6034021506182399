//! `stats`: resource usage from the workload cgroup (cgroup v2) and /proc.
//!
//! CPU, memory and pids are the workload cgroup's (init and the agent stay
//! in the root cgroup, so they are not counted). Block and network I/O are
//! the whole guest's from /proc/diskstats and /proc/net/dev: the guest is
//! the sandbox, and its disks and interfaces are the sandbox's alone.
//! Every parser takes text and ignores lines it does not understand: these
//! files are the kernel's, but a parse failure must never take init down.

use std::path::Path;

use mvm_protocol::agent::Stats;

/// Collect everything; fields that cannot be read stay `None` / 0.
pub fn collect(cgroup: Option<&Path>) -> Stats {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut s = Stats::default();
    if let Some(cg) = cgroup {
        if let Some(text) = read(&cg.join("cpu.stat")) {
            s.cpu_usage_usec = key_value(&text, "usage_usec");
            s.cpu_user_usec = key_value(&text, "user_usec");
            s.cpu_system_usec = key_value(&text, "system_usec");
        }
        s.memory_usage_bytes = read(&cg.join("memory.current")).and_then(|t| t.trim().parse().ok());
        s.memory_limit_bytes = read(&cg.join("memory.max")).and_then(|t| match t.trim() {
            "max" => None,
            v => v.parse().ok(),
        });
        s.memory_cache_bytes = read(&cg.join("memory.stat")).and_then(|t| key_value(&t, "file"));
        s.pids = read(&cg.join("pids.current")).and_then(|t| t.trim().parse().ok());
    }
    if s.memory_usage_bytes.is_some() && s.memory_limit_bytes.is_none() {
        s.memory_limit_bytes = read(Path::new("/proc/meminfo")).and_then(|t| mem_total(&t));
    }
    if let Some(text) = read(Path::new("/proc/stat")) {
        let (total, cpus) = proc_stat(&text);
        s.system_cpu_usec = total;
        s.online_cpus = cpus;
    }
    if let Some(text) = read(Path::new("/proc/diskstats")) {
        (s.block_read_bytes, s.block_write_bytes) = diskstats(&text);
    }
    if let Some(text) = read(Path::new("/proc/net/dev")) {
        (s.net_rx_bytes, s.net_tx_bytes) = net_dev(&text);
    }
    s
}

/// `key value` lines (cpu.stat, memory.stat).
pub fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_ascii_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// `MemTotal:  N kB` in bytes.
pub fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Total CPU time of all CPUs in microseconds, and the number of CPUs,
/// from /proc/stat. The "cpu" line is in USER_HZ (100 on x86); guest and
/// guest_nice are already inside user and nice, so they are not added.
pub fn proc_stat(text: &str) -> (u64, u32) {
    let mut total = 0u64;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        match it.next() {
            Some("cpu") => {
                total = it
                    .take(8)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .fold(0u64, u64::saturating_add)
                    .saturating_mul(10_000);
            }
            Some(c) if c.starts_with("cpu") && c[3..].bytes().all(|b| b.is_ascii_digit()) => {
                cpus += 1
            }
            _ => {}
        }
    }
    (total, cpus)
}

/// Bytes read and written on whole virtio disks (`vda`, not `vda1`).
pub fn diskstats(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(name) = f.get(2) else { continue };
        let whole_virtio = name
            .strip_prefix("vd")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()));
        if !whole_virtio {
            continue;
        }
        let sectors = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        read = read.saturating_add(sectors(5).saturating_mul(512));
        written = written.saturating_add(sectors(9).saturating_mul(512));
    }
    (read, written)
}

/// Bytes received and sent on every interface but loopback.
pub fn net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_ascii_whitespace()
            .map_while(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files() {
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(key_value(cpu, "usage_usec"), Some(1500));
        assert_eq!(key_value(cpu, "system_usec"), Some(500));
        assert_eq!(key_value(cpu, "usage"), None);
        assert_eq!(key_value("anon 1\nfile 4096\n", "file"), Some(4096));
        assert_eq!(key_value("file x\n", "file"), None);
        assert_eq!(
            mem_total("MemTotal:      131072 kB\nMemFree: 1 kB\n"),
            Some(128 << 20)
        );
        assert_eq!(mem_total("garbage"), None);
    }

    #[test]
    fn proc_files_as_the_kernel_writes_them() {
        let stat = "cpu  100 2 30 400 5 0 1 0 7 0\ncpu0 50 1 15 200 2 0 1 0 0 0\ncpu1 50 1 15 200 3 0 0 0 0 0\nintr 5\ncpufreq 1\n";
        assert_eq!(proc_stat(stat), (538 * 10_000, 2));
        let disks = " 254       0 vda 10 0 800 5 3 0 16 1 0 0 0 0 0 0 0 0 0\n 254       1 vda1 10 0 800 5 3 0 16 1 0 0 0\n 254      16 vdb 1 0 8 0 2 0 24 0 0 0 0\n   7       0 loop0 1 0 1000 0 0 0 1000 0 0 0 0\n";
        assert_eq!(diskstats(disks), (808 * 512, 40 * 512));
        let net = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  999 9 0 0 0 0 0 0  999 9 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  eth1:   24 1 0 0 0 0 0 0   48 1 0 0 0 0 0 0\n";
        assert_eq!(net_dev(net), (1024, 2048));
        // Truncated or hostile lines are skipped, never a panic.
        assert_eq!(diskstats("1 2\n vda\n 1 2 vda x y z\n"), (0, 0));
        assert_eq!(net_dev("eth0: 1 2\n:\n"), (0, 0));
        assert_eq!(proc_stat("cpu x y\ncpuX 1\n"), (0, 0));
    }

    #[test]
    fn this_machines_proc_files_parse() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let (total, cpus) = proc_stat(&stat);
        assert!(total > 0 && cpus >= 1, "{total} {cpus}");
        let net = std::fs::read_to_string("/proc/net/dev").unwrap();
        net_dev(&net);
        let s = collect(None);
        assert!(s.system_cpu_usec > 0);
        assert_eq!(s.memory_usage_bytes, None);
    }
}
