//! The Unix-socket backend: host clients and host services are Unix
//! sockets, Firecracker style.
//!
//! - [`muxer`]: owns the listener and the connections, routes packets.
//! - [`muxer_rxq`]: what is owed to the guest, in order, bounded.
//! - [`muxer_killq`]: the deadlines.
//! - [`handshake`]: the `CONNECT <port>\n` line.
//! - [`stream`]: non-blocking, SIGPIPE-free socket I/O on guest memory.

pub mod handshake;
pub mod muxer;
pub mod muxer_killq;
pub mod muxer_rxq;
pub mod stream;

pub use muxer::{MuxerError, VsockMuxer};
