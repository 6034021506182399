//! The connection state machine: one guest `AF_VSOCK` stream joined to one
//! host Unix stream.
//!
//! - [`connection`]: states, shutdown, reset, timeouts and credit, in both
//!   directions.
//! - [`txbuf`]: the bounded buffer for guest data the host socket has not
//!   taken yet.

pub mod connection;
pub mod txbuf;

pub use connection::{ConnState, VsockConnection};
pub use txbuf::{TxBuf, TxBufError};
