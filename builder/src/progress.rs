//! Where build progress goes, and a printer in BuildKit's plain style (the
//! events are `mvm_api::build::BuildEvent`):
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

/// The build's events: `mvm-api`'s type, so the builder, mvmd and mvctl
/// share one definition.
pub use mvm_api::build::BuildEvent as Event;

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

impl<W: Write + Send> Progress for Plain<W> {
    fn event(&self, e: &Event) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(e.plain().as_bytes());
        let _ = out.flush();
    }
}

/// Seconds as f64, for events.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
