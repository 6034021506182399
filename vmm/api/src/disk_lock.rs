//! Whether a disk image is in use by a VMM.
//!
//! `mvm-vmm` locks every disk image it opens for as long as it runs, as
//! QEMU's image locking does (`mvm_virtio::block::DiskFile`): a whole-file
//! open-file-description lock (`F_OFD_SETLK`), shared for a read-only
//! drive, exclusive for a writable one. The kernel drops it when the VMM
//! ends, however it ends, so a lock never outlives its user.
//!
//! Callers ask [`probe`] before they start a VMM, to refuse early with a
//! message that names the user they know of (mvmd names the sandbox); the
//! VMM's own lock is what makes it exact, races included.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Who holds the lock that conflicts with an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Someone reads the image (a read-only drive): a writer must wait.
    Readers,
    /// Someone writes it: nobody else may open it.
    Writer,
}

/// Whether `path` could be opened now as `read_only` says: `None` when
/// nothing conflicts, else who holds the lock in the way. A missing file
/// is an error.
pub fn probe(path: &Path, read_only: bool) -> io::Result<Option<Holder>> {
    let file = File::open(path)?;
    // SAFETY: `flock` is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid fd and a pointer to an initialised flock, which the
    // kernel overwrites with the conflicting lock (or F_UNLCK).
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match i32::from(fl.l_type) {
        libc::F_UNLCK => None,
        libc::F_RDLCK => Some(Holder::Readers),
        _ => Some(Holder::Writer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(file: &File, kind: libc::c_int) {
        // SAFETY: as in `probe`.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        // SAFETY: a valid fd and an initialised flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn probes_see_the_vmms_kind_of_lock() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(probe(f.path(), false).unwrap(), None);
        let reader = File::open(f.path()).unwrap();
        lock(&reader, libc::F_RDLCK);
        assert_eq!(probe(f.path(), true).unwrap(), None);
        assert_eq!(probe(f.path(), false).unwrap(), Some(Holder::Readers));
        drop(reader);
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap();
        lock(&writer, libc::F_WRLCK);
        assert_eq!(probe(f.path(), true).unwrap(), Some(Holder::Writer));
        drop(writer);
        assert_eq!(probe(f.path(), false).unwrap(), None);
        assert!(probe(Path::new("/nonexistent/disk"), true).is_err());
    }
}
