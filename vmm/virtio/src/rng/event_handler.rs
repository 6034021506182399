//! virtio-rng as an `event_manager` subscriber (same shape as virtio-blk's).

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;

use super::device::Rng;
use crate::common::DeviceEvent;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init_events(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.handle_event(&events, ops) {
            DeviceEvent::Activated => {}
            DeviceEvent::Queue(index) => {
                self.process_queue(index);
            }
            DeviceEvent::Other(tag) => warn!("virtio-rng: unexpected event with tag {tag}"),
        }
    }
}
