//! Build progress: the events of a Dockerfile build, one typed definition
//! for the builder that emits them, mvmd that streams them and mvctl that
//! draws them.
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

use serde::{Deserialize, Serialize};

/// One event of a build, in order: steps start, print output, finish
/// (done, cached or failed), and the build ends with its result. The REST
/// API sends each as an NDJSON line (`Progress::Build`), and clients draw
/// from the events themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
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

impl BuildEvent {
    /// The event as plain text lines in BuildKit's plain style (empty for
    /// events that print nothing).
    pub fn plain(&self) -> String {
        match self {
            BuildEvent::Step {
                id,
                index,
                total,
                stage,
                text,
            } => format!("#{id} [{stage} {index}/{total}] {text}\n"),
            BuildEvent::Cached { id } => format!("#{id} CACHED\n"),
            BuildEvent::Output { id, elapsed, line } => format!("#{id} {elapsed:.3} {line}\n"),
            BuildEvent::Done { id, seconds } => format!("#{id} DONE {seconds:.1}s\n"),
            BuildEvent::RunTiming {
                id,
                boot_seconds,
                run_seconds,
                commit_seconds,
            } => format!(
                "#{id} vm boot {boot_seconds:.1}s, command {run_seconds:.1}s, layer {commit_seconds:.1}s\n"
            ),
            BuildEvent::Error { id, message } => {
                if *id == 0 {
                    format!("ERROR: {message}\n")
                } else {
                    format!("#{id} ERROR: {message}\n")
                }
            }
            BuildEvent::Message { text } => format!("{text}\n"),
            BuildEvent::Result {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_format_is_buildkit_like() {
        let s = BuildEvent::Step {
            id: 2,
            index: 2,
            total: 4,
            stage: "builder".into(),
            text: "RUN make".into(),
        }
        .plain();
        assert_eq!(s, "#2 [builder 2/4] RUN make\n");
        assert_eq!(BuildEvent::Cached { id: 2 }.plain(), "#2 CACHED\n");
        assert_eq!(
            BuildEvent::Done {
                id: 2,
                seconds: 1.25
            }
            .plain(),
            "#2 DONE 1.2s\n"
        );
        let j = serde_json::to_string(&BuildEvent::Cached { id: 3 }).unwrap();
        assert_eq!(j, r#"{"type":"cached","id":3}"#);
        let back: BuildEvent = serde_json::from_str(&j).unwrap();
        assert_eq!(back, BuildEvent::Cached { id: 3 });
    }
}
