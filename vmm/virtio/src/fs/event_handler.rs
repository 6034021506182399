//! virtio-fs as an `event_manager` subscriber.
//!
//! Unlike the other devices it never watches its queue EventFds: they are
//! the backend's kick descriptors, and reading them here would steal the
//! backend's wake-ups. It watches the call EventFd (the backend used
//! buffers: set the used-ring bit and raise the interrupt) and the
//! backend's socket for a hang-up (the backend is gone).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{error, warn};

use super::device::Fs;

/// Event tag of the call EventFd.
pub const TAG_CALL: u32 = 100;
/// Event tag of the backend's socket.
pub const TAG_BACKEND: u32 = 101;

impl Fs {
    /// The backend used buffers: tell the guest.
    fn relay_call(&mut self) {
        // EAGAIN: a spurious wake-up; the counter was already read.
        let _ = self.call.read();
        if self.failed || !self.common.is_activated() {
            return;
        }
        if let Err(e) = self.common.interrupt().signal_used_queue() {
            warn!("virtio-fs {:?}: {e}", self.tag());
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.call, TAG_CALL, EventSet::IN)) {
            error!(
                "virtio-fs {:?}: cannot watch the call EventFd: {e:?}",
                self.tag()
            );
        }
        // Only hang-ups: the backend writes nothing unasked on this socket
        // (no backend-initiated requests are negotiated), and replies to
        // our own requests must not wake the event loop.
        let hangup = EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
        if let Err(e) = ops.add(Events::with_data_raw(
            self.backend.socket_fd(),
            TAG_BACKEND,
            hangup,
        )) {
            error!(
                "virtio-fs {:?}: cannot watch the backend socket: {e:?}",
                self.tag()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_CALL if events.fd() == self.call.as_raw_fd() => self.relay_call(),
            TAG_BACKEND => {
                // Level-triggered: stop watching, or it fires forever.
                let _ = ops.remove(events);
                self.fail(
                    &"the backend closed its vhost-user socket (virtiofsd exited or was killed)",
                );
            }
            tag => warn!(
                "virtio-fs {:?}: unexpected event with tag {tag}",
                self.tag()
            ),
        }
    }
}
