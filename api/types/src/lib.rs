//! Types of the mvmd REST API (version 1), shared by the daemon (`mvmd`),
//! the CLI (`mvctl`) and the end-to-end tests, so the two ends cannot drift.
//!
//! The wire format is JSON. The authoritative description is
//! `api/openapi.json` (served at `/openapi.json`); `docs/api.md` explains
//! the design. Field names follow Docker's Engine API where the concept is
//! the same (lower snake case instead of Pascal case), to ease the Docker
//! compatibility layer planned later.

pub mod auth;
pub mod build;
pub mod checkpoint;
pub mod error;
pub mod exec;
pub mod images;
pub mod logs;
pub mod network;
pub mod sandbox;
pub mod system;
pub mod volume;

pub use error::{ApiError, ErrorCode};

/// Prefix of every versioned endpoint.
pub const API_PREFIX: &str = "/v1";
/// Default Unix socket of mvmd.
pub const DEFAULT_SOCKET: &str = "/run/mvm/mvmd.sock";
/// Environment variable naming the daemon to talk to:
/// `unix:///path/to.sock` or `tcp://host:port` (then `MVM_TOKEN` is sent).
pub const HOST_ENV: &str = "MVM_HOST";
/// Environment variable holding the bearer token for TCP.
pub const TOKEN_ENV: &str = "MVM_TOKEN";
