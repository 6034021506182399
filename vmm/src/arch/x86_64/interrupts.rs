//! Local APIC setup: LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI, the
//! wiring the MP table's local interrupt entries describe and the kernel
//! expects when it finds no ACPI MADT.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// LVT LINT0 register offset in the APIC page.
pub const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors configuring the LAPIC.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("KVM_GET_LAPIC failed: {0}")]
    Get(kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC failed: {0}")]
    Set(kvm_ioctls::Error),
}

/// Read the 32-bit APIC register at `offset`.
pub fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Write the 32-bit APIC register at `offset`.
pub fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// Replace the delivery mode (bits 8..11) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Apply the LINT wiring to a LAPIC state.
pub fn wire_lints(lapic: &mut kvm_lapic_state) {
    let lint0 = get_reg(lapic, APIC_LVT0);
    set_reg(
        lapic,
        APIC_LVT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lint1, APIC_MODE_NMI));
}

/// Configure `vcpu`'s LAPIC LINT0/LINT1.
pub fn setup_lints(vcpu: &VcpuFd) -> Result<(), InterruptError> {
    let mut lapic = vcpu.get_lapic().map_err(InterruptError::Get)?;
    wire_lints(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(InterruptError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lints_get_their_delivery_modes() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x0001_0700); // masked, some old mode
        set_reg(&mut l, APIC_LVT1, 0xffff_ffff);
        wire_lints(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&l, APIC_LVT1) & 0x700, 0x400);
        assert_eq!(
            get_reg(&l, APIC_LVT1) | 0x700,
            0xffff_ffff,
            "other bits kept"
        );
        set_reg(&mut l, APIC_LVT0, 0);
        wire_lints(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x700);
    }
}
