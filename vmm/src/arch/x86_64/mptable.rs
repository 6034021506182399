//! The Intel MultiProcessor Specification (1.4) table.
//!
//! Our guest kernel has no ACPI, so the MP table is how it learns how many
//! CPUs there are and how legacy IRQs reach the IOAPIC. Like Firecracker we
//! write it ourselves (it is small and fixed): a floating pointer structure
//! followed by the configuration table with one processor entry per vCPU,
//! one ISA bus, the IOAPIC, an I/O interrupt entry per IOAPIC pin and the
//! two local interrupt entries (LINT0 ExtINT, LINT1 NMI). All fields are
//! little endian; we serialise explicitly instead of casting packed structs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, HIMEM_START, IOAPIC_ADDR, IRQ_MAX, MPTABLE_START};

/// The most vCPUs an MP table (8-bit APIC ids, IOAPIC id after them) holds
/// in this VMM; also the cap on `vcpus` in the configuration.
pub const MAX_SUPPORTED_CPUS: u32 = 32;

const MPF_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature; only informative (the kernel uses CPUID).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;
/// Local APIC and IOAPIC version numbers as KVM reports them.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_APIC_USABLE: u8 = 1;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit the MP table (1 to {MAX_SUPPORTED_CPUS})")]
    CpuCount(u32),
    #[error("the MP table ({0} bytes) does not fit the EBDA")]
    TooLarge(usize),
    #[error("writing the MP table to guest memory failed: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: the first id after the vCPUs' local APIC ids.
pub fn ioapic_id(num_cpus: u32) -> u8 {
    num_cpus as u8 + 1
}

/// Build the floating pointer and configuration table for `num_cpus`
/// vCPUs, to be placed at guest address `base`.
pub fn build(num_cpus: u32, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let ioapic = ioapic_id(num_cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let mut e = [0u8; PROCESSOR_SIZE];
        e[0] = MP_PROCESSOR;
        e[1] = cpu as u8; // local APIC id = vCPU index
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let mut e = [0u8; SMALL_ENTRY_SIZE];
    e[0] = MP_IOAPIC;
    e[1] = ioapic;
    e[2] = IOAPIC_VERSION;
    e[3] = MPC_APIC_USABLE;
    e[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    entries.extend_from_slice(&e);
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // type, irqtype, irqflag (u16: conforming), src bus, src irq, dst apic, dst pin
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic, irq]);
        count += 1;
    }
    // LINT0 of every local APIC is the 8259's ExtINT, LINT1 is NMI.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let total = MPF_SIZE + table_len;
    if base + total as u64 > EBDA_START + 0x400 || base + (total as u64) > HIMEM_START {
        return Err(MptableError::TooLarge(total));
    }

    let mut header = [0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"MVM     ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut mpf = [0u8; MPF_SIZE];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = 4; // spec revision 1.4
    mpf[10] = checksum_fix(&mpf);

    let mut out = mpf.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Write the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u32) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

/// The byte that makes the sum of `bytes` (with that byte as zero) zero.
fn checksum_fix(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Parse the table back the way a kernel would and return
    /// (processor entries as (apic id, flags), io interrupt count, lint count).
    fn parse(bytes: &[u8], base: u64) -> (Vec<(u8, u8)>, usize, usize) {
        assert_eq!(&bytes[0..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
        let physptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        let t = &bytes[(physptr - base) as usize..];
        assert_eq!(&t[0..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(sum(&t[..len]), 0, "config table checksum");
        let count = u16::from_le_bytes([t[34], t[35]]);
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()) as u64,
            APIC_ADDR
        );
        let (mut cpus, mut ints, mut lints) = (Vec::new(), 0, 0);
        let mut off = HEADER_SIZE;
        for _ in 0..count {
            match t[off] {
                MP_PROCESSOR => {
                    cpus.push((t[off + 1], t[off + 3]));
                    off += PROCESSOR_SIZE;
                }
                MP_INTSRC => {
                    ints += 1;
                    off += 8;
                }
                MP_LINTSRC => {
                    lints += 1;
                    off += 8;
                }
                MP_BUS | MP_IOAPIC => off += 8,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(off, len, "entries fill the table exactly");
        (cpus, ints, lints)
    }

    #[test]
    fn tables_parse_back_for_every_cpu_count() {
        for n in 1..=MAX_SUPPORTED_CPUS {
            let b = build(n, MPTABLE_START).unwrap();
            let (cpus, ints, lints) = parse(&b, MPTABLE_START);
            assert_eq!(cpus.len(), n as usize);
            for (i, (id, flags)) in cpus.iter().enumerate() {
                assert_eq!(*id as usize, i);
                assert_eq!(*flags & CPU_ENABLED, CPU_ENABLED);
                assert_eq!(*flags & CPU_BOOTPROCESSOR != 0, i == 0);
            }
            assert_eq!(ints, IRQ_MAX as usize + 1);
            assert_eq!(lints, 2);
        }
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(MptableError::CpuCount(0))
        ));
        assert!(matches!(
            build(33, MPTABLE_START),
            Err(MptableError::CpuCount(33))
        ));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        setup(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
