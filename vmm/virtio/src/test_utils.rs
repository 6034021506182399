//! Test helper: the *driver* side of a split virtqueue, laid out by hand in
//! real guest memory, so device code is exercised exactly as a guest would
//! drive it (including with tables no sane driver would write).

use std::cell::Cell;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flag: another descriptor follows (`next` is valid).
pub const NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const INDIRECT: u16 = 4;

/// A split virtqueue in guest memory, written the way a driver writes it.
pub struct GuestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: Cell<u16>,
}

impl<'a> GuestQueue<'a> {
    /// Lays out an empty ring of `size` entries at `base` (16-byte aligned).
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let desc = base;
        let avail = GuestAddress(base.0 + 16 * u64::from(size));
        let avail_end = avail.0 + 6 + 2 * u64::from(size);
        let used = GuestAddress((avail_end + 3) & !3);
        let q = Self {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: Cell::new(0),
        };
        let used_end = used.0 + 6 + 8 * u64::from(size);
        let zeros = vec![0u8; (used_end - base.0) as usize];
        mem.write_slice(&zeros, base).unwrap();
        q
    }

    /// Descriptor table address.
    pub fn desc_addr(&self) -> GuestAddress {
        self.desc
    }
    /// Available ring address.
    pub fn avail_addr(&self) -> GuestAddress {
        self.avail
    }
    /// Used ring address.
    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }

    /// A device-side queue configured for this ring, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0 as u32), Some((self.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail.0 as u32), Some((self.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` verbatim (any flags, any next).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc.0 + 16 * u64::from(index));
        write_raw_desc(self.mem, at, addr, len, flags, next);
    }

    /// Writes a well-formed chain from `(addr, len, flags)` (NEXT is added
    /// between elements) into free descriptors and makes it available.
    /// Returns the head index.
    pub fn add_chain(&self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc.get();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags & !NEXT, 0)
            } else {
                (flags | NEXT, (index + 1) % self.size)
            };
            self.write_desc(index, addr, len, flags, next);
        }
        self.next_desc.set((head + descs.len() as u16) % self.size);
        self.push_avail(head);
        head
    }

    /// Appends `head` to the available ring and bumps its index.
    pub fn push_avail(&self, head: u16) {
        let idx = self.avail_idx();
        let slot = GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(head.to_le(), slot).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// Available ring index.
    pub fn avail_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.avail.0 + 2)).unwrap())
    }

    /// Overwrites the available ring index.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.avail.0 + 2))
            .unwrap();
    }

    /// Writes `used_event` (the driver's EVENT_IDX threshold).
    pub fn set_used_event(&self, v: u16) {
        let at = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
        self.mem.write_obj(v.to_le(), at).unwrap();
    }

    /// Reads `avail_event` (the device's EVENT_IDX threshold).
    pub fn avail_event(&self) -> u16 {
        let at = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(at).unwrap())
    }

    /// Used ring index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap())
    }

    /// Used ring element `i` as `(id, len)`.
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.0 + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }
}

/// Writes one raw split descriptor at `at`.
pub fn write_raw_desc(
    mem: &GuestMemoryMmap,
    at: GuestAddress,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, at).unwrap();
}

/// A small deterministic PRNG (xorshift64*) for fuzz-style tests: seeded,
/// so a failure is reproducible, and dependency-free.
pub struct XorShift(u64);

impl XorShift {
    /// Seeds the generator (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
