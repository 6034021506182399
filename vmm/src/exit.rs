//! How a running VM comes to an end.
//!
//! Devices (the i8042 reset line), vCPU threads (triple fault, KVM errors)
//! and the signal handler all report a [`StopReason`] here; the first one
//! wins and wakes the main thread's event loop through an EventFd. The main
//! thread then decides the process's exit status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 0xFE, or a KVM reset/shutdown
    /// system event). Clean only if init announced a power-off first.
    Reset,
    /// Init announced the power-off (status port) and the guest did not
    /// reset within the grace after it: the run is complete all the same.
    PowerOff,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN); the text says which and
    /// where. On a PC that resets the machine, and kernels use it as a
    /// last-resort reboot method, so like [`StopReason::Reset`] it is clean
    /// after init's power-off notice and a crash otherwise.
    TripleFault(String),
    /// The guest crashed in a way the VMM saw directly.
    GuestCrash(String),
    /// The VMM failed (a KVM ioctl, an I/O error).
    VmmError(String),
    /// The VMM was asked to stop by this signal.
    Signal(i32),
    /// A snapshot was taken and the caller asked the VMM to end after it.
    Checkpointed,
}

/// The shared "stop the VM" latch.
pub struct ExitSignal {
    requested: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            requested: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Record `reason` unless another one came first, and wake the main
    /// thread. Safe to call from any thread, any number of times.
    pub fn request(&self, reason: StopReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
            self.requested.store(true, Ordering::SeqCst);
            // If this fails the counter is saturated, so the loop wakes anyway.
            let _ = self.evt.write(1);
        }
    }

    /// Whether a stop was requested (cheap; vCPU threads poll it).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The first reason reported.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// The EventFd the event loop watches.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let e = ExitSignal::new().unwrap();
        assert!(!e.is_requested());
        e.request(StopReason::Reset);
        e.request(StopReason::GuestCrash("later".into()));
        assert!(e.is_requested());
        assert_eq!(e.reason(), Some(StopReason::Reset));
        assert_eq!(e.evt().read().unwrap(), 1);
    }
}
