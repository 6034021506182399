//! The bounded buffer of guest-to-host bytes that the host socket did not
//! take yet.
//!
//! Its capacity is the credit the device grants the guest per connection
//! (`buf_alloc`), so an honest guest can never overflow it; an overflow is a
//! protocol violation the connection answers with a reset. Memory is taken
//! only while bytes wait (a stalled host reader costs at most the capacity)
//! and given back when the buffer drains.

use std::collections::VecDeque;
use std::io::{self, Write};

use super::super::packet::Segments;

/// Capacity above which an emptied buffer returns its memory.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxBufError {
    /// The bytes do not fit: the guest sent beyond its credit.
    #[error("{incoming} more bytes do not fit the {free} free bytes of the connection buffer")]
    Full {
        /// Bytes offered.
        incoming: usize,
        /// Room left.
        free: usize,
    },
}

/// A FIFO of at most `cap` bytes.
#[derive(Debug)]
pub struct TxBuf {
    data: VecDeque<u8>,
    cap: usize,
}

impl TxBuf {
    /// An empty buffer that holds at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            data: VecDeque::new(),
            cap,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Room left.
    pub fn free(&self) -> usize {
        self.cap - self.data.len()
    }

    /// Memory held by the buffer (for tests of the bound).
    pub fn allocated(&self) -> usize {
        self.data.capacity()
    }

    /// Appends `bytes` whole, or nothing if they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TxBufError> {
        self.check_room(bytes.len())?;
        self.data.extend(bytes);
        Ok(())
    }

    /// Appends the guest memory `segs` whole, or nothing if they do not fit.
    pub fn push_segments(&mut self, segs: &Segments<'_>) -> Result<(), TxBufError> {
        self.check_room(segs.len())?;
        let mut chunk = [0u8; 4096];
        for s in segs.slices() {
            let mut off = 0;
            while off < s.len() {
                let n = (s.len() - off).min(chunk.len());
                // `off + n <= s.len()`, so the subslice exists.
                if let Ok(sub) = s.subslice(off, n) {
                    let got = sub.copy_to(&mut chunk[..n]);
                    self.data.extend(&chunk[..got]);
                }
                off += n;
            }
        }
        Ok(())
    }

    fn check_room(&self, incoming: usize) -> Result<(), TxBufError> {
        if incoming > self.free() {
            return Err(TxBufError::Full {
                incoming,
                free: self.free(),
            });
        }
        Ok(())
    }

    /// Writes as much as `w` takes without blocking and returns how many
    /// bytes went out. `WouldBlock` just ends the flush. Another error is
    /// returned, unless some bytes went out first: then those are reported
    /// and the error comes back on the next call.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while !self.data.is_empty() {
            let (front, _) = self.data.as_slices();
            match w.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.data.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if self.data.is_empty() && self.data.capacity() > SHRINK_ABOVE {
            self.data = VecDeque::new();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn refuses_what_does_not_fit_and_keeps_order() {
        let mut b = TxBuf::new(8);
        b.push(b"abcde").unwrap();
        assert_eq!(
            b.push(b"fghi"),
            Err(TxBufError::Full {
                incoming: 4,
                free: 3
            })
        );
        assert_eq!(b.len(), 5, "a refused push adds nothing");
        b.push(b"fgh").unwrap();
        assert_eq!(b.free(), 0);
        let mut out = Vec::new();
        assert_eq!(b.flush_to(&mut out).unwrap(), 8);
        assert_eq!(out, b"abcdefgh");
        assert!(b.is_empty());
    }

    #[test]
    fn segments_from_guest_memory_are_copied() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let pattern: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0x100)).unwrap();
        let mut segs = Segments::default();
        for s in mem.get_slices(GuestAddress(0x100), 10_000) {
            segs.push(s.unwrap());
        }
        let mut b = TxBuf::new(16 * 1024);
        b.push_segments(&segs).unwrap();
        let mut out = Vec::new();
        b.flush_to(&mut out).unwrap();
        assert_eq!(out, pattern);
    }

    #[test]
    fn flush_stops_at_would_block_and_resumes() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut a = a;
        let mut b = TxBuf::new(4 << 20);
        let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 253) as u8).collect();
        b.push(&data).unwrap();
        let first = b.flush_to(&mut a).unwrap();
        assert!(
            first > 0 && first < data.len(),
            "socket buffer is smaller than 3 MiB"
        );
        let mut got = Vec::new();
        peer.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < data.len() {
            use std::io::Read;
            match peer.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    b.flush_to(&mut a).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got == data);
        assert!(b.is_empty());
        assert_eq!(
            b.allocated(),
            0,
            "an emptied large buffer gives its memory back"
        );
    }

    #[test]
    fn broken_pipe_is_an_error() {
        let (mut a, peer) = UnixStream::pair().unwrap();
        drop(peer);
        let mut b = TxBuf::new(16);
        b.push(b"x").unwrap();
        assert!(b.flush_to(&mut a).is_err());
        assert_eq!(b.len(), 1);
    }
}
