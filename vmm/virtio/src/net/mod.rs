//! virtio-net over a host TAP interface.
//!
//! Frames go between the guest's two queues and a TAP opened with
//! `IFF_VNET_HDR`, so the 12-byte virtio-net header travels as is in both
//! directions and the host kernel does checksums and segmentation: the
//! guest sends and receives up to 64 KiB TCP segments (TSO) with partial
//! checksums, which is where the throughput comes from.
//!
//! Layout, one job per module (Firecracker's `devices/virtio/net` shape):
//! - [`tap`]: opening the TAP (by name or inherited descriptor), its
//!   offload ioctls, frame reads and writes.
//! - [`buffers`]: descriptor chains turned into a frame to send (tx) or
//!   into writable guest buffers (rx); all validation of guest buffers
//!   happens there.
//! - [`device`]: the device (features, config space), the rx and tx paths,
//!   rate limiting.
//! - [`metrics`]: counters of what went through and what was dropped.
//! - [`event_handler`]: the `event_manager` subscriber.
//!
//! # Guest input
//!
//! Every chain is guest-controlled. A tx chain that is not device-readable,
//! leaves guest memory, is cut short, or holds less than a header and an
//! Ethernet header, or more than [`MAX_FRAME_LEN`], is returned unused and
//! counted; so is a rx chain that is not device-writable. Frames from the
//! TAP that fit no buffer the guest gave are dropped and counted. Nothing
//! the guest writes can make the device panic or allocate.
//!
//! # Features
//!
//! Offered: `VERSION_1`, `EVENT_IDX`, `INDIRECT_DESC`, `MAC` (when
//! configured), `MTU`, `STATUS` (link up), `CSUM`, `GUEST_CSUM`,
//! `HOST_TSO4/6`, `GUEST_TSO4/6` (the guest-side ones only if the TAP
//! accepts `TUNSETOFFLOAD`), and `MRG_RXBUF`. No control queue, no
//! multiqueue.

pub mod buffers;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod tap;

pub use device::{Net, NetConfig, NetError, TapSource};
pub use metrics::NetMetrics;
pub use tap::{Tap, TapError, MAX_TAP_NAME_LEN};

/// Queue indices: receive (device to guest) ...
pub const RXQ_INDEX: usize = 0;
/// ... and transmit (guest to device).
pub const TXQ_INDEX: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// `struct virtio_net_hdr_v1` (`num_buffers` included): what precedes every
/// frame in a virtio 1.x queue and, with `TUNSETVNETHDRSZ`, on the TAP.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Ethernet header: the least a frame holds.
pub const ETH_HLEN: usize = 14;
/// Longest frame accepted either way, header included: a 64 KiB TSO
/// segment (IP total length 65535) with its Ethernet and VLAN headers, as
/// Firecracker's `MAX_BUFFER_SIZE`.
pub const MAX_FRAME_LEN: usize = 65562;

/// Smallest MTU (IPv4's minimum; Linux ignores a smaller `VIRTIO_NET_F_MTU`).
pub const MIN_MTU: u16 = 68;
/// Largest MTU: a frame of `MTU + 14` must fit [`MAX_FRAME_LEN`].
pub const MAX_MTU: u16 = 65535;
/// MTU when the configuration says nothing.
pub const DEFAULT_MTU: u16 = 1500;

/// Event tag of the TAP descriptor.
pub const TAG_TAP: u32 = 16;
/// Event tag of the receive rate limiter's timer.
pub const TAG_RX_LIMITER: u32 = 17;
/// Event tag of the transmit rate limiter's timer.
pub const TAG_TX_LIMITER: u32 = 18;
