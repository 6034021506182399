//! GDT entries for the boot vCPU and their KVM segment equivalents.
//!
//! PVH starts the kernel in 32-bit protected mode with flat 4 GiB code and
//! data segments. KVM takes the segment registers as `kvm_segment`s, and
//! the guest may reload them from the GDT in memory, so both views are
//! derived from the same 64-bit descriptors here.

use kvm_bindings::kvm_segment;

/// Flat 32-bit code: present, ring 0, execute/read, 4 KiB granularity, D=1.
pub const CODE_FLAGS: u16 = 0xc09b;
/// Flat 32-bit data: present, ring 0, read/write, 4 KiB granularity, B=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// A 32-bit TSS, present, busy.
pub const TSS_FLAGS: u16 = 0x008b;

/// Build a segment descriptor from its flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS (selectors 0x0, 0x8, 0x10, 0x18).
pub fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(CODE_FLAGS, 0, 0xffff_ffff),
        gdt_entry(DATA_FLAGS, 0, 0xffff_ffff),
        gdt_entry(TSS_FLAGS, 0, 0x67),
    ]
}

fn base(e: u64) -> u64 {
    ((e & 0xff00_0000_0000_0000) >> 32) | ((e & 0x0000_00ff_ffff_0000) >> 16)
}

fn limit(e: u64) -> u32 {
    let raw = (((e & 0x000f_0000_0000_0000) >> 32) | (e & 0xffff)) as u32;
    // KVM wants the limit in bytes: scale it when the granularity bit is set.
    if bit(e, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

fn bit(e: u64, n: u32) -> u8 {
    ((e >> n) & 1) as u8
}

/// The `kvm_segment` for descriptor `entry` at index `table_index`.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment() {
        let s = segment_from_gdt(boot_gdt()[1], 1);
        assert_eq!(s.selector, 0x8);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(
            (s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let d = segment_from_gdt(boot_gdt()[2], 2);
        assert_eq!((d.selector, d.type_, d.limit), (0x10, 0x3, 0xffff_ffff));
        let t = segment_from_gdt(boot_gdt()[3], 3);
        assert_eq!(
            (t.selector, t.type_, t.limit, t.s, t.g),
            (0x18, 0xb, 0x67, 0, 0)
        );
        let null = segment_from_gdt(boot_gdt()[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0x000a_bcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xa_bcde);
    }
}
