//! Boot register state for the PVH entry: general registers, segment
//! registers with their GDT/IDT in guest memory, and the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment_from_gdt};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START};

/// CR0.PE: protected mode, no paging (what PVH requires).
const X86_CR0_PE: u64 = 0x1;
/// x87 control word after FNINIT.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR reset value: all exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("writing the boot GDT/IDT to guest memory failed: {0}")]
    Gdt(#[from] vm_memory::GuestMemoryError),
}

/// General registers for the PVH entry: rip at the entry point, rbx at
/// the start info, only the reserved flag bit set.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    }
}

/// Write the boot GDT and an empty IDT to guest memory. Shared by all
/// vCPUs, so done once.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in boot_gdt().iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    Ok(())
}

/// Turn `sregs` (as read from KVM) into 32-bit flat protected mode.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// Set the general, segment and FPU registers of `vcpu` for the PVH entry.
pub fn setup(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(entry))
        .map_err(RegsError::SetRegs)?;
    let sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    vcpu.set_sregs(&pvh_sregs(sregs))
        .map_err(RegsError::SetSregs)?;
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_state() {
        let r = boot_regs(0x100_0abc);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0abc, PVH_INFO_START, 2));
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.ss.selector, s.tr.selector),
            (8, 16, 16, 24)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!(s.idt.base, BOOT_IDT_START);
    }

    #[test]
    fn gdt_lands_in_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_gdt_idt(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, boot_gdt()[1]);
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
    }
}
