//! Reporting [`GuestEvent`]s to the host.
//!
//! Today the only channel is the status port (`mvm_protocol::status`): one
//! 32-bit `out` per event, which works before any device is up and needs no
//! driver. The [`Reporter`] trait keeps the channel swappable (the vsock
//! agent will carry richer status later) and lets the rest of init report
//! through one global, [`report`], which the panic hook can reach too.
//!
//! Every event is also echoed to the console as an informational line
//! ([`describe`]), so it can be seen where no status port device exists.

use std::io;
use std::sync::OnceLock;

use mvm_protocol::status::GuestEvent;

/// A channel to the host for guest events. Reporting cannot fail from the
/// caller's point of view: there is nobody to tell.
pub trait Reporter: Send + Sync {
    fn report(&self, event: GuestEvent);
}

/// Why the status port cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot get access to I/O port {port:#x} (ioperm): {source}")]
    Ioperm { port: u16, source: io::Error },
    #[error("the status port exists only on x86_64")]
    Unsupported,
}

/// The status port at [`mvm_protocol::status::STATUS_PORT`].
#[derive(Debug)]
pub struct StatusPort {
    // Only `open` may build one: it proves ioperm succeeded.
    _granted: (),
}

impl StatusPort {
    /// Ask the kernel for access to the port (`ioperm`), which PID 1 has
    /// (CAP_SYS_RAWIO) when the kernel has `CONFIG_X86_IOPL_IOPERM`.
    #[cfg(target_arch = "x86_64")]
    pub fn open() -> Result<Self, StatusError> {
        use mvm_protocol::status::{STATUS_PORT, STATUS_PORT_LEN};
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        let ret = unsafe { libc::ioperm(STATUS_PORT.into(), STATUS_PORT_LEN.into(), 1) };
        if ret != 0 {
            return Err(StatusError::Ioperm {
                port: STATUS_PORT,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self { _granted: () })
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn open() -> Result<Self, StatusError> {
        Err(StatusError::Unsupported)
    }
}

impl Reporter for StatusPort {
    #[cfg(target_arch = "x86_64")]
    fn report(&self, event: GuestEvent) {
        let value = event.encode();
        // SAFETY: `open` obtained permission for this port with ioperm, so
        // the `out` cannot fault; it only writes a value to the VMM's
        // status device and touches no memory.
        unsafe {
            std::arch::asm!(
                "out dx, eax",
                in("dx") mvm_protocol::status::STATUS_PORT,
                in("eax") value,
                options(nomem, nostack, preserves_flags)
            );
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn report(&self, _event: GuestEvent) {}
}

/// Used when no channel could be opened: events still reach the console.
#[derive(Debug)]
pub struct ConsoleOnly;

impl Reporter for ConsoleOnly {
    fn report(&self, _event: GuestEvent) {}
}

static REPORTER: OnceLock<Box<dyn Reporter>> = OnceLock::new();

/// Install the process-wide reporter; later calls are ignored.
pub fn install(reporter: Box<dyn Reporter>) {
    let _ = REPORTER.set(reporter);
}

/// Report `event` on the installed channel and echo it to the console.
pub fn report(event: GuestEvent) {
    report_silently(event);
    crate::console::info(format_args!("{}", describe(event)));
}

/// Report `event` on the installed channel only, without a console line.
pub fn report_silently(event: GuestEvent) {
    if let Some(r) = REPORTER.get() {
        r.report(event);
    }
}

/// A one-line, human description of an event for the console.
pub fn describe(event: GuestEvent) -> String {
    match event {
        GuestEvent::BootComplete => "boot complete".into(),
        GuestEvent::Exited(code) => format!("workload exited with status {code}"),
        GuestEvent::Signaled(sig) => format!(
            "workload killed by signal {sig} ({})",
            signal_name(sig.into())
        ),
        GuestEvent::InitError(e) => format!("init error {}: {}", e as u32, e.describe()),
        GuestEvent::PowerOff => "powering off".into(),
        GuestEvent::WarmReady => "warm: ready, waiting for the launch spec".into(),
    }
}

/// The conventional name of a signal, for messages.
pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_protocol::status::InitError;

    #[test]
    fn descriptions_name_the_numbers() {
        assert_eq!(
            describe(GuestEvent::Exited(3)),
            "workload exited with status 3"
        );
        assert_eq!(
            describe(GuestEvent::Signaled(9)),
            "workload killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(GuestEvent::InitError(InitError::NotFound)),
            "init error 4: the executable was not found"
        );
    }
}
