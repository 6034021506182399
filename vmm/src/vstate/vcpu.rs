//! vCPUs: configuring one for the PVH entry, and its run loop.
//!
//! Each vCPU runs KVM_RUN on its own thread. Port I/O and MMIO exits are
//! dispatched on the shared buses; exits that end the VM (triple fault,
//! entry failure, KVM internal error, reset) are reported to the
//! [`ExitSignal`] and the thread stops. The main thread decides the exit
//! status and ends the process; vCPU threads are not joined.
//!
//! A snapshot pauses them ([`VcpuHandles`]): the main thread sets each
//! one's pause flag and sends its thread [`KICK_SIGNAL`], whose handler
//! sets `immediate_exit` in the thread's `kvm_run`, so `KVM_RUN` returns
//! `EINTR` whether the signal came during the guest's run or just before
//! it (no lost wake-up). That return also completes any port or MMIO
//! read the guest was waiting for, so the registers read afterwards are
//! whole. The paused thread then serves [`VcpuCommand`]s until resumed.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::cpuid::{self, VcpuTopology};
use crate::arch::{interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, StopReason};
use crate::vstate::vcpu_state::VcpuState;
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
    #[error("restoring vCPU {index}: {source}")]
    Restore {
        index: u8,
        source: crate::vstate::vcpu_state::VcpuStateError,
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

/// What the main thread asks of a paused vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Read the vCPU's state and reply [`VcpuReply::Saved`].
    Save,
    /// Run the guest again.
    Resume,
}

/// What a vCPU thread tells the main thread.
#[derive(Debug)]
pub enum VcpuReply {
    /// It is paused and waits for commands.
    Paused(u8),
    /// Its state, or why it could not be read.
    Saved(u8, Result<Box<VcpuState>, String>),
}

/// A vCPU thread's side of the pause machinery.
pub struct VcpuControl {
    pause: Arc<AtomicBool>,
    commands: Receiver<VcpuCommand>,
    replies: Sender<VcpuReply>,
    /// The MSRs to save (`vcpu_state::msrs_to_save`).
    msrs: Arc<Vec<u32>>,
}

/// The signal that kicks a vCPU out of `KVM_RUN` (a real-time one, which
/// nothing else in the VMM uses).
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for [`kick_handler`].
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a const-initialised thread-local Cell is touched: no allocation,
    // no lock, async-signal-safe.
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // the run loop, which outlives every signal to this thread.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Install the kick signal's handler (once, before the vCPU threads).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(|e| {
        VcpuError::Thread {
            index: 0,
            source: std::io::Error::from_raw_os_error(e.errno()),
        }
    })
}

/// The main thread's handles on every vCPU thread, to pause them.
pub struct VcpuHandles {
    vcpus: Vec<(
        std::thread::JoinHandle<()>,
        Arc<AtomicBool>,
        Sender<VcpuCommand>,
    )>,
    replies: Receiver<VcpuReply>,
}

/// How long a vCPU may take to answer. Only a vCPU thread that ended
/// (the VM is stopping) or hangs in KVM misses it.
const VCPU_ANSWER: Duration = Duration::from_secs(10);

impl VcpuHandles {
    fn wait(&self, what: &str) -> Result<VcpuReply, String> {
        match self.replies.recv_timeout(VCPU_ANSWER) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "a vCPU did not answer within {VCPU_ANSWER:?} while {what}"
            )),
            Err(RecvTimeoutError::Disconnected) => Err(format!("the vCPUs ended while {what}")),
        }
    }

    /// Pause every vCPU; returns once all are paused.
    pub fn pause(&self) -> Result<(), String> {
        use std::os::unix::thread::JoinHandleExt;
        for (thread, pause, _) in &self.vcpus {
            pause.store(true, Ordering::SeqCst);
            // SAFETY: the thread is alive or a zombie not yet joined (we
            // hold its JoinHandle), so its pthread_t is valid.
            let ret = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
            if ret != 0 {
                return Err(format!(
                    "cannot signal a vCPU thread: {}",
                    std::io::Error::from_raw_os_error(ret)
                ));
            }
        }
        for _ in &self.vcpus {
            match self.wait("pausing")? {
                VcpuReply::Paused(_) => {}
                VcpuReply::Saved(i, _) => {
                    return Err(format!("vCPU {i} answered out of turn while pausing"))
                }
            }
        }
        Ok(())
    }

    /// The state of every paused vCPU, in index order.
    pub fn save(&self) -> Result<Vec<VcpuState>, String> {
        for (_, _, tx) in &self.vcpus {
            tx.send(VcpuCommand::Save)
                .map_err(|_| "a vCPU thread ended before saving its state".to_string())?;
        }
        let mut states: Vec<Option<VcpuState>> = (0..self.vcpus.len()).map(|_| None).collect();
        for _ in &self.vcpus {
            match self.wait("saving the vCPUs")? {
                VcpuReply::Saved(i, Ok(s)) => {
                    if let Some(slot) = states.get_mut(usize::from(i)) {
                        *slot = Some(*s);
                    }
                }
                VcpuReply::Saved(i, Err(e)) => return Err(format!("vCPU {i}: {e}")),
                VcpuReply::Paused(i) => {
                    return Err(format!("vCPU {i} answered out of turn while saving"))
                }
            }
        }
        states
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.ok_or_else(|| format!("vCPU {i} sent no state")))
            .collect()
    }

    /// Let every paused vCPU run again.
    pub fn resume(&self) {
        for (_, _, tx) in &self.vcpus {
            let _ = tx.send(VcpuCommand::Resume);
        }
    }
}

/// Start every vCPU's thread, with the pause machinery.
pub fn start_all(
    vcpus: Vec<Vcpu>,
    ctx: &VcpuContext,
    msrs: Arc<Vec<u32>>,
) -> Result<VcpuHandles, VcpuError> {
    let (reply_tx, replies) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for v in vcpus {
        let pause = Arc::new(AtomicBool::new(false));
        let (tx, commands) = std::sync::mpsc::channel();
        let control = VcpuControl {
            pause: pause.clone(),
            commands,
            replies: reply_tx.clone(),
            msrs: msrs.clone(),
        };
        let thread = v.start(ctx.clone(), control)?;
        handles.push((thread, pause, tx));
    }
    Ok(VcpuHandles {
        vcpus: handles,
        replies,
    })
}

/// What a KVM exit asks the run loop to do.
enum Next {
    Continue,
    /// `KVM_RUN` returned `EINTR`: a signal, maybe the pause kick.
    Interrupted,
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

    /// Write a snapshot's state into this new vCPU.
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuError> {
        state
            .restore(&self.fd)
            .map_err(|source| VcpuError::Restore {
                index: self.index,
                source,
            })
    }

    /// Start the run loop on its own thread.
    pub fn start(
        self,
        ctx: VcpuContext,
        control: VcpuControl,
    ) -> Result<std::thread::JoinHandle<()>, VcpuError> {
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
                let run = std::panic::AssertUnwindSafe(move || self.run(ctx, control));
                if std::panic::catch_unwind(run).is_err() {
                    exit.request(StopReason::VmmError(format!(
                        "the thread of vCPU {index} panicked"
                    )));
                }
            })
            .map_err(|source| VcpuError::Thread { index, source })
    }

    fn run(mut self, ctx: VcpuContext, control: VcpuControl) {
        let immediate_exit: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        loop {
            let next = self.run_once(&ctx);
            match next {
                Next::Continue => {}
                Next::Interrupted => {
                    if control.pause.load(Ordering::SeqCst) && !self.paused(&control) {
                        return;
                    }
                    // SAFETY: the field of this thread's own kvm_run; KVM
                    // reads it only inside KVM_RUN, which is not running.
                    unsafe { std::ptr::write_volatile(immediate_exit, 0) };
                }
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

    /// Paused: serve commands until told to resume (true) or the main
    /// thread is gone (false).
    fn paused(&mut self, control: &VcpuControl) -> bool {
        let index = self.index;
        if control.replies.send(VcpuReply::Paused(index)).is_err() {
            return false;
        }
        loop {
            match control.commands.recv() {
                Ok(VcpuCommand::Save) => {
                    let state = VcpuState::save(&self.fd, &control.msrs)
                        .map(Box::new)
                        .map_err(|e| e.to_string());
                    if control
                        .replies
                        .send(VcpuReply::Saved(index, state))
                        .is_err()
                    {
                        return false;
                    }
                }
                Ok(VcpuCommand::Resume) => {
                    control.pause.store(false, Ordering::SeqCst);
                    return true;
                }
                Err(_) => return false,
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
            Err(e) if e.errno() == libc::EINTR => Next::Interrupted,
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
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
