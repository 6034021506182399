//! Per-sandbox output fan-out: one writer appends records to the rotated
//! `json.log` and broadcasts them to log followers, and broadcasts the raw
//! bytes, then the run's exit, to attached clients. Readers take the same
//! lock to read the files and subscribe, so neither a follower nor an
//! attacher misses or repeats output across the file/live boundary.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use mvm_runtime::logs::{self, LogFilter, LogLimits, LogWriter};
use mvm_runtime::logs::{LogRecord, Stream};
use tokio::sync::broadcast;

/// A live event: a record, or the end of the current run's output.
pub type LogEvent = Option<Arc<LogRecord>>;

/// What attached clients receive: raw output as the workload wrote it (a
/// terminal's prompt has no newline and must not wait for one), then how
/// the run ended.
#[derive(Debug, Clone)]
pub enum AttachEvent {
    /// Bytes from one stream.
    Output(Stream, bytes::Bytes),
    /// The run ended with this status (recorded in the sandbox's state).
    Exited(i32),
}

/// Attach events kept for slow attachers before they lag (they are told
/// and lose the oldest); bounds mvmd's memory per sandbox.
const ATTACH_BACKLOG: usize = 1024;

/// The log hub of one sandbox.
pub struct LogHub {
    inner: Mutex<Hub>,
}

struct Hub {
    dir: PathBuf,
    limits: LogLimits,
    writer: Option<LogWriter>,
    tx: broadcast::Sender<LogEvent>,
    attach: broadcast::Sender<AttachEvent>,
    /// A run's output is being collected.
    active: bool,
}

/// What a reader gets: the stored records, a subscription for what
/// follows, and whether output is being collected right now.
pub struct Snapshot {
    /// Stored records passing the filter.
    pub records: Vec<LogRecord>,
    /// Live events after those records.
    pub rx: broadcast::Receiver<LogEvent>,
    /// A run is being collected.
    pub active: bool,
}

impl LogHub {
    /// A hub for the log directory `dir`.
    pub fn new(dir: PathBuf, limits: LogLimits) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (attach, _) = broadcast::channel(ATTACH_BACKLOG);
        Self {
            inner: Mutex::new(Hub {
                dir,
                limits,
                writer: None,
                tx,
                attach,
                active: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run starts collecting output.
    pub fn begin(&self) {
        self.lock().active = true;
    }

    /// The run's output is complete: followers end.
    pub fn end(&self) {
        let mut h = self.lock();
        h.active = false;
        if let Some(mut w) = h.writer.take() {
            match w.flush() {
                Ok(recs) => {
                    for r in recs {
                        let _ = h.tx.send(Some(Arc::new(r)));
                    }
                }
                Err(e) => tracing::warn!(dir = %h.dir.display(), "cannot write the log: {e}"),
            }
        }
        let _ = h.tx.send(None);
    }

    /// Append `data` from `stream` and broadcast the records.
    pub fn write(&self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut h = self.lock();
        let _ = h.attach.send(AttachEvent::Output(
            stream,
            bytes::Bytes::copy_from_slice(data),
        ));
        if h.writer.is_none() {
            match LogWriter::open(&h.dir, h.limits) {
                Ok(w) => h.writer = Some(w),
                Err(e) => {
                    tracing::warn!(dir = %h.dir.display(), "cannot open the log: {e}");
                    return;
                }
            }
        }
        let time = logs::now_rfc3339();
        let recs = match h.writer.as_mut().map(|w| w.write(stream, data, &time)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(dir = %h.dir.display(), "cannot write the log: {e}");
                return;
            }
            None => return,
        };
        for r in recs {
            let _ = h.tx.send(Some(Arc::new(r)));
        }
    }

    /// The run that was being collected ended with `exit_code`: attached
    /// clients get it as their last event.
    pub fn exited(&self, exit_code: i32) {
        let _ = self.lock().attach.send(AttachEvent::Exited(exit_code));
    }

    /// Subscribe to attach events, with the stored records passing
    /// `filter` when `logs` is set (atomically: nothing is missed or
    /// repeated between the two).
    pub fn attach(
        &self,
        logs: Option<&LogFilter>,
    ) -> std::io::Result<(Vec<LogRecord>, broadcast::Receiver<AttachEvent>)> {
        let h = self.lock();
        let records = match logs {
            Some(f) => logs::read(&h.dir, f)?,
            None => Vec::new(),
        };
        Ok((records, h.attach.subscribe()))
    }

    /// Stored records and a subscription, atomically.
    pub fn snapshot(&self, filter: &LogFilter) -> std::io::Result<Snapshot> {
        let h = self.lock();
        let records = logs::read(&h.dir, filter)?;
        Ok(Snapshot {
            records,
            rx: h.tx.subscribe(),
            active: h.active,
        })
    }
}
