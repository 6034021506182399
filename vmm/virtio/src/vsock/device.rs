//! The virtio-vsock device: configuration space (the guest CID), the three
//! queues, and the glue between the queues and the muxer.
//!
//! - tx (guest to device): every chain is parsed and handed to the muxer,
//!   then returned with used length 0. The tx queue never waits for the rx
//!   side: Linux's driver stops taking rx buffers while its replies wait
//!   for tx room, so such a wait is a deadlock. What the guest must be told
//!   waits in bounded queues instead (stray RSTs past their cap are
//!   dropped), and data is bounded by credit.
//! - rx (device to guest): pulled, not pushed: a chain is taken only when
//!   the muxer has a packet for it, and put back otherwise. When the guest
//!   has posted no buffers, pending packets wait in the muxer (bounded) and
//!   the device asks to be notified of new buffers.
//! - event: only written for a transport reset ([`Vsock::transport_reset`]).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::packet::{parse_rx, parse_tx};
use super::unix::{MuxerError, VsockMuxer};
use super::{
    EVQ_INDEX, MAX_GUEST_CID, MIN_GUEST_CID, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX,
    VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
};
use crate::common::{read_config_bytes, throttled_warn, CommonError, LogThrottle, VirtioCommon};
use crate::{ActivateError, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Chains handled per queue per event-loop turn before yielding (the queue
/// EventFd is re-armed so the rest is handled on the next turn).
const MAX_CHAINS_PER_TURN: usize = 4 * QUEUE_SIZE as usize;

/// How to build a vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID, 3 to 2^32 - 2.
    pub guest_cid: u64,
    /// Where host clients connect; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or too large.
    #[error(
        "vsock guest CID {0} is invalid: it must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}"
    )]
    BadCid(u64),
    /// The socket could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// EventFd or interrupt creation failed.
    #[error("virtio-vsock: {0}")]
    Common(#[from] CommonError),
    /// Internal EventFd or timer creation failed.
    #[error("virtio-vsock: cannot create {what}: {source}")]
    Fd {
        /// Which descriptor.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    pub(crate) common: VirtioCommon,
    cid: u64,
    pub(crate) muxer: VsockMuxer,
    /// Wakes the event loop after a reset from a vCPU thread, so dropped
    /// connections' descriptors are unwatched and closed promptly.
    pub(crate) kick: EventFd,
    /// Fires at the muxer's next deadline.
    pub(crate) timer: TimerFd,
    timer_armed_for: Option<Instant>,
    queue_throttle: LogThrottle,
    packet_throttle: LogThrottle,
    queue_max_sizes: [u16; 3],
}

impl Vsock {
    /// Validates the CID and listens on the socket path.
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cfg.guest_cid) {
            return Err(VsockError::BadCid(cfg.guest_cid));
        }
        let features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX);
        let queue_max_sizes = [QUEUE_SIZE; 3];
        let common = VirtioCommon::new(features, &queue_max_sizes)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| VsockError::Fd {
            what: "an EventFd",
            source,
        })?;
        let timer = nonblocking_timer().map_err(|source| VsockError::Fd {
            what: "a timerfd",
            source,
        })?;
        let muxer = VsockMuxer::new(cfg.guest_cid, &cfg.uds_path)?;
        Ok(Self {
            common,
            cid: cfg.guest_cid,
            muxer,
            kick,
            timer,
            timer_armed_for: None,
            queue_throttle: LogThrottle::default(),
            packet_throttle: LogThrottle::default(),
            queue_max_sizes,
        })
    }

    /// The guest CID.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// The muxer (for diagnostics and tests).
    pub fn muxer(&self) -> &VsockMuxer {
        &self.muxer
    }

    /// Takes packets from the tx queue. Returns whether any was used.
    pub fn process_tx(&mut self) -> bool {
        let now = Instant::now();
        let Self {
            common,
            muxer,
            queue_throttle,
            packet_throttle,
            ..
        } = self;
        if !common.queue_ready(TXQ_INDEX) {
            return false;
        }
        let mut reschedule = false;
        let (used, notify) = {
            let Some(active) = common.active_mut() else {
                return false;
            };
            let mem = &active.mem;
            let queue = &mut active.queues[TXQ_INDEX];
            let mut used = 0usize;
            'outer: loop {
                if let Err(e) = queue.disable_notification(mem) {
                    throttled_warn(queue_throttle, "virtio-vsock: tx queue", &e);
                    break;
                }
                let round_start = used;
                loop {
                    if used >= MAX_CHAINS_PER_TURN {
                        reschedule = true;
                        break 'outer;
                    }
                    let Some(chain) = next_chain(queue, mem, queue_throttle) else {
                        break;
                    };
                    let head = chain.head_index();
                    match parse_tx(mem, chain) {
                        Ok(pkt) => muxer.send_pkt(&pkt, now),
                        Err(bad) => {
                            throttled_warn(
                                packet_throttle,
                                "virtio-vsock: bad tx packet",
                                &bad.error,
                            );
                            if let Some(h) = bad.hdr {
                                muxer.reject_pkt(&h);
                            }
                        }
                    }
                    if let Err(e) = queue.add_used(mem, head, 0) {
                        throttled_warn(queue_throttle, "virtio-vsock: tx used ring", &e);
                    }
                    used += 1;
                }
                match queue.enable_notification(mem) {
                    // More arrived while notifications were off. Without
                    // progress this round the index is bogus: stop rather
                    // than spin.
                    Ok(true) if used > round_start => continue,
                    Ok(_) => break,
                    Err(e) => {
                        throttled_warn(queue_throttle, "virtio-vsock: tx queue", &e);
                        break;
                    }
                }
            }
            let notify = used > 0 && queue.needs_notification(mem).unwrap_or(true);
            (used, notify)
        };
        finish_turn(common, TXQ_INDEX, reschedule, notify);
        used > 0
    }

    /// Gives the guest what the muxer has for it, as long as the guest has
    /// buffers. Returns whether any buffer was used.
    pub fn process_rx(&mut self) -> bool {
        let now = Instant::now();
        let Self {
            common,
            muxer,
            queue_throttle,
            packet_throttle,
            ..
        } = self;
        if !common.queue_ready(RXQ_INDEX) || !muxer.has_pending_rx() {
            return false;
        }
        let mut reschedule = false;
        let (used, notify) = {
            let Some(active) = common.active_mut() else {
                return false;
            };
            let mem = &active.mem;
            let queue = &mut active.queues[RXQ_INDEX];
            let mut used = 0usize;
            let mut rechecked = false;
            while muxer.has_pending_rx() {
                if used >= MAX_CHAINS_PER_TURN {
                    reschedule = true;
                    break;
                }
                let Some(chain) = next_chain(queue, mem, queue_throttle) else {
                    // No buffers: ask to be told when there are. If some
                    // arrived meanwhile look once more, but only once: a
                    // bogus available index must not make this spin.
                    match queue.enable_notification(mem) {
                        Ok(true) if !rechecked => {
                            rechecked = true;
                            continue;
                        }
                        Ok(_) => break,
                        Err(e) => {
                            throttled_warn(queue_throttle, "virtio-vsock: rx queue", &e);
                            break;
                        }
                    }
                };
                rechecked = false;
                let head = chain.head_index();
                let len = match parse_rx(mem, chain) {
                    Ok(buf) if buf.data_capacity() > 0 => match muxer.recv_pkt(&buf, now) {
                        Some(len) => len,
                        None => {
                            // Nothing after all: leave the buffer for later.
                            queue.go_to_previous_position();
                            break;
                        }
                    },
                    Ok(_) => {
                        throttled_warn(
                            packet_throttle,
                            "virtio-vsock: dropped a rx buffer",
                            &"it has no room for data after the header",
                        );
                        0
                    }
                    Err(e) => {
                        throttled_warn(packet_throttle, "virtio-vsock: dropped a rx buffer", &e);
                        0
                    }
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    throttled_warn(queue_throttle, "virtio-vsock: rx used ring", &e);
                }
                used += 1;
            }
            let notify = used > 0 && queue.needs_notification(mem).unwrap_or(true);
            (used, notify)
        };
        finish_turn(common, RXQ_INDEX, reschedule, notify);
        used > 0
    }

    /// Drops every connection and tells the guest with a
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event, after which the driver
    /// resets its sockets and re-reads the CID (what a restored snapshot
    /// needs). Returns whether the event reached the guest (it needs an
    /// event buffer posted).
    pub fn transport_reset(&mut self) -> bool {
        self.muxer.kill_all();
        let _ = self.kick.write(1);
        let Self {
            common,
            queue_throttle,
            ..
        } = self;
        if !common.queue_ready(EVQ_INDEX) {
            return false;
        }
        let written = {
            let Some(active) = common.active_mut() else {
                return false;
            };
            let mem = &active.mem;
            let queue = &mut active.queues[EVQ_INDEX];
            let Some(chain) = next_chain(queue, mem, queue_throttle) else {
                warn!("virtio-vsock: no event buffer for the transport reset event");
                return false;
            };
            let head = chain.head_index();
            let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
            let mut written = 0u32;
            if let Some(desc) = chain.clone().next() {
                if desc.is_write_only()
                    && desc.len() as usize >= event.len()
                    && mem.write_slice(&event, desc.addr()).is_ok()
                {
                    written = event.len() as u32;
                }
            }
            if let Err(e) = queue.add_used(mem, head, written) {
                throttled_warn(queue_throttle, "virtio-vsock: event used ring", &e);
            }
            written
        };
        finish_turn(common, EVQ_INDEX, false, true);
        written > 0
    }

    /// Arms the timer for the muxer's next deadline.
    pub(crate) fn arm_timer(&mut self) {
        let next = self.muxer.next_deadline();
        if next == self.timer_armed_for {
            return;
        }
        let res = match next {
            Some(t) => {
                // A zero duration would disarm the timer; fire "now" instead.
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(std::time::Duration::from_millis(1));
                self.timer.reset(d, None)
            }
            None => self.timer.clear(),
        };
        match res {
            Ok(()) => self.timer_armed_for = next,
            Err(e) => warn!("virtio-vsock: cannot arm the timer: {e}"),
        }
    }

    /// Forgets that the timer was armed (it just fired).
    pub(crate) fn timer_fired(&mut self) {
        let _ = self.timer.wait();
        self.timer_armed_for = None;
    }
}

/// After a queue turn: re-arm the queue EventFd if work was left, and
/// interrupt the guest if the ring asks for it.
fn finish_turn(common: &VirtioCommon, index: usize, reschedule: bool, notify: bool) {
    if reschedule {
        if let Some(evt) = common.queue_evts().get(index) {
            let _ = evt.write(1);
        }
    }
    if notify {
        if let Err(e) = common.interrupt().signal_used_queue() {
            warn!("virtio-vsock: {e}");
        }
    }
}

/// Takes the next available chain, with throttled warnings for a broken
/// available ring.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    throttle: &mut LogThrottle,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            throttled_warn(throttle, "virtio-vsock: unusable available ring", &e);
            None
        }
    }
}

/// A timerfd whose read never blocks: a stale readiness report must not
/// stall the event loop.
fn nonblocking_timer() -> io::Result<TimerFd> {
    let t = TimerFd::new()?;
    let fd = t.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with valid flag arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.set_acked_features(features);
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-vsock: ignored config write of {} bytes at {offset:#x} (the CID is read-only)",
            data.len()
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.common.activate(mem, queues)
    }

    fn reset(&mut self) {
        // The driver forgets its sockets; so do we. Descriptors are closed
        // on the event loop thread (the kick), which owns the epoll set.
        self.common.reset();
        self.muxer.kill_all();
        let _ = self.kick.write(1);
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        self.common.queue_positions()
    }

    fn prepare_snapshot(&mut self) -> Result<(), String> {
        // The host ends of the connections cannot be saved: both sides
        // drop them, the guest when it reads the event (at once here, or
        // in the restored VM). Listening sockets survive.
        if self.common.is_activated() && !self.transport_reset() {
            warn!("virtio-vsock: the guest had no event buffer for the transport reset");
        }
        Ok(())
    }

    fn queue_events(&self) -> &[EventFd] {
        self.common.queue_evts()
    }

    fn interrupt_evt(&self) -> &EventFd {
        self.common.interrupt().evt()
    }

    fn interrupt_status(&self) -> Arc<AtomicU32> {
        self.common.interrupt().status()
    }
}

#[cfg(test)]
mod tests;
