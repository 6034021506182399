//! virtio-vsock with a userspace backend: guest `AF_VSOCK` stream sockets
//! connected to host Unix sockets, without `vhost-vsock` in the host kernel.
//!
//! This follows Firecracker's "hybrid" design (also Cloud Hypervisor's):
//!
//! - **Host-initiated**: the VMM listens on `uds_path`. A host client
//!   connects, writes `CONNECT <port>\n` and, once the guest accepted,
//!   reads `OK <host_port>\n`; from then on the Unix stream *is* the guest's
//!   connection to `<port>`. If the guest refuses (RST), the host socket is
//!   closed without an `OK`.
//! - **Guest-initiated**: a guest connection to CID 2 (the host) port `P`
//!   makes the VMM connect to the Unix socket `<uds_path>_P`; if nothing
//!   listens there the guest gets a RST (`ECONNRESET`/`ECONNREFUSED`).
//!
//! Layout, one job per module:
//! - [`packet`]: the 44-byte header and descriptor chains turned into
//!   header + data segments; all validation of guest buffers happens there.
//! - [`csm`]: one connection's state machine and credit accounting
//!   ([`csm::connection`]) and its bounded guest-to-host buffer
//!   ([`csm::txbuf`]).
//! - [`unix`]: the muxer that owns the listening socket and every
//!   connection, routes packets by (local port, peer port) and decides what
//!   goes to the guest next ([`unix::muxer_rxq`]) and what must die when
//!   ([`unix::muxer_killq`]).
//! - [`device`]: the virtio device (config space, queues, reset).
//! - [`event_handler`]: the `event_manager` subscriber that glues queue
//!   notifications, socket readiness and timers together.
//!
//! # Memory bounds
//!
//! A guest that floods cannot grow the VMM: host-to-guest data is read from
//! the host socket straight into guest buffers (never buffered), at most the
//! guest's advertised credit; guest-to-host data that the host socket does
//! not take at once waits in a per-connection buffer of at most
//! [`CONN_TX_BUF_SIZE`] bytes, which is exactly the credit (`buf_alloc`)
//! the device advertises, so an honest guest stops sending when it is full
//! and a dishonest one is reset. Connections are capped at
//! [`MAX_CONNECTIONS`]; control packets for the guest wait in queues bounded
//! by that cap (plus [`MAX_PENDING_RSTS`] RSTs for unknown connections,
//! dropped beyond it).
//!
//! # Liveness
//!
//! The tx queue never waits for the rx side. Linux's driver stops taking
//! rx buffers while its own replies (RESPONSE, RST) wait for room on the
//! tx queue, so a device that holds the tx queue until rx packets went out
//! can deadlock the whole transport.

pub mod csm;
pub mod device;
pub mod event_handler;
pub mod packet;
pub mod unix;

pub use device::{Vsock, VsockConfig, VsockError};

/// The host's CID: guest packets must be addressed to it.
pub const VSOCK_HOST_CID: u64 = 2;
/// Lowest CID a guest may have (0, 1 and 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Highest usable guest CID: Linux keeps CIDs in 32 bits and reserves
/// `u32::MAX` (`VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Stream sockets, the only type offered (no `VIRTIO_VSOCK_F_SEQPACKET`).
pub const VSOCK_TYPE_STREAM: u16 = 1;

/// Connection request.
pub const VSOCK_OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const VSOCK_OP_RESPONSE: u16 = 2;
/// Connection reset (refused or torn down).
pub const VSOCK_OP_RST: u16 = 3;
/// One or both directions closed (see the `SHUTDOWN_*` flags).
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
/// Data.
pub const VSOCK_OP_RW: u16 = 5;
/// Unsolicited credit information.
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a credit update.
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;

/// Event queue event: the transport was reset; the driver drops every
/// connection and re-reads the guest CID.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Queue indices.
pub const RXQ_INDEX: usize = 0;
/// Guest-to-device packets.
pub const TXQ_INDEX: usize = 1;
/// Device-to-guest events.
pub const EVQ_INDEX: usize = 2;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// Largest payload accepted in one guest packet or written into one rx
/// buffer (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Per-connection guest-to-host buffer, and the `buf_alloc` (credit) the
/// device advertises to the guest for each connection.
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;

/// Most live connections (host handshakes in progress included). Past it,
/// guest requests get a RST and host clients are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most RSTs queued for the guest that belong to no connection (answers to
/// refused requests or stray packets), one per port pair. Past it they are
/// dropped: the tx queue must never wait for the guest to take rx packets
/// (see [`unix::muxer_rxq::MuxerRxQ::push_rst`]).
pub const MAX_PENDING_RSTS: usize = 256;

/// First local (host-side) port given to host-initiated connections; the
/// guest sees it as the peer port. High, so it does not collide with the
/// ports guests usually connect to on the host.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
