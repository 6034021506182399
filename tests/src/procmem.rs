//! A VMM's host memory from `/proc/PID/smaps`, split into guest RAM and
//! the VMM's own.
//!
//! Guest RAM is anonymous private memory unless a virtio-fs device needs a
//! shared memfd (`mvm-vmm`'s `vstate::memory`), so `RssAnon` alone no
//! longer separates the VMM's heap from what the guest touched, nor
//! `RssShmem` the guest's pages. The guest's mapping is found by its size
//! instead: the VMM maps guest RAM below the MMIO gap (3 GiB) as exactly
//! one mapping of the guest's size (aligned, the slack unmapped), and so
//! does QEMU's `memory-backend-memfd`. Nothing else in either process is
//! that large, for the sizes the tests and benchmarks use.

use std::fs;

/// One reading, KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmmMemory {
    /// Resident pages of the guest RAM mapping(s).
    pub guest: u64,
    /// Their proportional share (PSS): a page mapped by N processes
    /// counts 1/N here. Guest RAM restored from a snapshot's memory file
    /// shares the pages the guest only read with every other mapping of
    /// that file (and the page cache).
    pub guest_pss: u64,
    /// Of `guest`, the anonymous pages: for RAM restored from a memory
    /// file, the guest's private copies of the pages it wrote; the rest
    /// of `guest` is the file's shared pages.
    pub guest_anon: u64,
    /// Every other resident page of the process: its heap, stacks,
    /// executable and libraries.
    pub own: u64,
    /// Of `own`, the anonymous part (heap, stacks), which a guest could
    /// try to grow.
    pub own_anon: u64,
}

/// Read `/proc/PID/smaps` of a VMM whose guest has `guest_bytes` of RAM
/// (at most 3 GiB: one mapping). `None` once the process is gone.
pub fn read(pid: u32, guest_bytes: u64) -> Option<VmmMemory> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(parse(&smaps, guest_bytes))
}

/// [`read`] on the text of an smaps file.
pub fn parse(smaps: &str, guest_bytes: u64) -> VmmMemory {
    let mut m = VmmMemory::default();
    let mut is_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `START-END PERMS OFFSET DEV INODE [PATH]`.
            is_guest = first
                .split_once('-')
                .and_then(|(a, b)| {
                    let a = u64::from_str_radix(a, 16).ok()?;
                    let b = u64::from_str_radix(b, 16).ok()?;
                    Some(b - a == guest_bytes)
                })
                .unwrap_or(false);
            continue;
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" if is_guest => m.guest += kib(),
            "Rss:" => m.own += kib(),
            "Pss:" if is_guest => m.guest_pss += kib(),
            "Anonymous:" if is_guest => m.guest_anon += kib(),
            "Anonymous:" => m.own_anon += kib(),
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_mapping_is_told_apart_by_its_size() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/mvm-vmm
Rss:                 800 kB
Anonymous:             0 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Rss:               22528 kB
Pss:               14336 kB
Anonymous:          6144 kB
VmFlags: rd wr mr mw me ac dc hg
7f0008000000-7f0008200000 rw-p 00000000 00:00 0 
Rss:                 300 kB
Anonymous:           300 kB
";
        assert_eq!(
            parse(smaps, 128 << 20),
            VmmMemory {
                guest: 22528,
                guest_pss: 14336,
                guest_anon: 6144,
                own: 1100,
                own_anon: 300
            }
        );
    }
}
