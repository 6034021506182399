//! virtio-rng against real guest memory and the host's getrandom.

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_utils::{GuestQueue, NEXT, WRITE};

const MEM_END: u64 = 0x40_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

fn run(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> Result<u32, RngRequestError> {
    let gq = GuestQueue::new(mem, GuestAddress(0x1000), 16);
    let mut q: Queue = gq.queue();
    gq.add_chain(descs);
    let chain = q.iter(mem).unwrap().next().unwrap();
    fill_chain(chain, &mut Vec::new())
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// 4 KiB of getrandom output are all-zero (or equal to another 4 KiB) with
/// probability 2^-32768: a failure means the bytes were not written.
fn looks_random(bytes: &[u8]) -> bool {
    let zeros = bytes.iter().filter(|&&b| b == 0).count();
    // Expected len/256 zeros; allow a wide margin.
    zeros < bytes.len() / 16 + 8
}

#[test]
fn returns_the_requested_number_of_random_bytes() {
    let mem = mem();
    assert_eq!(run(&mem, &[(0x10000, 4096, WRITE)]).unwrap(), 4096);
    let first = read(&mem, 0x10000, 4096);
    assert!(looks_random(&first));
    assert_eq!(run(&mem, &[(0x10000, 4096, WRITE)]).unwrap(), 4096);
    assert_ne!(
        read(&mem, 0x10000, 4096),
        first,
        "two requests give different bytes"
    );

    // Several buffers, each filled completely.
    let n = run(
        &mem,
        &[
            (0x20000, 100, WRITE),
            (0x30000, 300, WRITE),
            (0x40000, 1, WRITE),
        ],
    )
    .unwrap();
    assert_eq!(n, 401);
    assert!(looks_random(&read(&mem, 0x20000, 100)));
    assert!(looks_random(&read(&mem, 0x30000, 300)));

    // A request of one byte.
    assert_eq!(run(&mem, &[(0x50000, 1, WRITE)]).unwrap(), 1);
}

#[test]
fn requests_are_bounded_to_64_kib() {
    let mem = mem();
    let big = 256 * 1024u32;
    mem.write_slice(&vec![0xa5; big as usize], GuestAddress(0x10_0000))
        .unwrap();
    let n = run(&mem, &[(0x10_0000, big, WRITE)]).unwrap();
    assert_eq!(n as usize, MAX_REQUEST_BYTES);
    assert!(looks_random(&read(&mem, 0x10_0000, MAX_REQUEST_BYTES)));
    assert!(
        read(
            &mem,
            0x10_0000 + MAX_REQUEST_BYTES as u64,
            (big as usize) - MAX_REQUEST_BYTES
        )
        .iter()
        .all(|&b| b == 0xa5),
        "nothing written past the bound"
    );
    // The bound spans buffers too.
    let n = run(
        &mem,
        &[(0x10_0000, 60 * 1024, WRITE), (0x20_0000, 60 * 1024, WRITE)],
    )
    .unwrap();
    assert_eq!(n as usize, MAX_REQUEST_BYTES);
}

#[test]
fn hostile_chains_are_dropped() {
    let mem = mem();
    // A device-readable buffer.
    assert!(matches!(
        run(&mem, &[(0x10000, 64, WRITE), (0x20000, 64, 0)]),
        Err(RngRequestError::ReadOnlyDescriptor(1))
    ));
    // Outside memory, straddling the end, address overflow.
    for (addr, len) in [(MEM_END, 16u32), (MEM_END - 8, 16), (u64::MAX - 4, 16)] {
        assert!(matches!(
            run(&mem, &[(addr, len, WRITE)]),
            Err(RngRequestError::OutOfMemory { .. })
        ));
    }
    // A loop.
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
    let mut q: Queue = gq.queue();
    gq.write_desc(0, 0x10000, 16, WRITE | NEXT, 1);
    gq.write_desc(1, 0x10000, 16, WRITE | NEXT, 0);
    gq.push_avail(0);
    let chain = q.iter(&mem).unwrap().next().unwrap();
    assert!(matches!(
        fill_chain(chain, &mut Vec::new()),
        Err(RngRequestError::Truncated)
    ));
}

#[test]
fn device_completes_requests_and_interrupts() {
    use crate::VirtioDevice;
    let mem = mem();
    let mut rng = Rng::new().unwrap();
    assert_eq!(rng.device_type(), crate::TYPE_RNG);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 16);
    rng.activate(mem.clone(), vec![gq.queue()]).unwrap();
    gq.add_chain(&[(0x10000, 32, WRITE)]);
    gq.add_chain(&[(0x20000, 16, 0)]);
    gq.add_chain(&[(0x30000, 64, WRITE)]);
    let out = rng.process_queue(0);
    assert_eq!(out.completed, 3);
    assert!(out.interrupted);
    assert_eq!(gq.used_idx(), 3);
    assert_eq!(gq.used_elem(0), (0, 32));
    assert_eq!(
        gq.used_elem(1),
        (1, 0),
        "read-only buffer: completed with length 0"
    );
    assert_eq!(gq.used_elem(2), (2, 64));
    assert_eq!(rng.interrupt_evt().read().unwrap(), 1);
    assert_eq!(
        rng.interrupt_status()
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
