//! Fixtures: fresh network namespaces standing for the host, for guests
//! (attached by veth where a TAP would be) and for the outside world, so
//! that every object and packet of a test stays inside namespaces the
//! test made. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip`, `nft`.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mvm_net::ipam;
use mvm_net::spec::{EndpointSpec, NetworkKind, NetworkSpec, DEFAULT_MTU};

/// How long a connection that should work may take, and how long one
/// that should be dropped is given before it counts as dropped (generous:
/// `make test` runs suites side by side on two shared cores).
pub const WAIT: Duration = Duration::from_secs(3);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, panicking with its stderr.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted with everything in it on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "mvmnet-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a new thread inside the namespace; blocks until done.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// `nft ARGS` inside the namespace, its stdout.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a namespace descriptor we own; it affects only the
    // calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs an async test body with a current-thread runtime on a thread in
/// `host`: the library under test lives there, as mvmd lives in the
/// host's namespace. Client checks go through `spawn_blocking` +
/// [`Ns::run`] so the runtime keeps serving the proxies meanwhile.
/// The runtime, and every task and socket on it, is gone when this
/// returns: what an mvmd crash leaves is the kernel's state only.
pub fn in_host<T, F, Fut>(host: &Ns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let path = format!("/var/run/netns/{}", host.name);
    std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A user network for tests.
pub fn network(id: &str, subnet: &str) -> NetworkSpec {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    NetworkSpec {
        id: id.into(),
        name: format!("net-{id}"),
        kind: NetworkKind::User,
        subnet,
        gateway: ipam::gateway_of(subnet),
        internal: false,
        mtu: DEFAULT_MTU,
    }
}

pub fn endpoint(id: &str, net: &NetworkSpec, ip: &str, names: &[&str]) -> EndpointSpec {
    let ip: Ipv4Addr = ip.parse().unwrap();
    EndpointSpec {
        id: id.into(),
        network: net.id.clone(),
        sandbox: format!("sandbox-{id}"),
        ip,
        mac: ipam::mac_for(ip),
        dns_names: names.iter().map(|s| s.to_string()).collect(),
    }
}

/// A "guest": a namespace whose `eth0` is the peer of a veth named as the
/// endpoint's port in `host` (where the VMM's TAP would be), configured
/// as the guest's init would from the launch spec.
pub fn guest(host: &Ns, e: &EndpointSpec, n: &NetworkSpec) -> Ns {
    let g = Ns::new(&format!("g{}", e.id));
    host.ip(&[
        "link",
        "add",
        &e.port(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &g.name,
    ]);
    g.ip(&["link", "set", "eth0", "address", &e.mac.to_string()]);
    g.ip(&[
        "addr",
        "add",
        &format!("{}/{}", e.ip, n.subnet.prefix_len()),
        "dev",
        "eth0",
    ]);
    g.ip(&["link", "set", "eth0", "up"]);
    g.ip(&["route", "add", "default", "via", &n.gateway.to_string()]);
    g
}

/// The "outside world": a namespace joined to `host` by veth `uplink`,
/// host side 192.0.2.1/24, outside 192.0.2.2/24 (TEST-NET-1, existing only
/// in these namespaces). The outside has no route to any guest subnet, so
/// only masqueraded traffic gets replies.
pub fn outside(host: &Ns) -> Ns {
    let o = Ns::new("out");
    host.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &o.name,
    ]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink"]);
    host.ip(&["link", "set", "uplink", "up"]);
    o.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    o.ip(&["link", "set", "eth0", "up"]);
    o
}

/// A TCP server in `ns` on `addr` that writes each client's address (as
/// it sees it) and echoes what it reads. Serves until the namespace goes.
pub fn tcp_server(ns: &Ns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let l = ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let peer = c.peer_addr().unwrap().ip().to_string();
                let _ = c.write_all(format!("{peer}\n").as_bytes());
                let mut buf = [0u8; 65536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A UDP server in `ns` that answers each datagram with the sender's
/// address and the datagram.
pub fn udp_server(ns: &Ns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = ns.run(move || UdpSocket::bind(addr).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = format!("{} ", from.ip()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from);
        }
    });
}

/// From `ns`, connects to `to` and returns the first line the server
/// sends (the client's address as the server saw it), or the error.
pub fn tcp_hello(ns: &Ns, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    ns.run(move || {
        let mut c = TcpStream::connect_timeout(&to, WAIT).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while c.read(&mut b).map_err(|e| e.to_string())? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
}

/// From `ns`, sends one datagram to `to` and returns the reply.
pub fn udp_ask(ns: &Ns, to: &str, msg: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    let msg = msg.to_owned();
    ns.run(move || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.send_to(msg.as_bytes(), to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// Runs a blocking check off the runtime thread.
pub async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Removes `"handle": N` members, which the kernel renumbers when a
/// table is recreated, so two listings compare by content.
pub fn strip_handles(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("handle");
            m.values_mut().for_each(strip_handles);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// From `ns`, asks the DNS server at `server` (UDP, or TCP if `tcp`) for
/// the A records of `name`; returns the addresses, or the response code.
pub fn dns_a(ns: &Ns, server: &str, name: &str, tcp: bool) -> Result<Vec<Ipv4Addr>, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let server: SocketAddr = server.parse().unwrap();
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = q.to_vec().unwrap();
    let reply = ns.run(move || -> Result<Vec<u8>, String> {
        if tcp {
            let mut c = TcpStream::connect_timeout(&server, WAIT).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(WAIT)).unwrap();
            c.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
            c.write_all(&bytes).unwrap();
            let mut len = [0u8; 2];
            c.read_exact(&mut len).map_err(|e| e.to_string())?;
            let mut r = vec![0u8; u16::from_be_bytes(len).into()];
            c.read_exact(&mut r).map_err(|e| e.to_string())?;
            Ok(r)
        } else {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.send_to(&bytes, server).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf[..n].to_vec())
        }
    })?;
    let m = Message::from_vec(&reply).map_err(|e| e.to_string())?;
    assert_eq!(m.metadata.id, q.metadata.id);
    if m.metadata.response_code != hickory_proto::op::ResponseCode::NoError {
        return Err(m.metadata.response_code.to_string());
    }
    Ok(m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// A fake upstream resolver in `ns` at `addr`: answers every A query
/// with `answer`, so forwarded names are recognisable.
pub fn fake_resolver(ns: &Ns, addr: &str, answer: Ipv4Addr) {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let addr: SocketAddr = addr.parse().unwrap();
    let s = ns.run(move || UdpSocket::bind(addr).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            for query in &q.queries {
                r.add_query(query.clone());
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(answer)),
                ));
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from);
        }
    });
}
