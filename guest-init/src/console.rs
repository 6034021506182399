//! Init's own messages on the console.
//!
//! The workload's stdout and stderr are the serial console too, so every
//! line init writes starts with `mvm-init:` for the host (and people) to
//! tell them apart. Errors are always printed; informational lines (one per
//! status event, which is how events are visible where there is no status
//! port device, e.g. under plain QEMU) are dropped when the kernel command
//! line carries `mvm.quiet`.
//!
//! Writing never fails loudly: a console that cannot be written to must not
//! take PID 1 down with it.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// The kernel command-line word that silences informational lines.
pub const QUIET_PARAM: &str = "mvm.quiet";

/// Silence (or not) informational lines.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether a kernel command line asks for quiet operation.
pub fn cmdline_wants_quiet(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == QUIET_PARAM)
}

/// An informational line; see the module docs for when it is shown.
pub fn info(args: fmt::Arguments<'_>) {
    if !QUIET.load(Ordering::Relaxed) {
        write_line("", args);
    }
}

/// Something went wrong but init carries on.
pub fn warn(args: fmt::Arguments<'_>) {
    write_line("warning: ", args);
}

/// Something went wrong and init gives up on the workload.
pub fn error(args: fmt::Arguments<'_>) {
    write_line("error: ", args);
}

fn write_line(level: &str, args: fmt::Arguments<'_>) {
    // One write per line so init's lines do not interleave mid-line with
    // the workload's output.
    let line = format!("mvm-init: {level}{args}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `info!("...", args)`: see [`info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::console::info(format_args!($($arg)*)) };
}

/// `warn!("...", args)`: see [`warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::console::warn(format_args!($($arg)*)) };
}

/// `error!("...", args)`: see [`error`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::console::error(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_word_must_stand_alone() {
        assert!(cmdline_wants_quiet("console=ttyS0 mvm.quiet reboot=k\n"));
        assert!(!cmdline_wants_quiet("console=ttyS0 quiet"));
        assert!(!cmdline_wants_quiet("mvm.quieter x=mvm.quiet"));
    }
}
