//! Small filesystem helpers shared by the store and the disk builder:
//! advisory file locks, durable atomic publication, random names.
//!
//! `flock(2)` locks belong to an open file description, so two opens of the
//! same lock file conflict even inside one process; that makes the same
//! primitive correct between threads and between processes, and the
//! kernel drops the lock when a crashed process's descriptors close, so a
//! crash never leaves a lock behind.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// An open file holding a `flock`; the lock is released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Opens (creating if needed) `path` and takes a shared or exclusive
    /// lock, waiting for it.
    pub fn acquire(path: &Path, exclusive: bool) -> io::Result<Self> {
        let file = open_lock_file(path)?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(FileLock { file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Like [`FileLock::acquire`] but exclusive and without waiting:
    /// `Ok(None)` if someone else holds a lock on the file.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<Self>> {
        let file = open_lock_file(path)?;
        Self::try_exclusive_file(file)
    }

    /// Tries an exclusive lock on an already open file.
    pub fn try_exclusive_file(file: File) -> io::Result<Option<Self>> {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `dest` atomically and durably: a temp file in the same
/// directory, fsync, rename, fsync of the directory. Readers see either the
/// old or the new content, never a mix, even across a crash or ENOSPC.
pub fn write_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("destination has no parent directory"))?;
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::other("destination has no file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), random_id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A random 128-bit identifier in hex, from the kernel's CSPRNG, for
/// temp-file and lease names that must not collide across processes.
pub fn random_id() -> String {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                // getrandom cannot fail on Linux >= 3.17 once the pool is
                // ready; fall back to something unique per process anyway.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let v = t ^ ((std::process::id() as u128) << 64);
                return format!("{v:032x}");
            }
        }
    }
    hex::encode(buf)
}

/// Seconds since the epoch formatted as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn exclusive_locks_conflict_within_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let a = FileLock::acquire(&p, true).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }
}
