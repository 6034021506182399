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

/// The event a line of [`format_plain`]'s output stands for, so a client
/// that receives the plain lines (the REST API's `status` lines) can draw
/// its own view. `None` for lines that belong to no step (the result,
/// warnings, continuation lines of a multi-line error).
pub fn parse_plain(line: &str) -> Option<Event> {
    let (id, rest) = line.strip_prefix('#')?.split_once(' ')?;
    let id: usize = id.parse().ok()?;
    if rest == "CACHED" {
        return Some(Event::Cached { id });
    }
    if let Some(seconds) = rest
        .strip_prefix("DONE ")
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
    {
        return Some(Event::Done { id, seconds });
    }
    if let Some(message) = rest.strip_prefix("ERROR: ") {
        return Some(Event::Error {
            id,
            message: message.to_string(),
        });
    }
    if let Some(t) = rest.strip_prefix("vm boot ") {
        let secs = |s: &str| s.strip_suffix('s')?.parse::<f64>().ok();
        let (boot, t) = t.split_once(", command ")?;
        let (run, commit) = t.split_once(", layer ")?;
        return Some(Event::RunTiming {
            id,
            boot_seconds: secs(boot)?,
            run_seconds: secs(run)?,
            commit_seconds: secs(commit)?,
        });
    }
    if let Some(t) = rest.strip_prefix('[') {
        let (head, text) = t.split_once("] ")?;
        let (stage, counts) = head.rsplit_once(' ')?;
        let (index, total) = counts.split_once('/')?;
        return Some(Event::Step {
            id,
            index: index.parse().ok()?,
            total: total.parse().ok()?,
            stage: stage.to_string(),
            text: text.to_string(),
        });
    }
    let (elapsed, line) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Event::Output {
        id,
        elapsed: elapsed.parse().ok()?,
        line: line.to_string(),
    })
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

    #[test]
    fn plain_lines_parse_back_to_their_events() {
        let events = [
            Event::Step {
                id: 3,
                index: 2,
                total: 4,
                stage: "stage-0".into(),
                text: "COPY [\"a b\", \"c\"] /x/".into(),
            },
            Event::Cached { id: 3 },
            Event::Done {
                id: 12,
                seconds: 1.5,
            },
            Event::Output {
                id: 4,
                elapsed: 0.25,
                line: "#9 DONE 1.0s [x] CACHED".into(),
            },
            Event::Output {
                id: 4,
                elapsed: 1.0,
                line: String::new(),
            },
            Event::RunTiming {
                id: 4,
                boot_seconds: 1.5,
                run_seconds: 0.5,
                commit_seconds: 0.0,
            },
            Event::Error {
                id: 4,
                message: "it failed".into(),
            },
        ];
        for e in events {
            let line = format_plain(&e);
            assert_eq!(
                parse_plain(line.trim_end_matches('\n')),
                Some(e),
                "{line:?}"
            );
        }
        for other in [
            "writing image sha256:ab done (0.2s)",
            "naming to docker.io/library/x:latest done",
            "ERROR: no step",
            "#x CACHED",
            "#3 not-a-number text",
            "",
        ] {
            assert_eq!(parse_plain(other), None, "{other:?}");
        }
    }
}
