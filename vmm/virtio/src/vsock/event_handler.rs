//! virtio-vsock as an `event_manager` subscriber.
//!
//! Besides the activate and queue EventFds every device has, it watches the
//! listening socket, each host connection socket (tag
//! [`TAG_CONN`](super::unix::muxer::TAG_CONN), looked up by descriptor), a
//! timerfd for deadlines and a kick EventFd written by resets on vCPU
//! threads. Whatever the event, the handler ends the same way: expire
//! deadlines, move pending packets to the guest while it has buffers, then
//! bring epoll registrations and the timer up to date. (The tx queue is
//! only served on its notifications: it never waits for anything, so
//! nothing else has to resume it.)

use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{error, warn};

use super::device::Vsock;
use super::unix::muxer::{TAG_CONN, TAG_LISTENER};
use super::{EVQ_INDEX, RXQ_INDEX, TXQ_INDEX};
use crate::common::DeviceEvent;

/// Event tag of the deadline timer.
pub const TAG_TIMER: u32 = 18;
/// Event tag of the kick EventFd.
pub const TAG_KICK: u32 = 19;

impl Vsock {
    /// The common tail of every event.
    fn settle(&mut self, ops: &mut EventOps) {
        self.muxer.sweep(Instant::now());
        if self.is_active() {
            self.process_rx();
        }
        self.muxer.sync_epoll(ops);
        self.arm_timer();
    }

    fn is_active(&self) -> bool {
        self.common.is_activated()
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init_events(ops);
        for (fd, tag, what) in [
            (
                std::os::fd::AsRawFd::as_raw_fd(&self.timer),
                TAG_TIMER,
                "timer",
            ),
            (
                std::os::fd::AsRawFd::as_raw_fd(&self.kick),
                TAG_KICK,
                "kick",
            ),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, tag, EventSet::IN)) {
                error!("virtio-vsock: cannot watch the {what} descriptor: {e:?}");
            }
        }
        self.muxer.sync_epoll(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.handle_event(&events, ops) {
            // Host clients may have queued requests before the driver was
            // up; `settle` delivers them now.
            DeviceEvent::Activated => {}
            DeviceEvent::Queue(RXQ_INDEX) => {}
            DeviceEvent::Queue(TXQ_INDEX) => {
                self.process_tx();
            }
            // Event buffers are only used for transport resets.
            DeviceEvent::Queue(EVQ_INDEX) => {}
            DeviceEvent::Queue(q) => warn!("virtio-vsock: notification for unknown queue {q}"),
            DeviceEvent::Other(TAG_LISTENER) => self.muxer.accept_ready(Instant::now()),
            DeviceEvent::Other(TAG_CONN) => {
                self.muxer.socket_event(events.fd(), events.event_set());
            }
            DeviceEvent::Other(TAG_TIMER) => self.timer_fired(),
            DeviceEvent::Other(TAG_KICK) => {
                let _ = self.kick.read();
            }
            DeviceEvent::Other(tag) => warn!("virtio-vsock: unexpected event with tag {tag}"),
        }
        self.settle(ops);
    }
}
