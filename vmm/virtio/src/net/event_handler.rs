//! virtio-net as an `event_manager` subscriber.
//!
//! Besides the activate and queue EventFds every device has, it watches the
//! TAP (edge-triggered: the rx path reads until `EAGAIN`, or leaves a
//! reason to come back: a queue notification when the guest posts
//! buffers, a limiter timer, or its own queue EventFd at the end of a
//! turn) and the timers of its rate limiters.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{error, warn};

use super::device::Net;
use super::{RXQ_INDEX, TAG_RX_LIMITER, TAG_TAP, TAG_TX_LIMITER, TXQ_INDEX};
use crate::common::DeviceEvent;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.common.init_events(ops);
        if let Err(e) = ops.add(Events::with_data(
            &self.tap,
            TAG_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )) {
            error!("virtio-net {}: cannot watch the TAP: {e:?}", self.id());
        }
        let timers = [
            (self.rx_limiter.as_ref(), TAG_RX_LIMITER),
            (self.tx_limiter.as_ref(), TAG_TX_LIMITER),
        ];
        for (limiter, tag) in timers {
            let Some(l) = limiter else { continue };
            let fd = l.timer().as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, tag, EventSet::IN)) {
                error!(
                    "virtio-net {}: cannot watch a rate limiter timer: {e:?}",
                    self.id()
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.common.handle_event(&events, ops) {
            // Frames may have waited in the TAP since before activation.
            DeviceEvent::Activated | DeviceEvent::Queue(RXQ_INDEX) => self.process_rx(),
            DeviceEvent::Queue(TXQ_INDEX) => self.process_tx(),
            DeviceEvent::Queue(q) => warn!("virtio-net {}: notification for queue {q}", self.id()),
            DeviceEvent::Other(TAG_TAP) => self.process_rx(),
            DeviceEvent::Other(TAG_RX_LIMITER) => {
                if let Some(l) = &mut self.rx_limiter {
                    l.timer_fired();
                }
                self.process_rx();
            }
            DeviceEvent::Other(TAG_TX_LIMITER) => {
                if let Some(l) = &mut self.tx_limiter {
                    l.timer_fired();
                }
                self.process_tx();
            }
            DeviceEvent::Other(tag) => {
                warn!("virtio-net {}: unexpected event with tag {tag}", self.id());
            }
        }
    }
}
