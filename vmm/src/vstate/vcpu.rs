//! vCPUs: configuring one for the PVH entry, and its run loop.
//!
//! Each vCPU runs KVM_RUN on its own thread. Port I/O and MMIO exits are
//! dispatched on the shared buses; exits that end the VM (triple fault,
//! entry failure, KVM internal error, reset) are reported to the
//! [`ExitSignal`] and the thread stops. The main thread decides the exit
//! status and ends the process; vCPU threads are not joined.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::cpuid::{self, VcpuTopology};
use crate::arch::{interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, StopReason};
use crate::vstate::vm::Vm;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_CPUID2 on vCPU {index} failed: {source}")]
    Cpuid {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {source}")]
    Msr { index: u8, source: msr::MsrError },
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: regs::RegsError },
    #[error("vCPU {index}: {source}")]
    Lapic {
        index: u8,
        source: interrupts::InterruptError,
    },
    #[error("starting the thread of vCPU {index} failed: {source}")]
    Thread { index: u8, source: std::io::Error },
}

/// The buses and the exit latch a vCPU thread works with.
#[derive(Clone)]
pub struct VcpuContext {
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    /// Install the vCPU seccomp filter before the first `KVM_RUN`.
    pub seccomp: bool,
}

/// One vCPU.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// What a KVM exit asks the run loop to do.
enum Next {
    Continue,
    Stop(StopReason),
    InternalError,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// Set CPUID, MSRs, registers, FPU and LAPIC for the PVH entry.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        count: u8,
        tsc_deadline: bool,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let mut cpuid = supported_cpuid.clone();
        cpuid::normalize(
            cpuid.as_mut_slice(),
            VcpuTopology {
                index,
                count,
                tsc_deadline,
            },
        );
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        msr::setup(&self.fd).map_err(|source| VcpuError::Msr { index, source })?;
        regs::setup(&self.fd, entry).map_err(|source| VcpuError::Regs { index, source })?;
        interrupts::setup_lints(&self.fd).map_err(|source| VcpuError::Lapic { index, source })?;
        Ok(())
    }

    /// Start the run loop on its own thread.
    pub fn start(self, ctx: VcpuContext) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // The guest runs only after the filter is in place; if it
                // cannot be, the VM ends with the reason.
                if ctx.seccomp {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::Role::Vcpu) {
                        ctx.exit
                            .request(StopReason::VmmError(format!("vCPU {index}: {e}")));
                        return;
                    }
                }
                // A bug here must end the VM with an error, not leave the
                // main thread waiting forever for a vCPU that is gone.
                let exit = ctx.exit.clone();
                let run = std::panic::AssertUnwindSafe(move || self.run(ctx));
                if std::panic::catch_unwind(run).is_err() {
                    exit.request(StopReason::VmmError(format!(
                        "the thread of vCPU {index} panicked"
                    )));
                }
            })
            .map_err(|source| VcpuError::Thread { index, source })
    }

    fn run(mut self, ctx: VcpuContext) {
        loop {
            let next = self.run_once(&ctx);
            match next {
                Next::Continue => {}
                Next::Stop(reason) => {
                    ctx.exit.request(reason);
                    return;
                }
                Next::InternalError => {
                    let msg = self.internal_error();
                    ctx.exit.request(StopReason::GuestCrash(msg));
                    return;
                }
            }
            if ctx.exit.is_requested() {
                return;
            }
        }
    }

    fn run_once(&mut self, ctx: &VcpuContext) -> Next {
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.io_bus.read(u64::from(port), data) {
                    tracing::trace!("vCPU {index}: unhandled in from port {port:#x}");
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.io_bus.write(u64::from(port), data) {
                    tracing::trace!("vCPU {index}: unhandled out to port {port:#x}: {data:02x?}");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio_bus.read(addr, data) {
                    tracing::debug!("vCPU {index}: unhandled MMIO read at {addr:#x}");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio_bus.write(addr, data) {
                    tracing::debug!("vCPU {index}: unhandled MMIO write at {addr:#x}");
                }
                Next::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                // On AMD, KVM re-INITs the vCPU before reporting this exit
                // (the VMCB is undefined after a shutdown), so the state is
                // the reset vector there; on Intel it is where it faulted.
                let state = self.state_summary();
                tracing::info!("vCPU {index} triple-faulted; state after the fault: {state}");
                Next::Stop(StopReason::TripleFault(format!(
                    "vCPU {index} triple-faulted (KVM_EXIT_SHUTDOWN; state after it: {state})"
                )))
            }
            Ok(VcpuExit::Hlt) => Next::Stop(StopReason::GuestCrash(format!(
                "vCPU {index} halted with no way to wake it (KVM_EXIT_HLT)"
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Stop(StopReason::VmmError(format!(
                "KVM could not enter vCPU {index} (KVM_EXIT_FAIL_ENTRY, hardware reason \
                 {reason:#x}, host cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(StopReason::Reset),
                KVM_SYSTEM_EVENT_CRASH => Next::Stop(StopReason::GuestCrash(format!(
                    "vCPU {index} reported a crash (KVM_SYSTEM_EVENT_CRASH)"
                ))),
                other => {
                    tracing::debug!("vCPU {index}: ignoring system event {other}");
                    Next::Continue
                }
            },
            Ok(VcpuExit::IrqWindowOpen | VcpuExit::Intr) => Next::Continue,
            Ok(other) => Next::Stop(StopReason::VmmError(format!(
                "vCPU {index}: unexpected KVM exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(StopReason::VmmError(format!(
                "KVM_RUN on vCPU {index} failed: {e}"
            ))),
        }
    }

    /// Where the vCPU was when it stopped: the registers that tell a kernel
    /// bug (rip in the kernel, paging on) from a boot-setup one (rip at the
    /// entry, paging off), for the crash report and the VMM log.
    fn state_summary(&self) -> String {
        let regs = match self.fd.get_regs() {
            Ok(r) => format!("rip={:#x} rsp={:#x} rflags={:#x}", r.rip, r.rsp, r.rflags),
            Err(e) => format!("registers unreadable ({e})"),
        };
        let sregs = match self.fd.get_sregs() {
            Ok(s) => format!(
                "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
            ),
            Err(e) => format!("special registers unreadable ({e})"),
        };
        format!("{regs} {sregs}")
    }

    /// Describe a KVM_EXIT_INTERNAL_ERROR from the kvm_run area.
    fn internal_error(&mut self) -> String {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let kind = match internal.suberror {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event failure",
            4 => "unexpected exit reason",
            _ => "internal error",
        };
        format!(
            "KVM internal error on vCPU {index}: {kind} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        )
    }
}
