//! The MMIO register state machine, driven as a guest driver would, against
//! the real virtio-rng and virtio-blk devices.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::block::{Block, BlockConfig};
use crate::rng::Rng;
use crate::test_utils::{GuestQueue, XorShift};
use crate::{TYPE_BLOCK, TYPE_RNG};

const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn rng_transport(mem: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Rng>>) {
    let dev = Arc::new(Mutex::new(Rng::new().unwrap()));
    (MmioTransport::new(mem.clone(), dev.clone()), dev)
}

fn block_transport(
    mem: &GuestMemoryMmap,
) -> (MmioTransport, Arc<Mutex<Block>>, tempfile::NamedTempFile) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0u8; 8 * 512]).unwrap();
    let dev = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            id: "rootfs".into(),
            path: f.path().to_path_buf(),
            read_only: true,
        })
        .unwrap(),
    ));
    (MmioTransport::new(mem.clone(), dev.clone()), dev, f)
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0xffu8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn write_features(t: &mut MmioTransport, features: u64) {
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    w(t, REG_STATUS, ACKNOWLEDGE);
    w(t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    write_features(t, features);
    w(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    r(t, REG_STATUS)
}

fn setup_queue(t: &mut MmioTransport, index: u32, gq: &GuestQueue, size: u32) {
    w(t, REG_QUEUE_SEL, index);
    assert_eq!(r(t, REG_QUEUE_READY), 0);
    w(t, REG_QUEUE_NUM, size);
    let (d, a, u) = (gq.desc_addr().0, gq.avail_addr().0, gq.used_addr().0);
    w(t, REG_QUEUE_DESC_LOW, d as u32);
    w(t, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
    w(t, REG_QUEUE_DRIVER_LOW, a as u32);
    w(t, REG_QUEUE_DRIVER_HIGH, (a >> 32) as u32);
    w(t, REG_QUEUE_DEVICE_LOW, u as u32);
    w(t, REG_QUEUE_DEVICE_HIGH, (u >> 32) as u32);
    w(t, REG_QUEUE_READY, 1);
}

const FULL: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

#[test]
fn identification_registers() {
    let mem = mem();
    let (mut t, _dev) = rng_transport(&mem);
    assert_eq!(r(&mut t, REG_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), TYPE_RNG);
    assert_eq!(r(&mut t, REG_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 0);
    assert_eq!(
        r(&mut t, REG_SHM_LEN_LOW),
        u32::MAX,
        "no shared memory regions"
    );
    assert_eq!(r(&mut t, REG_SHM_LEN_HIGH), u32::MAX);
    let (mut t, _dev, _f) = block_transport(&mem);
    assert_eq!(r(&mut t, REG_DEVICE_ID), TYPE_BLOCK);
}

#[test]
fn device_features_are_paged_by_select() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    let offered = dev.lock().unwrap().avail_features();
    assert_ne!(offered & VERSION_1, 0);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), offered as u32);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), (offered >> 32) as u32);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    w(&mut t, REG_DEVICE_FEATURES_SEL, u32::MAX);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
}

#[test]
fn status_happy_path_activates_with_valid_queue() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    assert_eq!(
        negotiate(&mut t, VERSION_1 | EVENT_IDX),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    assert_eq!(dev.lock().unwrap().acked_features(), VERSION_1 | EVENT_IDX);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 64);
    setup_queue(&mut t, 0, &gq, 64);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    assert!(!dev.lock().unwrap().is_activated(), "not before DRIVER_OK");
    w(&mut t, REG_STATUS, FULL);
    assert_eq!(r(&mut t, REG_STATUS), FULL);
    let d = dev.lock().unwrap();
    assert!(d.is_activated());
    let q = &d.common.active().unwrap().queues[0];
    assert!(q.ready());
    assert_eq!(q.size(), 64);
    assert_eq!(q.desc_table(), 0x1000);
    assert!(
        q.event_idx_enabled(),
        "EVENT_IDX acked, so the queue uses it"
    );
}

#[test]
fn out_of_order_status_transitions_are_ignored() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    // Skipping ACKNOWLEDGE.
    w(&mut t, REG_STATUS, DRIVER);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    // Two steps at once.
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    // FEATURES_OK before DRIVER.
    w(&mut t, REG_STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    write_features(&mut t, VERSION_1);
    // DRIVER_OK before FEATURES_OK.
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    assert!(!dev.lock().unwrap().is_activated());
    // Clearing a bit without a reset.
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // Rewriting the same value is harmless.
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // The device-owned NEEDS_RESET bit cannot be set by the driver.
    w(
        &mut t,
        REG_STATUS,
        ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET,
    );
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
}

#[test]
fn features_ok_refused_for_unoffered_or_legacy_features() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    let offered = dev.lock().unwrap().avail_features();
    // A feature the device does not offer (VIRTIO_F_ACCESS_PLATFORM, 33).
    assert_eq!(offered & (1 << 33), 0);
    assert_eq!(
        negotiate(&mut t, VERSION_1 | (1 << 33)),
        ACKNOWLEDGE | DRIVER
    );
    assert_eq!(dev.lock().unwrap().acked_features(), 0);

    // A legacy driver (no VERSION_1).
    w(&mut t, REG_STATUS, 0);
    assert_eq!(negotiate(&mut t, EVENT_IDX), ACKNOWLEDGE | DRIVER);

    // A feature word past bit 63.
    w(&mut t, REG_STATUS, 0);
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    write_features(&mut t, VERSION_1);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 2);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);

    // After a reset the same device negotiates fine.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(
        negotiate(&mut t, VERSION_1),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    assert_eq!(dev.lock().unwrap().acked_features(), VERSION_1);
}

#[test]
fn driver_features_only_writable_during_negotiation() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    // Before DRIVER: ignored, so FEATURES_OK later fails for lack of VERSION_1.
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    write_features(&mut t, VERSION_1);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // Proper negotiation, then a late change is ignored.
    write_features(&mut t, VERSION_1);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write_features(&mut t, VERSION_1 | EVENT_IDX);
    assert_eq!(dev.lock().unwrap().acked_features(), VERSION_1);
}

#[test]
fn queue_registers_gated_and_sized() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    // Before FEATURES_OK, queue writes are ignored.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    negotiate(&mut t, VERSION_1);
    assert_eq!(
        r(&mut t, REG_QUEUE_NUM_MAX),
        u32::from(crate::rng::QUEUE_SIZE)
    );
    // Only one queue: others report max 0 (absent) and ignore writes.
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    w(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    w(&mut t, REG_QUEUE_SEL, u32::MAX);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);

    w(&mut t, REG_QUEUE_SEL, 0);
    // Invalid sizes keep the previous one (max by default).
    for bad in [0u32, 3, 512, 1 << 16, u32::MAX] {
        w(&mut t, REG_QUEUE_NUM, bad);
        assert_eq!(t.queues[0].size(), crate::rng::QUEUE_SIZE, "size {bad}");
    }
    w(&mut t, REG_QUEUE_NUM, 16);
    assert_eq!(t.queues[0].size(), 16);
    let gq = GuestQueue::new(&mem, GuestAddress(0x4000), 16);
    setup_queue(&mut t, 0, &gq, 16);
    // A ready queue cannot be changed.
    w(&mut t, REG_QUEUE_NUM, 8);
    w(&mut t, REG_QUEUE_DESC_LOW, 0x8000);
    assert_eq!(t.queues[0].size(), 16);
    assert_eq!(t.queues[0].desc_table(), 0x4000);
    // Misaligned ring addresses are refused by virtio-queue.
    w(&mut t, REG_QUEUE_READY, 0);
    w(&mut t, REG_QUEUE_DESC_LOW, 0x4001);
    assert_eq!(t.queues[0].desc_table(), 0x4000);
    w(&mut t, REG_QUEUE_READY, 1);
    w(&mut t, REG_STATUS, FULL);
    assert!(dev.lock().unwrap().is_activated());
    // After DRIVER_OK the queue configuration is frozen.
    w(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
}

#[test]
fn driver_ok_refused_when_a_ready_queue_is_outside_memory() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    negotiate(&mut t, VERSION_1);
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_NUM, 256);
    // Descriptor table straddles the end of the 1 MiB of guest memory.
    w(&mut t, REG_QUEUE_DESC_LOW, 0x10_0000 - 0x800);
    w(&mut t, REG_QUEUE_DRIVER_LOW, 0x2000);
    w(&mut t, REG_QUEUE_DEVICE_LOW, 0x3000);
    w(&mut t, REG_QUEUE_READY, 1);
    w(&mut t, REG_STATUS, FULL);
    let status = r(&mut t, REG_STATUS);
    assert_eq!(status & DRIVER_OK, 0);
    assert_ne!(status & DEVICE_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().is_activated());
    // Nothing but a reset (or FAILED) is accepted now.
    w(&mut t, REG_STATUS, status | DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), status);
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);

    // A high address word out of memory is caught too.
    negotiate(&mut t, VERSION_1);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 256);
    setup_queue(&mut t, 0, &gq, 256);
    w(&mut t, REG_QUEUE_READY, 0);
    w(&mut t, REG_QUEUE_DEVICE_HIGH, 1);
    w(&mut t, REG_QUEUE_READY, 1);
    w(&mut t, REG_STATUS, FULL);
    assert_ne!(r(&mut t, REG_STATUS) & DEVICE_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn driver_ok_without_ready_queues_activates_an_idle_device() {
    // The spec lets a driver leave queues unused; the device must simply
    // never touch them.
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    negotiate(&mut t, VERSION_1);
    w(&mut t, REG_STATUS, FULL);
    assert_eq!(r(&mut t, REG_STATUS), FULL);
    let mut d = dev.lock().unwrap();
    assert!(d.is_activated());
    assert_eq!(d.process_queue(0), crate::queue::DrainOutcome::default());
}

#[test]
fn failed_sticks_until_reset() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | FAILED);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | FAILED);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | FAILED);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(r(&mut t, REG_STATUS), ACKNOWLEDGE | FAILED);
    // Config space is closed to a failed driver.
    let mut d = [0xffu8; 4];
    t.read(CONFIG_SPACE_OFFSET, &mut d);
    assert_eq!(d, [0; 4]);
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(
        negotiate(&mut t, VERSION_1),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn reset_returns_everything_to_power_on_state() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    negotiate(&mut t, VERSION_1 | EVENT_IDX);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 32);
    setup_queue(&mut t, 0, &gq, 32);
    w(&mut t, REG_STATUS, FULL);
    assert!(dev.lock().unwrap().is_activated());
    dev.lock()
        .unwrap()
        .common
        .interrupt()
        .signal_used_queue()
        .unwrap();
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 1);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    w(&mut t, REG_QUEUE_SEL, 5);

    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(dev.lock().unwrap().acked_features(), 0);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(t.device_features_select, 0);
    assert_eq!(t.queue_select, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 256);
    assert_eq!(t.queues[0].size(), 256);
    assert_eq!(t.queues[0].desc_table(), 0);
    assert_eq!(t.driver_features, 0);

    // And the device can be brought up again.
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, &gq, 32);
    w(&mut t, REG_STATUS, FULL);
    assert_eq!(r(&mut t, REG_STATUS), FULL);
    assert!(dev.lock().unwrap().is_activated());
}

#[test]
fn interrupt_ack_clears_only_the_acked_bits() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    {
        let d = dev.lock().unwrap();
        d.common.interrupt().signal_used_queue().unwrap();
        d.common.interrupt().signal_config_change().unwrap();
    }
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 3);
    w(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 2);
    w(&mut t, REG_INTERRUPT_ACK, 2);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn queue_notify_reaches_the_queue_eventfd_only_when_active() {
    let mem = mem();
    let (mut t, dev) = rng_transport(&mem);
    w(&mut t, REG_QUEUE_NOTIFY, 0);
    assert!(
        dev.lock().unwrap().queue_events()[0].read().is_err(),
        "inactive: dropped"
    );
    negotiate(&mut t, VERSION_1);
    let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 32);
    setup_queue(&mut t, 0, &gq, 32);
    w(&mut t, REG_STATUS, FULL);
    w(&mut t, NOTIFY_REG_OFFSET, 0);
    assert_eq!(dev.lock().unwrap().queue_events()[0].read().unwrap(), 1);
    // Nonexistent queue: ignored.
    w(&mut t, NOTIFY_REG_OFFSET, 7);
    assert!(dev.lock().unwrap().queue_events()[0].read().is_err());
}

#[test]
fn bad_widths_alignments_and_offsets_read_zero_and_write_nothing() {
    let mem = mem();
    let (mut t, _dev) = rng_transport(&mem);
    for len in [1usize, 2, 3, 8] {
        let mut d = vec![0xffu8; len];
        t.read(REG_MAGIC_VALUE, &mut d);
        assert!(d.iter().all(|&b| b == 0), "len {len}");
    }
    for offset in [0x1u64, 0x2, 0x3, 0x18, 0x28, 0x40, 0xfc + 1, 0xc0, 0xf8] {
        assert_eq!(r(&mut t, offset), 0, "offset {offset:#x}");
    }
    // Write-only registers read as 0.
    for offset in [
        REG_QUEUE_NOTIFY,
        REG_INTERRUPT_ACK,
        REG_QUEUE_DESC_LOW,
        REG_QUEUE_SEL,
    ] {
        assert_eq!(r(&mut t, offset), 0, "offset {offset:#x}");
    }
    // Past the window.
    for offset in [0x1000u64, 0x1004, u64::MAX - 3, u64::MAX] {
        assert_eq!(r(&mut t, offset), 0);
        w(&mut t, offset, 1);
    }
    // A 1-byte status write is ignored.
    t.write(REG_STATUS, &[ACKNOWLEDGE as u8]);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    // An unaligned 4-byte status write is ignored.
    t.write(REG_STATUS + 1, &ACKNOWLEDGE.to_le_bytes());
    assert_eq!(r(&mut t, REG_STATUS), 0);
    // Writes to read-only registers change nothing.
    w(&mut t, REG_MAGIC_VALUE, 0);
    w(&mut t, REG_INTERRUPT_STATUS, 0xff);
    assert_eq!(r(&mut t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    // Empty accesses.
    t.read(REG_STATUS, &mut []);
    t.write(REG_STATUS, &[]);
    t.read(CONFIG_SPACE_OFFSET, &mut []);
}

#[test]
fn config_space_reads_through_to_the_device() {
    let mem = mem();
    let (mut t, _dev, _f) = block_transport(&mem);
    // Before DRIVER: closed.
    let mut d = [0xffu8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut d);
    assert_eq!(d, [0; 8]);
    w(&mut t, REG_STATUS, ACKNOWLEDGE);
    w(&mut t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    // Capacity: 8 sectors, as 8-, 4-, 2- and 1-byte reads.
    t.read(CONFIG_SPACE_OFFSET, &mut d);
    assert_eq!(u64::from_le_bytes(d), 8);
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET), 8);
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET + 4), 0);
    let mut two = [0xffu8; 2];
    t.read(CONFIG_SPACE_OFFSET, &mut two);
    assert_eq!(two, [8, 0]);
    let mut one = [0xffu8; 1];
    t.read(CONFIG_SPACE_OFFSET, &mut one);
    assert_eq!(one, [8]);
    // blk_size at 20, seg_max at 12.
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET + 20), 512);
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET + 12), 254);
    // Past the device's config: zeros.
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET + 0x200), 0);
    // Odd sizes, and accesses crossing the end of the window, are ignored.
    let mut three = [0xffu8; 3];
    t.read(CONFIG_SPACE_OFFSET, &mut three);
    assert_eq!(three, [0; 3]);
    let mut d = [0xffu8; 4];
    t.read(MMIO_WINDOW_SIZE - 2, &mut d);
    assert_eq!(d, [0; 4]);
    // Writes to the read-only config are ignored.
    w(&mut t, CONFIG_SPACE_OFFSET, 0xdead);
    assert_eq!(r(&mut t, CONFIG_SPACE_OFFSET), 8);
}

#[test]
fn random_register_traffic_never_panics() {
    let mem = mem();
    let (mut t, dev, _f) = block_transport(&mem);
    let interesting = [
        REG_STATUS,
        REG_QUEUE_SEL,
        REG_QUEUE_NUM,
        REG_QUEUE_READY,
        REG_QUEUE_NOTIFY,
        REG_QUEUE_DESC_LOW,
        REG_QUEUE_DESC_HIGH,
        REG_QUEUE_DRIVER_LOW,
        REG_QUEUE_DRIVER_HIGH,
        REG_QUEUE_DEVICE_LOW,
        REG_QUEUE_DEVICE_HIGH,
        REG_DRIVER_FEATURES,
        REG_DRIVER_FEATURES_SEL,
        REG_DEVICE_FEATURES_SEL,
        REG_INTERRUPT_ACK,
    ];
    let mut rng = XorShift::new(0x5eed);
    for _ in 0..50_000 {
        let offset = if rng.below(4) == 0 {
            rng.below(0x1100)
        } else {
            interesting[rng.below(interesting.len() as u64) as usize]
        };
        let len = [1usize, 2, 4, 4, 4, 8][rng.below(6) as usize];
        if rng.below(2) == 0 {
            let mut d = vec![0u8; len];
            t.read(offset, &mut d);
        } else {
            // Status values biased towards valid ones so the machine moves.
            let v = if offset == REG_STATUS && rng.below(2) == 0 {
                [0, 1, 3, 11, 15, 128][rng.below(6) as usize]
            } else if rng.below(2) == 0 {
                rng.below(512) as u32
            } else {
                rng.next_u64() as u32
            };
            let bytes = u64::from(v).to_le_bytes();
            t.write(offset, &bytes[..len]);
        }
        // Invariant: the device is active exactly when DRIVER_OK is shown.
        let active = dev.lock().unwrap().is_activated();
        assert_eq!(active, t.device_status() & DRIVER_OK != 0);
    }
}

/// An rng transport driven to DRIVER_OK with its queue at 0x1000 (size
/// 64), and its saved state.
fn active_rng_state(mem: &GuestMemoryMmap) -> MmioState {
    let (mut t, dev) = rng_transport(mem);
    negotiate(&mut t, VERSION_1 | EVENT_IDX);
    let gq = GuestQueue::new(mem, GuestAddress(0x1000), 64);
    setup_queue(&mut t, 0, &gq, 64);
    w(&mut t, REG_STATUS, FULL);
    assert!(dev.lock().unwrap().is_activated());
    t.save()
}

#[test]
fn a_saved_transport_restores_into_a_fresh_one() {
    let mem = mem();
    let s = active_rng_state(&mem);
    let (mut t, dev) = rng_transport(&mem);
    t.restore(&s).unwrap();
    assert_eq!(r(&mut t, REG_STATUS), FULL);
    assert_eq!(t.save(), s);
    let d = dev.lock().unwrap();
    assert!(d.is_activated(), "DRIVER_OK in the state activates");
    assert_eq!(d.acked_features(), VERSION_1 | EVENT_IDX);
    let q = &d.common.active().unwrap().queues[0];
    assert_eq!((q.size(), q.desc_table()), (64, 0x1000));
    assert!(q.event_idx_enabled());
}

/// Every way a (checksummed, decodable) state can be wrong is refused
/// with an error naming it; the fresh device stays inactive.
#[test]
fn a_hostile_transport_state_is_refused_by_name() {
    let mem = mem();
    let good = active_rng_state(&mem);
    let refuse = |s: &MmioState, want: &str| {
        let (mut t, dev) = rng_transport(&mem);
        let err = t.restore(s).unwrap_err().to_string();
        assert!(err.contains(want), "{want:?} not in {err:?}");
        assert!(!dev.lock().unwrap().is_activated(), "{err}");
        assert_eq!(r(&mut t, REG_STATUS), 0, "{err}");
    };
    let mut s = good.clone();
    s.device_type = TYPE_BLOCK;
    refuse(&s, "device of type 2 where this VM has type 4");
    let mut s = good.clone();
    s.queues.push(s.queues[0].clone());
    refuse(&s, "has 2 queues; the device has 1");
    let mut s = good.clone();
    s.queues.clear();
    refuse(&s, "has 0 queues");
    let mut s = good.clone();
    s.driver_features |= 1 << 60;
    refuse(&s, "are not all offered");
    let mut s = good.clone();
    s.queues[0].size = 1024;
    refuse(&s, "size 1024 above the maximum");
    for bad in [0u16, 3, 48] {
        let mut s = good.clone();
        s.queues[0].size = bad;
        refuse(&s, &format!("size {bad}:"));
    }
    let mut s = good.clone();
    s.queues[0].desc_table = 0x1001;
    refuse(&s, "descriptor table at 0x1001");
    let mut s = good.clone();
    s.queues[0].avail_ring = 0x2001;
    refuse(&s, "available ring at 0x2001");
    let mut s = good.clone();
    s.queues[0].used_ring = 0x3002;
    refuse(&s, "used ring at 0x3002");
    // Aligned but outside the 1 MiB of guest memory, low and high words.
    let mut s = good.clone();
    s.queues[0].desc_table = 0x10_0000 - 0x100;
    refuse(&s, "do not fit guest memory");
    let mut s = good.clone();
    s.queues[0].used_ring |= 1 << 40;
    refuse(&s, "do not fit guest memory");
}

/// Random bytes in every field never panic the restore.
#[test]
fn random_transport_states_never_panic() {
    let mem = mem();
    let good = active_rng_state(&mem);
    let mut rng = XorShift::new(0x5eed);
    for _ in 0..2000 {
        let mut s = good.clone();
        let v = rng.next_u64();
        match v % 8 {
            0 => s.device_status = (v >> 8) as u32,
            1 => s.driver_features = rng.next_u64(),
            2 => s.queues[0].size = (v >> 8) as u16,
            3 => s.queues[0].desc_table = rng.next_u64() & 0x1f_ffff,
            4 => s.queues[0].avail_ring = rng.next_u64() & 0x1f_ffff,
            5 => s.queues[0].used_ring = rng.next_u64() & 0x1f_ffff,
            6 => {
                s.queues[0].next_avail = (v >> 8) as u16;
                s.queues[0].next_used = (v >> 24) as u16;
            }
            _ => s.interrupt_status = (v >> 8) as u32,
        }
        let (mut t, _dev) = rng_transport(&mem);
        let _ = t.restore(&s);
    }
}
