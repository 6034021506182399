//! Terminal progress bars (one per blob, like `docker pull`), for the CLI.

use std::collections::BTreeMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::progress::{Progress, ProgressEvent};

const BAR_TEMPLATE: &str = "{prefix} {msg:<12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}";
const DONE_TEMPLATE: &str = "{prefix} {msg}";

/// Draws a bar per blob on stderr; hidden automatically when stderr is not
/// a terminal (indicatif's rule), so logs stay clean.
#[derive(Debug)]
pub struct ProgressBars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<usize, ProgressBar>>,
    status: ProgressBar,
}

impl Default for ProgressBars {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressBars {
    /// Bars on stderr.
    pub fn new() -> Self {
        Self::with_target(ProgressDrawTarget::stderr())
    }

    /// Bars drawn nowhere (tests, `--quiet`).
    pub fn hidden() -> Self {
        Self::with_target(ProgressDrawTarget::hidden())
    }

    fn with_target(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let status = multi.add(ProgressBar::new_spinner());
        ProgressBars {
            multi,
            bars: Mutex::new(BTreeMap::new()),
            status,
        }
    }

    fn bar(&self, index: usize, digest: &crate::Digest, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(index)
            .or_insert_with(|| {
                let style = ProgressStyle::with_template(BAR_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                let pb = self.multi.add(ProgressBar::new(size).with_style(style));
                pb.set_prefix(digest.short());
                pb
            })
            .clone()
    }

    fn finish(&self, index: usize, digest: &crate::Digest, size: u64, msg: String) {
        let pb = self.bar(index, digest, size);
        pb.set_style(
            ProgressStyle::with_template(DONE_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.finish_with_message(msg);
    }
}

impl Progress for ProgressBars {
    fn event(&self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Resolving { reference } => {
                self.status.set_message(format!("resolving {reference}"));
            }
            ProgressEvent::Resolved {
                reference, digest, ..
            } => {
                self.status.set_message(format!("{reference}: {digest}"));
            }
            ProgressEvent::BlobExists {
                index,
                digest,
                size,
                ..
            } => self.finish(*index, digest, *size, "already exists".into()),
            ProgressEvent::BlobMounted {
                index,
                digest,
                size,
                from,
                ..
            } => self.finish(*index, digest, *size, format!("mounted from {from}")),
            ProgressEvent::BlobStart {
                index,
                digest,
                size,
                ..
            } => {
                let pb = self.bar(*index, digest, *size);
                pb.set_message("transferring");
            }
            ProgressEvent::BlobProgress {
                index,
                digest,
                done,
                total,
                ..
            } => {
                let pb = self.bar(*index, digest, *total);
                pb.set_position(*done);
            }
            ProgressEvent::BlobVerifying { index, digest, .. } => {
                let pb = self.bar(*index, digest, 0);
                pb.set_message("verifying");
            }
            ProgressEvent::BlobDone {
                index,
                digest,
                size,
                ..
            } => self.finish(*index, digest, *size, "complete".into()),
            ProgressEvent::Retrying {
                what,
                attempt,
                reason,
            } => {
                let _ = self.multi.println(format!(
                    "retrying {what} (attempt {attempt} failed: {reason})"
                ));
            }
            ProgressEvent::Verifying { reference } => {
                self.status.set_message(format!("verifying {reference}"));
            }
            ProgressEvent::Done {
                reference, digest, ..
            } => {
                self.status
                    .finish_with_message(format!("{reference}: done, digest {digest}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_every_event_hidden() {
        let p = ProgressBars::hidden();
        let d = crate::Digest::of(b"a");
        for e in [
            ProgressEvent::Resolving {
                reference: "r".into(),
            },
            ProgressEvent::BlobStart {
                index: 1,
                count: 1,
                digest: d,
                size: 10,
            },
            ProgressEvent::BlobProgress {
                index: 1,
                count: 1,
                digest: d,
                done: 5,
                total: 10,
            },
            ProgressEvent::BlobVerifying {
                index: 1,
                count: 1,
                digest: d,
            },
            ProgressEvent::BlobDone {
                index: 1,
                count: 1,
                digest: d,
                size: 10,
            },
            ProgressEvent::Done {
                reference: "r".into(),
                digest: d,
                id: d,
            },
        ] {
            p.event(&e);
        }
        assert_eq!(p.bars.lock().unwrap()[&1].position(), 10);
    }
}
