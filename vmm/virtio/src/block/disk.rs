//! The disk image behind a virtio-blk device, and positioned I/O between it
//! and guest memory.
//!
//! I/O uses `pread(2)`/`pwrite(2)` directly on guest memory (no bounce
//! buffer, no shared file offset), so requests never depend on each other's
//! order and the data is copied once.
//!
//! # Locking
//!
//! An open image holds an open-file-description lock (`F_OFD_SETLK`) on
//! the whole file, as QEMU's image locking does: shared for a read-only
//! disk, exclusive for a writable one. Two VMMs then never write one disk
//! at once, nor read one another is writing (a block volume has a single
//! user), and the lock ends with the process however it ends (SIGKILL
//! included): no stale lock can outlive its VMM. Callers probe with
//! `mvm_vmm_api::disk_lock`, which tests this same lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::SECTOR_SIZE;

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("cannot open disk image {path:?} ({mode}): {source}; check that it exists and that mvm-vmm may access it")]
    Open {
        /// Image path.
        path: PathBuf,
        /// "read-only" or "read-write".
        mode: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The size could not be determined.
    #[error("cannot determine the size of disk image {path:?}: {source}")]
    Size {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// virtio-blk counts in 512-byte sectors; a partial last sector would be
    /// silently unreachable.
    #[error(
        "disk image {path:?} is {size} bytes, not a multiple of 512; \
         pad it (e.g. `truncate -s %512 {path:?}`) or rebuild it"
    )]
    NotSectorMultiple {
        /// Image path.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// Another process holds a conflicting lock on the image.
    #[error(
        "disk image {path:?} is in use by another process (it holds a lock that conflicts \
         with this {mode} open): a writable disk has one user at a time; stop the other \
         microVM first"
    )]
    Locked {
        /// Image path.
        path: PathBuf,
        /// "read-only" or "read-write".
        mode: &'static str,
    },
    /// The lock could not be taken for another reason.
    #[error("cannot lock disk image {path:?}: {source}")]
    Lock {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Not a regular file or block device (a directory, a FIFO...).
    #[error("disk image {path:?} is not a regular file or a block device")]
    NotADisk {
        /// Image path.
        path: PathBuf,
    },
}

/// Take the whole-file OFD lock of an image opened as `read_only` says
/// (see the module docs); fails with `EAGAIN` when another open file
/// description holds a conflicting one.
fn lock(file: &File, read_only: bool) -> io::Result<()> {
    // SAFETY: `flock` is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0, l_len 0: the whole file; l_pid must be 0 for OFD locks.
    // SAFETY: a valid fd and a pointer to an initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl DiskFile {
    /// Opens `path`, read-only (`O_RDONLY`) if `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let mode = if read_only { "read-only" } else { "read-write" };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                mode,
                source,
            })?;
        let file_type = file
            .metadata()
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?
            .file_type();
        {
            use std::os::unix::fs::FileTypeExt;
            if !file_type.is_file() && !file_type.is_block_device() {
                return Err(DiskError::NotADisk {
                    path: path.to_path_buf(),
                });
            }
        }
        lock(&file, read_only).map_err(|source| {
            if matches!(
                source.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EACCES)
            ) {
                DiskError::Locked {
                    path: path.to_path_buf(),
                    mode,
                }
            } else {
                DiskError::Lock {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        // Seeking to the end works for block devices too, whose metadata
        // length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::NotSectorMultiple {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }

    /// Image path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fills `slice` from the image at byte `offset`. Reading past the end
    /// of the image is an error (the caller checks ranges first; the file
    /// may still shrink under us).
    pub fn read_into<B: BitmapSlice>(
        &self,
        offset: u64,
        slice: &VolatileSlice<B>,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < slice.len() {
            let rest = slice
                .offset(done)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let pos = file_offset(offset, done)?;
            let guard = rest.ptr_guard_mut();
            // SAFETY: `guard` points to `rest.len()` bytes of mapped guest
            // memory, valid for writes for the guard's lifetime (invariant of
            // VolatileSlice); the fd is open. The kernel writes at most
            // `rest.len()` bytes there. Concurrent guest access to the same
            // bytes is a guest bug and cannot violate host memory safety.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    pos,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                rest.bitmap().mark_dirty(0, rest.len());
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the disk image ended before the requested sector (was it truncated?)",
                ));
            }
            let n = n as usize;
            rest.bitmap().mark_dirty(0, n);
            done += n;
        }
        Ok(())
    }

    /// Writes `slice` to the image at byte `offset`.
    pub fn write_from<B: BitmapSlice>(
        &self,
        offset: u64,
        slice: &VolatileSlice<B>,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        let mut done = 0usize;
        while done < slice.len() {
            let rest = slice
                .offset(done)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let pos = file_offset(offset, done)?;
            let guard = rest.ptr_guard();
            // SAFETY: `guard` points to `rest.len()` bytes of mapped guest
            // memory, valid for reads for the guard's lifetime (invariant of
            // VolatileSlice); the fd is open; the kernel only reads them.
            let n = unsafe {
                libc::pwrite(
                    self.file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    pos,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwrite wrote nothing",
                ));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Makes written data durable (`fdatasync(2)`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn file_offset(base: u64, done: usize) -> io::Result<libc::off_t> {
    base.checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "disk offset overflows off_t"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn refuses_size_not_multiple_of_512_with_a_clear_message() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 1000]).unwrap();
        let err = DiskFile::open(f.path(), true).unwrap_err();
        assert!(matches!(
            err,
            DiskError::NotSectorMultiple { size: 1000, .. }
        ));
        assert!(err.to_string().contains("not a multiple of 512"), "{err}");
    }

    #[test]
    fn one_writer_or_many_readers_and_the_lock_ends_with_the_open() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        let a = DiskFile::open(f.path(), true).unwrap();
        let b = DiskFile::open(f.path(), true).unwrap();
        let err = DiskFile::open(f.path(), false).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Locked {
                    mode: "read-write",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop((a, b));
        let w = DiskFile::open(f.path(), false).unwrap();
        for ro in [true, false] {
            assert!(matches!(
                DiskFile::open(f.path(), ro),
                Err(DiskError::Locked { .. })
            ));
        }
        drop(w);
        DiskFile::open(f.path(), false).unwrap();
    }

    #[test]
    fn refuses_missing_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = DiskFile::open(&dir.path().join("nope.img"), false).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Open {
                    mode: "read-write",
                    ..
                }
            ),
            "{err}"
        );
        let err = DiskFile::open(dir.path(), true).unwrap_err();
        // Opening a directory read-only succeeds at open(2), so the type
        // check must catch it.
        assert!(matches!(err, DiskError::NotADisk { .. }), "{err}");
    }

    #[test]
    fn positioned_io_round_trip_through_guest_memory() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&pattern).unwrap();
        let disk = DiskFile::open(f.path(), false).unwrap();
        assert_eq!(disk.capacity_sectors(), 8);
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let slice = mem.get_slice(GuestAddress(0x1000), 1024).unwrap();
        disk.read_into(512, &slice).unwrap();
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, pattern[512..1536]);

        mem.write_slice(&[0xab; 512], GuestAddress(0x2000)).unwrap();
        let slice = mem.get_slice(GuestAddress(0x2000), 512).unwrap();
        disk.write_from(3584, &slice).unwrap();
        disk.flush().unwrap();
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[3584..], &[0xab; 512][..]);
        assert_eq!(&on_disk[..3584], &pattern[..3584]);

        // Past the end: EOF is an error, never zero-filled success.
        let slice = mem.get_slice(GuestAddress(0x3000), 1024).unwrap();
        let err = disk.read_into(3584, &slice).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_only_disk_is_opened_o_rdonly_and_refuses_writes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let disk = DiskFile::open(f.path(), true).unwrap();
        // The kernel's view of the fd, not just our flag.
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", disk.file.as_raw_fd()))
                .unwrap();
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let slice = mem.get_slice(GuestAddress(0), 512).unwrap();
        let err = disk.write_from(0, &slice).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }
}
