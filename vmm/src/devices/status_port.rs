//! The status port: guest init reports boot completion, the workload's
//! exit status and its intent to power off (see `mvm_protocol::status`).
//!
//! Only a 32-bit write at offset 0 counts; every other access, and every
//! value `GuestEvent::decode` does not know, is ignored, because the guest
//! is untrusted and a stray `outb` must not change the outcome.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mvm_protocol::status::{GuestEvent, InitError, STATUS_PORT, STATUS_PORT_LEN};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice};
use crate::exit::{ExitSignal, StopReason};
use crate::seccomp::SeccompError;

pub const PORT: u16 = STATUS_PORT;
pub const LEN: u16 = STATUS_PORT_LEN;

/// How long the guest may take, after init's power-off report, to reset
/// itself before the VMM stops it. The kernel's reboot path normally takes
/// milliseconds; meanwhile the devices keep working, so output init has
/// handed to the kernel (vsock) still reaches the host. Under the nested
/// emulation of the test host that path was seen to stall or triple-fault.
pub const POWER_OFF_GRACE: Duration = Duration::from_secs(3);

/// What happened to the workload, as init reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Exited(u8),
    Signaled(u8),
    InitError(InitError),
}

/// Everything the guest reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestStatus {
    /// Time from VMM start to init's BootComplete.
    pub boot_time: Option<Duration>,
    pub workload: Option<Workload>,
    /// Init announced the power-off: what follows is a clean end.
    pub power_off: bool,
    /// Init of a warm boot waits for its launch spec (`WarmReady`).
    pub warm_ready: bool,
}

/// The port device.
pub struct StatusPort {
    status: Arc<Mutex<GuestStatus>>,
    start: Instant,
    exit: Arc<ExitSignal>,
    /// Starts the `power-off` timer thread's grace period; dropped with
    /// the port, which ends that thread.
    power_off: mpsc::Sender<()>,
    /// Signalled once, at the first `WarmReady`: the control server's
    /// waiters are answered from the event loop.
    warm_ready: Option<Arc<EventFd>>,
}

impl StatusPort {
    /// `start` is when the VMM process started: the boot time is measured
    /// from there, which is what a user waiting for the sandbox sees.
    /// `exit` is told [`POWER_OFF_GRACE`] after init announces the
    /// power-off, unless the guest reset first.
    ///
    /// The grace timer is a thread started now (during setup, before any
    /// filter) with the helper seccomp filter when `seccomp`
    /// ([`crate::seccomp::spawn_helper`]); it waits until the power-off.
    pub fn new(start: Instant, exit: Arc<ExitSignal>, seccomp: bool) -> Result<Self, SeccompError> {
        Self::with_grace(start, exit, POWER_OFF_GRACE, seccomp)
    }

    fn with_grace(
        start: Instant,
        exit: Arc<ExitSignal>,
        grace: Duration,
        seccomp: bool,
    ) -> Result<Self, SeccompError> {
        let (power_off, announced) = mpsc::channel::<()>();
        let stop = exit.clone();
        crate::seccomp::spawn_helper("power-off", seccomp, move || {
            // An error: the port is gone (the VM ended) before any power-off.
            if announced.recv().is_err() {
                return;
            }
            std::thread::sleep(grace);
            if !stop.is_requested() {
                tracing::info!(
                    "the guest did not reset within {grace:?} of its power-off report; stopping it"
                );
                stop.request(StopReason::PowerOff);
            }
        })?;
        Ok(Self {
            status: Arc::default(),
            start,
            exit,
            power_off,
            warm_ready: None,
        })
    }

    /// Signal `evt` when a warm guest reports `WarmReady` (once).
    pub fn notify_warm_ready(&mut self, evt: Arc<EventFd>) {
        self.warm_ready = Some(evt);
    }

    /// A handle to read the reports after the VM stopped.
    pub fn status(&self) -> Arc<Mutex<GuestStatus>> {
        self.status.clone()
    }

    fn event(&mut self, ev: GuestEvent) {
        let mut s = lock(&self.status);
        match ev {
            GuestEvent::BootComplete => {
                if s.boot_time.is_none() {
                    let t = self.start.elapsed();
                    tracing::info!("guest boot complete after {} ms", t.as_millis());
                    s.boot_time = Some(t);
                }
            }
            GuestEvent::Exited(c) => s.workload = Some(Workload::Exited(c)),
            GuestEvent::Signaled(n) => s.workload = Some(Workload::Signaled(n)),
            GuestEvent::InitError(e) => s.workload = Some(Workload::InitError(e)),
            GuestEvent::PowerOff if !s.power_off => {
                // Everything is durable by now; the reset that follows is
                // awaited only for so long (by the timer thread, once).
                s.power_off = true;
                if self.power_off.send(()).is_err() {
                    self.exit.request(StopReason::PowerOff);
                }
            }
            GuestEvent::PowerOff => {}
            GuestEvent::WarmReady if !s.warm_ready => {
                tracing::info!("the warm guest is ready for its launch spec");
                s.warm_ready = true;
                if let Some(Err(e)) = self.warm_ready.as_ref().map(|e| e.write(1)) {
                    tracing::warn!("signalling the warm guest's readiness: {e}");
                }
            }
            GuestEvent::WarmReady => {}
        }
    }
}

impl BusDevice for StatusPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) else {
            return;
        };
        match GuestEvent::decode(u32::from_le_bytes(bytes)) {
            Some(ev) => self.event(ev),
            None => tracing::debug!("ignoring unknown status port value {bytes:02x?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(p: &mut StatusPort, ev: GuestEvent) {
        p.write(0, &ev.encode().to_le_bytes());
    }

    #[test]
    fn events_are_recorded() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let grace = Duration::from_millis(50);
        let mut p = StatusPort::with_grace(Instant::now(), exit.clone(), grace, false).unwrap();
        let s = p.status();
        out(&mut p, GuestEvent::BootComplete);
        let first = s.lock().unwrap().boot_time.unwrap();
        out(&mut p, GuestEvent::BootComplete);
        assert_eq!(
            s.lock().unwrap().boot_time,
            Some(first),
            "first boot event wins"
        );
        out(&mut p, GuestEvent::Exited(3));
        assert_eq!(s.lock().unwrap().workload, Some(Workload::Exited(3)));
        out(&mut p, GuestEvent::Signaled(9));
        assert_eq!(s.lock().unwrap().workload, Some(Workload::Signaled(9)));
        out(&mut p, GuestEvent::InitError(InitError::NotFound));
        assert_eq!(
            s.lock().unwrap().workload,
            Some(Workload::InitError(InitError::NotFound))
        );
        assert!(!s.lock().unwrap().power_off);
        assert!(!exit.is_requested(), "only the power-off stops the VM");
        let warm = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        p.notify_warm_ready(warm.clone());
        assert!(warm.read().is_err(), "not signalled before WarmReady");
        out(&mut p, GuestEvent::WarmReady);
        out(&mut p, GuestEvent::WarmReady);
        assert!(s.lock().unwrap().warm_ready);
        assert_eq!(warm.read().unwrap(), 1, "signalled once");
        let t = Instant::now();
        out(&mut p, GuestEvent::PowerOff);
        out(&mut p, GuestEvent::PowerOff);
        assert!(s.lock().unwrap().power_off);
        assert!(!exit.is_requested(), "the guest gets its grace to reset");
        while !exit.is_requested() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no stop after the grace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(t.elapsed() >= grace);
        assert_eq!(exit.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn other_widths_offsets_and_values_are_ignored() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut p = StatusPort::new(Instant::now(), exit.clone(), false).unwrap();
        let s = p.status();
        let v = GuestEvent::PowerOff.encode().to_le_bytes();
        p.write(1, &v);
        p.write(0, &v[..2]);
        p.write(0, &[v[3]]);
        p.write(0, &[0, 0, 0, 0xee]);
        p.write(0, &[0u8; 8]);
        assert_eq!(*s.lock().unwrap(), GuestStatus::default());
        assert!(!exit.is_requested());
        let mut r = [0xaau8; 4];
        p.read(0, &mut r);
        assert_eq!(r, [0; 4]);
    }

    /// The grace timer under its own filter (the helper role, installed
    /// on the timer thread of this test process): it still stops the VM
    /// after the grace. A call the filter lacks would kill this process.
    #[test]
    fn the_power_off_timer_works_under_its_filter() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let grace = Duration::from_millis(20);
        let mut p = StatusPort::with_grace(Instant::now(), exit.clone(), grace, true).unwrap();
        out(&mut p, GuestEvent::PowerOff);
        let t = Instant::now();
        while !exit.is_requested() {
            assert!(t.elapsed() < Duration::from_secs(10), "no stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(exit.reason(), Some(StopReason::PowerOff));
        // A port dropped before any power-off ends its timer thread.
        let p = StatusPort::with_grace(Instant::now(), exit, grace, true).unwrap();
        drop(p);
    }
}
