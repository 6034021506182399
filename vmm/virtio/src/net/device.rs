//! The virtio-net device: features, configuration space, and the two
//! paths between the queues and the TAP.
//!
//! - **tx** (guest to host): each chain is checked and written to the TAP
//!   from guest memory with one `writev(2)`, then returned with length 0.
//!   Malformed and oversized chains are returned unsent and counted.
//! - **rx** (host to guest): the TAP is read (edge-triggered, until it
//!   says `EAGAIN`). When the guest has posted room for the largest frame
//!   (and no rx rate limiter is set) the frame is read straight into its
//!   buffers; otherwise into a frame buffer, from which it goes into one
//!   guest chain, or with `MRG_RXBUF` into as many as it needs. Either
//!   way the chains of a frame are published in the used ring at once.
//!   Without buffers the frame waits (one frame, never more) and the
//!   device asks to be notified of new buffers.
//!
//! Either path stops when its rate limiter refuses and resumes when the
//! limiter's timer fires; either yields to the event loop after
//! [`MAX_FRAMES_PER_TURN`] frames (re-arming its queue EventFd) so that
//! one busy device cannot starve the others.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::buffers::{parse_rx, parse_tx, ChainError, RxChain};
use super::metrics::NetMetrics;
use super::tap::{Tap, TapError};
use super::{
    DEFAULT_MTU, ETH_HLEN, MAX_FRAME_LEN, MAX_MTU, MIN_MTU, NUM_BUFFERS_OFFSET, QUEUE_SIZE,
    RXQ_INDEX, TXQ_INDEX, VNET_HDR_LEN,
};
use crate::common::{read_config_bytes, throttled_warn, CommonError, LogThrottle, VirtioCommon};
use crate::queue::publish_used;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::{
    ActivateError, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// Frames handled per path per event-loop turn before yielding.
pub const MAX_FRAMES_PER_TURN: usize = 2 * QUEUE_SIZE as usize;

/// Configuration space exposed: mac (6), status (2), max_virtqueue_pairs
/// (2), mtu (2).
const CONFIG_LEN: usize = 12;

/// Where the TAP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open (or create) the TAP with this name.
    Name(String),
    /// Take over this inherited descriptor, already a TAP.
    Fd(RawFd),
}

/// How to build a net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name in messages.
    pub id: String,
    /// The host side.
    pub tap: TapSource,
    /// The guest's MAC address; without one the guest picks a random one.
    pub mac: Option<[u8; 6]>,
    /// The MTU reported to the guest ([`MIN_MTU`] to [`MAX_MTU`]).
    pub mtu: u16,
    /// Limits on what the guest receives.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetConfig {
    /// A device on TAP `name` with the default MTU and no limits.
    pub fn new(id: impl Into<String>, tap: TapSource) -> Self {
        Self {
            id: id.into(),
            tap,
            mac: None,
            mtu: DEFAULT_MTU,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }
}

/// Errors creating a net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is out of range.
    #[error("net device {id:?}: MTU {mtu} is out of range ({MIN_MTU} to {MAX_MTU})")]
    Mtu {
        /// The device id.
        id: String,
        /// The MTU.
        mtu: u16,
    },
    /// The MAC is multicast (or all zeros): no unicast frame would reach it.
    #[error("net device {id:?}: MAC {mac} is not a unicast address")]
    Mac {
        /// The device id.
        id: String,
        /// The MAC, formatted.
        mac: String,
    },
    /// The TAP could not be opened.
    #[error("net device {id:?}: {source}")]
    Tap {
        /// The device id.
        id: String,
        /// Cause.
        #[source]
        source: TapError,
    },
    /// A rate limiter could not be built.
    #[error("net device {id:?}: {source}")]
    RateLimiter {
        /// The device id.
        id: String,
        /// Cause.
        #[source]
        source: RateLimiterError,
    },
    /// EventFd or interrupt creation failed.
    #[error("net device {id:?}: {source}")]
    Common {
        /// The device id.
        id: String,
        /// Cause.
        #[source]
        source: CommonError,
    },
}

/// What became of the pending rx frame.
enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// The guest has no (or not enough) buffers; the frame waits.
    NoBuffers,
    /// Dropped (it fits no buffer the guest gives).
    Dropped,
}

/// What [`Net::rx_direct`] did.
enum Direct {
    /// A frame of this many bytes (header included) is in guest buffers.
    Delivered(usize),
    /// A frame was read and dropped (too short or too long).
    Dropped,
    /// Nothing to read (or the TAP failed; counted).
    Empty,
    /// The guest's buffers cannot hold the largest frame: copy instead.
    NotEnoughBuffers,
}

/// The virtio-net device.
#[derive(Debug)]
pub struct Net {
    id: String,
    pub(crate) common: VirtioCommon,
    pub(crate) tap: Tap,
    config_space: [u8; CONFIG_LEN],
    queue_max_sizes: [u16; 2],
    /// The frame read from the TAP and not yet delivered, header first.
    rx_buf: Box<[u8]>,
    rx_pending: Option<usize>,
    /// Whether the pending frame was already charged to the rx limiter.
    rx_paid: bool,
    pub(crate) rx_limiter: Option<RateLimiter>,
    pub(crate) tx_limiter: Option<RateLimiter>,
    metrics: NetMetrics,
    queue_throttle: LogThrottle,
    io_throttle: LogThrottle,
}

impl Net {
    /// Opens the TAP and builds the device.
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        let tap = match &cfg.tap {
            TapSource::Name(name) => Tap::open_named(name),
            TapSource::Fd(fd) => Tap::from_fd(*fd),
        }
        .map_err(|source| NetError::Tap {
            id: cfg.id.clone(),
            source,
        })?;
        Self::with_tap(cfg, tap)
    }

    /// Builds the device on an open TAP (`cfg.tap` is not looked at).
    pub fn with_tap(cfg: NetConfig, tap: Tap) -> Result<Self, NetError> {
        let id = cfg.id.clone();
        if !(MIN_MTU..=MAX_MTU).contains(&cfg.mtu) {
            return Err(NetError::Mtu { id, mtu: cfg.mtu });
        }
        if let Some(mac) = cfg.mac {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(NetError::Mac {
                    id,
                    mac: format_mac(&mac),
                });
            }
        }
        let limiter = |c: Option<RateLimiterConfig>| {
            c.map(RateLimiter::new)
                .transpose()
                .map_err(|source| NetError::RateLimiter {
                    id: id.clone(),
                    source,
                })
        };
        let rx_limiter = limiter(cfg.rx_rate_limiter)?;
        let tx_limiter = limiter(cfg.tx_rate_limiter)?;

        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_NET_F_MTU)
            | (1u64 << VIRTIO_NET_F_STATUS)
            | (1u64 << VIRTIO_NET_F_MRG_RXBUF)
            // The guest may send partial checksums and 64 KiB segments:
            // the TAP's kernel side finishes them.
            | (1u64 << VIRTIO_NET_F_CSUM)
            | (1u64 << VIRTIO_NET_F_HOST_TSO4)
            | (1u64 << VIRTIO_NET_F_HOST_TSO6);
        // The guest can take them only if the TAP can be told to send them.
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        match tap.set_offload(all).and_then(|()| tap.set_offload(0)) {
            Ok(()) => {
                features |= (1u64 << VIRTIO_NET_F_GUEST_CSUM)
                    | (1u64 << VIRTIO_NET_F_GUEST_TSO4)
                    | (1u64 << VIRTIO_NET_F_GUEST_TSO6);
            }
            Err(e) => warn!(
                "net device {id:?}: receive offloads unavailable, the guest gets plain frames: {e}"
            ),
        }
        if cfg.mac.is_some() {
            features |= 1u64 << VIRTIO_NET_F_MAC;
        }
        let queue_max_sizes = [QUEUE_SIZE; 2];
        let common =
            VirtioCommon::new(features, &queue_max_sizes).map_err(|source| NetError::Common {
                id: id.clone(),
                source,
            })?;

        let mut config_space = [0u8; CONFIG_LEN];
        if let Some(mac) = cfg.mac {
            config_space[0..6].copy_from_slice(&mac);
        }
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        config_space[10..12].copy_from_slice(&cfg.mtu.to_le_bytes());

        Ok(Self {
            id,
            common,
            tap,
            config_space,
            queue_max_sizes,
            // One spare byte: a read that fills it was cut short.
            rx_buf: vec![0u8; MAX_FRAME_LEN + 1].into_boxed_slice(),
            rx_pending: None,
            rx_paid: false,
            rx_limiter,
            tx_limiter,
            metrics: NetMetrics::default(),
            queue_throttle: LogThrottle::default(),
            io_throttle: LogThrottle::default(),
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The TAP's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Counters so far.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// Sets the link status the guest sees and tells it.
    pub fn set_link_up(&mut self, up: bool) {
        let status = if up { VIRTIO_NET_S_LINK_UP as u16 } else { 0 };
        self.config_space[6..8].copy_from_slice(&status.to_le_bytes());
        if self.common.is_activated() {
            if let Err(e) = self.common.interrupt().signal_config_change() {
                warn!("virtio-net {}: {e}", self.id);
            }
        }
    }

    /// The `TUN_F_*` offloads matching what the driver acked.
    fn tap_offloads(&self) -> libc::c_uint {
        let mut flags = 0;
        if self.common.has_feature(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= libc::TUN_F_CSUM;
            if self.common.has_feature(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= libc::TUN_F_TSO4;
            }
            if self.common.has_feature(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= libc::TUN_F_TSO6;
            }
        }
        flags
    }

    /// Moves frames from the TAP to the guest until the TAP is empty, the
    /// guest has no buffers, the limiter says wait, or the turn is over.
    pub fn process_rx(&mut self) {
        if !self.common.queue_ready(RXQ_INDEX) {
            return;
        }
        let now = Instant::now();
        // Frames read, delivered or not: a flood of runts counts too.
        let mut frames = 0usize;
        let mut notify = false;
        loop {
            if frames >= MAX_FRAMES_PER_TURN {
                // Come back through the queue EventFd: the TAP's edge has
                // been consumed and will not fire for what is left.
                if let Some(evt) = self.common.queue_evts().get(RXQ_INDEX) {
                    let _ = evt.write(1);
                }
                break;
            }
            if self.rx_pending.is_none() && self.rx_limiter.is_none() {
                match self.rx_direct(&mut notify) {
                    Direct::Delivered(len) => {
                        frames += 1;
                        self.metrics.rx_frames += 1;
                        self.metrics.rx_bytes += (len - VNET_HDR_LEN) as u64;
                        continue;
                    }
                    Direct::Dropped => {
                        frames += 1;
                        continue;
                    }
                    Direct::Empty => break,
                    Direct::NotEnoughBuffers => {}
                }
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN + ETH_HLEN => {
                        self.metrics.rx_runts += 1;
                        frames += 1;
                        continue;
                    }
                    Ok(n) if n > MAX_FRAME_LEN => {
                        self.metrics.rx_oversized += 1;
                        frames += 1;
                        continue;
                    }
                    Ok(n) => {
                        self.rx_pending = Some(n);
                        self.rx_paid = false;
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.metrics.rx_tap_errors += 1;
                        throttled_warn(
                            &mut self.io_throttle,
                            &format!("virtio-net {}: reading the TAP", self.id),
                            &e,
                        );
                        break;
                    }
                },
            };
            if !self.rx_paid {
                if let Some(l) = &mut self.rx_limiter {
                    if !l.consume((len - VNET_HDR_LEN) as u64, now) {
                        self.metrics.rx_throttled += 1;
                        break;
                    }
                }
                self.rx_paid = true;
            }
            match self.deliver(len, &mut notify) {
                Delivery::Delivered => {
                    self.rx_pending = None;
                    frames += 1;
                    self.metrics.rx_frames += 1;
                    self.metrics.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Delivery::Dropped => {
                    self.rx_pending = None;
                    self.metrics.rx_oversized += 1;
                    frames += 1;
                }
                Delivery::NoBuffers => break,
            }
        }
        if notify {
            if let Err(e) = self.common.interrupt().signal_used_queue() {
                warn!("virtio-net {}: {e}", self.id);
            }
        }
    }

    /// Reads the next frame from the TAP straight into guest buffers (no
    /// copy through `rx_buf`), when the guest has posted room for the
    /// largest frame: only then can a frame never be cut short. Chains
    /// the frame does not need go back to the ring untouched (they are the
    /// last ones taken, so stepping back over them is exact).
    ///
    /// Not used with a receive rate limiter: the frame's size is known
    /// only once it is in the guest's buffers, too late to wait.
    fn rx_direct(&mut self, notify: &mut bool) -> Direct {
        let mergeable = self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let Self {
            common,
            tap,
            metrics,
            queue_throttle,
            io_throttle,
            id,
            ..
        } = self;
        let Some(active) = common.active_mut() else {
            return Direct::Empty;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let size = usize::from(queue.size());

        // (position in pop order, head) of refused chains; good chains
        // with their position.
        let mut popped = 0usize;
        let mut bad: Vec<(usize, u16)> = Vec::new();
        let mut chains: Vec<(usize, RxChain<'_>)> = Vec::new();
        let mut capacity = 0usize;
        let mut slice_count = 0usize;
        while capacity < MAX_FRAME_LEN && popped < size {
            let Some(chain) = next_chain(queue, mem, queue_throttle, id) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            match parse_rx(mem, chain) {
                // The header must be in the first buffer; an empty buffer
                // is of no use anywhere.
                Ok(c)
                    if c.capacity() == 0 || (chains.is_empty() && c.capacity() < VNET_HDR_LEN) =>
                {
                    bad.push((popped, head));
                }
                Ok(c) => {
                    capacity += c.capacity();
                    slice_count += c.slices().len();
                    chains.push((popped, c));
                    if !mergeable {
                        break;
                    }
                }
                Err(_) => bad.push((popped, head)),
            }
        }
        let rewind = |queue: &mut Queue, n: usize| {
            for _ in 0..n {
                queue.go_to_previous_position();
            }
        };
        if capacity < MAX_FRAME_LEN || slice_count > super::tap::MAX_IOVECS {
            // Refused chains are met again, and counted, on the way that
            // copies.
            rewind(queue, popped);
            return Direct::NotEnoughBuffers;
        }
        let slices: Vec<_> = chains
            .iter()
            .flat_map(|(_, c)| c.slices().iter().cloned())
            .collect();
        let n = match tap.read_frame_into(&slices) {
            Ok(n) => n,
            Err(e) => {
                rewind(queue, popped);
                if e.kind() != io::ErrorKind::WouldBlock {
                    metrics.rx_tap_errors += 1;
                    throttled_warn(
                        io_throttle,
                        &format!("virtio-net {id}: reading the TAP"),
                        &e,
                    );
                }
                return Direct::Empty;
            }
        };
        if !(VNET_HDR_LEN + ETH_HLEN..=MAX_FRAME_LEN).contains(&n) {
            // What went into the guest's buffers stays unseen: they go
            // back to the ring as they were given.
            rewind(queue, popped);
            if n > MAX_FRAME_LEN {
                metrics.rx_oversized += 1;
            } else {
                metrics.rx_runts += 1;
            }
            return Direct::Dropped;
        }
        // The chains the frame filled; the rest go back.
        let mut used_chains = 0usize;
        let mut covered = 0usize;
        while covered < n {
            covered += chains[used_chains].1.capacity();
            used_chains += 1;
        }
        let last_pos = chains[used_chains - 1].0;
        rewind(queue, popped - last_pos);
        let count = u16::try_from(used_chains).unwrap_or(u16::MAX);
        chains[0]
            .1
            .write_at(NUM_BUFFERS_OFFSET, &count.to_le_bytes());
        let mut used: Vec<(u16, u32)> = bad
            .iter()
            .filter(|(pos, _)| *pos < last_pos)
            .map(|&(_, head)| (head, 0))
            .collect();
        metrics.rx_bad_chains += used.len() as u64;
        let mut left = n;
        for (_, c) in &chains[..used_chains] {
            let w = left.min(c.capacity());
            used.push((c.head(), w as u32));
            left -= w;
        }
        metrics.rx_buffers += used_chains as u64;
        match publish_used(queue, mem, &used) {
            Ok(x) => *notify |= x,
            Err(e) => throttled_warn(queue_throttle, "virtio-net: rx used ring", &e),
        }
        Direct::Delivered(n)
    }

    /// Puts the pending frame (`len` bytes of `rx_buf`) into guest buffers.
    fn deliver(&mut self, len: usize, notify: &mut bool) -> Delivery {
        let mergeable = self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let Self {
            common,
            rx_buf,
            metrics,
            queue_throttle,
            id,
            ..
        } = self;
        let Some(active) = common.active_mut() else {
            return Delivery::NoBuffers;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let size = usize::from(queue.size());

        // Collect enough buffers; refused chains go back with length 0.
        let mut popped = 0usize;
        let mut bad: Vec<(u16, u32)> = Vec::new();
        let mut chains: Vec<RxChain<'_>> = Vec::new();
        let mut capacity = 0usize;
        let mut rechecked = false;
        let mut outcome = Delivery::Delivered;
        while capacity < len {
            if popped >= size {
                // Every buffer of the ring together is too small: only a
                // guest posting tiny buffers gets here.
                outcome = Delivery::Dropped;
                break;
            }
            let Some(chain) = next_chain(queue, mem, queue_throttle, id) else {
                // Ask for a notification; look once more in case buffers
                // came meanwhile (only once: a bogus index must not spin).
                match queue.enable_notification(mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => throttled_warn(queue_throttle, "virtio-net: rx queue", &e),
                }
                for _ in 0..popped {
                    queue.go_to_previous_position();
                }
                return Delivery::NoBuffers;
            };
            popped += 1;
            let head = chain.head_index();
            match parse_rx(mem, chain) {
                // The header must be in the first buffer; an empty buffer
                // is of no use anywhere.
                Ok(c)
                    if c.capacity() == 0 || (chains.is_empty() && c.capacity() < VNET_HDR_LEN) =>
                {
                    metrics.rx_bad_chains += 1;
                    bad.push((head, 0));
                }
                Ok(c) if !mergeable && c.capacity() < len => {
                    // Without mergeable buffers the driver posts buffers of
                    // one size: this frame fits none of them. Keep the
                    // buffer for the next frame.
                    queue.go_to_previous_position();
                    outcome = Delivery::Dropped;
                    break;
                }
                Ok(c) => {
                    capacity += c.capacity();
                    chains.push(c);
                }
                Err(e) => {
                    metrics.rx_bad_chains += 1;
                    throttled_warn(queue_throttle, "virtio-net: refused a rx buffer", &e);
                    bad.push((head, 0));
                }
            }
        }

        let mut used = bad;
        if matches!(outcome, Delivery::Delivered) {
            let n = u16::try_from(chains.len()).unwrap_or(u16::MAX);
            rx_buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&n.to_le_bytes());
            let mut off = 0;
            for c in &chains {
                let w = c.write(&rx_buf[off..len]);
                off += w;
                used.push((c.head(), w as u32));
            }
            metrics.rx_buffers += chains.len() as u64;
        } else {
            // Not delivered: the buffers taken go back unused.
            used.extend(chains.iter().map(|c| (c.head(), 0)));
        }
        match publish_used(queue, mem, &used) {
            Ok(n) => *notify |= n,
            Err(e) => throttled_warn(queue_throttle, "virtio-net: rx used ring", &e),
        }
        outcome
    }

    /// Sends the guest's frames to the TAP.
    pub fn process_tx(&mut self) {
        let now = Instant::now();
        let csum = self.common.has_feature(VIRTIO_NET_F_CSUM);
        let Self {
            common,
            tap,
            tx_limiter,
            metrics,
            queue_throttle,
            io_throttle,
            id,
            ..
        } = self;
        if !common.queue_ready(TXQ_INDEX) {
            return;
        }
        let mut reschedule = false;
        let notify = {
            let Some(active) = common.active_mut() else {
                return;
            };
            let mem = &active.mem;
            let queue = &mut active.queues[TXQ_INDEX];
            let mut used = 0usize;
            'outer: loop {
                if let Err(e) = queue.disable_notification(mem) {
                    throttled_warn(queue_throttle, "virtio-net: tx queue", &e);
                    break;
                }
                let round_start = used;
                loop {
                    if used >= MAX_FRAMES_PER_TURN {
                        reschedule = true;
                        break 'outer;
                    }
                    if tx_limiter.as_ref().is_some_and(|l| l.is_blocked()) {
                        break 'outer;
                    }
                    let Some(chain) = next_chain(queue, mem, queue_throttle, id) else {
                        break;
                    };
                    let head = chain.head_index();
                    match parse_tx(mem, chain) {
                        Ok(frame) => {
                            let len = frame.len();
                            if let Some(l) = tx_limiter {
                                if !l.consume((len - VNET_HDR_LEN) as u64, now) {
                                    metrics.tx_throttled += 1;
                                    queue.go_to_previous_position();
                                    break 'outer;
                                }
                            }
                            // A driver that did not ack CSUM may not ask for
                            // offloads: its header is replaced by an empty one.
                            let written = if csum {
                                tap.write_frame_from(None, &frame.slices_from(0))
                            } else {
                                tap.write_frame_from(
                                    Some(&[0u8; VNET_HDR_LEN]),
                                    &frame.slices_from(VNET_HDR_LEN),
                                )
                            };
                            match written {
                                Ok(_) => {
                                    metrics.tx_frames += 1;
                                    metrics.tx_bytes += (len - VNET_HDR_LEN) as u64;
                                }
                                Err(e) => {
                                    metrics.tx_tap_errors += 1;
                                    throttled_warn(
                                        io_throttle,
                                        &format!("virtio-net {id}: writing to the TAP"),
                                        &e,
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            if matches!(e, ChainError::TooLong(_)) {
                                metrics.tx_oversized += 1;
                            } else {
                                metrics.tx_malformed += 1;
                            }
                            throttled_warn(io_throttle, "virtio-net: dropped a tx frame", &e);
                        }
                    }
                    if let Err(e) = queue.add_used(mem, head, 0) {
                        throttled_warn(queue_throttle, "virtio-net: tx used ring", &e);
                    }
                    used += 1;
                }
                match queue.enable_notification(mem) {
                    // More arrived while notifications were off. Without
                    // progress this round the index is bogus: stop.
                    Ok(true) if used > round_start => continue,
                    Ok(_) => break,
                    Err(e) => {
                        throttled_warn(queue_throttle, "virtio-net: tx queue", &e);
                        break;
                    }
                }
            }
            used > 0 && queue.needs_notification(mem).unwrap_or(true)
        };
        if reschedule {
            if let Some(evt) = common.queue_evts().get(TXQ_INDEX) {
                let _ = evt.write(1);
            }
        }
        if notify {
            if let Err(e) = common.interrupt().signal_used_queue() {
                warn!("virtio-net {id}: {e}");
            }
        }
    }
}

/// Takes the next available chain, with throttled warnings for a broken
/// available ring.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    throttle: &mut LogThrottle,
    id: &str,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            throttled_warn(
                throttle,
                &format!("virtio-net {id}: unusable available ring"),
                &e,
            );
            None
        }
    }
}

/// `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR's
        // legacy path, which is not offered.
        debug!(
            "virtio-net {}: ignored config write of {} bytes at {offset:#x}",
            self.id,
            data.len()
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let offloads = self.tap_offloads();
        if let Err(e) = self.tap.set_offload(offloads) {
            // The guest then only gets fully checksummed, MTU-sized
            // frames, which it handles whatever it acked.
            warn!("virtio-net {}: {e}", self.id);
        }
        self.common.activate(mem, queues)
    }

    fn reset(&mut self) {
        self.common.reset();
        self.rx_pending = None;
        self.rx_paid = false;
        if let Err(e) = self.tap.set_offload(0) {
            debug!("virtio-net {}: {e}", self.id);
        }
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        self.common.queue_positions()
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
