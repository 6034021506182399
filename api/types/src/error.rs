//! The error body every failing request returns.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. The HTTP status follows from the
/// code ([`ErrorCode::http_status`]); clients branch on the code, never on
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, bad field, bad query parameter.
    BadRequest,
    /// Missing or wrong bearer token (TCP only).
    Unauthorized,
    /// No such sandbox, image or exec session.
    NotFound,
    /// A name is taken, or the object is in use.
    Conflict,
    /// The object is in the wrong state for this (e.g. start a running sandbox).
    InvalidState,
    /// The host cannot honour a resource request (memory, vCPUs, KVM).
    ResourceUnavailable,
    /// A registry wants credentials, or refused the ones sent: log in
    /// (`mvctl login REGISTRY`). Not mvmd's own bearer token, which is
    /// `unauthorized`.
    RegistryAuth,
    /// A registry accepted the credentials but does not allow the
    /// operation (HTTP 403 from the registry).
    Forbidden,
    /// A registry or other upstream failed: unreachable, failing, or
    /// answering something wrong (corrupt, oversized, not a registry).
    Upstream,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// The HTTP status code that goes with the error code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized | Self::RegistryAuth => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict | Self::InvalidState => 409,
            Self::ResourceUnavailable => 507,
            Self::Upstream => 502,
            Self::Internal => 500,
        }
    }
}

/// `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable message that says what was wrong and, where
    /// possible, what to do next.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
