//! Guest memory: one sealed memfd, mapped shared, split around the MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets later work hand the same
//! pages to vhost-user backends (virtio-fs) and write snapshots, by passing
//! the fd. The size is sealed so nobody holding the fd can shrink it under
//! the guest (which would turn guest accesses into SIGBUS in the VMM).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::layout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create for guest memory failed: {0}")]
    Memfd(std::io::Error),
    #[error("sizing guest memory to {size} bytes failed: {source}")]
    Truncate { size: u64, source: std::io::Error },
    #[error("sealing the guest memory memfd failed: {0}")]
    Seal(std::io::Error),
    #[error("mapping guest memory at {addr:#x} ({size} bytes) failed: {source}")]
    Map {
        addr: u64,
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("assembling the guest memory regions failed: {0}")]
    Regions(vm_memory::GuestRegionCollectionError),
}

/// Create `size` bytes of guest memory laid out by [`layout::memory_regions`].
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let file = memfd(c"mvm-guest-ram")?;
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    // SAFETY: fcntl on an fd we own; F_ADD_SEALS takes an int argument.
    let ret = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            libc::F_SEAL_GROW | libc::F_SEAL_SHRINK,
        )
    };
    if ret < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in layout::memory_regions(size) {
        let region = GuestRegionMmap::from_range(
            addr,
            len as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        )
        .map_err(|source| MemoryError::Map {
            addr: addr.0,
            size: len,
            source,
        })?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

fn memfd(name: &CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The start of guest RAM, for loaders.
pub const RAM_START: GuestAddress = GuestAddress(0);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn memory_is_a_sealed_shared_memfd() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x100_0000))
            .unwrap();
        let r = mem.iter().next().unwrap();
        let fo = r.file_offset().expect("file backed");
        assert_eq!(fo.start(), 0);
        let fd = fo.file().as_raw_fd();
        // SAFETY: F_GET_SEALS on a valid fd.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_GROW | libc::F_SEAL_SHRINK),
            libc::F_SEAL_GROW | libc::F_SEAL_SHRINK
        );
        // The data is in the file: read it back through the fd.
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        fo.file().read_exact_at(&mut buf, 0x100_0000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(fo.file().set_len(1 << 20).is_err(), "shrinking is sealed");
    }

    #[test]
    fn memory_above_the_gap_continues_in_the_file() {
        // Sparse: nothing is touched, so 4.5 GiB costs nothing.
        let size = (4u64 << 30) + (512 << 20);
        let mem = create(size).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let high = mem.iter().nth(1).unwrap();
        assert_eq!(high.start_addr(), GuestAddress(layout::MMIO_GAP_END));
        assert_eq!(high.file_offset().unwrap().start(), layout::MMIO_GAP_START);
        assert_eq!(high.len(), size - layout::MMIO_GAP_START);
        assert!(
            mem.write_obj(1u8, GuestAddress(layout::MMIO_GAP_START))
                .is_err(),
            "the gap has no RAM"
        );
        mem.write_obj(7u8, GuestAddress(layout::MMIO_GAP_END))
            .unwrap();
    }
}
