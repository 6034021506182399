//! Waking an L1 that lost a wake-up, before it counts as stalled.
//!
//! The emulated host's commonest fault now (resources/testhost/README.md,
//! "Reliability"): both of L1's vCPUs halted (`HLT=1`, interrupts on) with
//! the local APIC timer's vector and an IPI pending in IRR, above the
//! processor priority, and never delivered by QEMU 7.2's TCG. Nothing in
//! L1 runs again by itself: its heartbeat stops, and [`super::watch`]
//! would restart the machine after the stall limit, losing its sandboxes.
//! A kick from QEMU's monitor wakes it instead: `stop` and `cont` make each
//! vCPU thread look at its pending interrupts again; if the heartbeat is
//! still silent 20 s later, an NMI runs L1's NMI handler, whose console
//! message raises a self-IPI that re-arms the APIC's interrupt line.
//!
//! [`Waker`] decides when; the watcher does the monitor commands and logs
//! each kick, since each one is an emulation fault worth knowing about.
//! `resources/testhost/run` does the same for the e2e jobs.

use std::time::{Duration, SystemTime};

/// A heartbeat this old gets a kick (it comes every 10 s; the watcher's
/// stall limit is 120 s by default, so the kicks come well before it).
pub const WAKE_AFTER: Duration = Duration::from_secs(60);
/// After `stop`/`cont`, how long to wait for the heartbeat before an NMI.
pub const NMI_AFTER: Duration = Duration::from_secs(20);

/// What the watcher should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Nothing,
    /// Save the vCPUs' state, then send `stop` and `cont`.
    Continue,
    /// Send `nmi`.
    Nmi,
    /// The heartbeat is back after a kick; the text says which one.
    Woke(&'static str),
}

/// The monitor commands of a kick.
impl Action {
    /// HMP commands to send for this action (none for the others).
    pub fn commands(self) -> &'static [&'static str] {
        match self {
            Action::Continue => &["stop", "cont"],
            Action::Nmi => &["nmi"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    Continued { at: SystemTime },
    Nmi,
}

/// The kicks for one L1, one series per silent heartbeat.
#[derive(Debug, Clone)]
pub struct Waker {
    stage: Stage,
    /// The heartbeat the last series was for: a heartbeat that stays
    /// silent after both kicks is left to the stall limit.
    kicked_for: Option<SystemTime>,
}

impl Default for Waker {
    fn default() -> Self {
        Self::new()
    }
}

impl Waker {
    /// No kick yet.
    pub fn new() -> Self {
        Self {
            stage: Stage::Idle,
            kicked_for: None,
        }
    }

    /// The next action, given the time of the last heartbeat at `now`.
    pub fn step(&mut self, heartbeat: SystemTime, now: SystemTime) -> Action {
        let fresh = self.kicked_for != Some(heartbeat);
        match self.stage {
            Stage::Idle => {
                let age = now.duration_since(heartbeat).unwrap_or_default();
                if fresh && age >= WAKE_AFTER {
                    self.stage = Stage::Continued { at: now };
                    self.kicked_for = Some(heartbeat);
                    Action::Continue
                } else {
                    Action::Nothing
                }
            }
            Stage::Continued { .. } | Stage::Nmi if fresh => {
                let how = if self.stage == Stage::Nmi {
                    "stop/cont, then an NMI"
                } else {
                    "stop/cont"
                };
                self.stage = Stage::Idle;
                Action::Woke(how)
            }
            Stage::Continued { at } => {
                if now.duration_since(at).unwrap_or_default() >= NMI_AFTER {
                    self.stage = Stage::Nmi;
                    Action::Nmi
                } else {
                    Action::Nothing
                }
            }
            Stage::Nmi => Action::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_heartbeat_gets_stop_cont_then_an_nmi_then_nothing() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = Waker::new();
        assert_eq!(w.step(t0, at(10)), Action::Nothing);
        assert_eq!(w.step(t0, at(59)), Action::Nothing);
        assert_eq!(w.step(t0, at(60)), Action::Continue);
        assert_eq!(w.step(t0, at(65)), Action::Nothing);
        assert_eq!(w.step(t0, at(80)), Action::Nmi);
        // Still silent: the stall limit decides from here.
        assert_eq!(w.step(t0, at(100)), Action::Nothing);
        assert_eq!(w.step(t0, at(500)), Action::Nothing);
        // A heartbeat after all: reported, and the next silence is kicked
        // again.
        assert_eq!(
            w.step(at(510), at(511)),
            Action::Woke("stop/cont, then an NMI")
        );
        assert_eq!(w.step(at(510), at(569)), Action::Nothing);
        assert_eq!(w.step(at(510), at(570)), Action::Continue);
        assert_eq!(w.step(at(575), at(576)), Action::Woke("stop/cont"));
        assert_eq!(w.step(at(575), at(580)), Action::Nothing);
    }

    #[test]
    fn commands_of_each_kick() {
        assert_eq!(Action::Continue.commands(), ["stop", "cont"]);
        assert_eq!(Action::Nmi.commands(), ["nmi"]);
        assert!(Action::Nothing.commands().is_empty());
        assert!(Action::Woke("x").commands().is_empty());
    }
}
