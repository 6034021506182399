//! Progress of pulls, pushes and loads: one bar per layer on a terminal
//! (indicatif), plain lines otherwise, from the daemon's NDJSON stream.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mvm_api::images::Progress;
use mvm_api::ApiError;
use serde_json::Value;

use super::CmdError;
use crate::client::{Answer, ClientError};

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
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {wide_bar} {binary_bytes}/{binary_total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
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
    while let Some(p) = stream.next().await? {
        match p {
            Progress::Status { message } => line(&multi, message),
            Progress::Bytes { id, current, total } => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(total.unwrap_or(0)));
                    b.set_style(style.clone());
                    b.set_prefix(id.clone());
                    b
                });
                if let Some(t) = total {
                    bar.set_length(t);
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
                return Err(ClientError::Api(ApiError::new(code, message)).into());
            }
            Progress::Result { value } => result = Some(value),
        }
    }
    result.ok_or_else(|| {
        CmdError::Invalid(
            "the daemon's progress stream ended without a result: the operation may be incomplete"
                .into(),
        )
    })
}
