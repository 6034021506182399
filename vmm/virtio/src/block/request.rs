//! virtio-blk requests: from a guest descriptor chain to a validated
//! [`Request`], and its execution against the disk.
//!
//! Layout expected (virtio 1.2, 5.2.6), one buffer per descriptor, as every
//! Linux driver sends it:
//!
//! ```text
//!   [header: 16 bytes, device-readable] [data...] [status: >= 1 byte, device-writable]
//! ```
//!
//! Everything here is guest-controlled. The rules:
//! - if the last descriptor is a usable status byte (device-writable, in
//!   guest memory), any other defect is answered with `VIRTIO_BLK_S_IOERR`
//!   (`VIRTIO_BLK_S_UNSUPP` for an unknown type);
//! - if it is not (no descriptor, a cut-short chain, a read-only or
//!   zero-length or out-of-memory last descriptor), there is nowhere to
//!   answer: the chain is returned with used length 0;
//! - nothing panics, every range is checked with checked arithmetic, and
//!   data is only touched after the whole chain validated.

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::disk::DiskFile;
use super::{SECTOR_SHIFT, SECTOR_SIZE, SERIAL_LEN};

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Read the device ID (serial).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of `struct virtio_blk_outhdr` (type, reserved, sector).
pub const HEADER_LEN: u32 = 16;

/// Most descriptors accepted in one chain. Linux sends at most
/// `seg_max + 2` (256 here); a longer chain can only come from a hostile
/// indirect table and is refused without storing it.
pub const MAX_DESCRIPTORS: usize = 1024;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the serial.
    GetId,
    /// Anything else (the raw type value).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// One data buffer of a request, already checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Operation.
    pub request_type: RequestType,
    /// First sector (In/Out).
    pub sector: u64,
    /// Data buffers in order, with the direction the type requires.
    pub data: Vec<Segment>,
    /// Sum of the data buffer lengths.
    pub data_len: u64,
    /// Where the status byte goes (last byte of the last descriptor).
    pub status_addr: GuestAddress,
}

/// Why a request failed. Each message names the defect so that a log line
/// points at the guest driver bug (or attack) directly.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No descriptor at all (e.g. the head index is past the table).
    #[error("empty descriptor chain (head index past the descriptor table?)")]
    EmptyChain,
    /// The last descriptor still has NEXT set: the chain loops, its next
    /// index is out of the table, a descriptor was unreadable, or it is
    /// longer than the queue allows.
    #[error("descriptor chain is cut short (loop, next index out of range, unreadable descriptor or too long)")]
    Truncated,
    /// The last descriptor is device-readable.
    #[error("status descriptor is not device-writable")]
    StatusReadOnly,
    /// The last descriptor has length 0.
    #[error("status descriptor has length 0")]
    StatusEmpty,
    /// The status byte is not in guest memory.
    #[error("status descriptor at {0:#x} is outside guest memory")]
    StatusOutOfMemory(u64),
    /// More descriptors than [`MAX_DESCRIPTORS`].
    #[error("descriptor chain has {0} descriptors, more than the {MAX_DESCRIPTORS} accepted")]
    TooManyDescriptors(usize),
    /// Only a status descriptor.
    #[error("descriptor chain has no request header")]
    MissingHeader,
    /// The header is device-writable.
    #[error("request header descriptor is device-writable; it must be device-readable")]
    HeaderWriteOnly,
    /// The header descriptor is shorter than 16 bytes.
    #[error("request header is {0} bytes, shorter than the 16-byte virtio_blk_outhdr")]
    HeaderTooShort(u32),
    /// The header is not in guest memory.
    #[error("request header at {0:#x} is outside guest memory")]
    HeaderOutOfMemory(u64),
    /// A data descriptor has the wrong direction for the request type.
    #[error("data descriptor {index} is device-{actual} but a {kind:?} request needs device-{wanted} buffers")]
    DataDirection {
        /// Position in the chain (header is 0).
        index: usize,
        /// Request type.
        kind: RequestType,
        /// "readable" or "writable".
        actual: &'static str,
        /// "readable" or "writable".
        wanted: &'static str,
    },
    /// In/Out/GetId without data buffers.
    #[error("{0:?} request has no data descriptor")]
    MissingData(RequestType),
    /// In/Out data not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    DataLenNotSectorMultiple(u64),
    /// A data buffer is not (entirely) in guest memory.
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory")]
    DataOutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The sector range is past the end of the disk or overflows.
    #[error("sectors {sector}..+{len_sectors} are out of range for a disk of {capacity} sectors")]
    SectorOutOfRange {
        /// First sector.
        sector: u64,
        /// Request length in sectors.
        len_sectors: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The host I/O failed.
    #[error("{op} failed: {source}")]
    Io {
        /// "read", "write" or "flush".
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    /// Status byte the driver receives for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A chain that could not be parsed, with the status address if one is
/// usable (then the driver gets an error status; otherwise nothing).
#[derive(Debug)]
pub struct Invalid {
    /// What was wrong.
    pub error: RequestError,
    /// Usable status byte, if any.
    pub status_addr: Option<GuestAddress>,
}

fn fail<T>(error: RequestError, status_addr: Option<GuestAddress>) -> Result<T, Invalid> {
    Err(Invalid { error, status_addr })
}

fn direction(d: &Descriptor) -> &'static str {
    if d.is_write_only() {
        "writable"
    } else {
        "readable"
    }
}

/// Parses and validates a descriptor chain (everything that can be checked
/// without the disk).
pub fn parse(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Request, Invalid> {
    let mem = chain.memory();
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    // The chain iterator stops by itself after queue-size (or indirect
    // table size) descriptors and on any unreadable descriptor.
    for desc in chain.clone() {
        count += 1;
        if descs.len() < MAX_DESCRIPTORS {
            descs.push(desc);
        }
        last = Some(desc);
    }
    let Some(last) = last else {
        return fail(RequestError::EmptyChain, None);
    };
    if last.has_next() {
        return fail(RequestError::Truncated, None);
    }

    // The status byte first: it decides whether errors can be reported.
    if !last.is_write_only() {
        return fail(RequestError::StatusReadOnly, None);
    }
    if last.len() == 0 {
        return fail(RequestError::StatusEmpty, None);
    }
    // The status is the last byte of the device-writable area (Linux makes
    // it a 1-byte descriptor; a longer one is answered in its last byte).
    let status_addr = last
        .addr()
        .0
        .checked_add(u64::from(last.len() - 1))
        .map(GuestAddress)
        .filter(|&a| mem.check_range(a, 1));
    let Some(status_addr) = status_addr else {
        return fail(RequestError::StatusOutOfMemory(last.addr().0), None);
    };
    let status = Some(status_addr);
    if count > MAX_DESCRIPTORS {
        return fail(RequestError::TooManyDescriptors(count), status);
    }
    if count < 2 {
        return fail(RequestError::MissingHeader, status);
    }

    let header = descs[0];
    if header.is_write_only() {
        return fail(RequestError::HeaderWriteOnly, status);
    }
    if header.len() < HEADER_LEN {
        return fail(RequestError::HeaderTooShort(header.len()), status);
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    if mem.read_slice(&mut raw, header.addr()).is_err() {
        return fail(RequestError::HeaderOutOfMemory(header.addr().0), status);
    }
    let type_raw = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let request_type = RequestType::from(type_raw);

    let data_descs = &descs[1..descs.len() - 1];
    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len = 0u64;
    let wanted_writable = match request_type {
        RequestType::In | RequestType::GetId => Some(true),
        RequestType::Out => Some(false),
        // Flush carries no data; an unknown type gets UNSUPP whatever it
        // carries. Any data buffers are ignored, never touched.
        RequestType::Flush => None,
        RequestType::Unsupported(t) => return fail(RequestError::Unsupported(t), status),
    };
    if let Some(wanted_writable) = wanted_writable {
        for (i, d) in data_descs.iter().enumerate() {
            if d.is_write_only() != wanted_writable {
                return fail(
                    RequestError::DataDirection {
                        index: i + 1,
                        kind: request_type,
                        actual: direction(d),
                        wanted: if wanted_writable {
                            "writable"
                        } else {
                            "readable"
                        },
                    },
                    status,
                );
            }
            let fits = usize::try_from(d.len())
                .map(|len| mem.check_range(d.addr(), len))
                .unwrap_or(false);
            if !fits {
                return fail(
                    RequestError::DataOutOfMemory {
                        addr: d.addr().0,
                        len: d.len(),
                    },
                    status,
                );
            }
            data_len += u64::from(d.len());
            data.push(Segment {
                addr: d.addr(),
                len: d.len(),
            });
        }
        if data_len == 0 {
            return fail(RequestError::MissingData(request_type), status);
        }
        if matches!(request_type, RequestType::In | RequestType::Out)
            && !data_len.is_multiple_of(SECTOR_SIZE)
        {
            return fail(RequestError::DataLenNotSectorMultiple(data_len), status);
        }
    }
    Ok(Request {
        request_type,
        sector,
        data,
        data_len,
        status_addr,
    })
}

impl Request {
    /// Byte offset on disk, if `[sector, sector + data_len)` lies in a disk
    /// of `capacity` sectors.
    fn disk_offset(&self, capacity: u64) -> Result<u64, RequestError> {
        let len_sectors = self.data_len >> SECTOR_SHIFT;
        let in_range = self
            .sector
            .checked_add(len_sectors)
            .is_some_and(|end| end <= capacity);
        if !in_range {
            return Err(RequestError::SectorOutOfRange {
                sector: self.sector,
                len_sectors,
                capacity,
            });
        }
        // sector < capacity <= u64::MAX / 512, so this cannot overflow.
        Ok(self.sector << SECTOR_SHIFT)
    }

    /// Executes the request. Returns the number of bytes written into the
    /// data buffers (guest-visible).
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: &DiskFile,
        serial: &[u8; SERIAL_LEN],
    ) -> Result<u32, RequestError> {
        match self.request_type {
            RequestType::In => {
                let mut offset = self.disk_offset(disk.capacity_sectors())?;
                for seg in &self.data {
                    for_each_slice(mem, seg, |slice| {
                        disk.read_into(offset, &slice)
                            .map_err(|source| RequestError::Io { op: "read", source })?;
                        offset += slice.len() as u64;
                        Ok(())
                    })?;
                }
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let mut offset = self.disk_offset(disk.capacity_sectors())?;
                for seg in &self.data {
                    for_each_slice(mem, seg, |slice| {
                        disk.write_from(offset, &slice)
                            .map_err(|source| RequestError::Io {
                                op: "write",
                                source,
                            })?;
                        offset += slice.len() as u64;
                        Ok(())
                    })?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                disk.flush().map_err(|source| RequestError::Io {
                    op: "flush",
                    source,
                })?;
                Ok(0)
            }
            RequestType::GetId => {
                let mut written = 0usize;
                for seg in &self.data {
                    if written == SERIAL_LEN {
                        break;
                    }
                    let n = (seg.len as usize).min(SERIAL_LEN - written);
                    mem.write_slice(&serial[written..written + n], seg.addr)
                        .map_err(|_| RequestError::DataOutOfMemory {
                            addr: seg.addr.0,
                            len: seg.len,
                        })?;
                    written += n;
                }
                Ok(written as u32)
            }
            RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
        }
    }
}

/// Calls `f` on the host slices covering `seg` (a guest buffer may span two
/// memory regions).
fn for_each_slice<F>(mem: &GuestMemoryMmap, seg: &Segment, mut f: F) -> Result<(), RequestError>
where
    F: FnMut(vm_memory::VolatileSlice<'_, ()>) -> Result<(), RequestError>,
{
    let out_of_memory = || RequestError::DataOutOfMemory {
        addr: seg.addr.0,
        len: seg.len,
    };
    let len = usize::try_from(seg.len).map_err(|_| out_of_memory())?;
    for slice in mem.get_slices(seg.addr, len) {
        f(slice.map_err(|_| out_of_memory())?)?;
    }
    Ok(())
}

/// What processing one chain did, for the used ring and for logging.
#[derive(Debug)]
pub struct Completion {
    /// Bytes written into device-writable buffers (data + status), the used
    /// length.
    pub used_len: u32,
    /// The status byte written, if one could be.
    pub status: Option<u8>,
    /// The error, if the request failed.
    pub error: Option<RequestError>,
}

/// Parses, executes and answers one chain: the whole life of a request.
pub fn process_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &DiskFile,
    serial: &[u8; SERIAL_LEN],
) -> Completion {
    let mem = chain.memory();
    let (result, status_addr) = match parse(chain.clone()) {
        Ok(req) => (req.execute(mem, disk, serial), Some(req.status_addr)),
        Err(invalid) => (Err(invalid.error), invalid.status_addr),
    };
    let (status, data_written, error) = match result {
        Ok(n) => (VIRTIO_BLK_S_OK, n, None),
        Err(e) => (e.status(), 0, Some(e)),
    };
    let Some(status_addr) = status_addr else {
        return Completion {
            used_len: 0,
            status: None,
            error,
        };
    };
    if mem.write_obj(status, status_addr).is_err() {
        // Checked during parsing; only a memory map change could get here.
        return Completion {
            used_len: 0,
            status: None,
            error,
        };
    }
    Completion {
        used_len: data_written.saturating_add(1),
        status: Some(status),
        error,
    }
}

#[cfg(test)]
mod tests;
