//! State every virtio device has, whatever it does: features, queues,
//! EventFds, interrupt, and the active/inactive switch.
//!
//! Keeping it in one place means block, rng and later net and vsock differ
//! only in what they do with a descriptor chain, and share one tested
//! implementation of activation, reset and event registration.

use std::io;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events};
use tracing::{error, warn};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupt::{Interrupt, InterruptError};
use crate::queue::DrainOutcome;
use crate::ActivateError;

/// Event data tag of the activate EventFd in the event manager. Queue
/// EventFds use their queue index as tag; devices may use other small values
/// for their own file descriptors (tap, sockets).
pub const ACTIVATE_EVENT_DATA: u32 = u32::MAX;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CommonError {
    /// An EventFd could not be created (out of file descriptors?).
    #[error("cannot create an EventFd for the device: {0}")]
    EventFd(#[source] io::Error),
    /// The interrupt could not be created.
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
}

/// What an active device works on.
#[derive(Debug)]
pub struct ActiveState {
    /// Guest memory, for every descriptor access.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, one per queue index.
    pub queues: Vec<Queue>,
}

/// What an event delivered to a device's subscriber was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The device was just activated; its queue EventFds are now watched.
    Activated,
    /// The driver notified queue `n`.
    Queue(usize),
    /// Some other file descriptor the device registered itself, by tag.
    Other(u32),
}

/// The common part of every virtio device.
#[derive(Debug)]
pub struct VirtioCommon {
    avail_features: u64,
    acked_features: u64,
    queue_max_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    interrupt: Interrupt,
    active: Option<ActiveState>,
    queue_evts_registered: bool,
}

impl VirtioCommon {
    /// Creates the shared state of a device offering `avail_features`, with
    /// one queue per entry of `queue_max_sizes`.
    pub fn new(avail_features: u64, queue_max_sizes: &[u16]) -> Result<Self, CommonError> {
        let queue_evts = queue_max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(CommonError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            avail_features,
            acked_features: 0,
            queue_max_sizes: queue_max_sizes.to_vec(),
            queue_evts,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(CommonError::EventFd)?,
            interrupt: Interrupt::new()?,
            active: None,
            queue_evts_registered: false,
        })
    }

    /// Features offered.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features acked by the driver.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records acked features, keeping only offered ones.
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Whether the driver acked feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1u64 << bit) != 0
    }

    /// Maximum queue sizes.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// Queue EventFds.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The active state, if the device is active.
    pub fn active(&self) -> Option<&ActiveState> {
        self.active.as_ref()
    }

    /// The active state, mutably, if the device is active.
    pub fn active_mut(&mut self) -> Option<&mut ActiveState> {
        self.active.as_mut()
    }

    /// Whether the device is active.
    /// `(next_avail, next_used)` of each queue of the active device.
    pub fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        self.active.as_ref().map(|a| {
            a.queues
                .iter()
                .map(|q| (q.next_avail(), q.next_used()))
                .collect()
        })
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Takes the queues and memory and wakes the event loop so that it starts
    /// watching the queue EventFds.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != self.queue_max_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_max_sizes.len(),
                got: queues.len(),
            });
        }
        self.activate_evt
            .write(1)
            .map_err(ActivateError::ActivateEvent)?;
        self.active = Some(ActiveState { mem, queues });
        Ok(())
    }

    /// Drops queues and memory and forgets the acked features. The EventFds
    /// stay (and stay registered with the event loop): notifications that
    /// arrive while inactive are drained and ignored.
    pub fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.interrupt.reset();
    }

    /// Registers the activate EventFd (and the queue EventFds if the device
    /// is already active). Call from `MutEventSubscriber::init`.
    pub fn init_events(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE_EVENT_DATA,
            EventSet::IN,
        )) {
            error!("virtio: cannot watch the activate EventFd: {e}");
        }
        if self.active.is_some() {
            self.register_queue_events(ops);
        }
    }

    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_evts_registered {
            return;
        }
        for (index, evt) in self.queue_evts.iter().enumerate() {
            // Queue counts are tiny; the index always fits in the u32 tag.
            let tag = u32::try_from(index).unwrap_or(ACTIVATE_EVENT_DATA - 1);
            if let Err(e) = ops.add(Events::with_data(evt, tag, EventSet::IN)) {
                error!("virtio: cannot watch the EventFd of queue {index}: {e}");
            }
        }
        self.queue_evts_registered = true;
    }

    /// Decodes an event for this device, consuming the EventFd counter so
    /// that the level-triggered epoll does not report it again. Call first
    /// thing in `MutEventSubscriber::process`.
    pub fn handle_event(&mut self, events: &Events, ops: &mut EventOps) -> DeviceEvent {
        let tag = events.data();
        if tag == ACTIVATE_EVENT_DATA && events.fd() == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if self.active.is_some() {
                self.register_queue_events(ops);
            }
            return DeviceEvent::Activated;
        }
        match usize::try_from(tag) {
            Ok(index)
                if index < self.queue_evts.len()
                    && events.fd() == self.queue_evts[index].as_raw_fd() =>
            {
                // EAGAIN just means a concurrent reader got it first.
                let _ = self.queue_evts[index].read();
                DeviceEvent::Queue(index)
            }
            _ => DeviceEvent::Other(tag),
        }
    }

    /// Drains queue `index` with `handle` (see [`crate::queue::drain_queue`]).
    /// Does nothing if the device is inactive or the queue does not exist.
    pub fn drain_queue<F>(
        &mut self,
        index: usize,
        throttle: &mut LogThrottle,
        handle: F,
    ) -> DrainOutcome
    where
        F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
    {
        let Some(active) = self.active.as_mut() else {
            return DrainOutcome::default();
        };
        let (Some(queue), Some(evt)) = (active.queues.get_mut(index), self.queue_evts.get(index))
        else {
            return DrainOutcome::default();
        };
        crate::queue::drain_queue(queue, &active.mem, &self.interrupt, evt, throttle, handle)
    }

    /// Whether queue `index` exists, the device is active and the driver
    /// made the queue ready.
    pub fn queue_ready(&self, index: usize) -> bool {
        self.active
            .as_ref()
            .and_then(|a| a.queues.get(index))
            .is_some_and(|q| q.ready())
    }
}

/// Limits log lines caused by a misbehaving guest: the first few occurrences
/// are logged, then only every power of two, so a guest cannot flood the
/// host's logs while an operator still learns that something is wrong.
#[derive(Debug, Default)]
pub struct LogThrottle {
    count: u64,
}

impl LogThrottle {
    /// Counts one occurrence; returns whether it should be logged.
    pub fn should_log(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count <= 8 || self.count.is_power_of_two()
    }

    /// Occurrences so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Copies the part of `config` that overlaps `[offset, offset + data.len())`
/// into `data`; bytes past the end of `config` read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// Logs a warning through a throttle.
pub(crate) fn throttled_warn(
    throttle: &mut LogThrottle,
    what: &str,
    detail: &dyn std::fmt::Display,
) {
    if throttle.should_log() {
        warn!(
            "{what}: {detail} (occurrence {}; later ones are logged sparsely)",
            throttle.count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_are_clipped_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 4, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
        let mut one = [0u8; 1];
        read_config_bytes(&cfg, 0, &mut one);
        assert_eq!(one, [1]);
    }

    #[test]
    fn log_throttle_thins_out() {
        let mut t = LogThrottle::default();
        let logged = (0..1000).filter(|_| t.should_log()).count();
        // 1..=8, then 16, 32, 64, 128, 256, 512.
        assert_eq!(logged, 14);
    }

    #[test]
    fn activate_checks_queue_count_and_double_activation() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
        let mut c = VirtioCommon::new(1 << 32, &[16, 16]).unwrap();
        let err = c
            .activate(mem.clone(), vec![Queue::new(16).unwrap()])
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 2,
                got: 1
            }
        ));
        c.activate(
            mem.clone(),
            vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()],
        )
        .unwrap();
        assert!(c.is_activated());
        let err = c
            .activate(mem, vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()])
            .unwrap_err();
        assert!(matches!(err, ActivateError::AlreadyActive));
        c.set_acked_features(u64::MAX);
        assert_eq!(
            c.acked_features(),
            1 << 32,
            "only offered features are kept"
        );
        c.reset();
        assert!(!c.is_activated());
        assert_eq!(c.acked_features(), 0);
    }
}
