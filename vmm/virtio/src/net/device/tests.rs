//! The whole device without KVM or a TAP: real rings in real guest memory
//! driven as Linux's virtio-net driver drives them (and as no sane driver
//! would), one end of a `SOCK_SEQPACKET` pair standing in for the TAP (it
//! keeps frame boundaries as a TAP does), and the real event loop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::test_utils::{write_raw_desc, GuestQueue, XorShift, INDIRECT, NEXT, WRITE};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Two regions, so buffers can straddle a region boundary.
const MEM_END: u64 = 0x100_0000;
const REGION_SPLIT: u64 = 0x80_0000;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x8000;
const RX_AREA: u64 = 0x10_0000;
const TX_AREA: u64 = 0x40_0000;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (
            GuestAddress(REGION_SPLIT),
            (MEM_END - REGION_SPLIT) as usize,
        ),
    ])
    .unwrap()
}

/// A connected `SOCK_SEQPACKET` pair: (device side, host side).
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The host end of the fake TAP.
struct Host(OwnedFd);

impl Host {
    fn send(&self, frame: &[u8]) {
        // SAFETY: the kernel reads `frame.len()` bytes from `frame`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// Frames the device wrote so far.
    fn recv_all(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; MAX_FRAME_LEN + 100];
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return out;
            }
            buf.truncate(n as usize);
            out.push(buf);
        }
    }
}

struct Env<'a> {
    dev: Arc<Mutex<Net>>,
    em: EventManager<Subscriber>,
    mem: &'a GuestMemoryMmap,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    host: Host,
    tx_next: u64,
    rx_seen: u16,
}

fn config() -> NetConfig {
    NetConfig {
        id: "eth0".into(),
        tap: TapSource::Name("unused".into()),
        mac: Some(MAC),
        mtu: 1500,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

impl<'a> Env<'a> {
    /// An active device whose driver acked `features` (offered ones only).
    fn new(mem: &'a GuestMemoryMmap, cfg: NetConfig, features: u64) -> Self {
        let (dev_end, host_end) = seqpacket_pair();
        let net = Net::with_tap(cfg, Tap::from_datagram_fd(dev_end).unwrap()).unwrap();
        Self::with_net(mem, net, Host(host_end), features)
    }

    fn with_net(mem: &'a GuestMemoryMmap, net: Net, host: Host, features: u64) -> Self {
        let dev = Arc::new(Mutex::new(net));
        let mut em = EventManager::<Subscriber>::new().unwrap();
        let sub: Subscriber = dev.clone();
        em.add_subscriber(sub);
        let rx = GuestQueue::new(mem, GuestAddress(RX_RING), 16);
        let tx = GuestQueue::new(mem, GuestAddress(TX_RING), 16);
        {
            let mut d = dev.lock().unwrap();
            d.set_acked_features(features);
            d.activate(mem.clone(), vec![rx.queue(), tx.queue()])
                .unwrap();
        }
        let mut env = Env {
            dev,
            em,
            mem,
            rx,
            tx,
            host,
            tx_next: TX_AREA,
            rx_seen: 0,
        };
        env.run();
        env
    }

    fn run(&mut self) {
        while self.em.run_with_timeout(10).unwrap() > 0 {}
    }

    fn notify(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        self.run();
    }

    fn metrics(&self) -> NetMetrics {
        self.dev.lock().unwrap().metrics()
    }

    /// Queues a frame (header + data) split in descriptors of at most
    /// `split` bytes.
    fn queue_tx(&mut self, frame: &[u8], split: usize) {
        let at = self.tx_next;
        self.tx_next += (frame.len() as u64 + 0xfff) & !0xfff;
        self.mem.write_slice(frame, GuestAddress(at)).unwrap();
        let descs: Vec<_> = frame
            .chunks(split)
            .enumerate()
            .map(|(i, c)| (at + (i * split) as u64, c.len() as u32, 0))
            .collect();
        self.tx.add_chain(&descs);
    }

    /// Posts a rx buffer of `len` bytes at `addr`.
    fn post_rx(&mut self, addr: u64, len: u32) -> u16 {
        self.rx.add_chain(&[(addr, len, WRITE)])
    }

    /// Used rx elements since last asked.
    fn used_rx(&mut self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            out.push(self.rx.used_elem(self.rx_seen));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

fn offered() -> u64 {
    let (a, _b) = seqpacket_pair();
    Net::with_tap(config(), Tap::from_datagram_fd(a).unwrap())
        .unwrap()
        .avail_features()
}

fn without(features: u64, bit: u32) -> u64 {
    features & !(1u64 << bit)
}

/// A frame with a zero virtio-net header and an Ethernet payload of `len`
/// bytes (a recognisable pattern).
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

#[test]
fn features_and_config_space() {
    let f = offered();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
    ] {
        assert!(f & (1u64 << bit) != 0, "feature {bit} offered");
    }
    let (a, _b) = seqpacket_pair();
    let mut cfg = config();
    cfg.mac = None;
    cfg.mtu = 9000;
    let mut dev = Net::with_tap(cfg, Tap::from_datagram_fd(a).unwrap()).unwrap();
    assert_eq!(dev.avail_features() & (1u64 << VIRTIO_NET_F_MAC), 0);
    let mut cs = [0u8; 12];
    dev.read_config(0, &mut cs);
    assert_eq!(&cs[0..6], &[0; 6]);
    assert_eq!(u16::from_le_bytes([cs[6], cs[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cs[8], cs[9]]), 1, "one queue pair");
    assert_eq!(u16::from_le_bytes([cs[10], cs[11]]), 9000);
    dev.set_link_up(false);
    dev.read_config(6, &mut cs[..2]);
    assert_eq!(&cs[..2], &[0, 0]);
    dev.write_config(0, &[0xff; 6]);
    dev.read_config(0, &mut cs[..6]);
    assert_eq!(&cs[..6], &[0; 6], "config writes are ignored");

    let mem = mem();
    let env = Env::new(&mem, config(), f);
    let mut mac = [0u8; 6];
    env.dev.lock().unwrap().read_config(0, &mut mac);
    assert_eq!(mac, MAC);
}

#[test]
fn bad_configurations_are_refused() {
    for (mtu, mac) in [
        (67, None),
        (1500, Some([0x01, 0, 0x5e, 0, 0, 1])),
        (1500, Some([0; 6])),
    ] {
        let (a, _b) = seqpacket_pair();
        let mut cfg = config();
        cfg.mtu = mtu;
        cfg.mac = mac;
        assert!(Net::with_tap(cfg, Tap::from_datagram_fd(a).unwrap()).is_err());
    }
    let (a, _b) = seqpacket_pair();
    let mut cfg = config();
    cfg.tx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 0,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    });
    let e = Net::with_tap(cfg, Tap::from_datagram_fd(a).unwrap()).unwrap_err();
    assert!(e.to_string().contains("non-zero"), "{e}");
}

#[test]
fn tx_frames_reach_the_tap_in_order() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let a = frame(60, 1);
    let b = frame(9000, 2);
    env.queue_tx(&a, 12);
    env.queue_tx(&b, 1000);
    env.notify(TXQ_INDEX);
    let got = env.host.recv_all();
    assert_eq!(got, vec![a, b]);
    assert_eq!(env.tx.used_idx(), 2);
    assert_eq!(env.tx.used_elem(0).1, 0, "tx used length is 0");
    let m = env.metrics();
    assert_eq!((m.tx_frames, m.tx_bytes), (2, 9060));
    assert_eq!(m.dropped(), 0);
    let d = env.dev.lock().unwrap();
    assert_eq!(d.interrupt_evt().read().unwrap(), 1);
}

#[test]
fn tx_frame_straddling_a_region_boundary_goes_out_whole() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), without(offered(), VIRTIO_NET_F_CSUM));
    let f = frame(3000, 6);
    let at = REGION_SPLIT - 1000;
    mem.write_slice(&f, GuestAddress(at)).unwrap();
    env.tx.add_chain(&[(at, f.len() as u32, 0)]);
    env.notify(TXQ_INDEX);
    let got = env.host.recv_all();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(&got[0][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
}

#[test]
fn tx_header_is_cleared_when_csum_was_not_acked() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), without(offered(), VIRTIO_NET_F_CSUM));
    let mut f = frame(60, 1);
    f[0] = 1; // NEEDS_CSUM
    f[1] = 1; // GSO_TCPV4
    env.queue_tx(&f, 4096);
    env.notify(TXQ_INDEX);
    let got = env.host.recv_all();
    assert_eq!(&got[0][..NUM_BUFFERS_OFFSET], &[0; NUM_BUFFERS_OFFSET]);
    assert_eq!(&got[0][VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn malformed_and_oversized_tx_chains_are_dropped_and_counted() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let good = frame(100, 9);
    // 1: a device-writable descriptor.
    env.tx
        .add_chain(&[(TX_AREA, 12, 0), (TX_AREA + 12, 100, WRITE)]);
    // 2: outside guest memory.
    env.tx.add_chain(&[(MEM_END - 10, 200, 0)]);
    // 3: address overflowing.
    env.tx.add_chain(&[(u64::MAX - 4, 200, 0)]);
    // 4: shorter than the headers.
    env.tx.add_chain(&[(TX_AREA, 20, 0)]);
    // 5: longer than the longest frame (two 40 000-byte halves).
    env.tx
        .add_chain(&[(TX_AREA, 40_000, 0), (TX_AREA, 40_000, 0)]);
    // 6: a huge length.
    env.tx.add_chain(&[(TX_AREA, u32::MAX, 0)]);
    // 7: cut short: NEXT to an index past the table.
    let head = 14u16;
    env.tx.write_desc(head, TX_AREA, 64, NEXT, 200);
    env.tx.push_avail(head);
    // 8: a loop.
    env.tx.write_desc(12, TX_AREA, 64, NEXT, 13);
    env.tx.write_desc(13, TX_AREA, 64, NEXT, 12);
    env.tx.push_avail(12);
    // 9: head index past the table.
    env.tx.push_avail(999);
    env.notify(TXQ_INDEX);
    // And the device still works.
    env.tx_next = TX_AREA + 0x10_0000;
    // Fresh descriptors after the hand-written ones.
    let at = env.tx_next;
    env.mem.write_slice(&good, GuestAddress(at)).unwrap();
    env.tx.write_desc(15, at, good.len() as u32, 0, 0);
    env.tx.push_avail(15);
    env.notify(TXQ_INDEX);
    assert_eq!(env.host.recv_all(), vec![good]);
    let m = env.metrics();
    assert_eq!(m.tx_oversized, 2, "{m}");
    assert_eq!(m.tx_malformed, 7, "{m}");
    assert_eq!(m.tx_frames, 1);
    // Every chain with a valid head went back to the driver.
    assert_eq!(env.tx.used_idx(), 9);
}

#[test]
fn rx_frame_into_one_buffer_without_mergeable_buffers() {
    let mem = mem();
    let feats = without(offered(), VIRTIO_NET_F_MRG_RXBUF);
    let mut env = Env::new(&mem, config(), feats);
    let head = env.post_rx(RX_AREA, 2048);
    env.notify(RXQ_INDEX);
    let f = frame(1000, 3);
    env.host.send(&f);
    env.run();
    let used = env.used_rx();
    assert_eq!(used, vec![(u32::from(head), f.len() as u32)]);
    let got = env.read(RX_AREA, f.len());
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    let m = env.metrics();
    assert_eq!((m.rx_frames, m.rx_bytes, m.rx_buffers), (1, 1000, 1));
}

#[test]
fn rx_frame_too_big_for_plain_buffers_is_dropped_and_the_buffer_kept() {
    let mem = mem();
    let feats = without(offered(), VIRTIO_NET_F_MRG_RXBUF);
    let mut env = Env::new(&mem, config(), feats);
    env.post_rx(RX_AREA, 1526);
    env.notify(RXQ_INDEX);
    env.host.send(&frame(3000, 1));
    let small = frame(100, 2);
    env.host.send(&small);
    env.run();
    let used = env.used_rx();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, small.len() as u32);
    assert_eq!(env.metrics().rx_oversized, 1);
}

#[test]
fn rx_frame_spreads_over_mergeable_buffers_published_at_once() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let heads: Vec<u16> = (0..4)
        .map(|i| env.post_rx(RX_AREA + i * 0x1000, 1526))
        .collect();
    env.notify(RXQ_INDEX);
    let f = frame(4000, 5);
    env.host.send(&f);
    env.run();
    let used = env.used_rx();
    let total = f.len() as u32;
    assert_eq!(
        used,
        vec![
            (u32::from(heads[0]), 1526),
            (u32::from(heads[1]), 1526),
            (u32::from(heads[2]), total - 2 * 1526),
        ]
    );
    let mut got = Vec::new();
    for (i, &(_, len)) in used.iter().enumerate() {
        got.extend(env.read(RX_AREA + i as u64 * 0x1000, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(env.metrics().rx_buffers, 3);
}

#[test]
fn rx_frame_waits_for_buffers_and_is_delivered_when_they_come() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let f = frame(3000, 7);
    env.host.send(&f);
    env.run();
    assert!(env.used_rx().is_empty());
    // One buffer is not enough for 3012 bytes: it is taken back.
    env.post_rx(RX_AREA, 1526);
    env.notify(RXQ_INDEX);
    assert!(env.used_rx().is_empty());
    env.post_rx(RX_AREA + 0x1000, 1526);
    env.post_rx(RX_AREA + 0x2000, 1526);
    env.notify(RXQ_INDEX);
    let used = env.used_rx();
    assert_eq!(used.len(), 2 + usize::from(f.len() > 2 * 1526));
    assert_eq!(used.iter().map(|u| u.1).sum::<u32>(), f.len() as u32);
    assert_eq!(env.metrics().rx_frames, 1);
}

/// With room for the largest frame posted, frames are read straight into
/// the guest's buffers; the chains a frame does not need stay available,
/// in order, for the next one.
#[test]
fn rx_reads_straight_into_guest_buffers_when_they_hold_the_largest_frame() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    // 16 x 8 KiB = 128 KiB >= MAX_FRAME_LEN.
    for i in 0..16 {
        env.post_rx(RX_AREA + i * 0x2000, 8192);
    }
    env.notify(RXQ_INDEX);
    let a = frame(20_000, 1);
    let b = frame(100, 2);
    env.host.send(&a);
    env.run();
    let used = env.used_rx();
    assert_eq!(
        used,
        vec![(0, 8192), (1, 8192), (2, a.len() as u32 - 2 * 8192)]
    );
    let mut got = Vec::new();
    for (i, &(_, len)) in used.iter().enumerate() {
        got.extend(env.read(RX_AREA + i as u64 * 0x2000, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &a[VNET_HDR_LEN..]);
    // 13 x 8 KiB left: not enough for the largest frame, so the next one
    // is copied, into the next buffer in ring order.
    env.host.send(&b);
    env.run();
    assert_eq!(env.used_rx(), vec![(3, b.len() as u32)]);
    let got = env.read(RX_AREA + 3 * 0x2000, b.len());
    assert_eq!(&got[VNET_HDR_LEN..], &b[VNET_HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    let m = env.metrics();
    assert_eq!((m.rx_frames, m.rx_buffers, m.dropped()), (2, 4, 0), "{m}");
}

#[test]
fn rx_direct_reads_skip_bad_chains_and_drop_runts_without_using_buffers() {
    let mem = mem();
    let feats = without(offered(), VIRTIO_NET_F_MRG_RXBUF);
    let mut env = Env::new(&mem, config(), feats);
    // A read-only chain, then "big packets" buffers as Linux posts them
    // without mergeable buffers (one chain holds the largest frame).
    let ro = env.rx.add_chain(&[(RX_AREA, 1526, 0)]);
    let big1 = env
        .rx
        .add_chain(&[(RX_AREA + 0x10_0000, MAX_FRAME_LEN as u32, WRITE)]);
    let big2 = env
        .rx
        .add_chain(&[(RX_AREA + 0x20_0000, MAX_FRAME_LEN as u32, WRITE)]);
    env.notify(RXQ_INDEX);
    env.host.send(&[1u8; 10]);
    env.run();
    assert!(env.used_rx().is_empty(), "a runt uses no buffer");
    assert_eq!(env.metrics().rx_runts, 1);
    let f = frame(60_000, 3);
    env.host.send(&f);
    env.run();
    assert_eq!(
        env.used_rx(),
        vec![(u32::from(ro), 0), (u32::from(big1), f.len() as u32)]
    );
    assert_eq!(&env.read(RX_AREA + 0x10_0000, f.len()), &{
        let mut w = f.clone();
        w[10] = 1;
        w
    });
    env.host.send(&f);
    env.run();
    assert_eq!(env.used_rx(), vec![(u32::from(big2), f.len() as u32)]);
    assert_eq!(env.metrics().rx_bad_chains, 1);
}

#[test]
fn bad_rx_chains_go_back_empty_and_the_frame_takes_the_next() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    // Read-only, outside memory, too small for the header, cut short.
    let ro = env.rx.add_chain(&[(RX_AREA, 1526, 0)]);
    let oom = env.rx.add_chain(&[(MEM_END - 8, 1526, WRITE)]);
    let tiny = env.rx.add_chain(&[(RX_AREA, 4, WRITE)]);
    env.rx.write_desc(10, RX_AREA, 64, WRITE | NEXT, 300);
    env.rx.push_avail(10);
    let good = env.post_rx(RX_AREA + 0x1000, 1526);
    env.notify(RXQ_INDEX);
    let f = frame(200, 1);
    env.host.send(&f);
    env.run();
    let used = env.used_rx();
    assert_eq!(
        used,
        vec![
            (u32::from(ro), 0),
            (u32::from(oom), 0),
            (u32::from(tiny), 0),
            (10, 0),
            (u32::from(good), f.len() as u32)
        ]
    );
    assert_eq!(env.metrics().rx_bad_chains, 4);
}

#[test]
fn an_empty_buffer_between_a_frames_buffers_is_refused_not_counted_in() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let a = env.post_rx(RX_AREA, 1526);
    let empty = env.rx.add_chain(&[(RX_AREA + 0x1000, 0, WRITE)]);
    let b = env.post_rx(RX_AREA + 0x2000, 1526);
    let c = env.post_rx(RX_AREA + 0x3000, 1526);
    env.notify(RXQ_INDEX);
    let f = frame(4000, 8);
    env.host.send(&f);
    env.run();
    let total = f.len() as u32;
    assert_eq!(
        env.used_rx(),
        vec![
            (u32::from(empty), 0),
            (u32::from(a), 1526),
            (u32::from(b), 1526),
            (u32::from(c), total - 2 * 1526),
        ]
    );
    let hdr = env.read(RX_AREA, VNET_HDR_LEN);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
}

#[test]
fn runt_and_giant_frames_from_the_tap_are_counted() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    for i in 0..8 {
        env.post_rx(RX_AREA + i * 0x1000, 1526);
    }
    env.notify(RXQ_INDEX);
    env.host.send(&[0u8; 20]);
    env.host.send(&vec![0u8; MAX_FRAME_LEN + 50]);
    env.run();
    let m = env.metrics();
    assert_eq!((m.rx_runts, m.rx_oversized, m.rx_frames), (1, 1, 0), "{m}");
    assert!(env.used_rx().is_empty());
}

#[test]
fn rx_buffer_straddling_a_region_boundary() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    let at = REGION_SPLIT - 100;
    env.post_rx(at, 1526);
    env.notify(RXQ_INDEX);
    let f = frame(1000, 4);
    env.host.send(&f);
    env.run();
    assert_eq!(env.used_rx()[0].1, f.len() as u32);
    assert_eq!(&env.read(at, f.len())[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn tx_rate_limiter_holds_frames_until_its_timer() {
    let mem = mem();
    let mut cfg = config();
    cfg.tx_rate_limiter = Some(RateLimiterConfig {
        bandwidth: None,
        // Slow enough that a loaded machine's scheduling does not refill
        // a token between two frames of one turn.
        ops: Some(TokenBucketConfig {
            size: 2,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
    });
    let mut env = Env::new(&mem, cfg, offered());
    for i in 0..5 {
        env.queue_tx(&frame(60, i), 4096);
    }
    env.notify(TXQ_INDEX);
    assert_eq!(env.host.recv_all().len(), 2, "two frames, then wait");
    assert_eq!(env.tx.used_idx(), 2, "held frames stay with the device");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 2;
    while got < 5 {
        assert!(Instant::now() < deadline, "the limiter never let go");
        env.em.run_with_timeout(50).unwrap();
        got += env.host.recv_all().len();
    }
    assert_eq!(env.tx.used_idx(), 5);
    assert!(env.metrics().tx_throttled >= 1);
}

#[test]
fn rx_rate_limiter_in_bytes() {
    let mem = mem();
    let mut cfg = config();
    cfg.rx_rate_limiter = Some(RateLimiterConfig {
        // 0.5 bytes per ms: no refill to speak of within one turn.
        bandwidth: Some(TokenBucketConfig {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 2000,
        }),
        ops: None,
    });
    let mut env = Env::new(&mem, cfg, offered());
    for i in 0..8 {
        env.post_rx(RX_AREA + i * 0x1000, 1526);
    }
    env.notify(RXQ_INDEX);
    for i in 0..3 {
        env.host.send(&frame(600, i));
    }
    env.run();
    assert_eq!(env.used_rx().len(), 1, "600 of 1000 bytes, then wait");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 1;
    while got < 3 {
        assert!(Instant::now() < deadline, "the limiter never let go");
        env.em.run_with_timeout(50).unwrap();
        got += env.used_rx().len();
    }
}

#[test]
fn reset_drops_the_pending_frame() {
    let mem = mem();
    let mut env = Env::new(&mem, config(), offered());
    env.host.send(&frame(100, 1));
    env.run();
    let mut d = env.dev.lock().unwrap();
    d.reset();
    assert!(!d.is_activated());
    assert!(d.rx_pending.is_none());
    // Inactive: queue notifications and TAP frames are ignored.
    d.process_rx();
    d.process_tx();
}

/// Random descriptor tables on both queues, random available indexes,
/// random frames from the host: the device must neither panic nor use a
/// head twice, and must keep the used rings consistent.
#[test]
fn hostile_rings_fuzz() {
    let mem = mem();
    let mut rng = XorShift::new(7);
    for round in 0..200 {
        let feats = if round % 3 == 0 {
            without(offered(), VIRTIO_NET_F_MRG_RXBUF)
        } else {
            offered()
        };
        let mut env = Env::new(&mem, config(), feats);
        let addr = |rng: &mut XorShift| -> u64 {
            match rng.below(6) {
                0 => rng.next_u64(),
                1 => MEM_END - rng.below(4096),
                2 => REGION_SPLIT - rng.below(4096),
                _ => RX_AREA + rng.below(0x20_0000),
            }
        };
        for gq in [&env.rx, &env.tx] {
            for i in 0..16u16 {
                let len = match rng.below(5) {
                    0 => rng.next_u64() as u32,
                    1 => rng.below(16) as u32,
                    _ => rng.below(70_000) as u32,
                };
                let flags = (rng.below(8) as u16)
                    & (NEXT | WRITE | if rng.below(10) == 0 { INDIRECT } else { 0 });
                let next = if rng.below(8) == 0 {
                    rng.next_u64() as u16
                } else {
                    rng.below(16) as u16
                };
                gq.write_desc(i, addr(&mut rng), len, flags, next);
            }
            // An indirect table somewhere, sometimes.
            write_raw_desc(
                &mem,
                GuestAddress(RX_AREA),
                addr(&mut rng),
                rng.below(5000) as u32,
                (rng.below(4) as u16) & (NEXT | WRITE),
                rng.below(4) as u16,
            );
            for _ in 0..rng.below(20) {
                gq.push_avail(rng.below(20) as u16);
            }
            if rng.below(10) == 0 {
                gq.set_avail_idx(rng.next_u64() as u16);
            }
        }
        for _ in 0..rng.below(6) {
            let len = match rng.below(4) {
                0 => rng.below(30) as usize,
                1 => rng.below(66_000) as usize,
                _ => rng.below(2000) as usize,
            };
            env.host.send(&vec![0x5a; len.max(1)]);
        }
        env.notify(TXQ_INDEX);
        env.notify(RXQ_INDEX);
        for gq in [&env.rx, &env.tx] {
            let used = gq.used_idx();
            assert!(used <= 40, "round {round}: used idx {used}");
            for i in 0..used {
                let (id, len) = gq.used_elem(i);
                assert!(id < 16, "round {round}: used head {id}");
                assert!(
                    len as usize <= MAX_FRAME_LEN,
                    "round {round}: used len {len}"
                );
            }
        }
        let _ = env.host.recv_all();
    }
}

/// Frame builders for the real TAP test.
mod wire {
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; super::VNET_HDR_LEN];
        f.extend(dst);
        f.extend(src);
        f.extend(ethertype.to_be_bytes());
        f.extend(payload);
        f
    }

    pub fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend(mac);
        a.extend(ip);
        a.extend([0u8; 6]);
        a.extend(target);
        eth([0xff; 6], mac, 0x0806, &a)
    }

    pub fn icmp_echo(
        mac: [u8; 6],
        dst_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend(payload);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend(total.to_be_bytes());
        ip.extend([0, 0, 0x40, 0, 64, 1, 0, 0]);
        ip.extend(src);
        ip.extend(dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend(icmp);
        eth(dst_mac, mac, 0x0800, &ip)
    }
}

/// Runs `cmd` in the network namespace of thread `tid` of this process.
fn in_netns(tid: i32, cmd: &[&str]) {
    let ns = format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id());
    let out = std::process::Command::new("nsenter")
        .arg(ns)
        .args(cmd)
        .output()
        .expect("run nsenter (util-linux)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real TAP in a network namespace of the test's own (nothing leaves
/// it): the guest side resolves the host's address with ARP and pings it,
/// and the host kernel's answers come back through the rx path. Needs
/// root (to make the namespace) and /dev/net/tun; skipped with a message
/// otherwise.
#[test]
fn real_tap_arp_and_ping_in_a_private_netns() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipping real_tap_arp_and_ping_in_a_private_netns: no /dev/net/tun here");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping real_tap_arp_and_ping_in_a_private_netns: cannot make a network namespace ({}); run as root",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut cfg = config();
        cfg.tap = TapSource::Name("mvmtest0".into());
        let net = Net::new(cfg).unwrap();
        assert_eq!(net.tap_name(), "mvmtest0");
        // The real TAP took the offloads: the guest ones are offered.
        assert!(net.avail_features() & (1u64 << VIRTIO_NET_F_GUEST_TSO4) != 0);
        in_netns(tid, &["ip", "addr", "add", "10.99.0.1/24", "dev", "mvmtest0"]);
        in_netns(tid, &["ip", "link", "set", "mvmtest0", "up"]);

        let mem = mem();
        let (_unused, host_end) = seqpacket_pair();
        let mut env = Env::with_net(&mem, net, Host(host_end), offered());
        for i in 0..16u64 {
            env.post_rx(RX_AREA + i * 0x1000, 1526);
        }
        env.notify(RXQ_INDEX);
        let guest_ip = [10, 99, 0, 2];
        let host_ip = [10, 99, 0, 1];

        // Collect received frames (re-posting buffers) until `pred` finds one.
        let wait_for = |env: &mut Env<'_>, what: &str, pred: &dyn Fn(&[u8]) -> bool| -> Vec<u8> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                assert!(Instant::now() < deadline, "no {what} came back");
                env.em.run_with_timeout(50).unwrap();
                for (head, len) in env.used_rx() {
                    let at = RX_AREA + u64::from(head) * 0x1000;
                    let f = env.read(at, len as usize);
                    env.rx.write_desc(head as u16, at, 1526, WRITE, 0);
                    env.rx.push_avail(head as u16);
                    env.notify(RXQ_INDEX);
                    if pred(&f[VNET_HDR_LEN..]) {
                        return f[VNET_HDR_LEN..].to_vec();
                    }
                }
            }
        };

        env.queue_tx(&wire::arp_request(MAC, guest_ip, host_ip), 4096);
        env.notify(TXQ_INDEX);
        let reply = wait_for(&mut env, "ARP reply", &|f| {
            f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2]
        });
        assert_eq!(&reply[0..6], &MAC, "addressed to the guest");
        assert_eq!(&reply[28..32], &host_ip);
        let mut host_mac = [0u8; 6];
        host_mac.copy_from_slice(&reply[22..28]);

        let payload: Vec<u8> = (0..56u8).collect();
        env.queue_tx(
            &wire::icmp_echo(MAC, host_mac, guest_ip, host_ip, &payload),
            30,
        );
        env.notify(TXQ_INDEX);
        let pong = wait_for(&mut env, "echo reply", &|f| {
            f.len() >= 34 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0
        });
        assert_eq!(&pong[26..30], &host_ip);
        assert_eq!(&pong[30..34], &guest_ip);
        assert_eq!(&pong[38..42], &[0x12, 0x34, 0, 1], "id and sequence");
        assert_eq!(&pong[42..], &payload[..]);
        let m = env.metrics();
        assert!(m.tx_frames == 2 && m.rx_frames >= 2, "{m}");
        assert_eq!(m.dropped(), 0, "{m}");
    })
    .join()
    .unwrap();
}
