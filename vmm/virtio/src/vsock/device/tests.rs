//! The whole device without KVM: real rings in real guest memory driven as
//! Linux's virtio-vsock driver drives them, real Unix sockets in a temp
//! directory on the host side, and the real event loop in between.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_utils::{GuestQueue, WRITE};
use crate::vsock::csm::connection::CONN_REQUEST_TIMEOUT;
use crate::vsock::packet::{VsockHeader, HDR_SIZE};
use crate::vsock::*;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

const CID: u64 = 3;
const RX_SIZE: u16 = 64;
const RX_BUF: u32 = HDR_SIZE as u32 + 4096;
const RX_AREA: u64 = 0x10_0000;
const TX_AREA: u64 = 0x80_0000;

/// The guest driver's side: three rings and the buffers behind them.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    ev: GuestQueue<'a>,
    rx_addr: HashMap<u16, u64>,
    rx_seen: u16,
    rx_posted: u64,
    tx_next: u64,
}

struct Env<'a> {
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Subscriber>,
    drv: Driver<'a>,
    dir: tempfile::TempDir,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

impl<'a> Env<'a> {
    fn new(mem: &'a GuestMemoryMmap, post_rx: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = Arc::new(Mutex::new(
            Vsock::new(VsockConfig {
                guest_cid: CID,
                uds_path: dir.path().join("v.sock"),
            })
            .unwrap(),
        ));
        let mut em = EventManager::<Subscriber>::new().unwrap();
        let sub: Subscriber = dev.clone();
        em.add_subscriber(sub);
        let drv = Driver {
            mem,
            rx: GuestQueue::new(mem, GuestAddress(0x1000), RX_SIZE),
            tx: GuestQueue::new(mem, GuestAddress(0x4000), 256),
            ev: GuestQueue::new(mem, GuestAddress(0x9000), 8),
            rx_addr: HashMap::new(),
            rx_seen: 0,
            rx_posted: 0,
            tx_next: TX_AREA,
        };
        let queues = vec![drv.rx.queue(), drv.tx.queue(), drv.ev.queue()];
        dev.lock().unwrap().activate(mem.clone(), queues).unwrap();
        let mut env = Env { dev, em, drv, dir };
        for _ in 0..post_rx {
            env.drv.post_rx();
        }
        env.run();
        env
    }

    fn uds(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Runs the event loop until nothing is ready.
    fn run(&mut self) {
        while self.em.run_with_timeout(20).unwrap() > 0 {}
    }

    /// Notifies a queue as the driver would, then runs the loop.
    fn notify(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        self.run();
    }

    /// Sends one packet from the guest and lets the device handle it.
    fn send(&mut self, h: VsockHeader, data: &[u8]) {
        self.drv.queue_tx(h, data);
        self.notify(TXQ_INDEX);
    }

    /// What the guest received since last asked (buffers are re-posted).
    fn recv(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        let out = self.drv.take_rx();
        if !out.is_empty() {
            self.notify(RXQ_INDEX);
        }
        out
    }

    /// Runs the loop and collects guest packets until `pred` holds.
    fn recv_until(
        &mut self,
        mut pred: impl FnMut(&[(VsockHeader, Vec<u8>)]) -> bool,
    ) -> Vec<(VsockHeader, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        loop {
            self.run();
            all.extend(self.recv());
            if pred(&all) {
                return all;
            }
            assert!(Instant::now() < deadline, "timed out; got {all:?}");
        }
    }

    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(self.uds()).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let pkts = self.recv_until(|p| !p.is_empty());
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let h = pkts[0].0;
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.dst_port, h.type_),
            (VSOCK_OP_REQUEST, 2, CID, port, VSOCK_TYPE_STREAM)
        );
        (c, h.src_port)
    }

    /// Host-initiated connection the guest accepts; returns the client
    /// with the OK line consumed and the host-side port.
    fn established(&mut self, port: u32) -> (UnixStream, u32) {
        let (mut c, local) = self.host_connect(port);
        self.send(g2h(VSOCK_OP_RESPONSE, port, local, 0), &[]);
        let line = read_line(&mut c);
        assert_eq!(line, format!("OK {local}\n"));
        (c, local)
    }
}

impl Driver<'_> {
    fn post_rx(&mut self) {
        let addr = RX_AREA + (self.rx_posted % u64::from(RX_SIZE)) * 0x2000;
        self.rx_posted += 1;
        let head = self.rx.add_chain(&[(addr, RX_BUF, WRITE)]);
        self.rx_addr.insert(head, addr);
    }

    fn take_rx(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (id, len) = self.rx.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_addr[&(id as u16)];
            assert!(len as usize >= HDR_SIZE, "used length {len}");
            let mut raw = [0u8; HDR_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let h = VsockHeader::from_bytes(&raw);
            assert_eq!(
                len,
                HDR_SIZE as u32 + h.len,
                "used length matches the header"
            );
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
                .unwrap();
            out.push((h, data));
            self.post_rx();
        }
        out
    }

    fn queue_tx(&mut self, h: VsockHeader, data: &[u8]) {
        if self.tx_next + 0x2_0000 > 0x100_0000 {
            self.tx_next = TX_AREA;
        }
        let hdr_at = self.tx_next;
        let data_at = hdr_at + 0x100;
        self.tx_next += 0x2_0000;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(hdr_at))
            .unwrap();
        if data.is_empty() {
            self.tx.add_chain(&[(hdr_at, HDR_SIZE as u32, 0)]);
        } else {
            self.mem.write_slice(data, GuestAddress(data_at)).unwrap();
            self.tx.add_chain(&[
                (hdr_at, HDR_SIZE as u32, 0),
                (data_at, data.len() as u32, 0),
            ]);
        }
    }
}

/// A guest-to-host header: guest port `src`, host port `dst`.
fn g2h(op: u16, src: u32, dst: u32, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: CID,
        dst_cid: 2,
        src_port: src,
        dst_port: dst,
        len,
        type_: VSOCK_TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn read_line(c: &mut UnixStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading the OK line: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

fn read_exact_timeout(c: &mut UnixStream, n: usize) -> Vec<u8> {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0u8; n];
    c.read_exact(&mut v).unwrap();
    v
}

fn assert_eof(c: &mut UnixStream) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        // Closed with our unread bytes in it.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected end of stream, got {other:?}"),
    }
}

fn rw_bytes(pkts: &[(VsockHeader, Vec<u8>)]) -> Vec<u8> {
    pkts.iter()
        .filter(|(h, _)| h.op == VSOCK_OP_RW)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

#[test]
fn config_space_holds_the_cid_and_features() {
    let mem = mem();
    let env = Env::new(&mem, 0);
    let d = env.dev.lock().unwrap();
    assert_eq!(d.device_type(), crate::TYPE_VSOCK);
    assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    let mut cid = [0u8; 8];
    d.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut hi = [0u8; 4];
    d.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert_ne!(d.avail_features() & (1 << crate::VIRTIO_F_VERSION_1), 0);
    for bad in [0, 1, 2, u64::from(u32::MAX)] {
        let e = Vsock::new(VsockConfig {
            guest_cid: bad,
            uds_path: env.dir.path().join("x.sock"),
        })
        .unwrap_err();
        assert!(e.to_string().contains("CID"), "{e}");
    }
}

#[test]
fn host_connect_handshake_then_data_both_ways() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, local) = env.established(1024);
    assert!(local >= LOCAL_PORT_BASE);
    // Host to guest.
    c.write_all(b"ping").unwrap();
    let pkts = env.recv_until(|p| rw_bytes(p).len() >= 4);
    assert_eq!(rw_bytes(&pkts), b"ping");
    let h = pkts[0].0;
    assert_eq!(
        (h.src_port, h.dst_port, h.buf_alloc),
        (local, 1024, CONN_TX_BUF_SIZE)
    );
    // Guest to host.
    env.send(g2h(VSOCK_OP_RW, 1024, local, 4), b"pong");
    assert_eq!(read_exact_timeout(&mut c, 4), b"pong");
    // The guest closes: SHUTDOWN both ways, then our RST; the host sees EOF.
    let mut sh = g2h(VSOCK_OP_SHUTDOWN, 1024, local, 0);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
    env.send(sh, &[]);
    let pkts = env.recv_until(|p| p.iter().any(|(h, _)| h.op == VSOCK_OP_RST));
    assert_eq!(pkts.last().unwrap().0.op, VSOCK_OP_RST);
    assert_eof(&mut c);
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
}

#[test]
fn data_sent_right_behind_the_connect_line_is_kept() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let mut c = UnixStream::connect(env.uds()).unwrap();
    c.write_all(b"CONNECT 7\nearly-bytes").unwrap();
    let pkts = env.recv_until(|p| !p.is_empty());
    let local = pkts[0].0.src_port;
    env.send(g2h(VSOCK_OP_RESPONSE, 7, local, 0), &[]);
    assert_eq!(read_line(&mut c), format!("OK {local}\n"));
    let pkts = env.recv_until(|p| rw_bytes(p).len() >= 11);
    assert_eq!(rw_bytes(&pkts), b"early-bytes");
}

#[test]
fn guest_refusal_closes_the_host_socket_without_ok() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, local) = env.host_connect(4444);
    env.send(g2h(VSOCK_OP_RST, 4444, local, 0), &[]);
    assert_eof(&mut c);
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
}

#[test]
fn bad_handshakes_are_closed() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    for bad in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'A'; 40]] {
        let mut c = UnixStream::connect(env.uds()).unwrap();
        c.write_all(bad).unwrap();
        env.run();
        assert_eof(&mut c);
    }
    assert!(env.recv().is_empty(), "nothing reached the guest");
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
}

#[test]
fn request_timeout_resets_both_sides() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, local) = env.host_connect(99);
    // The guest never answers.
    env.dev
        .lock()
        .unwrap()
        .muxer
        .sweep(Instant::now() + CONN_REQUEST_TIMEOUT + Duration::from_secs(1));
    env.dev.lock().unwrap().kick.write(1).unwrap();
    let pkts = env.recv_until(|p| !p.is_empty());
    assert_eq!((pkts[0].0.op, pkts[0].0.src_port), (VSOCK_OP_RST, local));
    assert_eof(&mut c);
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let listener = UnixListener::bind(format!("{}_5000", env.uds().display())).unwrap();
    env.send(g2h(VSOCK_OP_REQUEST, 40000, 5000, 0), &[]);
    let pkts = env.recv_until(|p| !p.is_empty());
    let h = pkts[0].0;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (VSOCK_OP_RESPONSE, 5000, 40000, CID)
    );
    let (mut s, _) = listener.accept().unwrap();
    env.send(g2h(VSOCK_OP_RW, 40000, 5000, 5), b"hello");
    assert_eq!(read_exact_timeout(&mut s, 5), b"hello");
    s.write_all(b"world").unwrap();
    let pkts = env.recv_until(|p| rw_bytes(p).len() >= 5);
    assert_eq!(rw_bytes(&pkts), b"world");
    // The host closes: the guest gets SHUTDOWN with both flags, answers RST.
    drop(s);
    let pkts = env.recv_until(|p| p.iter().any(|(h, _)| h.op == VSOCK_OP_SHUTDOWN));
    let sh = pkts
        .iter()
        .find(|(h, _)| h.op == VSOCK_OP_SHUTDOWN)
        .unwrap()
        .0;
    assert_eq!(
        sh.flags,
        VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND
    );
    env.send(g2h(VSOCK_OP_RST, 40000, 5000, 0), &[]);
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
}

#[test]
fn guest_connect_to_nobody_is_reset() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    env.send(g2h(VSOCK_OP_REQUEST, 40001, 6000, 0), &[]);
    let pkts = env.recv_until(|p| !p.is_empty());
    let h = pkts[0].0;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.src_cid, h.dst_cid),
        (VSOCK_OP_RST, 6000, 40001, 2, CID)
    );
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
}

#[test]
fn host_half_close_is_a_send_shutdown_and_the_guest_can_still_answer() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, local) = env.established(80);
    c.write_all(b"request").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let pkts = env.recv_until(|p| p.iter().any(|(h, _)| h.op == VSOCK_OP_SHUTDOWN));
    assert_eq!(
        rw_bytes(&pkts),
        b"request",
        "data comes before the SHUTDOWN"
    );
    let sh = pkts
        .iter()
        .find(|(h, _)| h.op == VSOCK_OP_SHUTDOWN)
        .unwrap()
        .0;
    assert_eq!(sh.flags, VSOCK_FLAGS_SHUTDOWN_SEND);
    env.send(g2h(VSOCK_OP_RW, 80, local, 8), b"response");
    assert_eq!(read_exact_timeout(&mut c, 8), b"response");
    // Guest shuts down its send side: the host reads EOF.
    let mut sh = g2h(VSOCK_OP_SHUTDOWN, 80, local, 0);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_SEND;
    env.send(sh, &[]);
    assert_eof(&mut c);
}

#[test]
fn host_to_guest_never_exceeds_the_guest_credit() {
    let mem = mem();
    let mut env = Env::new(&mem, 64);
    let mut c = UnixStream::connect(env.uds()).unwrap();
    c.write_all(b"CONNECT 9\n").unwrap();
    let pkts = env.recv_until(|p| !p.is_empty());
    let local = pkts[0].0.src_port;
    // The guest accepts with only 10000 bytes of buffer.
    let mut resp = g2h(VSOCK_OP_RESPONSE, 9, local, 0);
    resp.buf_alloc = 10_000;
    env.send(resp, &[]);
    read_line(&mut c);
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let writer = {
        let mut c = c.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || c.write_all(&data).unwrap())
    };
    let pkts = env.recv_until(|p| p.iter().any(|(h, _)| h.op == VSOCK_OP_CREDIT_REQUEST));
    assert_eq!(rw_bytes(&pkts).len(), 10_000, "exactly the credit, no more");
    // A moment later still nothing more.
    std::thread::sleep(Duration::from_millis(50));
    env.run();
    assert!(rw_bytes(&env.recv()).is_empty());
    // The guest consumes and says so; the rest flows, 10000 at a time.
    let mut got = rw_bytes(&pkts);
    while got.len() < data.len() {
        let mut upd = g2h(VSOCK_OP_CREDIT_UPDATE, 9, local, 0);
        upd.buf_alloc = 10_000;
        upd.fwd_cnt = got.len() as u32;
        env.send(upd, &[]);
        let before = got.len();
        let pkts = env.recv_until(|p| {
            let n = rw_bytes(p).len();
            n > 0 && (before + n == data.len() || n == 10_000)
        });
        let chunk = rw_bytes(&pkts);
        assert!(chunk.len() <= 10_000);
        got.extend(chunk);
    }
    assert!(got == data);
    writer.join().unwrap();
}

#[test]
fn stalled_host_reader_bounds_the_buffer_and_credit_flows_back() {
    let mem = mem();
    let mut env = Env::new(&mem, 64);
    let (mut c, local) = env.established(1);
    // The guest honours the credit: at most buf_alloc - (sent - fwd_cnt).
    let chunk = vec![0xabu8; 60 * 1024];
    let mut sent = 0u32;
    let mut fwd = 0u32;
    loop {
        for (h, _) in env.recv() {
            fwd = h.fwd_cnt;
            assert_eq!(h.buf_alloc, CONN_TX_BUF_SIZE);
        }
        let credit = CONN_TX_BUF_SIZE - (sent - fwd);
        if credit == 0 {
            break;
        }
        let n = credit.min(chunk.len() as u32);
        env.send(g2h(VSOCK_OP_RW, 1, local, n), &chunk[..n as usize]);
        sent += n;
        assert!(sent < 64 << 20, "the host socket never filled up");
    }
    let key = (local, 1);
    let buffered = env
        .dev
        .lock()
        .unwrap()
        .muxer()
        .conn(key)
        .unwrap()
        .tx_buffered();
    assert!(
        buffered > 0 && buffered <= CONN_TX_BUF_SIZE as usize,
        "{buffered}"
    );
    // One byte beyond the credit is a protocol violation: reset.
    // (Checked on a second connection below; this one drains.)
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut updates = 0;
    while total < sent as usize {
        if let Ok(n) = c.read(&mut buf) {
            total += n;
        }
        env.run();
        updates += env
            .recv()
            .iter()
            .filter(|(h, _)| h.op == VSOCK_OP_CREDIT_UPDATE)
            .count();
    }
    assert_eq!(total, sent as usize);
    assert!(updates > 0, "freed credit was announced");
    let conn = env
        .dev
        .lock()
        .unwrap()
        .muxer()
        .conn(key)
        .unwrap()
        .credit_for_peer();
    assert_eq!(conn, CONN_TX_BUF_SIZE);

    // A guest that ignores its credit is reset.
    let (_c2, local2) = env.established(2);
    let _ = &mut c;
    let mut sent = 0usize;
    let mut saw_rst = false;
    while sent <= 64 << 20 && !saw_rst {
        env.send(g2h(VSOCK_OP_RW, 2, local2, 60 * 1024), &chunk);
        sent += chunk.len();
        saw_rst = env
            .recv()
            .iter()
            .any(|(h, _)| h.op == VSOCK_OP_RST && h.src_port == local2);
    }
    assert!(saw_rst, "flooding beyond the credit must reset");
    assert!(env.dev.lock().unwrap().muxer().conn((local2, 2)).is_none());
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, local) = env.established(3);
    // Spoofed source CID and wrong destination CID: dropped silently, the
    // connection lives on.
    let mut h = g2h(VSOCK_OP_RW, 3, local, 1);
    h.src_cid = 99;
    env.send(h, b"x");
    let mut h = g2h(VSOCK_OP_RW, 3, local, 1);
    h.dst_cid = 7;
    env.send(h, b"x");
    env.run();
    assert!(env.recv().is_empty());
    env.send(g2h(VSOCK_OP_RW, 3, local, 2), b"ok");
    assert_eq!(read_exact_timeout(&mut c, 2), b"ok");
    // Wrong socket type: RST, nothing forwarded.
    let mut h = g2h(VSOCK_OP_REQUEST, 4, 5, 0);
    h.type_ = 2;
    env.send(h, &[]);
    let p = env.recv_until(|p| !p.is_empty());
    assert_eq!(p[0].0.op, VSOCK_OP_RST);
    // Stray data for no connection: RST.
    env.send(g2h(VSOCK_OP_RW, 11, 12, 1), b"x");
    let p = env.recv_until(|p| !p.is_empty());
    assert_eq!(
        (p[0].0.op, p[0].0.src_port, p[0].0.dst_port),
        (VSOCK_OP_RST, 12, 11)
    );
    // A header whose len is beyond its descriptors resets the connection.
    let h = g2h(VSOCK_OP_RW, 3, local, 1000);
    env.drv
        .mem
        .write_slice(&h.to_bytes(), GuestAddress(0xf0_0000))
        .unwrap();
    env.drv
        .tx
        .add_chain(&[(0xf0_0000, 44, 0), (0xf1_0000, 10, 0)]);
    env.notify(TXQ_INDEX);
    let p = env.recv_until(|p| !p.is_empty());
    assert_eq!((p[0].0.op, p[0].0.src_port), (VSOCK_OP_RST, local));
    assert_eof(&mut c);
    // Unknown op on a live connection: RST.
    let (_c, local) = env.established(4);
    env.send(g2h(99, 4, local, 0), &[]);
    let p = env.recv_until(|p| !p.is_empty());
    assert_eq!((p[0].0.op, p[0].0.src_port), (VSOCK_OP_RST, local));
    // All tx chains were returned.
    assert_eq!(env.drv.tx.used_idx(), env.drv.tx.avail_idx());
}

#[test]
fn without_rx_buffers_requests_wait_and_stray_rsts_are_bounded() {
    let mem = mem();
    let mut env = Env::new(&mem, 0);
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = UnixStream::connect(env.uds()).unwrap();
        c.write_all(format!("CONNECT {}\n", 100 + i).as_bytes())
            .unwrap();
        clients.push(c);
    }
    env.run();
    // 300 packets for unknown connections: more RSTs than may wait. The
    // tx queue takes them all; the RSTs past the cap are dropped.
    // (In batches: the driver model reuses its tx buffers every 64.)
    for batch in 0..6u32 {
        for i in 0..50 {
            let port = 20_000 + batch * 50 + i;
            env.drv
                .queue_tx(g2h(VSOCK_OP_CREDIT_UPDATE, port, 7, 0), &[]);
        }
        env.notify(TXQ_INDEX);
    }
    // Repeats for one pair are answered once.
    for _ in 0..10 {
        env.drv
            .queue_tx(g2h(VSOCK_OP_CREDIT_UPDATE, 20_000, 7, 0), &[]);
    }
    env.notify(TXQ_INDEX);
    assert_eq!(env.drv.tx.used_idx(), 310, "the tx queue is never held");
    assert_eq!(
        env.dev.lock().unwrap().muxer().pending_rsts(),
        MAX_PENDING_RSTS
    );
    // Buffers arrive: the queued RSTs and the requests go out.
    for _ in 0..RX_SIZE {
        env.drv.post_rx();
    }
    env.notify(RXQ_INDEX);
    let got = env.recv_until(|p| p.len() >= MAX_PENDING_RSTS + 20);
    let rsts: Vec<_> = got
        .iter()
        .filter(|(h, _)| h.op == VSOCK_OP_RST)
        .map(|(h, _)| h.dst_port)
        .collect();
    assert_eq!(rsts.len(), MAX_PENDING_RSTS);
    assert_eq!(
        rsts,
        (20_000..20_000 + MAX_PENDING_RSTS as u32).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().filter(|(h, _)| h.op == VSOCK_OP_REQUEST).count(),
        20
    );
    env.run();
    assert!(env.recv().is_empty());
}

#[test]
fn device_reset_closes_every_host_socket_and_keeps_listening() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c1, _) = env.established(1);
    let (mut c2, _) = env.host_connect(2);
    env.dev.lock().unwrap().reset();
    env.run();
    assert_eof(&mut c1);
    assert_eof(&mut c2);
    assert_eq!(env.dev.lock().unwrap().muxer().conn_count(), 0);
    // The listener survives; after re-activation a new client is served.
    let queues = vec![env.drv.rx.queue(), env.drv.tx.queue(), env.drv.ev.queue()];
    env.drv.rx = GuestQueue::new(&mem, GuestAddress(0x1000), RX_SIZE);
    env.drv.tx = GuestQueue::new(&mem, GuestAddress(0x4000), 256);
    env.drv.rx_seen = 0;
    env.drv.rx_addr.clear();
    let _ = queues;
    let queues = vec![env.drv.rx.queue(), env.drv.tx.queue(), env.drv.ev.queue()];
    env.dev
        .lock()
        .unwrap()
        .activate(mem.clone(), queues)
        .unwrap();
    for _ in 0..16 {
        env.drv.post_rx();
    }
    env.run();
    env.established(3);
}

#[test]
fn transport_reset_event_reaches_the_guest() {
    let mem = mem();
    let mut env = Env::new(&mem, 16);
    let (mut c, _) = env.established(1);
    assert!(
        !env.dev.lock().unwrap().transport_reset(),
        "no event buffer yet"
    );
    env.run();
    assert_eof(&mut c);
    env.drv.ev.add_chain(&[(0xe0_0000, 8, WRITE)]);
    mem.write_slice(&[0xffu8; 4], GuestAddress(0xe0_0000))
        .unwrap();
    assert!(env.dev.lock().unwrap().transport_reset());
    assert_eq!(env.drv.ev.used_elem(0), (0, 4));
    let ev: u32 = mem.read_obj(GuestAddress(0xe0_0000)).unwrap();
    assert_eq!(ev, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
}

#[test]
fn many_concurrent_connections_each_echo_their_own_data() {
    let mem = mem();
    let mut env = Env::new(&mem, RX_SIZE);
    let mut conns = Vec::new();
    for i in 0..50u32 {
        let (c, local) = env.established(2000 + i);
        conns.push((c, local, 2000 + i));
    }
    for (c, _, port) in &mut conns {
        c.write_all(format!("msg-{port}").as_bytes()).unwrap();
    }
    let pkts = env.recv_until(|p| rw_bytes(p).len() >= 50 * 8);
    for (c, local, port) in &mut conns {
        let mine: Vec<u8> = pkts
            .iter()
            .filter(|(h, _)| h.op == VSOCK_OP_RW && h.src_port == *local)
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        assert_eq!(mine, format!("msg-{port}").as_bytes());
        env.send(g2h(VSOCK_OP_RW, *port, *local, mine.len() as u32), &mine);
        assert_eq!(read_exact_timeout(c, mine.len()), mine);
    }
}

#[test]
fn stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.sock");
    // Stale: bound, then the listener is gone.
    drop(UnixListener::bind(&p).unwrap());
    let v = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: p.clone(),
    })
    .unwrap();
    let e = Vsock::new(VsockConfig {
        guest_cid: 4,
        uds_path: p.clone(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(v);
    assert!(!p.exists(), "the socket file is removed on drop");
    std::fs::write(&p, b"not a socket").unwrap();
    let e = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: p,
    })
    .unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
}

#[test]
fn bogus_available_indices_do_not_spin_the_loop() {
    let mem = mem();
    let mut env = Env::new(&mem, 0);
    // Both rings claim 1000 entries in 64/256-entry rings.
    env.drv.tx.set_avail_idx(1000);
    env.drv.rx.set_avail_idx(1000);
    let (_c, _) = {
        let mut c = UnixStream::connect(env.uds()).unwrap();
        c.write_all(b"CONNECT 1\n").unwrap();
        (c, 0)
    };
    let start = Instant::now();
    env.notify(TXQ_INDEX);
    env.notify(RXQ_INDEX);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(env.drv.tx.used_idx(), 0);
    assert_eq!(env.drv.rx.used_idx(), 0);
}

/// Regression: the agent e2e stall. Linux's driver stops taking rx buffers
/// while its own replies wait for room on the tx queue
/// (`virtio_transport_more_replies` in `virtio_transport_rx_work`), so the
/// device must never make the tx queue wait for the rx side. It used to
/// hold the tx queue while its queue of stray RSTs was full, and those RSTs
/// only drain into rx buffers: with a guest whose rx buffers were all used
/// that was a circular wait, and every connection of the guest froze (data
/// both ways, and host CONNECTs that never got their `OK`).
#[test]
fn a_full_stray_rst_queue_never_holds_the_tx_queue() {
    let mem = mem();
    let mut env = Env::new(&mem, 4);
    let (mut c, local) = env.established(5);
    // From here the guest posts no rx buffers until its tx packets are
    // taken, as Linux does once its replies pile up. Packets for unknown
    // connections, more than the RST queue holds and the 4 rx buffers
    // take (in batches: the driver model reuses its tx buffers every 64).
    for batch in 0..6u32 {
        for i in 0..50 {
            let port = 30_000 + batch * 50 + i;
            env.drv
                .queue_tx(g2h(VSOCK_OP_CREDIT_UPDATE, port, 7, 0), &[]);
        }
        env.notify(TXQ_INDEX);
    }
    // The guest's data (it stands for the replies Linux waits on) must
    // reach the host although no RST can go out.
    env.send(g2h(VSOCK_OP_RW, 5, local, 5), b"hello");
    assert_eq!(
        env.drv.tx.used_idx(),
        env.drv.tx.avail_idx(),
        "every tx chain was taken although the guest has no rx buffer"
    );
    assert_eq!(read_exact_timeout(&mut c, 5), b"hello");
    // The RSTs that did not fit were dropped: memory stays bounded.
    assert!(env.dev.lock().unwrap().muxer().pending_rsts() <= MAX_PENDING_RSTS);
    // Once the guest has buffers again, queued RSTs and the connection's
    // traffic flow as before.
    for _ in 0..RX_SIZE / 2 {
        env.drv.post_rx();
    }
    env.notify(RXQ_INDEX);
    c.write_all(b"back").unwrap();
    let got = env.recv_until(|p| rw_bytes(p) == b"back");
    let rsts = got.iter().filter(|(h, _)| h.op == VSOCK_OP_RST).count();
    // The 4 that took the guest's last buffers, then a full queue; the
    // other 40 were dropped.
    assert_eq!(rsts, 4 + MAX_PENDING_RSTS);
    assert!(got
        .iter()
        .filter(|(h, _)| h.op == VSOCK_OP_RST)
        .all(|(h, _)| h.src_port == 7 && h.dst_port >= 30_000));
}
