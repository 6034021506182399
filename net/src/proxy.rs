//! The userspace port proxy: what DNAT cannot reach.
//!
//! DNAT rewrites traffic to a host address, but not traffic to the
//! loopback addresses (the kernel does not route 127.0.0.1 out of `lo`),
//! so, as `docker-proxy` does, every published port also gets a listener
//! on its host address (default `0.0.0.0` and `[::]`) relaying TCP
//! connections and UDP datagrams to the guest. What reaches a non-loopback
//! host address is DNATed before it reaches the listener; what reaches
//! loopback (and `::`, since guests have no IPv6) is relayed here.
//!
//! Binding is also the port-in-use check: [`bind`] takes the sockets
//! before anything else of a publication exists, and its error names the
//! port and, when `/proc` says, the process holding it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Weak};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

use crate::spec::{PortSpec, Protocol};

/// How long a UDP flow (one client address) lives without traffic.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// Most UDP flows of one publication at once: each holds a socket, and
/// anyone who reaches the port can make new ones. Datagrams of further
/// clients are dropped until a flow idles out.
pub const MAX_UDP_FLOWS: usize = 1024;

/// A proxy socket whose receive or accept fails (out of descriptors or
/// memory: the error is the socket's, not a peer's) is retried after a
/// pause that doubles from 5 ms up to 1 s while the failures last, as Go's
/// HTTP server does with accept: retrying at once would spin a core and
/// flood the log for as long as the condition lasts.
struct Backoff {
    pause: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Backoff {
            pause: Duration::ZERO,
        }
    }

    /// A success: the next failure starts a new streak.
    fn reset(&mut self) {
        self.pause = Duration::ZERO;
    }

    /// The pause after `pause`.
    fn next(pause: Duration) -> Duration {
        if pause.is_zero() {
            Self::FIRST
        } else {
            (pause * 2).min(Self::MAX)
        }
    }

    /// A failure: warns on the first of a streak, then waits.
    async fn failed(&mut self, what: &str, e: &std::io::Error) {
        if self.pause.is_zero() {
            tracing::warn!(error = %e, "port proxy {what} failed; retrying with a back-off");
        }
        self.pause = Self::next(self.pause);
        tokio::time::sleep(self.pause).await;
    }
}

/// Why a publication's sockets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("host port {addr}/{protocol} is already in use{holder}; choose another host port or stop what holds it")]
    InUse {
        addr: SocketAddr,
        protocol: Protocol,
        holder: String,
    },
    #[error("cannot listen on {addr}/{protocol}: {source}; check that the address is one of this host's")]
    Bind {
        addr: SocketAddr,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
}

/// The sockets of one publication, bound but not yet relaying.
#[derive(Debug)]
pub struct Bound {
    protocol: Protocol,
    sockets: Vec<std::net::TcpListener>,
    datagrams: Vec<std::net::UdpSocket>,
}

impl Bound {
    /// The port actually bound (the ephemeral one when 0 was asked).
    pub fn port(&self) -> u16 {
        self.sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .or_else(|| self.datagrams.first().and_then(|s| s.local_addr().ok()))
            .map_or(0, |a| a.port())
    }
}

fn bind_one(addr: SocketAddr, protocol: Protocol) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let s = Socket::new(domain, ty, None)?;
    if addr.is_ipv6() {
        // `[::]` must not take the IPv4 port too: `0.0.0.0` has it.
        s.set_only_v6(true)?;
    }
    if protocol == Protocol::Tcp {
        // As every server does: a port whose old connections linger in
        // TIME_WAIT can be listened on again at once.
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if protocol == Protocol::Tcp {
        s.listen(1024)?;
    }
    Ok(s)
}

/// Binds a publication's listeners: on its host address, or on `0.0.0.0`
/// and `[::]` (skipped if the host has no IPv6). Port 0 binds an
/// ephemeral port, the same one on both families.
pub fn bind(protocol: Protocol, host_ip: Option<IpAddr>, port: u16) -> Result<Bound, ProxyError> {
    let mut b = Bound {
        protocol,
        sockets: Vec::new(),
        datagrams: Vec::new(),
    };
    let first: IpAddr = host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut port = port;
    let mut addrs = vec![(first, false)];
    if host_ip.is_none() {
        addrs.push((IpAddr::V6(Ipv6Addr::UNSPECIFIED), true));
    }
    for (ip, optional) in addrs {
        let addr = SocketAddr::new(ip, port);
        let s = match bind_one(addr, protocol) {
            Ok(s) => s,
            Err(e) if optional && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => continue,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(ProxyError::InUse {
                    addr,
                    protocol,
                    holder: holder(protocol, port).map_or(String::new(), |h| format!(" (by {h})")),
                })
            }
            Err(source) => {
                return Err(ProxyError::Bind {
                    addr,
                    protocol,
                    source,
                })
            }
        };
        if port == 0 {
            port = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map_or(0, |a| a.port());
        }
        match protocol {
            Protocol::Tcp => b.sockets.push(s.into()),
            Protocol::Udp => b.datagrams.push(s.into()),
        }
    }
    Ok(b)
}

/// Who listens on `port`, from `/proc/net/{tcp,udp}{,6}` and the
/// processes' descriptors: `pid 123 (nginx)`. Best effort, `None` if
/// unknown (another namespace, no permission).
pub fn holder(protocol: Protocol, port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for v in ["", "6"] {
        // thread-self: the calling thread's namespace, not the main thread's.
        let path = format!("/proc/thread-self/net/{}{v}", protocol.as_str());
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            // 0A is LISTEN for TCP; UDP sockets are 07 (CLOSE) when bound.
            let bound = protocol == Protocol::Udp || *state == "0A";
            if p == Some(port) && bound && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    let comm =
                        std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                    return Some(format!("pid {pid} ({})", comm.trim()));
                }
            }
        }
    }
    None
}

/// A running relay. [`Proxy::stop`] ends it and returns once its sockets
/// are closed; dropping it only starts that (the tasks end a moment
/// later, on the runtime's threads).
///
/// Everything a relay starts (a TCP connection's copy, a UDP flow's
/// reply path) is a task of the relay's own [`JoinSet`], so it ends with
/// the relay, and holds the relay's listening socket at most weakly, so
/// the port is closed when the relay's task ends. (A flow's reply task
/// was once a task of its own holding that socket: the host port stayed
/// bound for up to [`UDP_IDLE`] after it was unpublished, and a stopped
/// sandbox's UDP port could not be published again meanwhile; proxied
/// TCP connections to a stopped guest lived until TCP gave up.)
#[derive(Debug)]
pub struct Proxy {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Proxy {
    /// Starts relaying `bound`'s traffic to `target` (the guest's
    /// address and port). Must be called inside a tokio runtime.
    pub fn start(bound: Bound, target: SocketAddrV4) -> io::Result<Self> {
        let mut tasks = Vec::new();
        for l in bound.sockets {
            let l = TcpListener::from_std(l)?;
            tasks.push(tokio::spawn(tcp_relay(l, target)));
        }
        for u in bound.datagrams {
            let u = Arc::new(UdpSocket::from_std(u)?);
            tasks.push(tokio::spawn(udp_relay(u, target)));
        }
        let _ = bound.protocol;
        Ok(Self { tasks })
    }

    /// Ends the relay and everything it started; when this returns, its
    /// sockets are closed and the host port is free (so the same port
    /// can be bound again at once, by a new publication or anyone).
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Cancelled (or, had it ended, finished): either way its
            // future, and with it its sockets, is gone.
            let _ = t.await;
        }
    }
}

async fn tcp_relay(l: TcpListener, target: SocketAddrV4) {
    let mut conns = JoinSet::new();
    let mut backoff = Backoff::new();
    loop {
        // Reap finished connections (their results are nothing).
        while conns.try_join_next().is_some() {}
        let (mut client, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: keep serving.
                backoff.failed("accept", &e).await;
                continue;
            }
        };
        backoff.reset();
        conns.spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut guest) => {
                    let _ = client.set_nodelay(true);
                    let _ = guest.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
                }
                Err(e) => {
                    tracing::debug!(%peer, %target, error = %e, "guest refused a proxied connection")
                }
            }
        });
    }
}

async fn udp_relay(outer: Arc<UdpSocket>, target: SocketAddrV4) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut backs = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    let mut backoff = Backoff::new();
    loop {
        let (n, client) = match outer.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                backoff.failed("receive", &e).await;
                continue;
            }
        };
        backoff.reset();
        while backs.try_join_next().is_some() {}
        let flow = {
            let mut f = flows.lock().await;
            match f.get(&client) {
                Some(s) => s.clone(),
                None if f.len() >= MAX_UDP_FLOWS => continue,
                None => {
                    let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                        continue;
                    };
                    if s.connect(target).await.is_err() {
                        continue;
                    }
                    let s = Arc::new(s);
                    f.insert(client, s.clone());
                    backs.spawn(udp_back(
                        Arc::downgrade(&outer),
                        s.clone(),
                        client,
                        flows.clone(),
                    ));
                    s
                }
            }
        };
        let _ = flow.send(&buf[..n]).await;
    }
}

/// Relays a flow's replies back to its client until it idles out or the
/// relay ends. It holds the relay's socket weakly: the relay's own task
/// holds the only strong reference, so the host port is closed the moment
/// that task ends, not when this one (aborted with it) next runs.
async fn udp_back(
    outer: Weak<UdpSocket>,
    flow: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, flow.recv(&mut buf)).await {
        let Some(outer) = outer.upgrade() else { return };
        let _ = outer.send_to(&buf[..n], client).await;
    }
    flows.lock().await.remove(&client);
}

/// The sockets of a publication as a [`PortSpec`] names them.
pub fn bind_spec(p: &PortSpec) -> Result<Bound, ProxyError> {
    bind(p.protocol, p.host_ip, p.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_to_a_ceiling() {
        let mut p = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            p = Backoff::next(p);
            seen.push(p.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[tokio::test]
    async fn a_failure_waits_and_a_success_starts_a_new_streak() {
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut b = Backoff::new();
        let t0 = std::time::Instant::now();
        b.failed("accept", &e).await;
        b.failed("accept", &e).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(15),
            "it waited 5 + 10 ms"
        );
        assert_eq!(b.pause, Duration::from_millis(10));
        b.reset();
        b.failed("accept", &e).await;
        assert_eq!(b.pause, Backoff::FIRST);
    }

    #[test]
    fn a_taken_port_is_refused_naming_its_holder() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = bind(Protocol::Tcp, Some("127.0.0.1".parse().unwrap()), port)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port}/tcp is already in use")),
            "{e}"
        );
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        let b = bind(Protocol::Udp, None, 0).unwrap();
        assert_ne!(b.port(), 0);
    }

    /// A relay with a live UDP flow and an open TCP connection: once
    /// `stop` returns, both host ports bind again (a flow's reply task
    /// held the UDP socket for `UDP_IDLE` before), and the proxied
    /// connection is closed (it lived on until TCP gave up before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_frees_the_ports_and_ends_flows_and_connections() {
        use tokio::io::AsyncReadExt;
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => panic!("{a}"),
        };
        // The "guest": a UDP echo server, and a TCP server that accepts
        // and never answers.
        let guest_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let guest_tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gu = v4(guest_udp.local_addr().unwrap());
        let gt = v4(guest_tcp.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = guest_udp.recv_from(&mut buf).await {
                let _ = guest_udp.send_to(&buf[..n], from).await;
            }
        });
        let accepted = tokio::spawn(async move { guest_tcp.accept().await.map(|(s, _)| s) });
        let lo = Some(IpAddr::from(Ipv4Addr::LOCALHOST));
        let bound = bind(Protocol::Udp, lo, 0).unwrap();
        let udp_port = bound.port();
        let udp = Proxy::start(bound, gu).unwrap();
        let bound = bind(Protocol::Tcp, lo, 0).unwrap();
        let tcp_port = bound.port();
        let tcp = Proxy::start(bound, gt).unwrap();

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(("127.0.0.1", udp_port)).await.unwrap();
        client.send(b"ping").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("an answer through the relay")
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        let mut conn = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
        let _guest_end = accepted.await.unwrap().unwrap();

        udp.stop().await;
        tcp.stop().await;
        std::net::UdpSocket::bind(("127.0.0.1", udp_port))
            .expect("the UDP port is free once stop returns");
        std::net::TcpListener::bind(("127.0.0.1", tcp_port))
            .expect("the TCP port is free once stop returns");
        let r = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the proxied connection ends with its relay");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}
