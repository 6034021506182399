//! mvctl: the mvm command line, and the client library of mvmd's REST API
//! that the command line and the end-to-end tests share.
//!
//! mvctl keeps Docker's verbs, flags and habits (`run -d --rm`, `ps -a`,
//! `logs -f`, exit code 125 for its own errors) so that people who know
//! Docker know mvctl; the difference is that every sandbox is a microVM
//! owned by `mvmd`. mvctl holds no state of mvm's: everything is a request
//! to mvmd (see `docs/api.md`), which mvctl starts in the background when
//! nothing answers at the default socket. What it does keep is what
//! Docker's CLI keeps: the user's registry credentials
//! (`commands::credentials`, the `mvm-auth` crate), sent with each pull
//! and push.
//!
//! Modules, one job each:
//! - [`client`]: HTTP/1.1 over a Unix socket or TCP, typed endpoint helpers,
//!   NDJSON streams, upgrades.
//! - [`connect`]: which daemon to talk to, and starting it when needed.
//! - [`machine`]: the emulated KVM host for hosts without hardware KVM.
//! - [`cli`]: the clap definitions of every command and flag.
//! - [`flags`]: parsing of flag values (memory sizes, env files, times).
//! - [`format`]: tables, human durations and sizes.
//! - [`commands`]: what each command does.

pub mod cli;
pub mod client;
pub mod commands;
pub mod connect;
pub mod flags;
pub mod format;
pub mod machine;
pub mod mounts;

/// Exit status for errors of mvctl or the daemon (Docker's convention):
/// a workload's own code is never confused with a failure to run it.
pub const EXIT_ERROR: i32 = 125;
