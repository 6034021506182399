//! Hardened tar extraction: the one place where mvm's host code unpacks an
//! archive it did not make.
//!
//! # Why
//!
//! Tar archives reach the host from registries (image layers), API clients
//! (build contexts, imports) and guests (`mvctl cp` out of a sandbox, layers
//! built in a microVM). All of them are hostile: a guest owns its kernel,
//! so anything the guest agent sends may be crafted. The usual ways an
//! extractor is made to write elsewhere are `..` and absolute names, a
//! symlink entry followed by an entry beneath it (`link -> /etc`, then
//! `link/passwd`), a symlink that already exists in the destination, a
//! hard link to a file outside, and device nodes or setuid files left
//! where someone can use them. `tar::Entry::unpack` on joined paths stops
//! only the first two.
//!
//! # How
//!
//! - [`unpack`] resolves every parent directory beneath the destination
//!   with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and makes each
//!   change with `*at` calls relative to that descriptor, never following
//!   the final component. A path through any symlink, new or pre-existing,
//!   is refused, even one that stays inside (archives from honest tools do
//!   not need it). Symlink entries are created as given: they are never
//!   followed here.
//! - [`sanitize`] re-serialises an archive into a clean one with the same
//!   rules, tracking in memory what the filesystem would tell (which
//!   earlier entries are symlinks or files), so a guest-made layer can be
//!   stored without being unpacked on the host. [`sanitize_into_layer`]
//!   writes those clean entries into a layer the caller is writing,
//!   beneath one of its directories (`ADD` of a local archive).
//! - [`pack`] is the way back out: it archives a host directory that
//!   may be changing under a hostile writer (a volume a running guest
//!   uses), resolving every entry with the same `openat2` flags, storing
//!   symlinks as symlinks and describing each file by the descriptor it
//!   reads (`mvctl volume export`).
//! - [`beneath`] opens one file beneath a directory a less trusted
//!   process writes (a sandbox's `vm/`, the VMM's), with the same
//!   resolution and regular files only, for the host's readers and
//!   writers of such files.
//! - [`EntryPath`] / [`normalize`] is the name validation both use:
//!   normalised, and refused if absolute, with `..`, a NUL byte, or over
//!   the length limit.
//!
//! # Policies
//!
//! See [`Options`]: its presets [`Options::layer`] (OCI layers),
//! [`Options::volume`] (a volume backup restored into a new directory) and
//! [`Options::copy`] (everything else, the default). In short: limits on
//! file size, total size, entry count, name length and header metadata;
//! whiteouts only for layers; device nodes skipped (layers may opt into
//! creating them); setuid/setgid bits and `security.capability` dropped
//! unless asked; owners kept only when asked and running as root;
//! `trusted.overlay.*` xattrs always dropped; hard links only to files in
//! the tree (for merges into an existing directory: to files this archive
//! made). Every refusal is an [`Error`] naming the entry and the reason.
//!
//! The `tar` crate parses the format; this crate decides what the entries
//! may do and does it by hand, because the `tar` crate's own `unpack`
//! resolves paths by joining strings.

#![deny(missing_docs)]

pub mod beneath;
mod budget;
mod entry;
mod error;
mod fsops;
mod options;
mod pack;
mod path;
mod sanitize;
mod unpack;
mod whiteout;
mod writer;

use std::io::Read;
use std::path::Path;

pub use error::Error;
pub use options::{DevicePolicy, Existing, Limits, Options, Stats, XattrPolicy};
pub use pack::{pack, PackError, PackStats};
pub use path::{normalize, EntryPath, PathError};
pub use sanitize::{sanitize, sanitize_into_layer, Placement};

/// Extracts the tar stream `archive` (uncompressed) into the existing
/// directory `dest`, under `opts`. `stats` accumulates (limits apply to
/// its totals). On error the destination may hold part of the archive,
/// but nothing outside it was touched.
///
/// The reader is read up to the archive's end-of-archive marker, not
/// necessarily to its end.
pub fn unpack(
    archive: impl Read,
    dest: &Path,
    opts: &Options,
    stats: &mut Stats,
) -> Result<(), Error> {
    unpack::Unpacker::new(dest, opts, stats)?.run(archive)
}
