//! Packet parsing against real guest memory and hand-written rings,
//! including layouts no sane driver writes.

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_utils::{GuestQueue, XorShift, NEXT, WRITE};
use crate::vsock::{VSOCK_OP_RW, VSOCK_TYPE_STREAM};

/// Two adjacent regions, so buffers can straddle a region boundary.
const SPLIT: u64 = 0x10_0000;
const MEM_END: u64 = 0x20_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), SPLIT as usize),
        (GuestAddress(SPLIT), (MEM_END - SPLIT) as usize),
    ])
    .unwrap()
}

fn hdr(len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: 3,
        dst_cid: 2,
        src_port: 1000,
        dst_port: 52,
        len,
        type_: VSOCK_TYPE_STREAM,
        op: VSOCK_OP_RW,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 7,
    }
}

fn one_chain<'m>(
    mem: &'m GuestMemoryMmap,
    q: &mut Queue,
) -> virtio_queue::DescriptorChain<&'m GuestMemoryMmap> {
    q.iter(mem).unwrap().next().expect("a chain")
}

#[test]
fn header_round_trips_in_wire_order() {
    let h = VsockHeader {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 0x1122_3344,
        dst_port: 5,
        len: 6,
        type_: 1,
        op: 5,
        flags: 3,
        buf_alloc: 0xdead_beef,
        fwd_cnt: 9,
    };
    let b = h.to_bytes();
    assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[16..20], &0x1122_3344u32.to_le_bytes());
    assert_eq!(&b[28..30], &[1, 0]);
    assert_eq!(&b[30..32], &[5, 0]);
    assert_eq!(VsockHeader::from_bytes(&b), h);
}

#[test]
fn tx_header_and_data_in_separate_descriptors() {
    let mem = mem();
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    let mut q = gq.queue();
    mem.write_slice(&hdr(5).to_bytes(), GuestAddress(0x8000))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(0x9000)).unwrap();
    gq.add_chain(&[(0x8000, 44, 0), (0x9000, 100, 0)]);
    let pkt = parse_tx(&mem, one_chain(&mem, &mut q)).unwrap();
    assert_eq!(pkt.hdr, hdr(5));
    let mut out = [0u8; 5];
    assert_eq!(pkt.data().len(), 5, "data is cut to hdr.len");
    pkt.data().copy_to(&mut out);
    assert_eq!(&out, b"hello");
}

#[test]
fn tx_header_split_over_descriptors_and_data_in_head() {
    let mem = mem();
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    let mut q = gq.queue();
    let raw = hdr(3).to_bytes();
    // 10 header bytes, then 34 header bytes plus the data.
    mem.write_slice(&raw[..10], GuestAddress(0x8000)).unwrap();
    mem.write_slice(&raw[10..], GuestAddress(0xa000)).unwrap();
    mem.write_slice(b"abc", GuestAddress(0xa000 + 34)).unwrap();
    gq.add_chain(&[(0x8000, 10, 0), (0xa000, 37, 0)]);
    let pkt = parse_tx(&mem, one_chain(&mem, &mut q)).unwrap();
    assert_eq!(pkt.hdr, hdr(3));
    let mut out = [0u8; 3];
    pkt.data().copy_to(&mut out);
    assert_eq!(&out, b"abc");

    // Header and data in one descriptor (Linux >= 6.2 layout).
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    let mut q = gq.queue();
    mem.write_slice(&hdr(2).to_bytes(), GuestAddress(0xc000))
        .unwrap();
    mem.write_slice(b"xy", GuestAddress(0xc000 + 44)).unwrap();
    gq.add_chain(&[(0xc000, 4096, 0)]);
    let pkt = parse_tx(&mem, one_chain(&mem, &mut q)).unwrap();
    let mut out = [0u8; 2];
    pkt.data().copy_to(&mut out);
    assert_eq!(&out, b"xy");
}

#[test]
fn tx_data_straddling_a_region_boundary() {
    let mem = mem();
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    let mut q = gq.queue();
    let data: Vec<u8> = (0..200u8).collect();
    mem.write_slice(&hdr(200).to_bytes(), GuestAddress(0x8000))
        .unwrap();
    mem.write_slice(&data, GuestAddress(SPLIT - 100)).unwrap();
    gq.add_chain(&[(0x8000, 44, 0), (SPLIT - 100, 200, 0)]);
    let pkt = parse_tx(&mem, one_chain(&mem, &mut q)).unwrap();
    assert_eq!(pkt.data().slices().len(), 2, "one slice per region");
    let mut out = vec![0u8; 200];
    pkt.data().copy_to(&mut out);
    assert_eq!(out, data);
}

#[test]
fn hostile_tx_chains_are_refused_with_the_reason() {
    let mem = mem();
    type Case = (Vec<(u64, u32, u16)>, VsockHeader, PacketError, bool);
    let cases: Vec<Case> = vec![
        // Header cut short.
        (
            vec![(0x8000, 20, 0)],
            hdr(0),
            PacketError::HeaderTooShort(20),
            false,
        ),
        // Device-writable descriptor in a tx chain.
        (
            vec![(0x8000, 44, 0), (0x9000, 10, WRITE)],
            hdr(10),
            PacketError::WriteOnlyInTx(1),
            false,
        ),
        // len beyond what the chain holds.
        (
            vec![(0x8000, 44, 0), (0x9000, 10, 0)],
            hdr(11),
            PacketError::LenBeyondChain { len: 11, avail: 10 },
            true,
        ),
        // len beyond the per-packet limit.
        (
            vec![(0x8000, 44, 0), (0x9000, 10, 0)],
            hdr(u32::MAX),
            PacketError::LenTooBig(u32::MAX),
            true,
        ),
        // Buffer outside guest memory.
        (
            vec![(0x8000, 44, 0), (MEM_END - 4, 10, 0)],
            hdr(10),
            PacketError::OutOfMemory {
                addr: MEM_END - 4,
                len: 10,
            },
            false,
        ),
        // Address overflow.
        (
            vec![(u64::MAX - 2, 44, 0)],
            hdr(0),
            PacketError::OutOfMemory {
                addr: u64::MAX - 2,
                len: 44,
            },
            false,
        ),
    ];
    for (i, (descs, h, want, has_hdr)) in cases.into_iter().enumerate() {
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
        let mut q = gq.queue();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
            .unwrap();
        gq.add_chain(&descs);
        let bad = parse_tx(&mem, one_chain(&mem, &mut q)).unwrap_err();
        assert_eq!(bad.error, want, "case {i}");
        assert_eq!(bad.hdr.is_some(), has_hdr, "case {i}");
    }
}

#[test]
fn looping_and_dangling_chains_are_truncated() {
    let mem = mem();
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 4);
    let mut q = gq.queue();
    mem.write_slice(&hdr(0).to_bytes(), GuestAddress(0x8000))
        .unwrap();
    // 0 -> 1 -> 0 -> ...
    gq.write_desc(0, 0x8000, 44, NEXT, 1);
    gq.write_desc(1, 0x9000, 8, NEXT, 0);
    gq.push_avail(0);
    assert_eq!(
        parse_tx(&mem, one_chain(&mem, &mut q)).unwrap_err().error,
        PacketError::Truncated
    );
    // next index past the table.
    gq.write_desc(2, 0x8000, 44, NEXT, 200);
    gq.push_avail(2);
    assert_eq!(
        parse_tx(&mem, one_chain(&mem, &mut q)).unwrap_err().error,
        PacketError::Truncated
    );
    // Head index past the table: no descriptor at all.
    gq.push_avail(1000);
    assert!(parse_tx(&mem, one_chain(&mem, &mut q)).is_err());
}

#[test]
fn rx_buffers_single_and_split() {
    let mem = mem();
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    let mut q = gq.queue();
    // Linux >= 6.2: one descriptor, header + 4 KiB.
    gq.add_chain(&[(0x8000, 44 + 4096, WRITE)]);
    let b = parse_rx(&mem, one_chain(&mem, &mut q)).unwrap();
    assert_eq!(b.data_capacity(), 4096);
    b.write_header(&hdr(3));
    b.data().copy_from(b"xyz");
    let mut raw = [0u8; 44];
    mem.read_slice(&mut raw, GuestAddress(0x8000)).unwrap();
    assert_eq!(VsockHeader::from_bytes(&raw), hdr(3));
    let mut d = [0u8; 3];
    mem.read_slice(&mut d, GuestAddress(0x8000 + 44)).unwrap();
    assert_eq!(&d, b"xyz");

    // Old layout: header descriptor plus data descriptor; oversized data is
    // capped at MAX_PKT_DATA.
    gq.add_chain(&[(0x20000, 44, WRITE), (0x30000, 128 * 1024, WRITE)]);
    let b = parse_rx(&mem, one_chain(&mem, &mut q)).unwrap();
    assert_eq!(b.data_capacity(), MAX_PKT_DATA as usize);

    // Read-only descriptor, too short, outside memory.
    gq.add_chain(&[(0x8000, 44, WRITE), (0x9000, 10, 0)]);
    assert_eq!(
        parse_rx(&mem, one_chain(&mem, &mut q)).unwrap_err(),
        PacketError::ReadOnlyInRx(1)
    );
    gq.add_chain(&[(0x8000, 43, WRITE)]);
    assert_eq!(
        parse_rx(&mem, one_chain(&mem, &mut q)).unwrap_err(),
        PacketError::HeaderTooShort(43)
    );
    gq.add_chain(&[(MEM_END, 100, WRITE)]);
    assert!(matches!(
        parse_rx(&mem, one_chain(&mem, &mut q)).unwrap_err(),
        PacketError::OutOfMemory { .. }
    ));
}

#[test]
fn random_chains_never_panic() {
    let mem = mem();
    let mut rng = XorShift::new(0x5eed);
    for round in 0..2000 {
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        for i in 0..8u16 {
            let addr = match rng.below(4) {
                0 => rng.next_u64(),
                1 => MEM_END - rng.below(64),
                _ => 0x8000 + rng.below(0x10_0000),
            };
            let len = match rng.below(3) {
                0 => rng.next_u64() as u32,
                _ => rng.below(70_000) as u32,
            };
            let flags = (rng.below(8) as u16) & (NEXT | WRITE | 4);
            gq.write_desc(i, addr, len, flags, rng.below(10) as u16);
        }
        // Random header bytes where the heads usually point.
        let mut junk = [0u8; 64];
        for b in junk.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let _ = mem.write_slice(&junk, GuestAddress(0x8000));
        gq.push_avail(rng.below(9) as u16);
        let Some(chain) = q.iter(&mem).unwrap().next() else {
            continue;
        };
        if round % 2 == 0 {
            let _ = parse_tx(&mem, chain);
        } else if let Ok(b) = parse_rx(&mem, chain) {
            b.write_header(&hdr(1));
            assert!(b.data_capacity() <= MAX_PKT_DATA as usize);
        }
    }
}
