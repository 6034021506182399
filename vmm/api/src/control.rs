//! The control channel of a running `mvm-vmm` (`VmConfig::control_socket`):
//! one JSON request line on a Unix stream, one JSON response line back,
//! then the VMM closes the connection.
//!
//! Only the VMM's owner can reach the socket (it lives in the VMM's own
//! run directory); the VMM still treats every request as hostile: bounded
//! size, a read deadline, and paths it only ever creates files at.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest request line the VMM reads.
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;

/// What a caller asks of a running VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Pause the vCPUs, write the VM's state and its guest memory to these
    /// files (created; they must not exist), then do `after`.
    Snapshot {
        /// The state file.
        state: PathBuf,
        /// The guest memory file (sparse: pages of zeros are holes).
        memory: PathBuf,
        /// What the VM does once the files are written.
        after: After,
    },
    /// Run the vCPUs of a VM left paused by a snapshot (`After::Pause`).
    Resume,
    /// Answer (with [`Response::WarmReady`]) once the guest of a warm boot
    /// has reported `WarmReady` on the status port: at once if it has,
    /// else when it does, on this same connection (the caller's read
    /// deadline bounds the wait). A VM that ends first closes the
    /// connection unanswered.
    WaitWarmReady,
}

/// What a VM does after its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Run on at once.
    Resume,
    /// Stay paused until a [`Request::Resume`] (the caller copies the
    /// disks meanwhile, so they match the memory).
    Pause,
    /// End the VMM (status `checkpointed`).
    Exit,
}

/// The VMM's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Done; the figures of the snapshot.
    Snapshot {
        /// How long the vCPUs were paused, in microseconds.
        paused_us: u64,
        /// Bytes of guest memory written (pages of zeros are not).
        memory_written: u64,
    },
    /// The vCPUs run again.
    Resumed,
    /// The warm guest waits for its launch spec.
    WarmReady,
    /// The request failed; the VM goes on as before it.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors talking to the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached.
    #[error("cannot connect to the VMM's control socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to the VMM's control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM closed the connection without an answer.
    #[error("the VMM closed its control socket {0} without answering (did it end?)")]
    NoAnswer(PathBuf),
    /// The answer was not a [`Response`].
    #[error("the VMM's answer on {path} is not understood: {source}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Sends `req` to the VMM listening on `socket` and waits up to `timeout`
/// for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_REQUEST_BYTES))
        .read_line(&mut answer)
        .map_err(io)?;
    if answer.trim().is_empty() {
        return Err(ControlError::NoAnswer(socket.to_path_buf()));
    }
    serde_json::from_str(answer.trim()).map_err(|source| ControlError::BadAnswer {
        path: socket.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_json_lines() {
        let req = Request::Snapshot {
            state: "/a/state".into(),
            memory: "/a/memory".into(),
            after: After::Pause,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"snapshot":{"state":"/a/state","memory":"/a/memory","after":"pause"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        assert_eq!(
            serde_json::to_string(&Request::Resume).unwrap(),
            r#""resume""#
        );
        assert_eq!(
            serde_json::to_string(&Request::WaitWarmReady).unwrap(),
            r#""wait_warm_ready""#
        );
        assert_eq!(
            serde_json::from_str::<Response>(r#""warm_ready""#).unwrap(),
            Response::WarmReady
        );
        let bad = r#"{"snapshot":{"state":"/a","memory":"/b","after":"exit","x":1}}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
    }
}
