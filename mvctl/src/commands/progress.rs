//! Progress of pulls, pushes and loads: one bar per layer on a terminal
//! (indicatif), plain lines otherwise, from the daemon's NDJSON stream.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mvm_api::build::BuildEvent;
use mvm_api::images::Progress;
use mvm_api::ApiError;
use serde_json::Value;

use super::CmdError;
use crate::client::{Answer, ClientError};
use crate::format;

/// Follow `answer` to its end and return the operation's result value.
/// The stream's `error` line becomes the command's error.
pub async fn show(answer: Answer, quiet: bool) -> Result<Value, CmdError> {
    let mut stream = match answer {
        Answer::Json(v) => return Ok(v),
        Answer::Progress(s) => s,
    };
    let tty = std::io::stderr().is_terminal();
    let target = if quiet || !tty {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let multi = MultiProgress::with_draw_target(target);
    let style = bytes_style();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // Without a terminal: one line per item and state, not per update.
    let mut states: HashMap<String, String> = HashMap::new();
    let line = |multi: &MultiProgress, text: String| {
        if quiet {
            return;
        }
        if tty {
            let _ = multi.println(text);
        } else {
            eprintln!("{text}");
        }
    };
    let mut result = None;
    // indicatif leaves the cursor at the end of the last bar: the next
    // output must start on a line of its own.
    let drew = std::cell::Cell::new(false);
    let end_bars = || {
        if drew.get() {
            eprintln!();
        }
    };
    while let Some(p) = stream.next().await? {
        match p {
            Progress::Status { message } => line(&multi, message),
            Progress::Build { event } => line(&multi, event.plain().trim_end().to_string()),
            Progress::Bytes {
                id,
                current,
                total,
                message,
            } => {
                if !tty {
                    let state = message.unwrap_or_else(|| "Working".into());
                    if states.get(&id) != Some(&state) {
                        let size = total
                            .map(|t| format!(" ({})", format::human_size(t)))
                            .unwrap_or_default();
                        line(&multi, format!("{id}: {state}{size}"));
                        states.insert(id, state);
                    }
                    continue;
                }
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    drew.set(!quiet);
                    let b = multi.add(ProgressBar::new(total.unwrap_or(0)));
                    b.set_style(style.clone());
                    b.set_prefix(id.clone());
                    b
                });
                if let Some(t) = total {
                    bar.set_length(t);
                }
                if let Some(m) = message {
                    bar.set_message(m);
                }
                bar.set_position(current);
            }
            Progress::Done { id, message } => match bars.remove(&id) {
                Some(bar) if tty && !quiet => bar.finish_with_message(message),
                _ => line(&multi, format!("{id}: {message}")),
            },
            Progress::Error { code, message } => {
                for b in bars.values() {
                    b.abandon();
                }
                end_bars();
                return Err(ClientError::Api(ApiError::new(code, message)).into());
            }
            Progress::Result { value } => result = Some(value),
        }
    }
    end_bars();
    result.ok_or_else(|| {
        CmdError::Invalid(
            "the daemon's progress stream ended without a result: the operation may be incomplete"
                .into(),
        )
    })
}

/// The bar of a byte transfer of known size (a pulled layer, a volume
/// export or import).
fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} {wide_bar} {binary_bytes}/{binary_total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// One bar on stderr for bytes mvctl streams itself (`volume export`,
/// `volume import`), drawn like pull's layer bars; with no known size,
/// the bytes so far and the rate. Hidden with `quiet` or when stderr is
/// not a terminal, so scripts and pipes see no escape codes.
pub fn transfer_bar(label: &str, total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    bar.set_style(match total {
        Some(_) => bytes_style(),
        None => ProgressStyle::with_template(
            "{prefix:.bold} {spinner} {binary_bytes} ({binary_bytes_per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    });
    bar.set_prefix(label.to_string());
    bar
}

/// Lines of a running step's output kept on screen (BuildKit shows six).
const BUILD_LOG_LINES: usize = 6;

/// One step of the build view.
struct BuildStep {
    bar: ProgressBar,
    /// "[stage i/N] text".
    title: String,
    /// Bars under the step showing its last output lines.
    log: Vec<ProgressBar>,
    lines: std::collections::VecDeque<String>,
}

/// `mvctl build --progress tty`: BuildKit's live view on a terminal, drawn
/// from the build's events (`mvm_api::build::BuildEvent`, the stream's
/// `build` lines):
///
/// ```text
/// [+] Building 4.2s (3/4)
///  => [stage-0 1/4] FROM python:3-bookworm                         0.0s
///  => CACHED [stage-0 2/4] WORKDIR /app                            0.0s
///  => [stage-0 3/4] RUN pip install -r requirements.txt            3.1s
///  => => # Collecting flask
/// ```
///
/// Running steps tick their own clock; finished ones show the daemon's
/// duration. Messages that belong to no step are printed above the view;
/// a step's error is printed once, by the command, at the end.
pub struct BuildView {
    multi: MultiProgress,
    header: ProgressBar,
    steps: HashMap<usize, BuildStep>,
    total: usize,
    done: usize,
}

fn seconds_key(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.1}s", state.elapsed().as_secs_f64());
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("secs", seconds_key)
}

impl BuildView {
    /// A view drawing on stderr (which must be a terminal).
    pub fn new() -> BuildView {
        Self::with_target(ProgressDrawTarget::stderr_with_hz(10))
    }

    fn with_target(target: ProgressDrawTarget) -> BuildView {
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(style("[+] Building {secs} {msg}"));
        header.enable_steady_tick(std::time::Duration::from_millis(100));
        BuildView {
            multi,
            header,
            steps: HashMap::new(),
            total: 0,
            done: 0,
        }
    }

    fn counts(&self) -> String {
        format!("({}/{})", self.done, self.total)
    }

    /// A line above the view (a `status` line of the stream).
    pub fn message(&mut self, text: &str) {
        let _ = self.multi.println(text);
    }

    /// One event of the build.
    pub fn event(&mut self, event: BuildEvent) {
        use BuildEvent as Event;
        match event {
            Event::Step {
                id,
                index,
                total,
                stage,
                text,
            } => {
                self.total = self.total.max(total);
                let title = format!("[{stage} {index}/{total}] {text}");
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style(" => {wide_msg} {secs:>7}"));
                bar.set_message(title.clone());
                bar.enable_steady_tick(std::time::Duration::from_millis(100));
                self.steps.insert(
                    id,
                    BuildStep {
                        bar,
                        title,
                        log: Vec::new(),
                        lines: Default::default(),
                    },
                );
                self.header.set_message(self.counts());
            }
            Event::Output { id, line, .. } => {
                let Some(step) = self.steps.get_mut(&id) else {
                    return;
                };
                if step.lines.len() == BUILD_LOG_LINES {
                    step.lines.pop_front();
                }
                step.lines.push_back(line);
                while step.log.len() < step.lines.len() {
                    let after = step.log.last().unwrap_or(&step.bar).clone();
                    let b = self.multi.insert_after(&after, ProgressBar::new_spinner());
                    b.set_style(style(" => => # {wide_msg}"));
                    step.log.push(b);
                }
                for (b, l) in step.log.iter().zip(&step.lines) {
                    b.set_message(l.clone());
                }
            }
            Event::Cached { id } => self.finish(id, "CACHED ", 0.0),
            Event::Done { id, seconds } => self.finish(id, "", seconds),
            Event::Error { id, .. } => {
                let secs = self
                    .steps
                    .get(&id)
                    .map(|s| s.bar.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                self.finish(id, "ERROR ", secs);
            }
            Event::Message { text } => self.message(&text),
            // The boot/command split is in the plain output; the live
            // view keeps to BuildKit's columns.
            Event::RunTiming { .. } | Event::Result { .. } => {}
        }
    }

    fn finish(&mut self, id: usize, tag: &str, seconds: f64) {
        let Some(step) = self.steps.get_mut(&id) else {
            return;
        };
        if step.bar.is_finished() {
            return;
        }
        for b in step.log.drain(..) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        step.bar.set_style(style(" => {wide_msg} {prefix:>7}"));
        step.bar.set_prefix(format!("{seconds:.1}s"));
        step.bar.finish_with_message(format!("{tag}{}", step.title));
        self.done += 1;
        self.header.set_message(self.counts());
    }

    /// The build ended (`ok`: with an image): the view stays on screen. A
    /// step still running when the build failed is the one that failed
    /// (only a failing RUN sends an ERROR line of its own).
    pub fn end(&mut self, ok: bool) {
        let running: Vec<usize> = self
            .steps
            .iter()
            .filter(|(_, s)| !s.bar.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in running {
            let secs = self.steps[&id].bar.elapsed().as_secs_f64();
            self.finish(id, if ok { "" } else { "ERROR " }, secs);
        }
        self.header.set_style(style(if ok {
            "[+] Building {prefix} {msg} FINISHED"
        } else {
            "[+] Building {prefix} {msg} FAILED"
        }));
        self.header
            .set_prefix(format!("{:.1}s", self.header.elapsed().as_secs_f64()));
        self.header.finish_with_message(self.counts());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> BuildView {
        BuildView::with_target(ProgressDrawTarget::hidden())
    }

    fn step(id: usize, index: usize, total: usize, text: &str) -> BuildEvent {
        BuildEvent::Step {
            id,
            index,
            total,
            stage: "stage-0".into(),
            text: text.into(),
        }
    }

    #[test]
    fn build_view_follows_steps_and_keeps_the_last_output_lines() {
        let mut v = view();
        v.event(step(1, 1, 3, "FROM busybox"));
        v.event(BuildEvent::Done {
            id: 1,
            seconds: 0.0,
        });
        v.event(step(2, 2, 3, "RUN make"));
        assert_eq!((v.done, v.total), (1, 3));
        for i in 0..10 {
            v.event(BuildEvent::Output {
                id: 2,
                elapsed: 0.1,
                line: format!("line {i}"),
            });
        }
        let s = &v.steps[&2];
        assert_eq!(s.log.len(), BUILD_LOG_LINES);
        assert_eq!(s.lines.front().map(String::as_str), Some("line 4"));
        assert_eq!(s.log[5].message(), "line 9");
        v.event(BuildEvent::RunTiming {
            id: 2,
            boot_seconds: 1.0,
            run_seconds: 2.0,
            commit_seconds: 0.1,
        });
        v.event(BuildEvent::Done {
            id: 2,
            seconds: 3.1,
        });
        let s = &v.steps[&2];
        assert!(s.log.is_empty() && s.bar.is_finished());
        assert_eq!(s.bar.prefix(), "3.1s");
        v.event(step(3, 3, 3, "COPY a /a"));
        v.event(BuildEvent::Cached { id: 3 });
        assert_eq!(v.steps[&3].bar.message(), "CACHED [stage-0 3/3] COPY a /a");
        v.event(BuildEvent::Message {
            text: "pulling busybox".into(),
        });
        v.end(true);
        assert_eq!(v.done, 3);
        assert!(v.header.is_finished());
    }

    #[test]
    fn build_view_marks_the_failed_step() {
        let mut v = view();
        v.event(step(1, 1, 2, "FROM busybox"));
        v.event(BuildEvent::Done {
            id: 1,
            seconds: 0.0,
        });
        v.event(step(2, 2, 2, "ADD http://x/y /y"));
        v.end(false);
        assert_eq!(
            v.steps[&2].bar.message(),
            "ERROR [stage-0 2/2] ADD http://x/y /y"
        );
        let mut v = view();
        v.event(step(1, 1, 1, "RUN false"));
        v.event(BuildEvent::Error {
            id: 1,
            message: "Dockerfile:2: step 1/1 `RUN false` failed".into(),
        });
        assert!(v.steps[&1].bar.message().starts_with("ERROR "));
    }
}
