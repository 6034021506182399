//! What the two ends of `mvm build` share about a build context.
//!
//! # Why a crate of its own
//!
//! The client (`mvctl build`) packs a context directory into a tarball,
//! leaving out what `.dockerignore` excludes, as the Docker CLI does, so
//! that ignored files (secrets, build outputs) are never sent. The
//! builder (`mvm-builder`, in `mvmd`) applies the same `.dockerignore`
//! again to the unpacked context when COPY expands its sources. Both must
//! read the file the same way, so the rules live in one place; but the
//! builder links the image store, the sandbox runtime and an HTTP client,
//! none of which the CLI may link. This crate holds only the shared part
//! ([`Ignore`], [`glob_match`], [`clean_rel`], [`pack_dir`]) and depends
//! on `tar` and `thiserror` alone. `mvm_builder::context` re-exports it.
//!
//! # `.dockerignore`
//!
//! As Docker's `patternmatcher`: one pattern per line, `#` comments,
//! blank lines ignored; patterns are cleaned (`./a/` is `a`, a leading `/`
//! is dropped) and matched against the slash separated path relative to
//! the context root; a pattern that matches a directory excludes
//! everything below it; `!pattern` re-includes; the last matching line
//! wins. Globs: `*` and `?` do not cross `/`, `[...]` classes, `\`
//! escapes, `**` matches any number of directories. A pattern that climbs
//! above the root (`../x`) can never match and is ignored.

#![deny(missing_docs)]

mod ignore;
mod pack;

pub use ignore::{clean_rel, glob_match, Ignore, IgnoreError};
pub use pack::{pack_dir, PackError};
