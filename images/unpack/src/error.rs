//! Errors. Every error about an entry names it as it appears in the
//! archive (lossily decoded), so a user can find it with `tar -t`.

use std::io;

/// Why an unpack or re-serialisation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry would escape the destination or is otherwise unsafe.
    #[error("refusing tar entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry conflicts with what already exists ([`crate::Existing::Merge`]).
    #[error("tar entry {entry:?}: {reason}")]
    Conflict {
        /// The entry.
        entry: String,
        /// The conflict.
        reason: &'static str,
    },
    /// A file is larger than the per-entry limit.
    #[error("tar entry {entry:?} is {size} bytes, over the limit of {limit} bytes per file")]
    EntryTooLarge {
        /// The entry.
        entry: String,
        /// Its size (as declared, or as read so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The files together exceed the total limit.
    #[error("tar entry {entry:?} would exceed the limit of {limit} bytes in total")]
    TotalTooLarge {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// Too many entries.
    #[error("tar entry {entry:?} exceeds the limit of {limit} entries")]
    TooManyEntries {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// A device node, refused by [`crate::DevicePolicy::Refuse`].
    #[error("tar entry {entry:?} is a device node, refused by the device policy")]
    DeviceRefused {
        /// The entry.
        entry: String,
    },
    /// An entry type that is not allowed.
    #[error("tar entry {entry:?} has unsupported tar entry type {kind:?}")]
    UnsupportedType {
        /// The entry.
        entry: String,
        /// The type byte.
        kind: char,
    },
    /// The archive is corrupt or truncated (or its metadata records are
    /// over [`crate::Limits::max_header_size`]).
    #[error("corrupt or truncated tar archive {}: {source}", after.as_deref().map(|e| format!("after entry {e:?}")).unwrap_or_else(|| "at its start".into()))]
    Archive {
        /// The last entry read successfully.
        after: Option<String>,
        /// The error.
        source: io::Error,
    },
    /// A filesystem operation (or a write of the output archive) failed.
    #[error("tar entry {entry:?}: {op}: {source}")]
    Io {
        /// The entry (or the destination, for errors about it).
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Out of space (or quota).
    #[error(
        "no space left on device while writing tar entry {entry:?}: free some space and retry"
    )]
    NoSpace {
        /// The entry.
        entry: String,
    },
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn unsafe_entry(entry: &str, reason: &'static str) -> Error {
        Error::Unsafe {
            entry: entry.to_string(),
            reason,
        }
    }
}

/// Maps an I/O error about `entry` (ENOSPC and EDQUOT become [`Error::NoSpace`]).
pub(crate) fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            Error::NoSpace {
                entry: entry.to_string(),
            }
        } else {
            Error::Io {
                entry: entry.to_string(),
                op,
                source,
            }
        }
    }
}

/// [`io_err`] for rustix's errno.
pub(crate) fn errno_err<'a>(
    entry: &'a str,
    op: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> Error + 'a {
    move |e| io_err(entry, op)(e.into())
}
