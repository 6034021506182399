//! The connection state machine on its own: a real Unix socket pair on the
//! host side, packets parsed from real guest memory on the guest side.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_utils::{GuestQueue, WRITE};
use crate::vsock::packet::{parse_rx, parse_tx};

const CID: u64 = 3;
const LOCAL: u32 = 1 << 30;
const PEER: u32 = 1024;

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    txq: GuestQueue<'a>,
    tx: Queue,
    rxq: GuestQueue<'a>,
    rx: Queue,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let txq = GuestQueue::new(mem, GuestAddress(0x1000), 256);
        let rxq = GuestQueue::new(mem, GuestAddress(0x8000), 256);
        let (tx, rx) = (txq.queue(), rxq.queue());
        Self {
            mem,
            txq,
            tx,
            rxq,
            rx,
        }
    }

    /// Hands `conn` a guest packet.
    fn send(&mut self, conn: &mut VsockConnection, h: VsockHeader, data: &[u8]) -> Verdict {
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        self.mem.write_slice(data, GuestAddress(0x20_0000)).unwrap();
        self.txq.add_chain(&[
            (0x10_0000, HDR_SIZE as u32, 0),
            (0x20_0000, data.len().max(1) as u32, 0),
        ]);
        let chain = self.tx.iter(self.mem).unwrap().next().unwrap();
        let pkt = parse_tx(self.mem, chain).unwrap();
        conn.on_guest_packet(&pkt, Instant::now())
    }

    /// Asks `conn` for its next packet, with a 4 KiB rx buffer.
    fn recv(&mut self, conn: &mut VsockConnection) -> Option<(VsockHeader, Vec<u8>)> {
        self.rxq
            .add_chain(&[(0x30_0000, HDR_SIZE as u32 + 4096, WRITE)]);
        let chain = self.rx.iter(self.mem).unwrap().next().unwrap();
        let buf = parse_rx(self.mem, chain).unwrap();
        let len = conn.recv_pkt(&buf, Instant::now())?;
        let mut raw = [0u8; HDR_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(0x30_0000))
            .unwrap();
        let h = VsockHeader::from_bytes(&raw);
        assert_eq!(len, HDR_SIZE as u32 + h.len);
        let mut data = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(0x30_0000 + HDR_SIZE as u64))
            .unwrap();
        Some((h, data))
    }
}

fn g2h(op: u16, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: CID,
        dst_cid: VSOCK_HOST_CID,
        src_port: PEER,
        dst_port: LOCAL,
        len,
        type_: VSOCK_TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn local_conn() -> (VsockConnection, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let conn = VsockConnection::new_local(HostStream::new(a).unwrap(), CID, LOCAL, PEER);
    (conn, b)
}

/// A host-initiated connection the guest accepted; the OK line consumed.
fn established<'a>(g: &mut Guest<'a>, buf_alloc: u32) -> (VsockConnection, UnixStream) {
    let (mut c, mut host) = local_conn();
    let (req, _) = g.recv(&mut c).unwrap();
    assert_eq!(req.op, VSOCK_OP_REQUEST);
    let mut resp = g2h(VSOCK_OP_RESPONSE, 0);
    resp.buf_alloc = buf_alloc;
    assert_eq!(g.send(&mut c, resp, &[]), Verdict::Keep);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {LOCAL}\n").as_bytes());
    (c, host)
}

#[test]
fn host_initiated_request_response_and_ok_line() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, _host) = local_conn();
    assert_eq!(c.state(), ConnState::LocalInit);
    assert!(
        c.interest().is_empty(),
        "nothing to read before the guest accepts"
    );
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (VSOCK_OP_REQUEST, VSOCK_HOST_CID, CID, LOCAL, PEER)
    );
    assert_eq!(h.buf_alloc, CONN_TX_BUF_SIZE);
    assert!(
        c.expiry().is_some(),
        "the request timer runs once it is sent"
    );
    assert!(g.recv(&mut c).is_none());
    drop(c);
    let (c, _host) = established(&mut g, 4096);
    assert_eq!(c.state(), ConnState::Established);
    assert!(c.expiry().is_none());
    assert!(c.interest().contains(EventSet::IN));
}

#[test]
fn request_timeout_kills_with_rst() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, mut host) = local_conn();
    g.recv(&mut c).unwrap();
    c.on_timeout(Instant::now());
    assert_eq!(c.state(), ConnState::LocalInit, "not yet due");
    c.on_timeout(Instant::now() + CONN_REQUEST_TIMEOUT + Duration::from_secs(1));
    assert_eq!(c.state(), ConnState::Killed);
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(h.op, VSOCK_OP_RST);
    assert!(c.is_closed());
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0, "the host sees end of stream");
}

#[test]
fn guest_rst_removes_and_out_of_place_packets_kill() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, _h) = local_conn();
    assert_eq!(g.send(&mut c, g2h(VSOCK_OP_RST, 0), &[]), Verdict::Remove);
    assert!(c.is_closed());

    // Data before the handshake.
    let (mut c, _h) = local_conn();
    g.recv(&mut c).unwrap();
    g.send(&mut c, g2h(VSOCK_OP_RW, 1), b"x");
    assert_eq!(g.recv(&mut c).unwrap().0.op, VSOCK_OP_RST);

    // REQUEST and unknown ops on an established connection.
    for op in [VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, 0, 8, 0xffff] {
        let (mut c, _h) = established(&mut g, 4096);
        g.send(&mut c, g2h(op, 0), &[]);
        assert_eq!(c.state(), ConnState::Killed, "op {op}");
    }
}

#[test]
fn guest_initiated_gets_a_response() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (a, _b) = UnixStream::pair().unwrap();
    let mut req = g2h(VSOCK_OP_REQUEST, 0);
    req.dst_port = 5000;
    req.buf_alloc = 1000;
    let mut c = VsockConnection::new_peer(HostStream::new(a).unwrap(), CID, &req);
    assert_eq!(c.key(), (5000, PEER));
    assert_eq!(c.peer_credit(), 1000);
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (VSOCK_OP_RESPONSE, 5000, PEER)
    );
    assert_eq!(c.state(), ConnState::Established);
}

#[test]
fn never_sends_more_than_the_peer_credit() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, mut host) = established(&mut g, 100);
    host.write_all(&[7u8; 1000]).unwrap();
    c.on_host_event(EventSet::IN);
    let (h, d) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.len),
        (VSOCK_OP_RW, 100),
        "the buffer holds 4096, the credit 100"
    );
    assert_eq!(d, vec![7u8; 100]);
    assert_eq!(c.peer_credit(), 0);
    assert_eq!(g.recv(&mut c).unwrap().0.op, VSOCK_OP_CREDIT_REQUEST);
    assert!(g.recv(&mut c).is_none(), "nothing more until credit comes");
    assert!(
        !c.interest().contains(EventSet::IN),
        "no polling without credit"
    );
    // The guest consumed 60 bytes.
    let mut upd = g2h(VSOCK_OP_CREDIT_UPDATE, 0);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 60;
    g.send(&mut c, upd, &[]);
    assert_eq!(c.peer_credit(), 60);
    assert!(c.interest().contains(EventSet::IN));
    c.on_host_event(EventSet::IN);
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(h.len, 60);
    // A peer claiming to have consumed more than it got gets no credit.
    let mut upd = g2h(VSOCK_OP_CREDIT_UPDATE, 0);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 10_000;
    g.send(&mut c, upd, &[]);
    assert_eq!(c.peer_credit(), 0);
}

#[test]
fn credit_updates_follow_fwd_cnt() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, mut host) = established(&mut g, 4096);
    // A small write: forwarded at once, but not worth an update yet.
    g.send(&mut c, g2h(VSOCK_OP_RW, 10), b"0123456789");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"0123456789");
    assert!(!c.has_pending_rx());
    assert_eq!(c.credit_for_peer(), CONN_TX_BUF_SIZE);
    // Asked for, an update carries the new fwd_cnt.
    g.send(&mut c, g2h(VSOCK_OP_CREDIT_REQUEST, 0), &[]);
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.fwd_cnt, h.buf_alloc),
        (VSOCK_OP_CREDIT_UPDATE, 10, CONN_TX_BUF_SIZE)
    );
    // Past the threshold an update is queued unasked.
    let chunk = vec![1u8; 32 * 1024];
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 96 * 1024];
        host.read_exact(&mut buf).unwrap();
        host
    });
    for _ in 0..3 {
        g.send(&mut c, g2h(VSOCK_OP_RW, chunk.len() as u32), &chunk);
        while c.tx_buffered() > 0 {
            c.on_host_event(EventSet::OUT);
        }
    }
    let _host = reader.join().unwrap();
    assert!(c.has_pending_rx(), "96 KiB freed is worth telling");
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!((h.op, h.fwd_cnt), (VSOCK_OP_CREDIT_UPDATE, 10 + 96 * 1024));
}

#[test]
fn stalled_host_buffers_at_most_the_credit() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    let (mut c, _host) = established(&mut g, 4096);
    let chunk = vec![2u8; 64 * 1024];
    let mut sent = 0usize;
    // An honest guest sends while it has credit; the host never reads.
    while c.credit_for_peer() > 0 && c.state() == ConnState::Established {
        let n = (c.credit_for_peer() as usize).min(chunk.len());
        g.send(&mut c, g2h(VSOCK_OP_RW, n as u32), &chunk[..n]);
        sent += n;
        assert!(sent < 64 << 20, "the host socket never filled");
    }
    assert_eq!(c.state(), ConnState::Established);
    assert!(c.tx_buffered() <= CONN_TX_BUF_SIZE as usize);
    assert!(c.interest().contains(EventSet::OUT));
    // One byte more is a credit violation.
    g.send(&mut c, g2h(VSOCK_OP_RW, 1), b"x");
    assert_eq!(c.state(), ConnState::Killed);
    assert_eq!(g.recv(&mut c).unwrap().0.op, VSOCK_OP_RST);
}

#[test]
fn shutdowns_in_each_direction() {
    let mem = mem();
    let mut g = Guest::new(&mem);
    // The guest stops sending: the host reads EOF, data still flows back.
    let (mut c, mut host) = established(&mut g, 4096);
    g.send(&mut c, g2h(VSOCK_OP_RW, 3), b"abc");
    let mut sh = g2h(VSOCK_OP_SHUTDOWN, 0);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_SEND;
    g.send(&mut c, sh, &[]);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    host.write_all(b"back").unwrap();
    c.on_host_event(EventSet::IN);
    assert_eq!(g.recv(&mut c).unwrap().1, b"back");
    // Data after SHUTDOWN_SEND is a violation.
    g.send(&mut c, g2h(VSOCK_OP_RW, 1), b"x");
    assert_eq!(c.state(), ConnState::Killed);

    // The guest closes (both flags): RST, the host sees EOF.
    let (mut c, mut host) = established(&mut g, 4096);
    sh.flags = VSOCK_FLAGS_SHUTDOWN_SEND | VSOCK_FLAGS_SHUTDOWN_RCV;
    g.send(&mut c, sh, &[]);
    assert_eq!(g.recv(&mut c).unwrap().0.op, VSOCK_OP_RST);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);

    // The host half-closes: SHUTDOWN(SEND) after the data.
    let (mut c, host) = established(&mut g, 4096);
    (&host).write_all(b"last").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    c.on_host_event(EventSet::IN);
    assert_eq!(g.recv(&mut c).unwrap().1, b"last");
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.flags),
        (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND)
    );
    assert!(c.expiry().is_none(), "the guest may still send");

    // The host closes entirely: SHUTDOWN with both flags, then a timer for
    // the guest's RST.
    let (mut c, host) = established(&mut g, 4096);
    drop(host);
    c.on_host_event(EventSet::IN | EventSet::HANG_UP);
    let (h, _) = g.recv(&mut c).unwrap();
    assert_eq!(
        (h.op, h.flags),
        (
            VSOCK_OP_SHUTDOWN,
            VSOCK_FLAGS_SHUTDOWN_SEND | VSOCK_FLAGS_SHUTDOWN_RCV
        )
    );
    assert!(c.expiry().is_some());
    c.on_timeout(Instant::now() + CONN_SHUTDOWN_TIMEOUT + Duration::from_secs(1));
    assert_eq!(g.recv(&mut c).unwrap().0.op, VSOCK_OP_RST);
}
