//! Image endpoints' request and response bodies.

use serde::{Deserialize, Serialize};

/// `POST /v1/images/pull` and `POST /v1/images/push` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Image reference.
    pub reference: String,
    /// Allow plain HTTP (loopback registries only).
    #[serde(default)]
    pub insecure: bool,
}

/// One NDJSON line of a pull/push/load/build progress stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// A phase message ("resolving docker.io/library/busybox:latest").
    Status {
        /// Text.
        message: String,
    },
    /// Bytes done of one item (a layer).
    Bytes {
        /// Item id (short digest).
        id: String,
        /// Bytes done.
        current: u64,
        /// Total bytes, when known.
        total: Option<u64>,
    },
    /// An item finished ("already exists", "pull complete").
    Done {
        /// Item id.
        id: String,
        /// What happened.
        message: String,
    },
    /// The operation failed; the last line of the stream.
    Error {
        /// Stable code.
        code: crate::ErrorCode,
        /// Message.
        message: String,
    },
    /// The operation succeeded; the last line of the stream.
    Result {
        /// Operation-specific result (e.g. the image id and names).
        value: serde_json::Value,
    },
}

/// `POST /v1/images/tag` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// Existing image.
    pub source: String,
    /// New reference.
    pub target: String,
}

/// `POST /v1/auth/login` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Registry host (`localhost:5000`); Docker Hub when empty.
    pub server: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// Plain HTTP (loopback only).
    #[serde(default)]
    pub insecure: bool,
}

/// `POST /v1/auth/logout` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Registry host; Docker Hub when empty.
    #[serde(default)]
    pub server: String,
}

/// One image of `GET /v1/images` (the fields of the image store's summary,
/// so the daemon can serialise that directly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Tag references (`docker.io/library/busybox:latest`), sorted.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// Digest references (`repo@sha256:...`), sorted.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Image ID (config digest, `sha256:...`).
    pub id: String,
    /// The digest names point at.
    #[serde(default)]
    pub digest: String,
    /// Config `created`, RFC 3339, if stated.
    #[serde(default)]
    pub created: Option<String>,
    /// Stored bytes of config and layers.
    #[serde(default)]
    pub size: u64,
}
