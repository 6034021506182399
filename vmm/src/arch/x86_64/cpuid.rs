//! CPUID for each vCPU: KVM's supported set, normalised for our topology.
//!
//! KVM_GET_SUPPORTED_CPUID describes what the host can virtualise, but its
//! topology fields describe the host package. Each vCPU gets a copy with
//! its own APIC id and a topology of `N` single-threaded cores in one
//! package, so the guest's scheduler and cache sizing see what we built.
//! Firecracker and Cloud Hypervisor do the same normalisation.

use kvm_bindings::kvm_cpuid_entry2;

/// The CPU vendor as reported by leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

/// What the normalisation needs to know about one vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its (x2)APIC id.
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC supports it, but
    /// KVM_GET_SUPPORTED_CPUID does not advertise it by itself.
    pub tsc_deadline: bool,
}

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaves 0xb/0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The vendor named by leaf 0 of `entries`.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> CpuVendor {
    let Some(e) = entries.iter().find(|e| e.function == LEAF_VENDOR) else {
        return CpuVendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&e.edx.to_le_bytes());
    id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// Bits needed to number `count` cores: the APIC id shift of the core level.
fn core_shift(count: u8) -> u32 {
    (u32::from(count.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |l| l + 1)
}

/// Normalise `entries` in place for the vCPU described by `topo`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology) {
    let vendor = vendor(entries);
    let id = u32::from(topo.index);
    let count = u32::from(topo.count.max(1));
    let shift = core_shift(topo.count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Subleaves with cache type 0 mark the end of the list.
            LEAF_CACHE if vendor == CpuVendor::Intel && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((count - 1) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZES if vendor == CpuVendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | ((shift & 0xf) << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_EXT_APIC if vendor == CpuVendor::Amd => {
                e.eax = id;
                e.ebx = id & 0xff; // one thread per core, core id = vCPU index
                e.ecx = 0; // one node
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |o: usize| u32::from_le_bytes(id[o..o + 4].try_into().unwrap());
        entry(0, 0, [0x1f, w(0), w(8), w(4)])
    }

    /// A host-shaped table: 16 threads, 8 cores, caches shared by 2 threads.
    fn intel_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"GenuineIntel"),
            entry(1, 0, [0x906ea, 0x0f10_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
            entry(4, 0, [0x1c00_4121, 0, 0, 0]), // L1d, 2 threads
            entry(4, 1, [0x1c00_4122, 0, 0, 0]), // L1i
            entry(4, 2, [0x1c00_4143, 0, 0, 0]), // L2
            entry(4, 3, [0x1c03_c163, 0, 0, 0]), // L3, 16 threads
            entry(4, 4, [0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(0xb, 2, [0, 0, 2, 7]),
        ]
    }

    fn find(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn vendor_is_read_from_leaf_0() {
        assert_eq!(vendor(&intel_host()), CpuVendor::Intel);
        assert_eq!(vendor(&[vendor_leaf(b"AuthenticAMD")]), CpuVendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"SomethingNew")]), CpuVendor::Other);
        assert_eq!(vendor(&[]), CpuVendor::Other);
    }

    #[test]
    fn core_shift_counts_bits() {
        let got: Vec<u32> = [1u8, 2, 3, 4, 5, 8, 9, 32]
            .iter()
            .map(|&c| core_shift(c))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 2, 3, 3, 4, 5]);
    }

    #[test]
    fn intel_topology_is_rewritten_per_vcpu() {
        let mut e = intel_host();
        normalize(
            &mut e,
            VcpuTopology {
                index: 3,
                count: 4,
                tsc_deadline: true,
            },
        );
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);

        let l1d = find(&e, 4, 0);
        assert_eq!(l1d.eax >> 26, 3, "cores per package - 1");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 is per core");
        assert_eq!(
            l1d.eax & 0x3fff,
            0x4121 & 0x3fff,
            "cache type and level kept"
        );
        assert_eq!((find(&e, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(find(&e, 4, 4).eax, 0, "terminator untouched");

        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00, end.edx), (0, 0, 0, 3));
    }

    #[test]
    fn single_vcpu_has_no_htt_and_deadline_follows_the_cap() {
        let mut e = intel_host();
        normalize(
            &mut e,
            VcpuTopology {
                index: 0,
                count: 1,
                tsc_deadline: false,
            },
        );
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&e, 4, 3).eax >> 14 & 0xfff, 0);
    }

    #[test]
    fn amd_leaves_are_rewritten() {
        let mut e = vec![
            vendor_leaf(b"AuthenticAMD"),
            entry(1, 0, [0x830f10, 0x0010_0800, 0, 0]),
            entry(4, 0, [0x1234_5678, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            entry(0x8000_001e, 0, [9, 0x100, 0x300, 0]),
        ];
        normalize(
            &mut e,
            VcpuTopology {
                index: 5,
                count: 6,
                tsc_deadline: false,
            },
        );
        assert_eq!(find(&e, 4, 0).eax, 0x1234_5678, "leaf 4 is Intel only");
        let sizes = find(&e, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 5);
        assert_eq!((sizes.ecx >> 12) & 0xf, 3);
        let ext = find(&e, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (5, 5, 0));
    }
}
