//! One vsock stream connection between a guest socket and a host Unix
//! stream.
//!
//! ```text
//!  host CONNECT          guest REQUEST to CID 2
//!       |                        |
//!   LocalInit               PeerInit
//!  (REQUEST queued,        (host socket connected,
//!   then sent: timer)        RESPONSE queued)
//!       | guest RESPONSE         | RESPONSE sent
//!       +-----> Established <----+
//!                   |  RST, timeout, host error, both directions shut
//!                 Killed (RST queued, host stream shut down)
//!                   |  RST sent to the guest
//!                 Closed (the muxer drops it)
//! ```
//!
//! A RST from the guest ends the connection at once, from any state.
//!
//! # Credit (virtio 1.2, 5.10.6.3)
//!
//! Each side tells the other how much buffer it has (`buf_alloc`) and how
//! many bytes it has consumed so far (`fwd_cnt`); a sender may have at most
//! `buf_alloc - (sent - fwd_cnt)` bytes in flight.
//!
//! - Guest to host: the device grants [`CONN_TX_BUF_SIZE`] and counts a byte
//!   as consumed once the host socket took it. Bytes the socket did not take
//!   wait in the [`TxBuf`] of that same size, so an honest guest can never
//!   make the VMM buffer more; a guest that sends beyond its credit is reset.
//!   Freed credit is announced (any packet carries it; a CREDIT_UPDATE is
//!   queued when enough was freed or the guest is nearly out of it).
//! - Host to guest: the device never reads more from the host socket than
//!   the guest's credit allows and the rx buffer holds; when the credit is
//!   gone it stops polling the socket and asks for an update.

use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::txbuf::TxBuf;
use crate::vsock::packet::{RxBuffer, Segments, TxPacket, VsockHeader, HDR_SIZE};
use crate::vsock::unix::stream::HostStream;
use crate::vsock::{
    CONN_TX_BUF_SIZE, VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND, VSOCK_HOST_CID,
    VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE,
    VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_OP_SHUTDOWN, VSOCK_TYPE_STREAM,
};

/// How long the guest has to answer a host-initiated REQUEST (from the
/// moment it is in the guest's rx queue).
pub const CONN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection may take: flushing the last guest data to
/// a slow host reader, or the guest's RST after the host closed.
pub const CONN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Freed credit is announced once this much accumulated, or as soon as the
/// guest's view of the free space falls below it.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;

/// Room for the `OK <port>\n` line next to a full credit's worth of data.
const OK_LINE_ROOM: usize = 32;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the RESPONSE.
    LocalInit,
    /// Guest-initiated: the host socket is connected, RESPONSE queued.
    PeerInit,
    /// Data flows (unless shut down).
    Established,
    /// Reset: a RST for the guest is queued.
    Killed,
    /// Over: the RST went out or the guest reset it; drop it.
    Closed,
}

/// What a connection wants to send to the guest; several at once, sent in
/// a fixed priority order.
#[derive(Debug, Default, Clone, Copy)]
struct PendingRx {
    rst: bool,
    request: bool,
    response: bool,
    rw: bool,
    shutdown: bool,
    credit_update: bool,
    credit_request: bool,
}

impl PendingRx {
    fn any(&self) -> bool {
        self.rst
            || self.request
            || self.response
            || self.rw
            || self.shutdown
            || self.credit_update
            || self.credit_request
    }
}

/// What the muxer must do with a connection after a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// The guest reset it: drop it without answering.
    Remove,
}

/// Result of reading host data for the guest.
enum HostRead {
    Data(usize),
    Eof,
    WouldBlock,
    Error,
}

/// One connection.
#[derive(Debug)]
pub struct VsockConnection {
    state: ConnState,
    stream: HostStream,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    pending: PendingRx,
    txbuf: TxBuf,
    /// Bytes at the front of `txbuf` that are not guest data (the OK line),
    /// so not counted in `fwd_cnt`.
    credit_exempt: usize,
    /// Guest bytes the host socket took.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes received (the guest's `tx_cnt` as far as we know).
    rx_from_peer: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST went out and no credit came back yet.
    credit_requested: bool,
    peer_shut_rcv: bool,
    peer_shut_send: bool,
    host_eof: bool,
    host_hup: bool,
    host_write_shut: bool,
    shutdown_flags: u32,
    expiry: Option<Instant>,
}

impl VsockConnection {
    fn new(
        state: ConnState,
        stream: HostStream,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Self {
            state,
            stream,
            peer_cid,
            local_port,
            peer_port,
            pending: PendingRx::default(),
            txbuf: TxBuf::new(CONN_TX_BUF_SIZE as usize + OK_LINE_ROOM),
            credit_exempt: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_from_peer: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            peer_shut_rcv: false,
            peer_shut_send: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            shutdown_flags: 0,
            expiry: None,
        }
    }

    /// A host-initiated connection to guest port `peer_port`: a REQUEST is
    /// queued for the guest.
    pub fn new_local(stream: HostStream, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(
            ConnState::LocalInit,
            stream,
            peer_cid,
            local_port,
            peer_port,
        );
        c.pending.request = true;
        c
    }

    /// A guest-initiated connection, already connected on the host side:
    /// the RESPONSE is queued. `req` is the guest's REQUEST (its credit).
    pub fn new_peer(stream: HostStream, peer_cid: u64, req: &VsockHeader) -> Self {
        let mut c = Self::new(
            ConnState::PeerInit,
            stream,
            peer_cid,
            req.dst_port,
            req.src_port,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending.response = true;
        c
    }

    /// `(local port, peer port)`.
    pub fn key(&self) -> (u32, u32) {
        (self.local_port, self.peer_port)
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When the connection times out, if a timer runs.
    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Whether the connection has something for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending.any()
    }

    /// Whether the muxer should drop it.
    pub fn is_closed(&self) -> bool {
        self.state == ConnState::Closed
    }

    /// Bytes waiting for the host socket.
    pub fn tx_buffered(&self) -> usize {
        self.txbuf.len()
    }

    /// Bytes the guest may still send to the host, as the device counts.
    pub fn credit_for_peer(&self) -> u32 {
        let used = (self.rx_from_peer - self.fwd_cnt).0;
        CONN_TX_BUF_SIZE.saturating_sub(used)
    }

    /// Bytes the device may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Gives up the host stream (to be closed once it is out of epoll).
    pub fn into_stream(self) -> HostStream {
        self.stream
    }

    /// The host stream's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// The events to watch on the host stream now. Empty means "do not
    /// watch it at all" (the muxer then takes it out of epoll, which is the
    /// only way to silence a level-triggered hang-up).
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state != ConnState::Established {
            return ev;
        }
        if self.can_read_host() && !self.pending.rw {
            ev |= EventSet::IN;
        }
        if !self.txbuf.is_empty() && !self.host_hup {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// Resets the connection: a RST is queued for the guest and the host
    /// stream is shut down (its peer sees end of stream at once; the
    /// descriptor is closed when the muxer drops the connection).
    pub fn kill(&mut self) {
        if matches!(self.state, ConnState::Killed | ConnState::Closed) {
            return;
        }
        self.state = ConnState::Killed;
        self.pending = PendingRx {
            rst: true,
            ..PendingRx::default()
        };
        self.expiry = None;
        self.stream.shutdown(Shutdown::Both);
        self.txbuf = TxBuf::new(0);
    }

    /// Ends the connection without a RST (the guest reset it, or the
    /// transport is being reset).
    pub fn close(&mut self) {
        self.state = ConnState::Closed;
        self.pending = PendingRx::default();
        self.expiry = None;
        self.stream.shutdown(Shutdown::Both);
        self.txbuf = TxBuf::new(0);
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket<'_>, now: Instant) -> Verdict {
        let h = &pkt.hdr;
        if h.op == VSOCK_OP_RST {
            self.close();
            return Verdict::Remove;
        }
        if matches!(self.state, ConnState::Killed | ConnState::Closed) {
            return Verdict::Keep;
        }
        // Every packet carries the guest's credit.
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, h.op) {
            (ConnState::LocalInit, VSOCK_OP_RESPONSE) if !self.pending.request => {
                self.state = ConnState::Established;
                self.expiry = None;
                self.send_ok_line();
            }
            (ConnState::Established, VSOCK_OP_RW) => {
                if self.peer_shut_send {
                    // Data after the guest said it would send no more.
                    self.kill();
                } else {
                    self.forward_guest_data(pkt.data());
                }
            }
            (ConnState::Established, VSOCK_OP_CREDIT_UPDATE) => {}
            (ConnState::Established, VSOCK_OP_CREDIT_REQUEST) => {
                self.pending.credit_update = true;
            }
            (ConnState::Established, VSOCK_OP_SHUTDOWN) => {
                self.peer_shut_rcv |= h.flags & VSOCK_FLAGS_SHUTDOWN_RCV != 0;
                self.peer_shut_send |= h.flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv && self.peer_shut_send && !self.txbuf.is_empty() {
                    // Give the host reader a little time for the rest.
                    self.expiry = Some(now + CONN_SHUTDOWN_TIMEOUT);
                }
                self.after_flush();
            }
            // Anything else is out of place: a REQUEST on a live
            // connection, data before the handshake, unknown operations.
            _ => self.kill(),
        }
        Verdict::Keep
    }

    /// Writes the guest's payload to the host socket, keeping what it does
    /// not take (within the credit the guest was given).
    fn forward_guest_data(&mut self, data: &Segments<'_>) {
        let len = data.len();
        self.rx_from_peer += Wrapping(len as u32);
        let mut written = 0usize;
        if self.txbuf.is_empty() {
            // Straight from guest memory to the socket; only what it does
            // not take is copied.
            'segs: for s in data.slices() {
                let mut off = 0;
                while off < s.len() {
                    let Ok(sub) = s.offset(off) else {
                        break 'segs;
                    };
                    match self.stream.send_slice(&sub) {
                        Ok(0) => break 'segs,
                        Ok(n) => {
                            off += n;
                            written += n;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 'segs,
                        Err(_) => {
                            self.kill();
                            return;
                        }
                    }
                }
            }
        }
        self.fwd_cnt += Wrapping(written as u32);
        let rest = data.range(written, usize::MAX);
        // The guest may have at most CONN_TX_BUF_SIZE bytes unconsumed.
        let unconsumed = (self.rx_from_peer - self.fwd_cnt).0;
        if unconsumed > CONN_TX_BUF_SIZE || self.txbuf.push_segments(&rest).is_err() {
            self.kill();
            return;
        }
        self.check_credit_update();
    }

    fn send_ok_line(&mut self) {
        let line = format!("OK {}\n", self.local_port);
        let sent = match self.stream.send(line.as_bytes()) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.kill();
                return;
            }
        };
        let rest = &line.as_bytes()[sent..];
        if !rest.is_empty() {
            // A fresh socket always takes 14 bytes; this is for form's sake.
            if self.txbuf.push(rest).is_err() {
                self.kill();
                return;
            }
            self.credit_exempt += rest.len();
        }
    }

    /// Handles readiness of the host stream.
    pub fn on_host_event(&mut self, ev: EventSet) {
        if self.state != ConnState::Established {
            return;
        }
        if ev.contains(EventSet::ERROR) {
            self.kill();
            return;
        }
        if ev.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            if !self.txbuf.is_empty() {
                // The host reader is gone with guest data still to deliver.
                self.kill();
                return;
            }
            if self.host_eof && self.shutdown_flags & VSOCK_FLAGS_SHUTDOWN_RCV == 0 {
                self.queue_shutdown(VSOCK_FLAGS_SHUTDOWN_RCV);
            }
        }
        if ev.contains(EventSet::OUT) {
            self.flush();
            if self.state != ConnState::Established {
                return;
            }
        }
        if ev.intersects(EventSet::IN | EventSet::HANG_UP) && self.can_read_host() {
            self.pending.rw = true;
        }
    }

    fn flush(&mut self) {
        match self.txbuf.flush_to(&mut &self.stream) {
            Ok(n) => {
                let exempt = n.min(self.credit_exempt);
                self.credit_exempt -= exempt;
                self.fwd_cnt += Wrapping((n - exempt) as u32);
                self.after_flush();
            }
            Err(_) => self.kill(),
        }
    }

    /// After the buffer shrank (or a SHUTDOWN): pass on the guest's
    /// shutdown once everything it sent is out, and announce credit.
    fn after_flush(&mut self) {
        if self.txbuf.is_empty() && self.peer_shut_send {
            if !self.host_write_shut {
                self.stream.shutdown(Shutdown::Write);
                self.host_write_shut = true;
            }
            if self.peer_shut_rcv {
                // Both directions are over: the RST ends it for the guest
                // (which waits for it after its SHUTDOWN) and for the host.
                self.kill();
                return;
            }
        }
        self.check_credit_update();
    }

    fn check_credit_update(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        let unannounced = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if unannounced == 0 {
            return;
        }
        let seen_used = (self.rx_from_peer - self.last_fwd_cnt_sent).0;
        let seen_free = CONN_TX_BUF_SIZE.saturating_sub(seen_used);
        if unannounced >= CREDIT_UPDATE_THRESHOLD || seen_free < CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    fn queue_shutdown(&mut self, flags: u32) {
        self.shutdown_flags |= flags;
        self.pending.shutdown = true;
    }

    /// Handles the connection's timer; `now` is past [`Self::expiry`].
    pub fn on_timeout(&mut self, now: Instant) {
        match self.expiry {
            Some(t) if t <= now => {
                self.expiry = None;
                self.kill();
            }
            _ => {}
        }
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> VsockHeader {
        // Every packet tells the guest our credit.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn emit(&mut self, buf: &RxBuffer<'_>, op: u16, len: u32, flags: u32) -> u32 {
        let hdr = self.header(op, len, flags);
        buf.write_header(&hdr);
        HDR_SIZE as u32 + len
    }

    fn read_host(&mut self, buf: &RxBuffer<'_>) -> HostRead {
        let max = buf.data_capacity().min(self.peer_credit() as usize);
        let target = buf.data().range(0, max);
        let mut total = 0usize;
        for s in target.slices() {
            match self.stream.recv_slice(s) {
                Ok(0) if total == 0 => return HostRead::Eof,
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if n < s.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) if total == 0 => return HostRead::Error,
                Err(_) => break,
            }
        }
        if total == 0 {
            HostRead::WouldBlock
        } else {
            HostRead::Data(total)
        }
    }

    /// Fills `buf` with the next packet for the guest, if any; returns the
    /// used length (header + data).
    pub fn recv_pkt(&mut self, buf: &RxBuffer<'_>, now: Instant) -> Option<u32> {
        if self.pending.rst {
            self.pending = PendingRx::default();
            self.state = ConnState::Closed;
            return Some(self.emit(buf, VSOCK_OP_RST, 0, 0));
        }
        if self.pending.request {
            self.pending.request = false;
            self.expiry = Some(now + CONN_REQUEST_TIMEOUT);
            return Some(self.emit(buf, VSOCK_OP_REQUEST, 0, 0));
        }
        if self.pending.response {
            self.pending.response = false;
            self.state = ConnState::Established;
            return Some(self.emit(buf, VSOCK_OP_RESPONSE, 0, 0));
        }
        if self.pending.rw {
            if self.can_read_host() {
                match self.read_host(buf) {
                    HostRead::Data(n) => {
                        // n <= MAX_PKT_DATA.
                        let n32 = n as u32;
                        self.rx_cnt += Wrapping(n32);
                        if self.peer_credit() == 0 && !self.credit_requested {
                            self.pending.credit_request = true;
                        }
                        // Stay pending: more may be readable right away;
                        // WouldBlock clears it.
                        return Some(self.emit(buf, VSOCK_OP_RW, n32, 0));
                    }
                    HostRead::Eof => {
                        self.pending.rw = false;
                        self.host_eof = true;
                        let mut flags = VSOCK_FLAGS_SHUTDOWN_SEND;
                        if self.host_hup {
                            flags |= VSOCK_FLAGS_SHUTDOWN_RCV;
                        }
                        self.queue_shutdown(flags);
                    }
                    HostRead::WouldBlock => self.pending.rw = false,
                    HostRead::Error => {
                        self.kill();
                        return self.recv_pkt(buf, now);
                    }
                }
            } else {
                self.pending.rw = false;
                if self.state == ConnState::Established
                    && self.peer_credit() == 0
                    && !self.credit_requested
                {
                    self.pending.credit_request = true;
                }
            }
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            let flags = self.shutdown_flags;
            if flags == VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND {
                // The host is gone both ways; the guest answers with a RST
                // (Linux does once its reader drained the data).
                self.expiry = Some(now + CONN_SHUTDOWN_TIMEOUT);
            }
            return Some(self.emit(buf, VSOCK_OP_SHUTDOWN, 0, flags));
        }
        if self.pending.credit_update {
            return Some(self.emit(buf, VSOCK_OP_CREDIT_UPDATE, 0, 0));
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            self.credit_requested = true;
            return Some(self.emit(buf, VSOCK_OP_CREDIT_REQUEST, 0, 0));
        }
        None
    }
}

#[cfg(test)]
mod tests;
