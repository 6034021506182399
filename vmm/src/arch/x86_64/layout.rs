//! Guest physical address layout for x86_64.
//!
//! Everything the VMM places in guest memory has a fixed home here so the
//! pieces (boot info, MP table, GDT, command line, MMIO window) can never
//! overlap by accident. The values follow Firecracker's layout, which the
//! Linux PVH entry and the MP-table scan are known to accept.

use vm_memory::GuestAddress;

/// Start of the GDT the vCPUs boot with (32-bit flat segments for PVH).
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) boot IDT, right after the GDT's four entries.
pub const BOOT_IDT_START: u64 = 0x520;
/// The PVH `hvm_start_info` structure; its address goes to the guest in rbx.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH module list (one entry: the concatenated initrd).
pub const MODLIST_START: u64 = 0x6040;
/// The PVH memory map (e820-style entries).
pub const MEMMAP_START: u64 = 0x7000;
/// Room for memory map entries between MEMMAP_START and the next page.
pub const MEMMAP_MAX_ENTRIES: usize = 0x1000 / 24;
/// Stack pointer the boot vCPU starts with (PVH needs none, but a sane value
/// costs nothing and helps when debugging early faults).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The x86 kernel's command line limit (COMMAND_LINE_SIZE), including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM in the e820 map stops here
/// and the MP table lives here, where Linux's MP scan looks for it.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the MP floating pointer and configuration table are written.
pub const MPTABLE_START: u64 = EBDA_START;
/// The first megabyte ends here; the kernel and the initrd live above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: no RAM between these addresses so that device
/// windows, the IOAPIC and the LAPIC have 32-bit addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB); RAM continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The first virtio-mmio device window; later ones follow contiguously.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window (the `4K` of `virtio_mmio.device=`).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's MMIO base (emulated by KVM's in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// Where KVM's TSS for real-mode emulation lives (3 pages, inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The serial console's IRQ (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// The first IRQ handed to virtio devices (after the serial's).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The last usable IRQ: the IOAPIC has 24 pins.
pub const IRQ_MAX: u32 = 23;
/// How many virtio-mmio devices fit the IRQ range.
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// Page size, for aligning the initrd.
pub const PAGE_SIZE: u64 = 0x1000;

/// The guest RAM regions for `size` bytes of memory: one region below the
/// MMIO gap and, when memory does not fit there, a second from 4 GiB.
pub fn memory_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// The MMIO window and IRQ of the `index`-th virtio device.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_IRQ_BASE + index as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let r = memory_regions(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        let size = 4u64 << 30;
        let r = memory_regions(size);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, size);
        assert_eq!(low_ram_end(size), MMIO_GAP_START);
        // Exactly filling the low part needs no second region.
        assert_eq!(memory_regions(MMIO_GAP_START).len(), 1);
    }

    #[test]
    fn fixed_addresses_do_not_collide() {
        // Boot structures sit in the first MiB in a fixed order.
        let order = [
            BOOT_GDT_START,
            BOOT_IDT_START,
            PVH_INFO_START,
            MODLIST_START,
            MEMMAP_START,
            BOOT_STACK_POINTER,
            CMDLINE_START,
            CMDLINE_START + CMDLINE_MAX_SIZE as u64,
            MPTABLE_START,
            HIMEM_START,
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:x?}");
        // Device windows are inside the gap and clear of the APICs.
        let (last, irq) = virtio_slot(MAX_VIRTIO_DEVICES - 1);
        assert!(last + VIRTIO_MMIO_SIZE <= IOAPIC_ADDR);
        const { assert!(VIRTIO_MMIO_START >= MMIO_GAP_START) };
        assert_eq!(irq, IRQ_MAX);
        assert_ne!(virtio_slot(0).1, SERIAL_IRQ);
    }
}
