//! Descriptor chains as frames: a tx chain (guest to device) copied into a
//! frame, a rx chain (device to guest) checked into writable guest memory.
//!
//! Every chain is guest-controlled, and all checks happen here, before
//! anything is sent or written: direction of every descriptor, every
//! buffer inside guest memory, the chain not cut short (a loop, a `next`
//! past the table and an unreadable indirect table all end the walk with
//! `NEXT` still set on the last descriptor), and lengths. Frames are not
//! copied: the TAP is written from (tx) and read into (rx) guest memory.
//! Nothing the device decides depends on the frame's bytes, so a vCPU
//! rewriting a buffer meanwhile can only garble its own frame; the TAP's
//! kernel side validates the virtio-net header it is given.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::tap::MAX_IOVECS;
use super::{ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Why a chain is not a usable frame or buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The walk ended early (loop, next index out of range, unreadable
    /// indirect table) or the chain has no descriptor.
    #[error(
        "descriptor chain is cut short (loop, next index out of range or unreadable descriptor)"
    )]
    Truncated,
    /// A tx chain holds a device-writable descriptor.
    #[error("descriptor {0} of a tx frame is device-writable; tx buffers must be device-readable")]
    WriteOnlyInTx(usize),
    /// A rx chain holds a device-readable descriptor.
    #[error(
        "descriptor {0} of a rx buffer is device-readable; rx buffers must be device-writable"
    )]
    ReadOnlyInRx(usize),
    /// A buffer is not (entirely) in guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Fewer bytes than a virtio-net header and an Ethernet header.
    #[error("the tx chain holds {0} bytes, fewer than a virtio-net header and an Ethernet header ({min} bytes)", min = VNET_HDR_LEN + ETH_HLEN)]
    TooShort(u64),
    /// More bytes than the longest frame.
    #[error("the tx chain holds {0} bytes or more; at most {MAX_FRAME_LEN} are accepted")]
    TooLong(u64),
    /// More pieces of memory than one `writev` takes.
    #[error("the tx chain is in {0} pieces of memory; at most {MAX_IOVECS} are accepted")]
    TooManyPieces(usize),
}

/// A tx chain (virtio-net header, then the frame), checked, still in
/// guest memory: it is written to the TAP from there (`writev`), with no
/// copy in between.
#[derive(Debug)]
pub struct TxChain<'a> {
    slices: Vec<VolatileSlice<'a>>,
    len: usize,
}

impl<'a> TxChain<'a> {
    /// Bytes, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chain is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chain's memory from byte `offset` on.
    pub fn slices_from(&self, offset: usize) -> Vec<VolatileSlice<'a>> {
        let mut skip = offset;
        let mut out = Vec::with_capacity(self.slices.len());
        for s in &self.slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            if let Ok(sub) = s.subslice(skip, s.len() - skip) {
                out.push(sub);
            }
            skip = 0;
        }
        out
    }
}

/// Checks a tx chain: every descriptor device-readable and in guest
/// memory, the walk complete, at least a virtio-net header and an
/// Ethernet header and at most [`MAX_FRAME_LEN`] bytes in all, at most
/// [`MAX_IOVECS`] pieces of memory.
pub fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxChain<'a>, ChainError> {
    let mut total = 0u64;
    let mut count = 0usize;
    let mut last_has_next = false;
    let mut slices = Vec::new();
    for (i, desc) in chain.enumerate() {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::WriteOnlyInTx(i));
        }
        let len = desc.len();
        let oom = ChainError::OutOfMemory {
            addr: desc.addr().0,
            len,
        };
        total += u64::from(len);
        if total > MAX_FRAME_LEN as u64 {
            return Err(ChainError::TooLong(total));
        }
        if !mem.check_range(desc.addr(), len as usize) {
            return Err(oom);
        }
        for s in mem.get_slices(desc.addr(), len as usize) {
            let s = s.map_err(|_| oom.clone())?;
            if !s.is_empty() {
                slices.push(s);
            }
        }
        if slices.len() > MAX_IOVECS {
            return Err(ChainError::TooManyPieces(slices.len()));
        }
    }
    if last_has_next || count == 0 {
        return Err(ChainError::Truncated);
    }
    if total < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(ChainError::TooShort(total));
    }
    Ok(TxChain {
        slices,
        len: total as usize,
    })
}

/// A rx chain the guest posted: its writable memory, checked.
#[derive(Debug)]
pub struct RxChain<'a> {
    head: u16,
    slices: Vec<VolatileSlice<'a>>,
    capacity: usize,
}

impl RxChain<'_> {
    /// The chain's head index (for the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Bytes the chain can take (at most [`MAX_FRAME_LEN`]: more is never
    /// needed, and the sum stays small whatever the guest claims).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The chain's writable guest memory, in order.
    pub fn slices(&self) -> &[VolatileSlice<'_>] {
        &self.slices
    }

    /// Writes `data` at byte `offset` of the chain; returns how many bytes
    /// went in (what fits).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> usize {
        let mut skip = offset;
        let mut done = 0;
        for s in &self.slices {
            if done == data.len() {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(data.len() - done);
            if let Ok(sub) = s.subslice(skip, n) {
                sub.copy_from(&data[done..done + n]);
            }
            done += n;
            skip = 0;
        }
        done
    }

    /// Writes the start of `data` into the chain; returns how many bytes
    /// went in (`min(data.len(), capacity)`).
    pub fn write(&self, data: &[u8]) -> usize {
        let mut done = 0;
        for s in &self.slices {
            if done == data.len() {
                break;
            }
            let n = s.len().min(data.len() - done);
            s.copy_from(&data[done..done + n]);
            done += n;
        }
        done
    }
}

/// Checks a rx chain: every descriptor device-writable and in guest memory,
/// the walk complete.
pub fn parse_rx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<RxChain<'a>, ChainError> {
    let head = chain.head_index();
    let mut slices = Vec::new();
    let mut capacity = 0usize;
    let mut count = 0usize;
    let mut last_has_next = false;
    for (i, desc) in chain.enumerate() {
        count += 1;
        last_has_next = desc.has_next();
        if !desc.is_write_only() {
            return Err(ChainError::ReadOnlyInRx(i));
        }
        let oom = ChainError::OutOfMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len) {
            return Err(oom);
        }
        let take = len.min(MAX_FRAME_LEN - capacity);
        if take == 0 {
            continue;
        }
        // The range was checked above; a region boundary inside it yields
        // several slices.
        for s in mem.get_slices(desc.addr(), take) {
            let s = s.map_err(|_| oom.clone())?;
            capacity += s.len();
            slices.push(s);
        }
    }
    if last_has_next || count == 0 {
        return Err(ChainError::Truncated);
    }
    Ok(RxChain {
        head,
        slices,
        capacity,
    })
}
