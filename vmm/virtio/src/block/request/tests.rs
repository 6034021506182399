//! virtio-blk requests against a real temp file and real guest memory, with
//! descriptor tables written by hand as a (sometimes hostile) driver would.

use std::io::Write;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_utils::{write_raw_desc, GuestQueue, XorShift, INDIRECT, NEXT, WRITE};

/// Two adjacent 1 MiB regions, so buffers can straddle a region boundary.
const MEM_END: u64 = 0x20_0000;
const REGION_SPLIT: u64 = 0x10_0000;
const SECTORS: u64 = 64;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;

struct Env {
    mem: GuestMemoryMmap,
    file: tempfile::NamedTempFile,
    disk: DiskFile,
    serial: [u8; SERIAL_LEN],
}

fn pattern() -> Vec<u8> {
    (0..SECTORS * 512).map(|i| (i * 7 % 253) as u8).collect()
}

fn env(read_only: bool) -> Env {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (
            GuestAddress(REGION_SPLIT),
            (MEM_END - REGION_SPLIT) as usize,
        ),
    ])
    .unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&pattern()).unwrap();
    let disk = DiskFile::open(file.path(), read_only).unwrap();
    let mut serial = [0u8; SERIAL_LEN];
    serial[..6].copy_from_slice(b"rootfs");
    Env {
        mem,
        file,
        disk,
        serial,
    }
}

impl Env {
    fn header(&self, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn status_byte(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Runs one chain made of `descs` through `process_chain`.
    fn run(&self, descs: &[(u64, u32, u16)]) -> Completion {
        // The status byte starts as a value no answer uses.
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let gq = GuestQueue::new(&self.mem, GuestAddress(0x1000), 16);
        let mut q: Queue = gq.queue();
        gq.add_chain(descs);
        let chain = q.iter(&self.mem).unwrap().next().unwrap();
        process_chain(chain, &self.disk, &self.serial)
    }

    fn disk_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }
}

fn hdr() -> (u64, u32, u16) {
    (HDR, 16, 0)
}
fn status() -> (u64, u32, u16) {
    (STATUS, 1, WRITE)
}

fn assert_ioerr(c: &Completion) {
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR), "{:?}", c.error);
    assert_eq!(c.used_len, 1);
    assert!(c.error.is_some());
}

fn assert_dropped(e: &Env, c: &Completion) {
    assert_eq!(c.used_len, 0);
    assert_eq!(c.status, None);
    assert_eq!(e.status_byte(), 0xee, "status byte must be untouched");
}

#[test]
fn read_round_trip_across_descriptors() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 3);
    let c = e.run(&[
        hdr(),
        (DATA, 512, WRITE),
        (DATA + 0x1000, 1024, WRITE),
        status(),
    ]);
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(e.status_byte(), VIRTIO_BLK_S_OK);
    assert_eq!(c.used_len, 1536 + 1);
    let p = pattern();
    let mut got = vec![0u8; 512];
    e.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, p[3 * 512..4 * 512]);
    let mut got = vec![0u8; 1024];
    e.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, p[4 * 512..6 * 512]);
}

#[test]
fn read_into_a_buffer_straddling_two_memory_regions() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 0);
    let at = REGION_SPLIT - 512;
    let c = e.run(&[hdr(), (at, 2048, WRITE), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{:?}", c.error);
    let mut got = vec![0u8; 2048];
    e.mem.read_slice(&mut got, GuestAddress(at)).unwrap();
    assert_eq!(got, pattern()[..2048]);
}

#[test]
fn write_then_read_back_and_flush() {
    let e = env(false);
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 13) as u8 + 100).collect();
    e.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    e.header(VIRTIO_BLK_T_OUT, SECTORS - 2);
    let c = e.run(&[hdr(), (DATA, 1024, 0), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{:?}", c.error);
    assert_eq!(c.used_len, 1, "a write returns only the status byte");
    let on_disk = e.disk_bytes();
    assert_eq!(&on_disk[(SECTORS as usize - 2) * 512..], &data[..]);
    assert_eq!(on_disk.len() as u64, SECTORS * 512, "the image never grows");

    e.header(VIRTIO_BLK_T_FLUSH, 0);
    let c = e.run(&[hdr(), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(c.used_len, 1);

    e.header(VIRTIO_BLK_T_IN, SECTORS - 2);
    let c = e.run(&[hdr(), (DATA + 0x4000, 1024, WRITE), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    let mut got = vec![0u8; 1024];
    e.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x4000))
        .unwrap();
    assert_eq!(got, data);
}

#[test]
fn get_id_returns_nul_padded_serial() {
    let e = env(true);
    e.mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
    e.header(VIRTIO_BLK_T_GET_ID, 0);
    let c = e.run(&[hdr(), (DATA, 20, WRITE), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(c.used_len, 21);
    let mut got = [0u8; 21];
    e.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..6], b"rootfs");
    assert_eq!(&got[6..20], &[0u8; 14]);
    assert_eq!(got[20], 0xaa, "nothing written past 20 bytes");

    // A short buffer gets a prefix; a long one only 20 bytes.
    let c = e.run(&[hdr(), (DATA + 0x100, 4, WRITE), status()]);
    assert_eq!((c.status, c.used_len), (Some(VIRTIO_BLK_S_OK), 5));
    let c = e.run(&[hdr(), (DATA + 0x200, 512, WRITE), status()]);
    assert_eq!((c.status, c.used_len), (Some(VIRTIO_BLK_S_OK), 21));
    // Split over two descriptors.
    let c = e.run(&[
        hdr(),
        (DATA + 0x300, 3, WRITE),
        (DATA + 0x400, 30, WRITE),
        status(),
    ]);
    assert_eq!((c.status, c.used_len), (Some(VIRTIO_BLK_S_OK), 21));
    let mut a = [0u8; 3];
    let mut b = [0u8; 3];
    e.mem
        .read_slice(&mut a, GuestAddress(DATA + 0x300))
        .unwrap();
    e.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x400))
        .unwrap();
    assert_eq!((&a, &b), (b"roo", b"tfs"));
}

#[test]
fn read_only_disk_rejects_writes_but_reads() {
    let e = env(true);
    e.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    e.header(VIRTIO_BLK_T_OUT, 0);
    let c = e.run(&[hdr(), (DATA, 512, 0), status()]);
    assert_ioerr(&c);
    assert!(matches!(c.error, Some(RequestError::ReadOnly)));
    assert_eq!(e.disk_bytes(), pattern());
    e.header(VIRTIO_BLK_T_IN, 0);
    let c = e.run(&[hdr(), (DATA, 512, WRITE), status()]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    e.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(e.run(&[hdr(), status()]).status, Some(VIRTIO_BLK_S_OK));
}

#[test]
fn unsupported_types_get_unsupp() {
    let e = env(false);
    for t in [2u32, 11, 13, 14, 0x8000_0000, u32::MAX] {
        e.header(t, 0);
        let c = e.run(&[hdr(), (DATA, 512, 0), status()]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP), "type {t}");
        assert_eq!(e.status_byte(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(c.used_len, 1);
    }
    assert_eq!(e.disk_bytes(), pattern());
}

#[test]
fn malformed_headers_yield_ioerr() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 0);
    // Too short.
    let c = e.run(&[(HDR, 8, 0), (DATA, 512, WRITE), status()]);
    assert_ioerr(&c);
    assert!(matches!(c.error, Some(RequestError::HeaderTooShort(8))));
    // Device-writable header.
    let c = e.run(&[(HDR, 16, WRITE), (DATA, 512, WRITE), status()]);
    assert!(matches!(c.error, Some(RequestError::HeaderWriteOnly)));
    assert_ioerr(&c);
    // Outside guest memory, and straddling its end.
    for at in [MEM_END, MEM_END - 8, u64::MAX - 8] {
        let c = e.run(&[(at, 16, 0), (DATA, 512, WRITE), status()]);
        assert!(
            matches!(c.error, Some(RequestError::HeaderOutOfMemory(_))),
            "{at:#x}"
        );
        assert_ioerr(&c);
    }
    // Status only.
    let c = e.run(&[status()]);
    assert!(matches!(c.error, Some(RequestError::MissingHeader)));
    assert_ioerr(&c);
}

#[test]
fn status_goes_to_the_last_byte_of_a_longer_status_descriptor() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_FLUSH, 0);
    e.mem.write_slice(&[0xee; 4], GuestAddress(STATUS)).unwrap();
    let gq = GuestQueue::new(&e.mem, GuestAddress(0x1000), 16);
    let mut q: Queue = gq.queue();
    gq.add_chain(&[hdr(), (STATUS, 4, WRITE)]);
    let chain = q.iter(&e.mem).unwrap().next().unwrap();
    let c = process_chain(chain, &e.disk, &e.serial);
    assert_eq!((c.status, c.used_len), (Some(VIRTIO_BLK_S_OK), 1));
    let got: [u8; 4] = e.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(got, [0xee, 0xee, 0xee, VIRTIO_BLK_S_OK]);
    // Its last byte past the end of memory: nowhere to answer.
    let c = e.run(&[hdr(), (MEM_END - 2, 4, WRITE)]);
    assert!(matches!(c.error, Some(RequestError::StatusOutOfMemory(_))));
    assert_dropped(&e, &c);
    let c = e.run(&[hdr(), (u64::MAX - 1, 4, WRITE)]);
    assert_dropped(&e, &c);
}

#[test]
fn unusable_status_descriptor_drops_the_chain() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_OUT, 0);
    e.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    // Read-only status.
    let c = e.run(&[hdr(), (DATA, 512, 0), (STATUS, 1, 0)]);
    assert!(matches!(c.error, Some(RequestError::StatusReadOnly)));
    assert_dropped(&e, &c);
    // Zero-length status.
    let c = e.run(&[hdr(), (DATA, 512, 0), (STATUS, 0, WRITE)]);
    assert!(matches!(c.error, Some(RequestError::StatusEmpty)));
    assert_dropped(&e, &c);
    // Status outside memory.
    let c = e.run(&[hdr(), (DATA, 512, 0), (MEM_END, 1, WRITE)]);
    assert!(matches!(c.error, Some(RequestError::StatusOutOfMemory(_))));
    assert_dropped(&e, &c);
    // Header only (it is the last descriptor and read-only).
    let c = e.run(&[hdr()]);
    assert_dropped(&e, &c);
    // Nothing was written in any case.
    assert_eq!(e.disk_bytes(), pattern());
}

#[test]
fn data_descriptor_defects_yield_ioerr() {
    let e = env(false);
    // IN without data.
    e.header(VIRTIO_BLK_T_IN, 0);
    let c = e.run(&[hdr(), status()]);
    assert!(matches!(
        c.error,
        Some(RequestError::MissingData(RequestType::In))
    ));
    assert_ioerr(&c);
    // IN into a device-readable buffer.
    let c = e.run(&[hdr(), (DATA, 512, 0), status()]);
    assert!(matches!(
        c.error,
        Some(RequestError::DataDirection { index: 1, .. })
    ));
    assert_ioerr(&c);
    // IN with the second data buffer device-readable.
    let c = e.run(&[hdr(), (DATA, 512, WRITE), (DATA + 512, 512, 0), status()]);
    assert!(matches!(
        c.error,
        Some(RequestError::DataDirection { index: 2, .. })
    ));
    assert_ioerr(&c);
    // GET_ID into a device-readable buffer.
    e.header(VIRTIO_BLK_T_GET_ID, 0);
    let c = e.run(&[hdr(), (DATA, 20, 0), status()]);
    assert_ioerr(&c);
    // OUT from a device-writable buffer.
    e.header(VIRTIO_BLK_T_OUT, 0);
    let c = e.run(&[hdr(), (DATA, 512, WRITE), status()]);
    assert!(matches!(c.error, Some(RequestError::DataDirection { .. })));
    assert_ioerr(&c);
    // OUT with no data.
    let c = e.run(&[hdr(), status()]);
    assert_ioerr(&c);
    // Zero-length data descriptors only.
    let c = e.run(&[hdr(), (DATA, 0, 0), status()]);
    assert!(matches!(c.error, Some(RequestError::MissingData(_))));
    assert_ioerr(&c);
    // Not a whole number of sectors.
    for len in [1u32, 511, 513, 1000] {
        let c = e.run(&[hdr(), (DATA, len, 0), status()]);
        assert!(
            matches!(c.error, Some(RequestError::DataLenNotSectorMultiple(_))),
            "{len}"
        );
        assert_ioerr(&c);
    }
    assert_eq!(e.disk_bytes(), pattern());
}

#[test]
fn data_descriptor_outside_guest_memory_yields_ioerr() {
    let e = env(false);
    for (t, flags) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        e.header(t, 0);
        for (addr, len) in [
            (MEM_END, 512u32),
            (MEM_END - 512, 1024),
            (u64::MAX - 511, 512),
            (0, !511u32),
        ] {
            let c = e.run(&[hdr(), (addr, len, flags), status()]);
            assert!(
                matches!(c.error, Some(RequestError::DataOutOfMemory { .. })),
                "{addr:#x}+{len:#x}: {:?}",
                c.error
            );
            assert_ioerr(&c);
        }
        // One good and one bad buffer: nothing is transferred at all.
        e.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        let c = e.run(&[hdr(), (DATA, 512, flags), (MEM_END, 512, flags), status()]);
        assert_ioerr(&c);
        let mut got = [0u8; 512];
        e.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, [0x77; 512]);
    }
    assert_eq!(e.disk_bytes(), pattern());
}

#[test]
fn sector_ranges_are_checked_without_overflow() {
    let e = env(false);
    for (t, flags) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        for (sector, len) in [
            (SECTORS, 512u32),
            (SECTORS - 1, 1024),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (u64::MAX - 1, 1024),
        ] {
            e.header(t, sector);
            let c = e.run(&[hdr(), (DATA, len, flags), status()]);
            assert!(
                matches!(c.error, Some(RequestError::SectorOutOfRange { .. })),
                "type {t} sector {sector}: {:?}",
                c.error
            );
            assert_ioerr(&c);
        }
        // The last sector itself is fine.
        e.header(t, SECTORS - 1);
        let c = e.run(&[hdr(), (DATA, 512, flags), status()]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{:?}", c.error);
    }
    assert_eq!(e.disk_bytes().len() as u64, SECTORS * 512);
}

/// Runs a chain whose descriptor table is written verbatim.
fn run_raw(e: &Env, size: u16, table: &[(u64, u32, u16, u16)], head: u16) -> Completion {
    e.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let gq = GuestQueue::new(&e.mem, GuestAddress(0x1000), size);
    let mut q: Queue = gq.queue();
    for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
        gq.write_desc(i as u16, addr, len, flags, next);
    }
    gq.push_avail(head);
    let chain = q.iter(&e.mem).unwrap().next().unwrap();
    process_chain(chain, &e.disk, &e.serial)
}

#[test]
fn looping_and_dangling_chains_are_dropped() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 2 -> 1 -> ... : the chain iterator stops after queue-size
    // descriptors; the last one still has NEXT.
    let c = run_raw(
        &e,
        8,
        &[
            (HDR, 16, NEXT, 1),
            (DATA, 512, WRITE | NEXT, 2),
            (STATUS, 1, WRITE | NEXT, 1),
        ],
        0,
    );
    assert!(
        matches!(c.error, Some(RequestError::Truncated)),
        "{:?}",
        c.error
    );
    assert_dropped(&e, &c);
    // A self-loop on the head.
    let c = run_raw(&e, 8, &[(HDR, 16, NEXT, 0)], 0);
    assert_dropped(&e, &c);
    // next index past the table.
    let c = run_raw(
        &e,
        8,
        &[(HDR, 16, NEXT, 1), (STATUS, 1, WRITE | NEXT, 200)],
        0,
    );
    assert!(matches!(c.error, Some(RequestError::Truncated)));
    assert_dropped(&e, &c);
    // Head index past the table: no descriptor at all.
    let c = run_raw(&e, 8, &[], 9);
    assert!(matches!(c.error, Some(RequestError::EmptyChain)));
    assert_dropped(&e, &c);
}

#[test]
fn chain_of_exactly_queue_size_is_accepted() {
    // The longest legal chain: header, 6 data, status in an 8-entry queue.
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 0);
    let mut table = vec![(HDR, 16, NEXT, 1)];
    for i in 0..6u16 {
        table.push((DATA + u64::from(i) * 512, 512, WRITE | NEXT, i + 2));
    }
    table.push((STATUS, 1, WRITE, 0));
    let c = run_raw(&e, 8, &table, 0);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{:?}", c.error);
    assert_eq!(c.used_len, 6 * 512 + 1);
}

#[test]
fn indirect_tables_are_bounded() {
    let e = env(false);
    e.header(VIRTIO_BLK_T_IN, 0);
    // A well-formed indirect table (VIRTIO_RING_F_INDIRECT_DESC, which
    // Linux uses for large requests) works...
    let table = 0x8_0000u64;
    write_raw_desc(&e.mem, GuestAddress(table), HDR, 16, NEXT, 1);
    write_raw_desc(&e.mem, GuestAddress(table + 16), DATA, 512, WRITE | NEXT, 2);
    write_raw_desc(&e.mem, GuestAddress(table + 32), STATUS, 1, WRITE, 0);
    let c = run_raw(&e, 8, &[(table, 48, INDIRECT, 0)], 0);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{:?}", c.error);

    // ...but one with more descriptors than MAX_DESCRIPTORS is refused
    // (IOERR: its status byte is fine).
    let n = MAX_DESCRIPTORS as u64 + 100;
    write_raw_desc(&e.mem, GuestAddress(table), HDR, 16, NEXT, 1);
    for i in 1..n - 1 {
        write_raw_desc(
            &e.mem,
            GuestAddress(table + 16 * i),
            DATA,
            512,
            WRITE | NEXT,
            (i + 1) as u16,
        );
    }
    write_raw_desc(
        &e.mem,
        GuestAddress(table + 16 * (n - 1)),
        STATUS,
        1,
        WRITE,
        0,
    );
    let c = run_raw(&e, 8, &[(table, (16 * n) as u32, INDIRECT, 0)], 0);
    assert!(
        matches!(c.error, Some(RequestError::TooManyDescriptors(_))),
        "{:?}",
        c.error
    );
    assert_ioerr(&c);

    // A looping indirect table is cut at its own size and dropped.
    write_raw_desc(&e.mem, GuestAddress(table), HDR, 16, NEXT, 1);
    write_raw_desc(&e.mem, GuestAddress(table + 16), DATA, 512, WRITE | NEXT, 0);
    let c = run_raw(&e, 8, &[(table, 32, INDIRECT, 0)], 0);
    assert_dropped(&e, &c);

    // An indirect table outside memory yields nothing: dropped.
    let c = run_raw(&e, 8, &[(MEM_END, 48, INDIRECT, 0)], 0);
    assert_dropped(&e, &c);
    // Nested indirect: refused by virtio-queue, dropped.
    write_raw_desc(&e.mem, GuestAddress(table), table, 16, INDIRECT, 0);
    let c = run_raw(&e, 8, &[(table, 16, INDIRECT, 0)], 0);
    assert_dropped(&e, &c);
}

/// Random descriptor tables, avail rings and headers through the whole
/// device path (`Block::process_queue`): nothing may panic, the image may
/// never grow, and every used-ring length must be 0 or fit the chain.
#[test]
fn random_descriptor_tables_never_panic() {
    use crate::block::{Block, BlockConfig};
    use crate::VirtioDevice;

    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&pattern()).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
    let mut blk = Block::new(BlockConfig {
        id: "fuzz".into(),
        path: file.path().to_path_buf(),
        read_only: false,
    })
    .unwrap();
    let size = 16u16;
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), size);
    blk.activate(mem.clone(), vec![gq.queue()]).unwrap();

    let mut rng = XorShift::new(42);
    let addr = |rng: &mut XorShift| -> u64 {
        match rng.below(8) {
            0 => rng.next_u64(),
            1 => 0x4_0000 - rng.below(1024),
            2 => HDR,
            3 => STATUS,
            _ => 0x8000 + rng.below(0x3_0000),
        }
    };
    let mut completed = 0usize;
    for round in 0..3000 {
        for i in 0..size {
            let a = addr(&mut rng);
            let len = match rng.below(6) {
                0 => rng.next_u64() as u32,
                1 => 16,
                2 => 1,
                _ => 512 * (rng.below(4) as u32),
            };
            let flags = (rng.below(8) as u16)
                & (NEXT | WRITE | if rng.below(10) == 0 { INDIRECT } else { 0 });
            let next = if rng.below(8) == 0 {
                rng.next_u64() as u16
            } else {
                rng.below(u64::from(size)) as u16
            };
            gq.write_desc(i, a, len, flags, next);
        }
        let mut h = [0u8; 16];
        let t = [0u32, 1, 4, 8, 11, rng.next_u64() as u32][rng.below(6) as usize];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        let sector = if rng.below(2) == 0 {
            rng.below(SECTORS + 4)
        } else {
            rng.next_u64()
        };
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let chains = 1 + rng.below(4);
        for _ in 0..chains {
            let head = if rng.below(10) == 0 {
                rng.next_u64() as u16
            } else {
                rng.below(u64::from(size)) as u16
            };
            gq.push_avail(head);
        }
        if round % 97 == 0 {
            // Now and then a garbage available index.
            gq.set_avail_idx(rng.next_u64() as u16);
        }
        let before = gq.used_idx();
        let out = blk.process_queue(0);
        completed += out.completed;
        let after = gq.used_idx();
        for k in 0..after.wrapping_sub(before) {
            let (id, len) = gq.used_elem(before.wrapping_add(k));
            assert!(id < u32::from(size), "used id {id} out of range");
            // Data (<= 4 GiB chain) + status.
            assert!(len == 0 || len >= 1);
        }
        if round % 97 == 0 {
            // Resynchronise the ring after the garbage index.
            let mut q = gq.queue();
            let idx = gq.avail_idx();
            q.set_next_avail(idx);
            q.set_next_used(gq.used_idx());
            blk.reset();
            blk.activate(mem.clone(), vec![q]).unwrap();
        }
    }
    assert!(
        completed > 1000,
        "the fuzzer must actually complete chains ({completed})"
    );
    assert_eq!(std::fs::metadata(file.path()).unwrap().len(), SECTORS * 512);
}
