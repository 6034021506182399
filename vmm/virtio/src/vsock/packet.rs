//! vsock packets in guest memory: the 44-byte `virtio_vsock_hdr` and the
//! descriptor chains that carry it.
//!
//! Every chain is guest-controlled. A tx chain (guest to device) must be
//! device-readable only, a rx chain (device to guest) device-writable only;
//! the header may span descriptors and the data may be in the head
//! descriptor (Linux >= 6.2 does that for rx) or spread over several. The
//! header is copied once into a [`VsockHeader`] so later decisions never
//! re-read guest memory (no time-of-check/time-of-use games), and the data
//! is kept as guest memory slices so it is copied only once, straight to or
//! from the host socket.
//!
//! The `virtio-vsock` crate's parser was not used: it accepts only one data
//! descriptor and panics (`expect`) on some mappings, and the device must
//! take whatever layout a driver chooses without panicking.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::MAX_PKT_DATA;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;

/// A decoded `virtio_vsock_hdr` (all fields little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (`VSOCK_TYPE_STREAM`).
    pub type_: u16,
    /// Operation (`VSOCK_OP_*`).
    pub op: u16,
    /// Operation flags (SHUTDOWN flags).
    pub flags: u32,
    /// The sender's receive buffer size (credit).
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes a header from its wire form.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header in its wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a descriptor chain is not a usable packet or buffer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain ends with NEXT set (loop, bad index, unreadable descriptor).
    #[error(
        "descriptor chain is cut short (loop, next index out of range or unreadable descriptor)"
    )]
    Truncated,
    /// A tx chain contains a device-writable descriptor.
    #[error(
        "descriptor {0} of a tx packet is device-writable; tx buffers must be device-readable"
    )]
    WriteOnlyInTx(usize),
    /// A rx chain contains a device-readable descriptor.
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
    /// Fewer bytes than a header.
    #[error("the chain holds {0} bytes, fewer than the {HDR_SIZE}-byte vsock header")]
    HeaderTooShort(usize),
    /// The header's `len` is more than the chain holds.
    #[error("the header says {len} data bytes but the chain holds only {avail}")]
    LenBeyondChain {
        /// `len` from the header.
        len: u32,
        /// Data bytes present after the header.
        avail: usize,
    },
    /// The header's `len` is more than any driver sends in one packet.
    #[error("the header says {0} data bytes; at most {MAX_PKT_DATA} are accepted per packet")]
    LenTooBig(u32),
}

/// A list of guest memory slices read or written in order, as one buffer.
#[derive(Debug, Default)]
pub struct Segments<'a> {
    segs: Vec<VolatileSlice<'a>>,
    len: usize,
}

impl<'a> Segments<'a> {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slices, in order.
    pub fn slices(&self) -> &[VolatileSlice<'a>] {
        &self.segs
    }

    pub(crate) fn push(&mut self, s: VolatileSlice<'a>) {
        if !s.is_empty() {
            self.len += s.len();
            self.segs.push(s);
        }
    }

    /// The bytes from `start` on, at most `max` of them.
    pub fn range(&self, start: usize, max: usize) -> Segments<'a> {
        let mut out = Segments::default();
        let mut skip = start;
        let mut want = max;
        for s in &self.segs {
            if want == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(want);
            // In range by construction: skip < s.len(), skip + n <= s.len().
            if let Ok(sub) = s.subslice(skip, n) {
                out.push(sub);
                want -= n;
            }
            skip = 0;
        }
        out
    }

    /// Copies the first `out.len()` bytes into `out`; returns how many were
    /// available.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let mut done = 0;
        for s in &self.segs {
            if done == out.len() {
                break;
            }
            done += s.copy_to(&mut out[done..]);
        }
        done
    }

    /// Copies `data` to the start of the segments; returns bytes copied.
    pub fn copy_from(&self, data: &[u8]) -> usize {
        let mut done = 0;
        for s in &self.segs {
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

/// Collects the buffers of a chain as slices of guest memory, up to `limit`
/// bytes, checking every descriptor's direction (`want_write`) and that it
/// lies in guest memory.
fn collect<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    want_write: bool,
    limit: usize,
) -> Result<Segments<'a>, PacketError> {
    let mut segs = Segments::default();
    let mut last_has_next = false;
    let mut count = 0usize;
    for (i, desc) in chain.enumerate() {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() != want_write {
            return Err(if want_write {
                PacketError::ReadOnlyInRx(i)
            } else {
                PacketError::WriteOnlyInTx(i)
            });
        }
        let oom = PacketError::OutOfMemory {
            addr: desc.addr().0,
            len: desc.len(),
        };
        let len = usize::try_from(desc.len()).map_err(|_| oom.clone())?;
        if !mem.check_range(desc.addr(), len) {
            return Err(oom);
        }
        let take = len.min(limit.saturating_sub(segs.len()));
        if take == 0 {
            continue;
        }
        // The range was checked above; a region boundary inside it yields
        // several slices.
        for s in mem.get_slices(desc.addr(), take) {
            segs.push(s.map_err(|_| oom.clone())?);
        }
    }
    if last_has_next || (count == 0) {
        return Err(PacketError::Truncated);
    }
    Ok(segs)
}

/// A packet the guest sent: its header and its `hdr.len` data bytes, still
/// in guest memory.
#[derive(Debug)]
pub struct TxPacket<'a> {
    /// The header, copied out of guest memory once.
    pub hdr: VsockHeader,
    data: Segments<'a>,
}

impl<'a> TxPacket<'a> {
    /// The payload (exactly `hdr.len` bytes).
    pub fn data(&self) -> &Segments<'a> {
        &self.data
    }
}

/// A tx chain that is not a packet; `hdr` is set when the header itself was
/// readable, so the connection it names can be reset.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPacket {
    /// The header, if it could be read.
    pub hdr: Option<VsockHeader>,
    /// What was wrong.
    pub error: PacketError,
}

/// Parses a tx chain (guest to device).
pub fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxPacket<'a>, BadPacket> {
    let bad = |hdr, error| BadPacket { hdr, error };
    let all =
        collect(mem, chain, false, HDR_SIZE + MAX_PKT_DATA as usize).map_err(|e| bad(None, e))?;
    if all.len() < HDR_SIZE {
        return Err(bad(None, PacketError::HeaderTooShort(all.len())));
    }
    let mut raw = [0u8; HDR_SIZE];
    all.copy_to(&mut raw);
    let hdr = VsockHeader::from_bytes(&raw);
    if hdr.len > MAX_PKT_DATA {
        return Err(bad(Some(hdr), PacketError::LenTooBig(hdr.len)));
    }
    let avail = all.len() - HDR_SIZE;
    // hdr.len <= MAX_PKT_DATA, so it fits a usize.
    let len = hdr.len as usize;
    if len > avail {
        return Err(bad(
            Some(hdr),
            PacketError::LenBeyondChain {
                len: hdr.len,
                avail,
            },
        ));
    }
    Ok(TxPacket {
        hdr,
        data: all.range(HDR_SIZE, len),
    })
}

/// A buffer the guest posted for device-to-guest packets.
#[derive(Debug)]
pub struct RxBuffer<'a> {
    hdr: Segments<'a>,
    data: Segments<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Writes the header (call last: the data length goes in it).
    pub fn write_header(&self, hdr: &VsockHeader) {
        self.hdr.copy_from(&hdr.to_bytes());
    }

    /// Room for payload (at most [`MAX_PKT_DATA`]).
    pub fn data_capacity(&self) -> usize {
        self.data.len()
    }

    /// The payload area.
    pub fn data(&self) -> &Segments<'a> {
        &self.data
    }
}

/// Parses a rx chain (device to guest): at least a header's worth of
/// device-writable bytes.
pub fn parse_rx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<RxBuffer<'a>, PacketError> {
    let all = collect(mem, chain, true, HDR_SIZE + MAX_PKT_DATA as usize)?;
    if all.len() < HDR_SIZE {
        return Err(PacketError::HeaderTooShort(all.len()));
    }
    Ok(RxBuffer {
        hdr: all.range(0, HDR_SIZE),
        data: all.range(HDR_SIZE, usize::MAX),
    })
}

#[cfg(test)]
mod tests;
