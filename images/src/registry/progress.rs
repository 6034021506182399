//! Progress reporting for pulls and pushes.
//!
//! The transfer code emits [`ProgressEvent`]s to a [`Progress`] sink; the
//! CLI draws terminal bars ([`ProgressBars`](super::ProgressBars), feature
//! `progress-bars`), an API server streams one JSON object per line
//! ([`JsonLines`], or an unbounded channel of events). Events are plain
//! data and serialise as `{"event": "layer_progress", ...}`.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

use crate::digest::Digest;

/// Something that happened during a pull or push. `index` counts blobs
/// from 1 to `count` (layers in manifest order; a push also counts the
/// config, last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// Looking up the reference (pull: fetching the manifest; push: reading
    /// the local image).
    Resolving {
        /// The image reference.
        reference: String,
    },
    /// The manifest is known: what will be transferred.
    Resolved {
        /// The image reference.
        reference: String,
        /// The digest the reference resolves to.
        digest: Digest,
        /// Number of blobs (`count` in later events).
        count: usize,
        /// Their total size in bytes.
        total_bytes: u64,
    },
    /// A blob is already where it is going (local store for a pull,
    /// registry for a push) and is skipped.
    BlobExists {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A push made the registry link a blob from another repository
    /// instead of uploading it.
    BlobMounted {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The repository it was mounted from.
        from: String,
    },
    /// A blob transfer starts.
    BlobStart {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob transferred so far.
    BlobProgress {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// All bytes of a blob arrived; its digest is being checked and the
    /// blob made durable.
    BlobVerifying {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
    },
    /// A blob is complete (stored and verified, or accepted by the
    /// registry).
    BlobDone {
        /// 1-based position.
        index: usize,
        /// Number of blobs.
        count: usize,
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A request failed in a way worth retrying; waiting before the next
    /// attempt.
    Retrying {
        /// What is retried.
        what: String,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Every blob is there; checking the whole image (pull) or writing the
    /// manifest (push).
    Verifying {
        /// The image reference.
        reference: String,
    },
    /// Finished.
    Done {
        /// The image reference.
        reference: String,
        /// The manifest (or index) digest the reference now names.
        digest: Digest,
        /// The image ID (config digest).
        id: Digest,
    },
}

/// A sink for progress events. Called from the transfer tasks, possibly
/// from several at once; implementations must be cheap and must not block
/// for long (a slow consumer slows the transfer).
pub trait Progress: Send + Sync {
    /// Reports one event.
    fn event(&self, event: &ProgressEvent);
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &ProgressEvent) {}
}

/// Writes each event as one JSON object per line (the format of Docker's
/// `/images/create` progress stream, in spirit). Write errors are counted
/// and otherwise ignored: progress must never fail a transfer.
#[derive(Debug)]
pub struct JsonLines<W: Write + Send> {
    out: Mutex<W>,
    failed_writes: Mutex<u64>,
}

impl<W: Write + Send> JsonLines<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        JsonLines {
            out: Mutex::new(out),
            failed_writes: Mutex::new(0),
        }
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// How many events could not be written.
    pub fn failed_writes(&self) -> u64 {
        *self.failed_writes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: Write + Send> Progress for JsonLines<W> {
    fn event(&self, event: &ProgressEvent) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            *self.failed_writes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }
}

/// Sends events into a channel, e.g. to stream them as an HTTP response
/// body. A closed receiver is ignored (the client went away; the transfer
/// still completes so that the store gets the image).
impl Progress for tokio::sync::mpsc::UnboundedSender<ProgressEvent> {
    fn event(&self, event: &ProgressEvent) {
        let _ = self.send(event.clone());
    }
}

/// Collects events in memory (tests, or callers that summarise at the end).
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<ProgressEvent>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<ProgressEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Progress for Recorder {
    fn event(&self, event: &ProgressEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_format() {
        let p = JsonLines::new(Vec::new());
        let d = Digest::of(b"x");
        p.event(&ProgressEvent::Resolving {
            reference: "localhost:5000/a:1".into(),
        });
        p.event(&ProgressEvent::BlobProgress {
            index: 1,
            count: 2,
            digest: d,
            done: 10,
            total: 20,
        });
        let out = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "resolving");
        assert_eq!(lines[0]["reference"], "localhost:5000/a:1");
        assert_eq!(lines[1]["event"], "blob_progress");
        assert_eq!(lines[1]["digest"], d.to_string());
        assert_eq!(lines[1]["done"], 10);
    }
}
