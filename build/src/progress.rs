//! Build progress events, and a printer in BuildKit's plain style:
//!
//! ```text
//! #1 [1/4] FROM busybox
//! #1 DONE 0.0s
//! #2 [2/4] RUN echo hi
//! #2 0.512 hi
//! #2 DONE 3.1s
//! #3 [3/4] COPY a /a
//! #3 CACHED
//! ```

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One progress event; serialised as one NDJSON line by the REST API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A step starts.
    Step {
        /// Vertex number (`#n`).
        id: usize,
        /// 1-based step index.
        index: usize,
        /// Number of steps.
        total: usize,
        /// Stage name or number.
        stage: String,
        /// The instruction as written.
        text: String,
    },
    /// The step's result came from the cache.
    Cached {
        /// Vertex.
        id: usize,
    },
    /// A line of output (RUN).
    Output {
        /// Vertex.
        id: usize,
        /// Seconds since the step began.
        elapsed: f64,
        /// The line, without its newline.
        line: String,
    },
    /// The step finished.
    Done {
        /// Vertex.
        id: usize,
        /// Wall time.
        seconds: f64,
    },
    /// RUN timings: booting the build VM versus the command.
    RunTiming {
        /// Vertex.
        id: usize,
        /// VMM start to guest init running.
        boot_seconds: f64,
        /// The rest of the VM's life (command, shutdown).
        run_seconds: f64,
        /// Converting the changes to a layer.
        commit_seconds: f64,
    },
    /// The step failed.
    Error {
        /// Vertex (0 if not tied to a step).
        id: usize,
        /// What went wrong.
        message: String,
    },
    /// A note (e.g. a warning).
    Message {
        /// Text.
        text: String,
    },
    /// The build produced an image.
    Result {
        /// Image ID (config digest).
        id: String,
        /// Manifest digest.
        digest: String,
        /// Names given.
        tags: Vec<String>,
        /// Wall time of the whole build.
        seconds: f64,
    },
}

/// Where progress goes.
pub trait Progress: Send + Sync {
    /// Receives one event.
    fn event(&self, e: &Event);
}

/// Discards events.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: &Event) {}
}

impl<F: Fn(&Event) + Send + Sync> Progress for F {
    fn event(&self, e: &Event) {
        self(e)
    }
}

/// Formats events as BuildKit's plain output to a writer.
pub struct Plain<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> Plain<W> {
    /// A printer writing to `out`.
    pub fn new(out: W) -> Self {
        Plain {
            out: Mutex::new(out),
        }
    }
}

/// One event as plain text lines (empty for events that print nothing).
pub fn format_plain(e: &Event) -> String {
    match e {
        Event::Step {
            id,
            index,
            total,
            stage,
            text,
        } => format!("#{id} [{stage} {index}/{total}] {text}\n"),
        Event::Cached { id } => format!("#{id} CACHED\n"),
        Event::Output { id, elapsed, line } => format!("#{id} {elapsed:.3} {line}\n"),
        Event::Done { id, seconds } => format!("#{id} DONE {seconds:.1}s\n"),
        Event::RunTiming {
            id,
            boot_seconds,
            run_seconds,
            commit_seconds,
        } => format!(
            "#{id} vm boot {boot_seconds:.1}s, command {run_seconds:.1}s, layer {commit_seconds:.1}s\n"
        ),
        Event::Error { id, message } => {
            if *id == 0 {
                format!("ERROR: {message}\n")
            } else {
                format!("#{id} ERROR: {message}\n")
            }
        }
        Event::Message { text } => format!("{text}\n"),
        Event::Result {
            id,
            tags,
            seconds,
            ..
        } => {
            let mut s = format!("writing image {id} done ({seconds:.1}s)\n");
            for t in tags {
                s.push_str(&format!("naming to {t} done\n"));
            }
            s
        }
    }
}

impl<W: Write + Send> Progress for Plain<W> {
    fn event(&self, e: &Event) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(format_plain(e).as_bytes());
        let _ = out.flush();
    }
}

/// Seconds as f64, for events.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_format_is_buildkit_like() {
        let s = format_plain(&Event::Step {
            id: 2,
            index: 2,
            total: 4,
            stage: "builder".into(),
            text: "RUN make".into(),
        });
        assert_eq!(s, "#2 [builder 2/4] RUN make\n");
        assert_eq!(format_plain(&Event::Cached { id: 2 }), "#2 CACHED\n");
        assert_eq!(
            format_plain(&Event::Done {
                id: 2,
                seconds: 1.25
            }),
            "#2 DONE 1.2s\n"
        );
        let j = serde_json::to_string(&Event::Cached { id: 3 }).unwrap();
        assert_eq!(j, r#"{"type":"cached","id":3}"#);
    }
}
