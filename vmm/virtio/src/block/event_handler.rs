//! virtio-blk as an `event_manager` subscriber: it watches its activate
//! EventFd from registration and its queue EventFd once active, and drains
//! the queue when notified. Requests run synchronously on the event loop
//! thread (like Firecracker's sync engine): simple, and enough for a disk
//! that is mostly read once at boot.

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;

use super::device::Block;
use crate::common::DeviceEvent;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.handle_event(&events, ops) {
            // Notifications sent before the queue EventFd was watched are
            // still counted in it; epoll reports them right away.
            DeviceEvent::Activated => {}
            DeviceEvent::Queue(index) => {
                self.process_queue(index);
            }
            DeviceEvent::Other(tag) => {
                warn!("virtio-blk {}: unexpected event with tag {tag}", self.id());
            }
        }
    }
}
