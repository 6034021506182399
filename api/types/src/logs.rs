//! Log records, on disk and on the wire.
//!
//! The on-disk format is Docker's `json-file` driver format, one JSON object
//! per line: `{"log":"text\n","stream":"stdout","time":"RFC3339Nano"}`.
//! `GET /v1/sandboxes/{id}/logs` streams the same objects as NDJSON, so
//! clients can reformat (timestamps, stream split) without a second format.

use serde::{Deserialize, Serialize};

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The workload's stdout (and a TTY's only stream).
    Stdout,
    /// The workload's stderr.
    Stderr,
}

/// One log record: a line (with its `\n`) or a partial line at most 16 KiB
/// long, as Docker splits them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The bytes, as UTF-8 (invalid sequences replaced, as Docker does).
    pub log: String,
    /// Source stream.
    pub stream: Stream,
    /// RFC 3339 time with nanoseconds, UTC, when the host received it.
    pub time: String,
}
