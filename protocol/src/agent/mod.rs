//! The guest agent protocol: how the host talks to `mvm-init` over vsock
//! once the workload runs (exec, attach, signals, stats, file copy).
//!
//! One versioned, framed protocol for both sides (see docs/architecture.md,
//! "Agent protocol", for the reasons):
//!
//! * [`frame`]: `u32 LE length | u8 kind | payload`, payload at most 1 MiB.
//!   Control frames carry JSON ([`message`]); stdin, stdout, stderr and tar
//!   data travel as raw bytes.
//! * [`message`]: the requests and responses.
//! * [`hybrid`]: the `CONNECT <port>` handshake of the VMM's Unix socket
//!   that stands in for the guest's vsock port on the host.
//! * `client` (feature `client`): the tokio host client.
//!
//! A connection is a session: the host's first control message is
//! `hello {version}` (optionally carrying the first request), then requests
//! follow one at a time; `exec`, `attach` and the copies stream frames until
//! they end, and the connection can then carry the next request.

pub mod frame;
pub mod hybrid;
pub mod message;
pub mod signal;

#[cfg(feature = "client")]
pub mod client;

pub use frame::{Kind, MAX_PAYLOAD};
pub use message::{ErrorCode, Exec, Exit, ProcessInfo, Request, Response, Stats, Target};

/// The guest's vsock port the agent listens on: a privileged one (below
/// 1024, only a process with `CAP_NET_BIND_SERVICE` may bind it), taken by
/// init before the workload starts, so no workload, root or not, can
/// listen there and receive what the host means for the agent.
pub const AGENT_PORT: u32 = 1023;
/// The protocol version; both sides refuse to talk across versions.
pub const PROTOCOL_VERSION: u32 = 1;
/// The guest CID the agent accepts connections on: any (the VMM assigns
/// the guest's CID; the agent does not need to know it).
pub const VMADDR_CID_ANY: u32 = u32::MAX;
