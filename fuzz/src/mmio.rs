//! A hostile guest driving one virtio device through its MMIO window.
//!
//! The device is wired as the VMM wires it ([`mvm_virtio::MmioTransport`]
//! for register accesses, the device as an `event_manager` subscriber for
//! queue processing), over real guest memory; only KVM is left out: a
//! `QueueNotify` write reaches the queue's EventFd through the transport,
//! the path the device code takes when no ioeventfd is registered.

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use mvm_virtio::{MmioTransport, VirtioDevice, NOTIFY_REG_OFFSET};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size: small, so that random addresses often land inside.
pub const MEM_SIZE: u64 = 0x1_0000;

/// Register offsets (virtio 1.2, 4.2.2).
const STATUS: u64 = 0x70;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_AVAIL_HIGH: u64 = 0x94;
const QUEUE_USED_LOW: u64 = 0xa0;
const QUEUE_USED_HIGH: u64 = 0xa4;
const INTERRUPT_ACK: u64 = 0x64;

/// Device status bits.
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// Event-loop turns per `Run`: a device that keeps waking itself must not
/// stall the fuzzer.
const MAX_TURNS: usize = 32;

/// A guest-physical address: mostly inside guest memory (the low 16 bits),
/// anywhere at all when the top bit is set.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Addr(u64);

impl Addr {
    fn get(self) -> u64 {
        if self.0 & (1 << 63) != 0 {
            self.0 & !(1 << 63)
        } else {
            self.0 % MEM_SIZE
        }
    }
}

/// One queue as a driver sets it up.
#[derive(Arbitrary, Debug)]
pub struct QueueSetup {
    /// Entries (the device refuses sizes it does not support).
    pub size: u16,
    /// Descriptor table.
    pub desc: Addr,
    /// Driver (available) ring.
    pub avail: Addr,
    /// Device (used) ring.
    pub used: Addr,
}

/// One thing the guest (or, for `Host`, the outside world) does.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Linux's bring-up sequence with these features and queues, so that
    /// inputs reach the device's queue code quickly.
    BringUp {
        /// Features the driver accepts (before the device's mask).
        features: u64,
        /// Queue layouts, by index.
        queues: Vec<QueueSetup>,
    },
    /// Any access to any register (width from the data's length).
    Write {
        /// Offset in the 4 KiB window.
        offset: u16,
        /// 1 to 8 bytes.
        data: Vec<u8>,
    },
    /// A read of any register.
    Read {
        /// Offset in the 4 KiB window.
        offset: u16,
        /// Width.
        len: u8,
    },
    /// Bytes written into guest memory (rings, descriptors, buffers).
    Poke {
        /// Where.
        at: u16,
        /// What.
        bytes: Vec<u8>,
    },
    /// A chain of descriptors written at the table's start and made
    /// available, so that well-formed requests are likely too.
    Chain {
        /// The queue's layout.
        queue: u8,
        /// (address, length, flags) per descriptor.
        descs: Vec<(Addr, u32, u16)>,
    },
    /// A `QueueNotify` write.
    Notify(u16),
    /// The event loop runs until idle.
    Run,
    /// Whatever the device's host side can receive (a frame from the TAP,
    /// a connection from a host client...).
    Host(Vec<u8>),
    /// Acknowledge interrupts.
    Ack(u32),
    /// Device reset.
    Reset,
}

/// What the outside world can do to the device under test.
pub trait HostSide {
    /// Deliver `data` to the device's host side.
    fn host(&mut self, data: &[u8]);
}

/// No host side (block, rng).
pub struct NoHost;

impl HostSide for NoHost {
    fn host(&mut self, _data: &[u8]) {}
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Runs `ops` against `device`. Panics only if the device code does.
pub fn drive<D, H>(device: D, host: &mut H, ops: &[Op])
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
    H: HostSide,
{
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let dev = Arc::new(Mutex::new(device));
    let mut transport = MmioTransport::new(mem.clone(), dev.clone());
    let mut em = EventManager::<Subscriber>::new().unwrap();
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    // Where the last BringUp put each queue, for `Chain`.
    let mut layouts: Vec<(u64, u64, u16)> = Vec::new();

    for op in ops {
        match op {
            Op::BringUp { features, queues } => {
                layouts.clear();
                w(&mut transport, STATUS, 0);
                w(&mut transport, STATUS, ACKNOWLEDGE);
                w(&mut transport, STATUS, ACKNOWLEDGE | DRIVER);
                w(&mut transport, DRIVER_FEATURES_SEL, 0);
                w(&mut transport, DRIVER_FEATURES, *features as u32);
                w(&mut transport, DRIVER_FEATURES_SEL, 1);
                w(&mut transport, DRIVER_FEATURES, (*features >> 32) as u32);
                w(&mut transport, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
                for (i, q) in queues.iter().take(8).enumerate() {
                    w(&mut transport, QUEUE_SEL, i as u32);
                    w(&mut transport, QUEUE_NUM, u32::from(q.size));
                    let (d, a, u) = (q.desc.get(), q.avail.get(), q.used.get());
                    w(&mut transport, QUEUE_DESC_LOW, d as u32);
                    w(&mut transport, QUEUE_DESC_HIGH, (d >> 32) as u32);
                    w(&mut transport, QUEUE_AVAIL_LOW, a as u32);
                    w(&mut transport, QUEUE_AVAIL_HIGH, (a >> 32) as u32);
                    w(&mut transport, QUEUE_USED_LOW, u as u32);
                    w(&mut transport, QUEUE_USED_HIGH, (u >> 32) as u32);
                    w(&mut transport, QUEUE_READY, 1);
                    layouts.push((d, a, q.size));
                }
                w(
                    &mut transport,
                    STATUS,
                    ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
                );
                run(&mut em);
            }
            Op::Write { offset, data } => {
                let len = data.len().clamp(1, 8);
                let mut buf = [0u8; 8];
                buf[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
                transport.write(u64::from(*offset) % 0x1000, &buf[..len]);
            }
            Op::Read { offset, len } => {
                let mut buf = [0u8; 8];
                let len = usize::from(*len).clamp(1, 8);
                transport.read(u64::from(*offset) % 0x1000, &mut buf[..len]);
            }
            Op::Poke { at, bytes } => {
                let at = u64::from(*at);
                let n = bytes.len().min((MEM_SIZE - at) as usize);
                let _ = mem.write_slice(&bytes[..n], GuestAddress(at));
            }
            Op::Chain { queue, descs } => {
                let Some(&(desc, avail, size)) = layouts.get(usize::from(*queue)) else {
                    continue;
                };
                write_chain(&mem, desc, avail, size, descs);
            }
            Op::Notify(q) => {
                transport.write(NOTIFY_REG_OFFSET, &u32::from(*q).to_le_bytes());
                run(&mut em);
            }
            Op::Run => run(&mut em),
            Op::Host(data) => {
                host.host(data);
                run(&mut em);
            }
            Op::Ack(bits) => w(&mut transport, INTERRUPT_ACK, *bits),
            Op::Reset => {
                w(&mut transport, STATUS, 0);
                run(&mut em);
            }
        }
    }
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn run(em: &mut EventManager<Subscriber>) {
    for _ in 0..MAX_TURNS {
        match em.run_with_timeout(0) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Writes `descs` as one chain from descriptor 0 and publishes its head
/// in the next available slot (where a driver would).
fn write_chain(
    mem: &GuestMemoryMmap,
    desc: u64,
    avail: u64,
    size: u16,
    descs: &[(Addr, u32, u16)],
) {
    if size == 0 {
        return;
    }
    let n = descs.len().min(usize::from(size));
    for (i, (addr, len, flags)) in descs.iter().take(n).enumerate() {
        let next = (i + 1) as u16;
        let flags = if i + 1 < n { flags | 1 } else { flags & !1 };
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.get().to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(desc.wrapping_add(16 * i as u64)));
    }
    let idx: u16 = mem
        .read_obj(GuestAddress(avail.wrapping_add(2)))
        .unwrap_or(0);
    let slot = avail.wrapping_add(4 + 2 * u64::from(idx % size));
    let _ = mem.write_obj(0u16, GuestAddress(slot));
    let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(avail.wrapping_add(2)));
}
