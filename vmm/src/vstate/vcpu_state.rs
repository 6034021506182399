//! A vCPU's KVM state for snapshots: what to read, what to write back,
//! and in which order (the order is KVM's requirement, not a choice).
//!
//! Read on the vCPU's own thread while it is paused after a `KVM_RUN`
//! that returned through `immediate_exit`, so any port or MMIO read the
//! guest was waiting for has been completed into its registers.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;

use crate::arch::x86_64::cpuid::{self, CpuVendor};
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`: written last, once the TSC and the LAPIC are
/// back, or KVM drops it.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Errors reading or writing a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// A list could not be built (too many entries: a corrupt state).
    #[error("building the {what} list failed: {detail}")]
    List {
        /// Which list.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// KVM refused the guest's TSC: the snapshot's clocks cannot go on.
    #[error("KVM_SET_MSRS refused the TSC (MSR 0x10)")]
    TscRefused,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, source }
}

/// Everything KVM holds about one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value), the TSC deadline last.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The MSRs KVM can save, from `KVM_GET_MSR_INDEX_LIST` (read once on the
/// main thread during setup: a system ioctl no vCPU filter allows).
pub fn msrs_to_save(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, VcpuStateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v: Vec<u32> = list.as_slice().to_vec();
    // The deadline last (see MSR_IA32_TSC_DEADLINE).
    v.retain(|&i| i != MSR_IA32_TSC_DEADLINE);
    v.push(MSR_IA32_TSC_DEADLINE);
    Ok(v)
}

/// Read the MSRs of `indices` that this vCPU has. KVM lists some it
/// cannot read for every guest (it stops at the first such one); those
/// are left out, one by one.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| VcpuStateError::List {
            what: "MSR",
            detail: format!("{e:?}"),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // Entry n (if any) is one KVM cannot read: skip it.
        let consumed = if n < chunk.len() { n + 1 } else { n };
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Write `msrs`; returns those KVM refused (it stops at the first one
/// it refuses: the rest are written in another call).
fn write_msrs(fd: &VcpuFd, msrs: &[(u32, u64)]) -> Result<Vec<u32>, VcpuStateError> {
    let mut refused = Vec::new();
    let mut rest = msrs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|e| VcpuStateError::List {
            what: "MSR",
            detail: format!("{e:?}"),
        })?;
        let n = fd.set_msrs(&list).map_err(kvm_err("KVM_SET_MSRS"))?;
        let consumed = if n < chunk.len() {
            refused.push(chunk[n].0);
            n + 1
        } else {
            n
        };
        rest = &rest[consumed..];
    }
    Ok(refused)
}

impl VcpuState {
    /// Read the state of a paused vCPU (Firecracker's order: the MP
    /// state first, as reading it may change the LAPIC; the events last).
    pub fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        let mp_state = fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
        let debug_regs = fd.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut msrs = read_msrs(fd, msr_indices)?;
        // A deadline of 0 means "no timer armed"; written back as such
        // before the TSC it would be refused, so it is made the TSC's
        // value, which fires at once (the guest's handler re-arms).
        let tsc = msrs.iter().find(|m| m.0 == MSR_IA32_TSC).map(|m| m.1);
        if let (Some(tsc), Some(d)) = (
            tsc,
            msrs.iter_mut()
                .find(|m| m.0 == MSR_IA32_TSC_DEADLINE && m.1 == 0),
        ) {
            d.1 = tsc;
        }
        let events = fd
            .get_vcpu_events()
            .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// Write the state into a new vCPU, in the order KVM needs: CPUID
    /// first (the rest depends on it), regs before the events (SET_REGS
    /// clears pending exceptions that the events restore), sregs before
    /// the LAPIC (they restore the APIC base), the LAPIC before the MSRs
    /// (the TSC deadline needs it).
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|e| VcpuStateError::List {
            what: "CPUID",
            detail: format!("{e:?}"),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let vendor = cpuid::vendor(&self.cpuid);
        fd.set_sregs(&sregs_for_restore(&self.sregs, vendor))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` read back from KVM (or a
        // checksummed snapshot of one); KVM validates its contents and
        // refuses what the vCPU cannot hold.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        let refused = write_msrs(fd, &self.msrs)?;
        if refused.contains(&MSR_IA32_TSC) {
            return Err(VcpuStateError::TscRefused);
        }
        if !refused.is_empty() {
            tracing::warn!("restore: KVM refused MSRs {refused:#x?}; left at their reset values");
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        // Tell the guest's kvm-clock the vCPU was stopped, so its
        // watchdogs do not count the pause as a soft lockup. Old hosts
        // lack it (EINVAL): nothing to do then.
        if let Err(e) = fd.kvmclock_ctrl() {
            tracing::debug!("KVM_KVMCLOCK_CTRL: {e}");
        }
        Ok(())
    }
}

/// The segment registers to restore: `saved`, except that on AMD the
/// task register's type is "available 64-bit TSS" (9) instead of "busy"
/// (11).
///
/// Why: KVM on AMD reports TR as busy whatever the VMCB holds (svm.c sets
/// the busy bit in KVM_GET_SREGS, for CPUs that do not keep it), so a
/// snapshot always holds 11. Hardware does not care: neither SVM's VMRUN
/// nor the I/O-permission check of `in`/`out` looks at TR's type. But
/// QEMU's TCG, the emulated host of machine mode and of the e2e suites
/// (resources/testhost), refuses user-space port I/O through the TSS's
/// I/O bitmap unless TR's type is 9 (its `check_io`), which is what the
/// guest's own `ltr` leaves in TR on a cold boot there. With 11, every
/// restored guest's init died of a general protection fault at its next
/// status-port write (`ioperm`, then `out`: at the workload's exit or a
/// stop): found by the restore benchmark on 8 Dec 2026. Intel's VM entry
/// requires 11 (busy), so there the saved value is kept.
fn sregs_for_restore(saved: &kvm_sregs, vendor: CpuVendor) -> kvm_sregs {
    let mut s = *saved;
    if vendor == CpuVendor::Amd && s.tr.type_ == 11 {
        s.tr.type_ = 9;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_tr_is_an_available_tss_on_amd_only() {
        let mut saved = kvm_sregs::default();
        saved.tr.type_ = 11;
        saved.tr.limit = 0x4087;
        let amd = sregs_for_restore(&saved, CpuVendor::Amd);
        assert_eq!((amd.tr.type_, amd.tr.limit), (9, 0x4087));
        assert_eq!(sregs_for_restore(&saved, CpuVendor::Intel).tr.type_, 11);
        assert_eq!(sregs_for_restore(&saved, CpuVendor::Other).tr.type_, 11);
        // Anything else is left as it was.
        saved.tr.type_ = 3;
        assert_eq!(sregs_for_restore(&saved, CpuVendor::Amd).tr.type_, 3);
    }
}
