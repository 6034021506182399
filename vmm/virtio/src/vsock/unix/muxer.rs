//! The muxer: every connection of one vsock device, keyed by
//! `(local port, peer port)`, plus the listening socket for host clients.
//!
//! It sits between the device (which hands it guest packets and rx buffers)
//! and the host sockets (whose readiness the event loop reports). It never
//! blocks: host sockets are non-blocking, and what cannot be done now waits
//! for the next readiness event, rx buffer or deadline.
//!
//! Epoll registrations are recomputed from each touched connection's
//! [`VsockConnection::interest`] in [`VsockMuxer::sync_epoll`]; a
//! descriptor is always taken out of epoll before it is closed (the event
//! manager keeps its own table of descriptors, which must not go stale).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use tracing::{debug, warn};

use super::handshake::{parse_connect, MAX_LINE};
use super::muxer_killq::{KillQ, TimerKey};
use super::muxer_rxq::{ConnKey, MuxerRxQ};
use super::stream::{connect_nonblocking, HostStream};
use crate::common::{throttled_warn, LogThrottle};
use crate::vsock::csm::connection::Verdict;
use crate::vsock::csm::VsockConnection;
use crate::vsock::packet::{RxBuffer, TxPacket, VsockHeader, HDR_SIZE};
use crate::vsock::{
    CONN_TX_BUF_SIZE, LOCAL_PORT_BASE, MAX_CONNECTIONS, VSOCK_HOST_CID, VSOCK_OP_REQUEST,
    VSOCK_OP_RST, VSOCK_TYPE_STREAM,
};

/// Event tag of the listening socket.
pub const TAG_LISTENER: u32 = 16;
/// Event tag of host connection sockets (looked up by descriptor).
pub const TAG_CONN: u32 = 17;

/// How long a host client may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting pauses after running out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted per listener event (fairness with the guest).
const ACCEPT_BATCH: usize = 64;
/// The deadline heap is rebuilt past this many (mostly stale) entries.
const KILLQ_REBUILD: usize = 4 * MAX_CONNECTIONS;

/// Errors setting up the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The socket path cannot be bound.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another process listens on the path.
    #[error("vsock socket {0} is in use by another process; pick another uds_path or stop it")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error(
        "vsock socket path {0} exists and is not a socket; remove it or pick another uds_path"
    )]
    NotSocket(PathBuf),
}

/// A host client that has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// A connection and the muxer's bookkeeping about it.
#[derive(Debug)]
struct ConnEntry {
    conn: VsockConnection,
    host_initiated: bool,
    /// The deadline last put in the kill queue.
    queued_expiry: Option<Instant>,
}

/// The vsock backend.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file we bound, so only that file is
    /// removed at exit.
    listener_id: Option<(u64, u64)>,
    listener_registered: bool,
    listener_paused_until: Option<Instant>,
    conns: HashMap<ConnKey, ConnEntry>,
    fd_owner: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    rxq: MuxerRxQ,
    killq: KillQ,
    /// Local ports of host-initiated connections.
    local_ports: HashMap<u32, ConnKey>,
    next_local_port: u32,
    registered: HashMap<RawFd, EventSet>,
    dirty: HashSet<RawFd>,
    /// Streams to close once they are out of epoll.
    graveyard: Vec<UnixStream>,
    guest_throttle: LogThrottle,
    host_throttle: LogThrottle,
}

impl VsockMuxer {
    /// Listens on `uds_path` (replacing a stale socket file nobody listens
    /// on) for a guest with CID `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let listener = bind_listener(uds_path)?;
        let listener_id = std::fs::symlink_metadata(uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            listener_id,
            listener_registered: false,
            listener_paused_until: None,
            conns: HashMap::new(),
            fd_owner: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: MuxerRxQ::new(),
            killq: KillQ::new(),
            local_ports: HashMap::new(),
            next_local_port: LOCAL_PORT_BASE,
            registered: HashMap::new(),
            dirty: HashSet::new(),
            graveyard: Vec::new(),
            guest_throttle: LogThrottle::default(),
            host_throttle: LogThrottle::default(),
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Live connections plus host clients still in their handshake.
    pub fn conn_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// The connection with `key`, if any (for tests and diagnostics).
    pub fn conn(&self, key: ConnKey) -> Option<&VsockConnection> {
        self.conns.get(&key).map(|e| &e.conn)
    }

    /// Keys of all connections.
    pub fn conn_keys(&self) -> Vec<ConnKey> {
        self.conns.keys().copied().collect()
    }

    /// Whether something may be waiting for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Stray RSTs waiting for the guest (tests, diagnostics).
    pub fn pending_rsts(&self) -> usize {
        self.rxq.rst_len()
    }

    /// The earliest deadline, for the device's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.killq.next_deadline()
    }

    // ---- guest to host ------------------------------------------------

    /// Handles a packet from the guest's tx queue.
    pub fn send_pkt(&mut self, pkt: &TxPacket<'_>, now: Instant) {
        let h = pkt.hdr;
        if h.src_cid != self.guest_cid || h.dst_cid != VSOCK_HOST_CID {
            // Not ours to answer: the addressing itself is wrong.
            throttled_warn(
                &mut self.guest_throttle,
                "virtio-vsock: dropped a guest packet",
                &format_args!(
                    "src_cid {} (guest is {}), dst_cid {} (host is {VSOCK_HOST_CID})",
                    h.src_cid, self.guest_cid, h.dst_cid
                ),
            );
            return;
        }
        if h.type_ != VSOCK_TYPE_STREAM {
            if h.op != VSOCK_OP_RST {
                self.rst_stray(&h);
            }
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(e) = self.conns.get_mut(&key) {
            if h.op == VSOCK_OP_REQUEST {
                // A second REQUEST for a live connection.
                e.conn.kill();
            } else if e.conn.on_guest_packet(pkt, now) == Verdict::Remove {
                self.remove_conn(key);
                return;
            }
            self.after_conn_change(key);
            return;
        }
        match h.op {
            VSOCK_OP_REQUEST => self.peer_connect(&h),
            VSOCK_OP_RST => {}
            _ => self.rst_stray(&h),
        }
    }

    /// A tx chain that was not a packet but whose header was readable:
    /// reset the connection it names so neither side waits forever.
    pub fn reject_pkt(&mut self, h: &VsockHeader) {
        if h.src_cid != self.guest_cid || h.dst_cid != VSOCK_HOST_CID || h.op == VSOCK_OP_RST {
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(e) = self.conns.get_mut(&key) {
            e.conn.kill();
            self.after_conn_change(key);
        } else {
            self.rst_stray(h);
        }
    }

    fn rst_stray(&mut self, h: &VsockHeader) {
        if !self.rxq.push_rst((h.dst_port, h.src_port)) {
            throttled_warn(
                &mut self.guest_throttle,
                "virtio-vsock: RST queue full",
                &format_args!(
                    "dropped the RST for guest port {} to host port {}",
                    h.src_port, h.dst_port
                ),
            );
        }
    }

    /// The guest connects to host port `h.dst_port`: connect to
    /// `<uds_path>_<port>`, or refuse with a RST.
    fn peer_connect(&mut self, h: &VsockHeader) {
        if self.conn_count() >= MAX_CONNECTIONS {
            throttled_warn(
                &mut self.guest_throttle,
                "virtio-vsock: refused a guest connection",
                &format_args!("the limit of {MAX_CONNECTIONS} connections is reached"),
            );
            self.rst_stray(h);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let path = PathBuf::from(path);
        let stream = connect_nonblocking(&path).and_then(HostStream::new);
        match stream {
            Ok(stream) => {
                let conn = VsockConnection::new_peer(stream, self.guest_cid, h);
                let key = conn.key();
                self.insert_conn(conn, false);
                self.after_conn_change(key);
            }
            Err(e) => {
                debug!(
                    "virtio-vsock: guest connection to host port {} refused: {}: {e}",
                    h.dst_port,
                    path.display()
                );
                self.rst_stray(h);
            }
        }
    }

    fn insert_conn(&mut self, conn: VsockConnection, host_initiated: bool) {
        let key = conn.key();
        self.fd_owner.insert(conn.fd(), key);
        self.dirty.insert(conn.fd());
        if host_initiated {
            self.local_ports.insert(key.0, key);
        }
        self.conns.insert(
            key,
            ConnEntry {
                conn,
                host_initiated,
                queued_expiry: None,
            },
        );
    }

    fn remove_conn(&mut self, key: ConnKey) {
        let Some(e) = self.conns.remove(&key) else {
            return;
        };
        let fd = e.conn.fd();
        self.fd_owner.remove(&fd);
        self.dirty.insert(fd);
        if e.host_initiated && self.local_ports.get(&key.0) == Some(&key) {
            self.local_ports.remove(&key.0);
        }
        self.graveyard.push(e.conn.into_stream().into_inner());
    }

    /// Bookkeeping after anything happened to connection `key`: epoll
    /// interest, rx queue, deadline, removal once closed.
    fn after_conn_change(&mut self, key: ConnKey) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if e.conn.is_closed() {
            self.remove_conn(key);
            return;
        }
        self.dirty.insert(e.conn.fd());
        if e.conn.has_pending_rx() {
            self.rxq.push_conn(key);
        }
        let expiry = e.conn.expiry();
        if expiry != e.queued_expiry {
            if let Some(t) = expiry {
                self.killq.push(t, TimerKey::Conn(key));
            }
            e.queued_expiry = expiry;
        }
    }

    // ---- host to guest ------------------------------------------------

    /// Fills `buf` with the next packet for the guest; `None` if nothing is
    /// pending (the device then leaves the buffer in the ring).
    pub fn recv_pkt(&mut self, buf: &RxBuffer<'_>, now: Instant) -> Option<u32> {
        if let Some((local, peer)) = self.rxq.pop_rst() {
            buf.write_header(&VsockHeader {
                src_cid: VSOCK_HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local,
                dst_port: peer,
                len: 0,
                type_: VSOCK_TYPE_STREAM,
                op: VSOCK_OP_RST,
                flags: 0,
                buf_alloc: CONN_TX_BUF_SIZE,
                fwd_cnt: 0,
            });
            return Some(HDR_SIZE as u32);
        }
        while let Some(key) = self.rxq.pop_conn() {
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            let out = e.conn.recv_pkt(buf, now);
            self.after_conn_change(key);
            if out.is_some() {
                return out;
            }
        }
        None
    }

    // ---- host sockets -------------------------------------------------

    /// Accepts waiting host clients.
    pub fn accept_ready(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conn_count() >= MAX_CONNECTIONS {
                        throttled_warn(
                            &mut self.host_throttle,
                            "virtio-vsock: closed a host client at once",
                            &format_args!("the limit of {MAX_CONNECTIONS} connections is reached"),
                        );
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("virtio-vsock: cannot make a host client non-blocking: {e}");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let deadline = now + HANDSHAKE_TIMEOUT;
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                            deadline,
                        },
                    );
                    self.killq.push(deadline, TimerKey::Handshake(fd));
                    self.dirty.insert(fd);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    // Out of descriptors or memory: the listener would stay
                    // readable and spin the loop; pause it briefly.
                    throttled_warn(
                        &mut self.host_throttle,
                        "virtio-vsock: cannot accept host clients",
                        &format_args!("{e}; pausing for {ACCEPT_PAUSE:?}"),
                    );
                    let until = now + ACCEPT_PAUSE;
                    self.listener_paused_until = Some(until);
                    self.killq.push(until, TimerKey::Listener);
                    break;
                }
            }
        }
    }

    /// Handles readiness of a host socket (a connection or a handshake).
    pub fn socket_event(&mut self, fd: RawFd, ev: EventSet) {
        if let Some(&key) = self.fd_owner.get(&fd) {
            if let Some(e) = self.conns.get_mut(&key) {
                e.conn.on_host_event(ev);
            }
            self.after_conn_change(key);
        } else if self.handshakes.contains_key(&fd) {
            self.handshake_event(fd, ev);
        } else {
            // Left over from a closed descriptor: make sure it is unwatched.
            self.dirty.insert(fd);
        }
    }

    fn drop_handshake(&mut self, fd: RawFd, why: &dyn std::fmt::Display) {
        if let Some(hs) = self.handshakes.remove(&fd) {
            debug!("virtio-vsock: host client closed: {why}");
            self.dirty.insert(fd);
            self.graveyard.push(hs.stream);
        }
    }

    fn handshake_event(&mut self, fd: RawFd, ev: EventSet) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut peek = [0u8; MAX_LINE];
        let room = MAX_LINE - hs.line.len();
        // SAFETY: `peek` has MAX_LINE >= room writable bytes.
        let n = unsafe {
            libc::recv(
                fd,
                peek.as_mut_ptr().cast::<libc::c_void>(),
                room,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return;
            }
            self.drop_handshake(fd, &e);
            return;
        }
        let n = n as usize;
        if n == 0 {
            self.drop_handshake(fd, &"end of stream before the CONNECT line");
            return;
        }
        // Consume up to the newline only: what follows is connection data.
        let take = peek[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |p| p + 1);
        let mut sink = [0u8; MAX_LINE];
        // SAFETY: `sink` has MAX_LINE >= take writable bytes; the bytes were
        // just peeked, so this does not block.
        let got = unsafe {
            libc::recv(
                fd,
                sink.as_mut_ptr().cast::<libc::c_void>(),
                take,
                libc::MSG_DONTWAIT,
            )
        };
        if got <= 0 {
            self.drop_handshake(fd, &"read error after peek");
            return;
        }
        hs.line.extend_from_slice(&sink[..got as usize]);
        match parse_connect(&hs.line) {
            Ok(None) if ev.contains(EventSet::HANG_UP) => {
                self.drop_handshake(fd, &"hang-up before the CONNECT line ended");
            }
            Ok(None) => {}
            Ok(Some((port, _))) => self.host_connect(fd, port),
            Err(e) => {
                throttled_warn(
                    &mut self.host_throttle,
                    "virtio-vsock: bad host handshake",
                    &e,
                );
                self.drop_handshake(fd, &e);
            }
        }
    }

    /// A host client asked for guest port `port`: queue a REQUEST.
    fn host_connect(&mut self, fd: RawFd, port: u32) {
        let Some(local) = self.alloc_local_port(port) else {
            self.drop_handshake(fd, &"no free local port");
            return;
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        match HostStream::new(hs.stream) {
            Ok(stream) => {
                let conn = VsockConnection::new_local(stream, self.guest_cid, local, port);
                let key = conn.key();
                self.insert_conn(conn, true);
                self.after_conn_change(key);
            }
            Err(e) => warn!("virtio-vsock: host client unusable: {e}"),
        }
        self.dirty.insert(fd);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=2 * MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX {
                LOCAL_PORT_BASE
            } else {
                p + 1
            };
            if !self.local_ports.contains_key(&p) && !self.conns.contains_key(&(p, peer_port)) {
                return Some(p);
            }
        }
        None
    }

    // ---- time ---------------------------------------------------------

    /// Handles every deadline due at `now`.
    pub fn sweep(&mut self, now: Instant) {
        for (t, key) in self.killq.pop_expired(now) {
            match key {
                TimerKey::Conn(k) => {
                    let Some(e) = self.conns.get_mut(&k) else {
                        continue;
                    };
                    if e.queued_expiry == Some(t) {
                        e.queued_expiry = None;
                        debug!("virtio-vsock: connection {k:?} timed out");
                        e.conn.on_timeout(now);
                        self.after_conn_change(k);
                    }
                }
                TimerKey::Handshake(fd) => {
                    if self.handshakes.get(&fd).is_some_and(|h| h.deadline == t) {
                        self.drop_handshake(fd, &"no CONNECT line in time");
                    }
                }
                TimerKey::Listener => {
                    if self.listener_paused_until == Some(t) {
                        self.listener_paused_until = None;
                    }
                }
            }
        }
        if self.killq.len() > KILLQ_REBUILD {
            let live: Vec<_> = self
                .conns
                .iter()
                .filter_map(|(k, e)| e.queued_expiry.map(|t| (t, TimerKey::Conn(*k))))
                .chain(
                    self.handshakes
                        .iter()
                        .map(|(fd, h)| (h.deadline, TimerKey::Handshake(*fd))),
                )
                .chain(self.listener_paused_until.map(|t| (t, TimerKey::Listener)))
                .collect();
            self.killq.rebuild(live);
        }
    }

    // ---- lifecycle ----------------------------------------------------

    /// Drops every connection and handshake without telling the guest
    /// (device or transport reset: the guest forgets them too). Host
    /// clients see their sockets close once [`Self::sync_epoll`] runs.
    pub fn kill_all(&mut self) {
        for (_, mut e) in self.conns.drain() {
            e.conn.close();
            let fd = e.conn.fd();
            self.dirty.insert(fd);
            self.graveyard.push(e.conn.into_stream().into_inner());
        }
        for (fd, hs) in self.handshakes.drain() {
            self.dirty.insert(fd);
            self.graveyard.push(hs.stream);
        }
        self.fd_owner.clear();
        self.local_ports.clear();
        self.rxq.clear();
        self.killq.clear();
        if let Some(t) = self.listener_paused_until {
            self.killq.push(t, TimerKey::Listener);
        }
    }

    /// Brings epoll in line with what every touched descriptor needs, and
    /// closes the descriptors of dropped connections (after unwatching).
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for s in std::mem::take(&mut self.graveyard) {
            let fd = s.as_raw_fd();
            if self.registered.remove(&fd).is_some() {
                let _ = ops.remove(Events::empty_raw(fd));
            }
            self.dirty.remove(&fd);
            drop(s);
        }
        for fd in std::mem::take(&mut self.dirty) {
            let want = if let Some(key) = self.fd_owner.get(&fd) {
                self.conns
                    .get(key)
                    .map_or(EventSet::empty(), |e| e.conn.interest())
            } else if self.handshakes.contains_key(&fd) {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            let have = self.registered.get(&fd).copied();
            let res = match have {
                None if want.is_empty() => Ok(()),
                None => ops
                    .add(Events::with_data_raw(fd, TAG_CONN, want))
                    .map(|()| {
                        self.registered.insert(fd, want);
                    }),
                Some(_) if want.is_empty() => {
                    self.registered.remove(&fd);
                    ops.remove(Events::empty_raw(fd))
                }
                Some(h) if h != want => {
                    ops.modify(Events::with_data_raw(fd, TAG_CONN, want))
                        .map(|()| {
                            self.registered.insert(fd, want);
                        })
                }
                Some(_) => Ok(()),
            };
            if let Err(e) = res {
                warn!("virtio-vsock: cannot update epoll for descriptor {fd}: {e:?}");
            }
        }
        let want_listener = self.listener_paused_until.is_none();
        if want_listener != self.listener_registered {
            let ev = Events::with_data(&self.listener, TAG_LISTENER, EventSet::IN);
            let res = if want_listener {
                ops.add(ev)
            } else {
                ops.remove(ev)
            };
            match res {
                Ok(()) => self.listener_registered = want_listener,
                Err(e) => warn!("virtio-vsock: cannot update epoll for the listener: {e:?}"),
            }
        }
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        // Remove the socket file if it is still the one we created.
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.listener_id {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

/// Binds `path`, replacing a stale socket file that nobody listens on.
fn bind_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    let bind_err = |source| MuxerError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
            if !meta.file_type().is_socket() {
                return Err(MuxerError::NotSocket(path.to_owned()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(MuxerError::InUse(path.to_owned()));
            }
            // Left behind by a VMM that died: nobody listens.
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map_err(bind_err)?
        }
        Err(e) => return Err(bind_err(e)),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}
