//! Guest memory: its backing, chosen from what the VM needs, split around
//! the MMIO gap.
//!
//! # Why two backings
//!
//! - **Anonymous private memory** ([`Backing::Private`],
//!   `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`), as Firecracker maps it,
//!   whenever no other process needs the guest's pages. First touches are
//!   plain anonymous faults, which cost much less than shmem's: issue 15
//!   measured the guest kernel's memmap initialisation, the first phase that
//!   touches its RAM, at 0.31 s on a shared memfd against 0.013 s on
//!   Firecracker's anonymous memory (same kernel, same emulated host). Each
//!   region starts on a 2 MiB boundary (a larger reservation, trimmed)
//!   and is advised `MADV_HUGEPAGE`: where transparent huge pages are
//!   available (`enabled` = `always` or `madvise`), one fault fills 2 MiB,
//!   and because guest-physical and host-virtual addresses then agree
//!   modulo 2 MiB, KVM can map the guest with 2 MiB pages too (it falls
//!   back to 4 KiB mappings for a slot whose addresses disagree).
//!   Without THP (`EINVAL`) the advice is skipped and memory is 4 KiB pages.
//! - **A sealed shared memfd** ([`Backing::SharedMemfd`]) only when a
//!   vhost-user device is configured (virtio-fs through virtiofsd): the
//!   backend maps the same pages through the fd the memory table passes
//!   (`mvm_virtio::fs`), which anonymous memory cannot give it. Its size is
//!   sealed so nobody holding the fd can shrink it under the guest (which
//!   would turn guest accesses into SIGBUS in the VMM). It is advised
//!   `MADV_HUGEPAGE` as well, which shmem honours only when
//!   `/sys/kernel/mm/transparent_hugepage/shmem_enabled` is `advise`,
//!   `within_size` or `always` (the default is `never`). Measured in the
//!   emulated host (`docs/benchmarks.md`, "boot: guest memory backing"):
//!   the guest's memmap initialisation took 73-177 ms on the memfd,
//!   1-10 ms on anonymous memory, 1 ms on the advised memfd under
//!   `advise`, and no less than before under `never`; so the advice costs
//!   nothing where it is ignored and is there for hosts that allow it.
//!   Huge pages do cost memory: the guest's resident RAM after a boot grew
//!   from 23 to 30 MiB of 128 (first touches fill 2 MiB).
//!
//! [`Backing::for_config`] is the one place the choice is made, from the
//! typed configuration: a new device that shares guest memory with another
//! process (or snapshots that write it through the fd) must be added there.
//!
//! Both backings are advised `MADV_DONTFORK`: a child forked by the VMM
//! (none is, today) would otherwise get a copy-on-write view of guest RAM
//! (private) or a live one (shared), neither of which it has any business
//! with. Every call here (`mmap`, `munmap`, `madvise`, `memfd_create`,
//! `fcntl`) is made during setup, before the seccomp filters are
//! installed; nothing here runs once the guest does.
//!
//! The private regions are mapped by this module and handed to `vm-memory`
//! as raw mappings, which it never unmaps: guest memory lives as long as
//! the VMM process (the memfd's mappings are `vm-memory`'s own and are
//! unmapped when dropped).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::mmap::MmapRegionError;
use vm_memory::GuestMemoryBackend;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::arch::layout;
use crate::config::VmConfig;

/// The transparent huge page size of x86_64 (a PMD), and the alignment of
/// private guest memory.
pub const HUGE_PAGE: usize = 2 << 20;

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
    #[error("reserving {size} bytes of anonymous guest memory failed: {source}")]
    MapPrivate { size: u64, source: std::io::Error },
    #[error("wrapping the guest memory mapping at {addr:#x} ({size} bytes) failed: {source}")]
    Wrap {
        addr: u64,
        size: u64,
        source: MmapRegionError,
    },
    #[error("guest memory region at {0:#x} is not valid")]
    Region(u64),
    #[error("madvise({advice}) on guest memory failed: {source}")]
    Advise {
        advice: &'static str,
        source: std::io::Error,
    },
    #[error("assembling the guest memory regions failed: {0}")]
    Regions(vm_memory::GuestRegionCollectionError),
    #[error("{what} the guest memory file {path}: {source}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the guest memory file {path} is {found} bytes; the snapshot's memory is {expected} \
         (truncated or not this snapshot's)"
    )]
    FileSize {
        path: std::path::PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("mapping the guest memory file at {addr:#x} ({size} bytes) failed: {source}")]
    MapFile {
        addr: u64,
        size: u64,
        source: std::io::Error,
    },
}

/// What backs guest memory (see the module doc for why each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous private memory: nothing outside the VMM maps it.
    Private,
    /// A sealed memfd mapped shared: vhost-user backends map it too.
    SharedMemfd,
}

impl Backing {
    /// The backing `cfg` needs: the memfd only when a device's backend
    /// must map guest memory itself (virtio-fs, over vhost-user).
    pub fn for_config(cfg: &VmConfig) -> Self {
        if cfg.fs.is_empty() {
            Self::Private
        } else {
            Self::SharedMemfd
        }
    }

    /// The name in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Private => "anonymous private memory",
            Self::SharedMemfd => "a sealed shared memfd",
        }
    }
}

/// Guest memory as created, with what the host granted.
pub struct GuestRam {
    /// The regions (below and above the MMIO gap).
    pub mem: GuestMemoryMmap,
    /// Its backing.
    pub backing: Backing,
    /// Whether the kernel took `MADV_HUGEPAGE` (false: no THP support,
    /// 4 KiB pages only).
    pub huge_pages_advised: bool,
}

/// Create `size` bytes of guest memory laid out by
/// [`layout::memory_regions`], backed as `backing`.
pub fn create(size: u64, backing: Backing) -> Result<GuestRam, MemoryError> {
    let regions = match backing {
        Backing::Private => private_regions(size)?,
        Backing::SharedMemfd => memfd_regions(size)?,
    };
    let mut huge_pages_advised = true;
    for r in &regions {
        let ptr = r.as_ptr();
        let len = r.len() as usize;
        huge_pages_advised &= advise(ptr, len, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE", true)?;
        advise(ptr, len, libc::MADV_DONTFORK, "MADV_DONTFORK", false)?;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        mem,
        backing,
        huge_pages_advised,
    })
}

/// `madvise` over one region. With `optional`, `EINVAL` (a kernel without
/// the feature) is `Ok(false)` rather than an error.
fn advise(
    ptr: *mut u8,
    len: usize,
    advice: libc::c_int,
    name: &'static str,
    optional: bool,
) -> Result<bool, MemoryError> {
    // SAFETY: `ptr..ptr+len` is a live mapping of guest memory made above;
    // these advices change how it is faulted and inherited, never its
    // contents or its existence.
    let ret = unsafe { libc::madvise(ptr.cast(), len, advice) };
    if ret == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if optional && err.raw_os_error() == Some(libc::EINVAL) {
        return Ok(false);
    }
    Err(MemoryError::Advise {
        advice: name,
        source: err,
    })
}

/// One anonymous private mapping per region, each starting on a
/// [`HUGE_PAGE`] boundary.
fn private_regions(size: u64) -> Result<Vec<GuestRegionMmap>, MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let mut regions = Vec::new();
    for (addr, len) in layout::memory_regions(size) {
        let bytes = usize::try_from(len).map_err(|_| MemoryError::MapPrivate {
            size: len,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        let ptr = map_aligned(bytes, prot, flags)
            .map_err(|source| MemoryError::MapPrivate { size: len, source })?;
        // SAFETY: `ptr..ptr+bytes` is the mapping just made with exactly
        // these protection and flags; nothing else refers to it.
        let region = unsafe { MmapRegion::build_raw(ptr, bytes, prot, flags) };
        let region = match region {
            Ok(r) => r,
            Err(source) => {
                unmap(ptr, bytes);
                return Err(MemoryError::Wrap {
                    addr: addr.0,
                    size: len,
                    source,
                });
            }
        };
        regions.push(GuestRegionMmap::new(region, addr).ok_or(MemoryError::Region(addr.0))?);
    }
    Ok(regions)
}

/// Map `len` bytes starting on a [`HUGE_PAGE`] boundary: reserve
/// `len + HUGE_PAGE`, then unmap the unaligned head and the tail.
fn map_aligned(len: usize, prot: libc::c_int, flags: libc::c_int) -> std::io::Result<*mut u8> {
    let reserve = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choice;
    // it overlaps nothing of ours.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), reserve, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    let tail = reserve - head - len;
    // Both trims lie inside the reservation, which nothing uses yet; one
    // that failed would only leave unused address space mapped.
    unmap(base as *mut u8, head);
    unmap((start + len) as *mut u8, tail);
    Ok(start as *mut u8)
}

/// Best-effort `munmap` of a range this module mapped and nothing uses.
fn unmap(ptr: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: the caller passes a range of a mapping made here that
        // holds nothing anyone refers to.
        unsafe { libc::munmap(ptr.cast(), len) };
    }
}

/// One sealed memfd, each region a shared mapping of the next part of it.
fn memfd_regions(size: u64) -> Result<Vec<GuestRegionMmap>, MemoryError> {
    let file = memfd(c"mvm-guest-ram")?;
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    // SAFETY: fcntl on an fd we own; F_ADD_SEALS takes an int argument.
    let ret = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
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
    Ok(regions)
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

/// The page size of the memory file's holes.
const DUMP_PAGE: usize = 4096;

/// Write guest memory to a new file at `path`, region after region,
/// leaving pages of zeros as holes (most of a young guest's RAM: the file
/// then takes only what the guest wrote). The vCPUs must be paused.
/// Returns the bytes written.
pub fn dump(mem: &GuestMemoryMmap, path: &std::path::Path) -> Result<u64, MemoryError> {
    use std::os::unix::fs::FileExt;
    let err = |what| {
        move |source| MemoryError::File {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err("creating"))?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes that `mem`
        // keeps; the vCPUs are paused and the devices idle (the event
        // loop is running this), so nothing writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr().cast_const(), len) };
        for (i, page) in bytes.chunks(DUMP_PAGE).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let at = offset + (i * DUMP_PAGE) as u64;
            f.write_all_at(page, at).map_err(err("writing"))?;
            written += page.len() as u64;
        }
        offset += len as u64;
    }
    f.set_len(offset).map_err(err("sizing"))?;
    f.sync_all().map_err(err("syncing"))?;
    Ok(written)
}

/// Guest memory from a snapshot's memory file: each region maps its part
/// of the file `MAP_PRIVATE`, so a page is read when the guest first
/// touches it and the guest's writes go to private copies (the file is
/// never changed and may back any number of restored VMs).
pub fn restore(size: u64, path: &std::path::Path) -> Result<GuestRam, MemoryError> {
    let file = File::open(path).map_err(|source| MemoryError::File {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    let found = file
        .metadata()
        .map_err(|source| MemoryError::File {
            what: "reading the size of",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    // A shorter file would fault the guest with SIGBUS past its end.
    if found != size {
        return Err(MemoryError::FileSize {
            path: path.to_path_buf(),
            expected: size,
            found,
        });
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in layout::memory_regions(size) {
        let bytes = usize::try_from(len).map_err(|_| MemoryError::MapFile {
            addr: addr.0,
            size: len,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        let file_offset = libc::off_t::try_from(offset).map_err(|_| MemoryError::MapFile {
            addr: addr.0,
            size: len,
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: a new private mapping of `bytes` bytes of an open file
        // the kernel checks; nothing else is at the address it picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                flags,
                file.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::MapFile {
                addr: addr.0,
                size: len,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = ptr.cast::<u8>();
        // SAFETY: `ptr` is the mapping of `bytes` bytes just made, with
        // these protection and flags; it is never unmapped while the
        // region lives (the VM's lifetime).
        let region = unsafe { MmapRegion::build_raw(ptr, bytes, prot, flags) };
        let region = match region {
            Ok(r) => r,
            Err(source) => {
                unmap(ptr, bytes);
                return Err(MemoryError::Wrap {
                    addr: addr.0,
                    size: len,
                    source,
                });
            }
        };
        advise(ptr, bytes, libc::MADV_DONTFORK, "MADV_DONTFORK", false)?;
        regions.push(GuestRegionMmap::new(region, addr).ok_or(MemoryError::Region(addr.0))?);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        mem,
        backing: Backing::Private,
        huge_pages_advised: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend};

    /// The `/proc/self/smaps` entry of the mapping that starts at `addr`:
    /// its header line and its fields.
    fn smaps_entry(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        let mut out = String::new();
        let mut inside = false;
        for line in smaps.lines() {
            // Headers are `START-END PERMS ...`; fields are `Name: value`.
            let first = line.split_whitespace().next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                if inside {
                    break;
                }
                inside = first.starts_with(&start);
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(!out.is_empty(), "no mapping starts at {addr:#x}");
        out
    }

    fn vm_flags(entry: &str) -> Vec<String> {
        entry
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn backing_follows_the_config() {
        let mut cfg = VmConfig::default();
        assert_eq!(Backing::for_config(&cfg), Backing::Private);
        cfg.fs
            .push(crate::config::FsConfig::new("share", "/run/fs.sock"));
        assert_eq!(Backing::for_config(&cfg), Backing::SharedMemfd);
    }

    #[test]
    fn private_memory_is_anonymous_aligned_and_advised() {
        let ram = create(64 << 20, Backing::Private).unwrap();
        assert_eq!(ram.backing, Backing::Private);
        let mem = &ram.mem;
        assert_eq!(mem.num_regions(), 1);
        let r = mem.iter().next().unwrap();
        assert!(r.file_offset().is_none(), "anonymous memory has no file");
        assert_eq!(r.len(), 64 << 20);
        let host = r.as_ptr() as usize;
        assert_eq!(host % HUGE_PAGE, 0, "starts on a huge page boundary");
        mem.write_obj(0xdead_beefu32, GuestAddress(0x100_0000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x100_0000)).unwrap(),
            0xdead_beef
        );
        // The mapping is exactly the region (the alignment slack is gone),
        // private, not inherited by a fork, and huge-page advised where
        // the kernel has THP.
        let entry = smaps_entry(host);
        let header = entry.lines().next().unwrap();
        let (range, rest) = header.split_once(' ').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let len = usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap();
        assert_eq!(len, 64 << 20, "{header}");
        assert!(rest.starts_with("rw-p"), "{header}");
        let flags = vm_flags(&entry);
        assert!(flags.iter().any(|f| f == "dc"), "MADV_DONTFORK: {flags:?}");
        if ram.huge_pages_advised {
            assert!(flags.iter().any(|f| f == "hg"), "MADV_HUGEPAGE: {flags:?}");
        }
    }

    #[test]
    fn private_memory_above_the_gap_is_a_second_mapping() {
        // Sparse (MAP_NORESERVE, untouched): 4.5 GiB costs nothing.
        let size = (4u64 << 30) + (512 << 20);
        let ram = create(size, Backing::Private).unwrap();
        let mem = &ram.mem;
        assert_eq!(mem.num_regions(), 2);
        let low = mem.iter().next().unwrap();
        let high = mem.iter().nth(1).unwrap();
        assert_eq!(low.len(), layout::MMIO_GAP_START);
        assert_eq!(high.start_addr(), GuestAddress(layout::MMIO_GAP_END));
        assert_eq!(high.len(), size - layout::MMIO_GAP_START);
        assert!(high.file_offset().is_none());
        assert_eq!(high.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(
            mem.write_obj(1u8, GuestAddress(layout::MMIO_GAP_START))
                .is_err(),
            "the gap has no RAM"
        );
        mem.write_obj(7u8, GuestAddress(layout::MMIO_GAP_END))
            .unwrap();
        mem.write_obj(9u8, GuestAddress(layout::MMIO_GAP_START - 1))
            .unwrap();
        // Two separate mappings: the byte below the gap is not the one
        // above it.
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(layout::MMIO_GAP_END))
                .unwrap(),
            7
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(layout::MMIO_GAP_START - 1))
                .unwrap(),
            9
        );
    }

    #[test]
    fn shared_memory_is_a_sealed_memfd() {
        let ram = create(64 << 20, Backing::SharedMemfd).unwrap();
        assert_eq!(ram.backing, Backing::SharedMemfd);
        let mem = &ram.mem;
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
        fo.file().read_exact_at(&mut buf, 0x100_0000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(fo.file().set_len(1 << 20).is_err(), "shrinking is sealed");
        let entry = smaps_entry(r.as_ptr() as usize);
        assert!(entry.lines().next().unwrap().contains("rw-s"), "{entry}");
        let flags = vm_flags(&entry);
        assert!(flags.iter().any(|f| f == "dc"), "MADV_DONTFORK: {flags:?}");
    }

    #[test]
    fn shared_memory_above_the_gap_continues_in_the_file() {
        let size = (4u64 << 30) + (512 << 20);
        let ram = create(size, Backing::SharedMemfd).unwrap();
        let mem = &ram.mem;
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
        let mut buf = [0u8; 1];
        high.file_offset()
            .unwrap()
            .file()
            .read_exact_at(&mut buf, layout::MMIO_GAP_START)
            .unwrap();
        assert_eq!(buf[0], 7);
    }
}
