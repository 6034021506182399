//! Checkpoints of sandboxes (`/v1/sandboxes/{id}/checkpoints`): Docker's
//! `checkpoint create/ls/rm` and `start --checkpoint`.

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes/{id}/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCreateRequest {
    /// Its name: 1 to 64 of `[a-zA-Z0-9_.-]`, starting with a letter or
    /// digit; unique per sandbox.
    pub name: String,
    /// Keep the sandbox running (Docker's `--leave-running`); by default
    /// it stops once the checkpoint is made.
    #[serde(default)]
    pub leave_running: bool,
}

/// One checkpoint (the answer of a create, and each element of a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The sandbox's guest memory, MiB.
    pub memory_mib: u64,
    /// Bytes of guest memory it holds (pages of zeros are not stored).
    pub memory_bytes: u64,
    /// How long the guest was paused while it was written, microseconds.
    pub paused_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_default_to_stopping_and_refuse_unknown_fields() {
        let r: CheckpointCreateRequest = serde_json::from_str(r#"{"name":"c1"}"#).unwrap();
        assert!(!r.leave_running);
        assert!(
            serde_json::from_str::<CheckpointCreateRequest>(r#"{"name":"c1","exit":true}"#)
                .is_err()
        );
    }
}
