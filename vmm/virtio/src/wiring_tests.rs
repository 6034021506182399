//! The whole host-side path the VMM wires up, without KVM: driver register
//! writes through `MmioTransport`, the device as an `event_manager`
//! subscriber, QueueNotify reaching the queue EventFd, requests processed
//! on the event loop, the used ring and the interrupt EventFd updated.

use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::{Block, BlockConfig};
use crate::rng::Rng;
use crate::test_utils::{GuestQueue, WRITE};
use crate::transport::mmio::status::*;
use crate::{MmioTransport, VirtioDevice, NOTIFY_REG_OFFSET};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

/// Brings the device up as Linux's virtio_mmio driver does.
fn bring_up(t: &mut MmioTransport, gq: &GuestQueue, size: u32) {
    w(t, 0x70, 0);
    w(t, 0x70, ACKNOWLEDGE);
    w(t, 0x70, ACKNOWLEDGE | DRIVER);
    w(t, 0x14, 1);
    let high = r(t, 0x10);
    w(t, 0x14, 0);
    let low = r(t, 0x10);
    w(t, 0x24, 1);
    w(t, 0x20, high);
    w(t, 0x24, 0);
    w(t, 0x20, low);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_ne!(r(t, 0x70) & FEATURES_OK, 0);
    w(t, 0x30, 0);
    assert!(r(t, 0x34) >= size);
    w(t, 0x38, size);
    w(t, 0x80, gq.desc_addr().0 as u32);
    w(t, 0x84, 0);
    w(t, 0x90, gq.avail_addr().0 as u32);
    w(t, 0x94, 0);
    w(t, 0xa0, gq.used_addr().0 as u32);
    w(t, 0xa4, 0);
    w(t, 0x44, 1);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r(t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

fn run_until_idle(em: &mut EventManager<Subscriber>) {
    // Each call handles what is ready; stop once nothing is.
    while em.run_with_timeout(50).unwrap() > 0 {}
}

#[test]
fn block_request_through_transport_and_event_loop() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![0x3c; 4096]).unwrap();
    let blk = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            id: "scratch".into(),
            path: file.path().to_path_buf(),
            read_only: false,
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), blk.clone());
    let mut em = EventManager::<Subscriber>::new().unwrap();
    let sub: Subscriber = blk.clone();
    em.add_subscriber(sub);
    let irq = blk.lock().unwrap().interrupt_evt().try_clone().unwrap();

    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 128);
    bring_up(&mut t, &gq, 128);
    run_until_idle(&mut em); // the activate event: queue EventFd now watched

    for round in 0..2u16 {
        let base = gq.used_idx();
        // A GET_ID request, notified through the transport (the path taken
        // when no ioeventfd is registered).
        let mut hdr = [0u8; 16];
        hdr[0] = 8;
        mem.write_slice(&hdr, GuestAddress(0x8000)).unwrap();
        gq.add_chain(&[(0x8000, 16, 0), (0x9000, 20, WRITE), (0xa000, 1, WRITE)]);
        // A read of sector 1.
        let mut hdr = [0u8; 16];
        hdr[8] = 1;
        mem.write_slice(&hdr, GuestAddress(0x8100)).unwrap();
        gq.add_chain(&[(0x8100, 16, 0), (0xb000, 512, WRITE), (0xa001, 1, WRITE)]);
        w(&mut t, NOTIFY_REG_OFFSET, 0);
        run_until_idle(&mut em);

        assert_eq!(gq.used_idx(), base + 2);
        assert_eq!(gq.used_elem(base).1, 21);
        assert_eq!(gq.used_elem(base + 1).1, 513);
        let mut serial = [0u8; 20];
        mem.read_slice(&mut serial, GuestAddress(0x9000)).unwrap();
        assert_eq!(&serial[..7], b"scratch");
        let status: [u8; 2] = mem.read_obj(GuestAddress(0xa000)).unwrap();
        assert_eq!(status, [0, 0]);
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(0xb000)).unwrap();
        assert_eq!(data, [0x3c; 512]);
        assert!(irq.read().unwrap() >= 1, "the guest was interrupted");
        assert_eq!(r(&mut t, 0x60), 1, "InterruptStatus: used buffer");
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);

        if round == 0 {
            // Reset and bring up again: the event registration must survive
            // (no double registration, no lost notifications).
            w(&mut t, 0x70, 0);
            run_until_idle(&mut em);
            assert!(!blk.lock().unwrap().is_activated());
            // A notification to the reset device is ignored.
            w(&mut t, NOTIFY_REG_OFFSET, 0);
            run_until_idle(&mut em);
            let gq2 = GuestQueue::new(&mem, GuestAddress(0x1000), 128);
            bring_up(&mut t, &gq2, 128);
            run_until_idle(&mut em);
        }
    }
}

#[test]
fn rng_request_through_ioeventfd_path() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let mut t = MmioTransport::new(mem.clone(), rng.clone());
    let mut em = EventManager::<Subscriber>::new().unwrap();
    let sub: Subscriber = rng.clone();
    em.add_subscriber(sub);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 64);
    bring_up(&mut t, &gq, 64);
    run_until_idle(&mut em);
    gq.add_chain(&[(0x8000, 256, WRITE)]);
    // What KVM does for a registered ioeventfd: signal the EventFd
    // directly, the transport never sees the write.
    rng.lock().unwrap().queue_events()[0].write(1).unwrap();
    run_until_idle(&mut em);
    assert_eq!(gq.used_idx(), 1);
    assert_eq!(gq.used_elem(0), (0, 256));
    assert!(rng.lock().unwrap().interrupt_evt().read().is_ok());
}
