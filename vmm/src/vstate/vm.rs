//! The KVM VM: interrupt controllers, PIT and memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory region {0} has no host mapping")]
    HostAddress(u32),
}

/// A VM with the in-kernel PIC, IOAPIC and PIT.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Create the VM in the order KVM expects: TSS address, then irqchip,
    /// then PIT (which needs the irqchip).
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        // The speaker port (0x61) is handled in-kernel as a dummy, so the
        // kernel's PIT calibration reads it without exits.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { fd })
    }

    /// Register every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VmError::HostAddress(slot))?;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes
            // owned by `mem`, which the caller keeps alive for the VM's life.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
