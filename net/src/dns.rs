//! The embedded DNS server, one per network (Docker's model).
//!
//! Each listens on its network's gateway address, port 53, UDP and TCP
//! (the `input` chain admits exactly that from the network's bridge). On
//! a user network it answers A (and an empty AAAA: guests are IPv4-only)
//! for the sandbox names and aliases of that network, and PTR for their
//! addresses; names of other networks are not known to it, so they never
//! resolve across networks. Everything else is forwarded to the host's
//! resolvers (from `/etc/resolv.conf`, or [`crate::Config::dns_upstreams`]):
//! mvmd runs on the host, so a loopback resolver such as systemd-resolved's
//! 127.0.0.53 works. The default network only forwards (no names there,
//! as in Docker); an internal network answers its names and refuses the
//! rest (it has no way out).
//!
//! Packets are parsed with `hickory-proto` (queries are hostile input:
//! they come from guests); a malformed query gets no answer, or FORMERR
//! when its header could be read. Forwarded replies are relayed verbatim;
//! queries that came over TCP are forwarded over UDP too (an upstream
//! answer too large for UDP reaches the client truncated, with TC set).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::spec::{DesiredState, NetworkSpec};

/// TTL of the answers for sandbox names: short, as they come and go.
pub const TTL: u32 = 10;
/// How long one upstream resolver has to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Most queries of one server in flight at once (forwarding included).
pub const MAX_IN_FLIGHT: usize = 256;
/// Most A records in one answer (a name several sandboxes share).
pub const MAX_ANSWERS: usize = 16;

/// Why a DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr} ({proto}): {source}; is another DNS server bound to the network's gateway address?")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What one server knows: the network's names, and what to do with the
/// rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Zone {
    pub subnet: Option<Ipv4Net>,
    /// Lower-case names without a final dot, to addresses.
    pub names: HashMap<String, Vec<Ipv4Addr>>,
    /// Address to the first name of its endpoint.
    pub ptr: HashMap<Ipv4Addr, String>,
    /// Whether to forward what is not a sandbox name.
    pub forward: bool,
}

impl Zone {
    /// The zone of `network` in `state`.
    pub fn of(state: &DesiredState, network: &NetworkSpec) -> Self {
        let mut z = Zone {
            subnet: Some(network.subnet),
            forward: !network.internal,
            ..Default::default()
        };
        if !network.resolves_names() {
            return z;
        }
        for e in state.endpoints.iter().filter(|e| e.network == network.id) {
            for n in &e.dns_names {
                let key = n.trim_end_matches('.').to_ascii_lowercase();
                let v = z.names.entry(key.clone()).or_default();
                if !v.contains(&e.ip) {
                    v.push(e.ip);
                }
                z.ptr.entry(e.ip).or_insert(key);
            }
        }
        z
    }
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    zone: Arc<RwLock<Zone>>,
    addr: Ipv4Addr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnsServer {
    /// Binds `addr:53` (UDP and TCP) and serves `zone`, forwarding to
    /// `upstreams`.
    pub async fn start(
        addr: Ipv4Addr,
        zone: Zone,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Self, DnsError> {
        let sa = SocketAddr::new(IpAddr::V4(addr), 53);
        let udp = UdpSocket::bind(sa).await.map_err(|source| DnsError::Bind {
            addr: sa,
            proto: "udp",
            source,
        })?;
        let tcp = TcpListener::bind(sa)
            .await
            .map_err(|source| DnsError::Bind {
                addr: sa,
                proto: "tcp",
                source,
            })?;
        let zone = Arc::new(RwLock::new(zone));
        let ctx = Arc::new(Ctx {
            zone: zone.clone(),
            upstreams,
            limit: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), ctx.clone())),
            tokio::spawn(serve_tcp(tcp, ctx)),
        ];
        Ok(Self { zone, addr, tasks })
    }

    /// The address it listens on.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Replaces the names it answers (endpoints came or went).
    pub fn set_zone(&self, zone: Zone) {
        if let Ok(mut z) = self.zone.write() {
            *z = zone;
        }
    }
}

struct Ctx {
    zone: Arc<RwLock<Zone>>,
    upstreams: Vec<SocketAddr>,
    /// Queries beyond it are dropped (the client retries).
    limit: Arc<Semaphore>,
}

async fn serve_udp(sock: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let q = buf[..n].to_vec();
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            continue;
        };
        let (sock, ctx) = (sock.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Some(reply) = ctx.answer(&q, from).await {
                let _ = sock.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(l: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let Ok((mut c, from)) = l.accept().await else {
            continue;
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            // One query after another on the connection, each a 2-byte
            // length and a message; an idle client is dropped.
            loop {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(UPSTREAM_TIMEOUT * 3, c.read_exact(&mut len)).await;
                if !matches!(read, Ok(Ok(_))) {
                    break;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len).into()];
                if c.read_exact(&mut q).await.is_err() {
                    break;
                }
                let Some(reply) = ctx.answer(&q, from).await else {
                    break;
                };
                let Ok(rlen) = u16::try_from(reply.len()) else {
                    break;
                };
                if c.write_all(&rlen.to_be_bytes()).await.is_err()
                    || c.write_all(&reply).await.is_err()
                {
                    break;
                }
            }
            drop(permit);
        });
    }
}

impl Ctx {
    /// The reply to one query from `from`, or `None` to stay silent.
    async fn answer(&self, q: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let Ok(msg) = Message::from_vec(q) else {
            // Unparsable: FORMERR if there is an id to answer to.
            let id = u16::from_be_bytes([*q.first()?, *q.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let id = msg.metadata.id;
        let op = msg.metadata.op_code;
        if op != OpCode::Query || msg.queries.len() != 1 {
            return Message::error_msg(id, op, ResponseCode::NotImp)
                .to_vec()
                .ok();
        }
        let zone = self.zone.read().ok()?.clone();
        let client_ok = match (from.ip(), zone.subnet) {
            (IpAddr::V4(ip), Some(s)) => s.contains(&ip),
            _ => false,
        };
        if !client_ok {
            return Message::error_msg(id, op, ResponseCode::Refused)
                .to_vec()
                .ok();
        }
        let query = &msg.queries[0];
        if let Some(records) = local(&zone, query.name(), query.query_type()) {
            let mut r = Message::response(id, op);
            r.metadata.authoritative = true;
            r.metadata.recursion_desired = msg.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_query(query.clone());
            r.add_answers(records);
            return r.to_vec().ok();
        }
        if zone.forward {
            if let Some(reply) = self.forward(q, id).await {
                return Some(reply);
            }
            return Message::error_msg(id, op, ResponseCode::ServFail)
                .to_vec()
                .ok();
        }
        let mut r = Message::error_msg(id, op, ResponseCode::Refused);
        r.add_query(query.clone());
        r.to_vec().ok()
    }

    /// Sends the query as it came to each upstream in turn; the first
    /// reply with the query's id wins.
    async fn forward(&self, q: &[u8], id: u16) -> Option<Vec<u8>> {
        for up in &self.upstreams {
            let bind: SocketAddr = if up.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(s) = UdpSocket::bind(bind).await else {
                continue;
            };
            if s.connect(up).await.is_err() || s.send(q).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65536];
            let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        }
        None
    }
}

/// The answer records for a name of the zone, or `None` if the name is
/// not the zone's (forward it).
fn local(zone: &Zone, name: &Name, ty: RecordType) -> Option<Vec<Record>> {
    let key = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if let Some(ips) = zone.names.get(&key) {
        return Some(match ty {
            RecordType::A | RecordType::ANY => ips
                .iter()
                .take(MAX_ANSWERS)
                .map(|ip| Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))))
                .collect(),
            // The name exists, but has no record of this type.
            _ => Vec::new(),
        });
    }
    if ty == RecordType::PTR {
        if let Ok(ipnet::IpNet::V4(net)) = name.parse_arpa_name() {
            if net.prefix_len() == 32 {
                if let Some(host) = zone.ptr.get(&net.addr()) {
                    let target = Name::from_ascii(format!("{host}.")).ok()?;
                    return Some(vec![Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    )]);
                }
            }
        }
    }
    None
}

/// The host's resolvers: `nameserver` lines of `/etc/resolv.conf`
/// (port 53). Unreadable or empty: none (forwarded queries then fail with
/// SERVFAIL, which guests report clearly).
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    std::fs::read_to_string(resolv_conf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{ep, net};

    #[test]
    fn zones_hold_their_networks_names_only() {
        let mut e2 = ep("e2", "bb", "10.1.0.2");
        e2.dns_names = vec!["Web.".into()];
        let mut e1 = ep("e1", "aa", "172.30.0.2");
        e1.dns_names = vec!["web".into(), "alias".into()];
        let s = DesiredState {
            networks: vec![net("aa", "172.30.0.0/16"), net("bb", "10.1.0.0/24")],
            endpoints: vec![e1, e2],
            ports: vec![],
        };
        let z = Zone::of(&s, &s.networks[1]);
        assert_eq!(z.names.len(), 1);
        assert_eq!(
            z.names["web"],
            vec!["10.1.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        let name = Name::from_ascii("WEB.").unwrap();
        let r = local(&z, &name, RecordType::A).unwrap();
        assert_eq!(r.len(), 1);
        assert!(local(&z, &Name::from_ascii("alias.").unwrap(), RecordType::A).is_none());
        assert!(local(&z, &name, RecordType::AAAA).unwrap().is_empty());
        let arpa = Name::from_ascii("2.0.1.10.in-addr.arpa.").unwrap();
        assert_eq!(local(&z, &arpa, RecordType::PTR).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn hostile_queries_get_an_error_or_nothing() {
        let mut e = ep("e1", "aa", "172.30.0.2");
        e.dns_names = vec!["web".into()];
        let s = DesiredState {
            networks: vec![net("aa", "172.30.0.0/16")],
            endpoints: vec![e],
            ports: vec![],
        };
        let ctx = Ctx {
            zone: Arc::new(RwLock::new(Zone::of(&s, &s.networks[0]))),
            upstreams: vec![],
            limit: Arc::new(Semaphore::new(1)),
        };
        let guest: SocketAddr = "172.30.0.2:4000".parse().unwrap();
        let code =
            |r: Option<Vec<u8>>| r.map(|b| Message::from_vec(&b).unwrap().metadata.response_code);
        // Too short for an id: silence. A header claiming a question it
        // lacks, a compression loop: FORMERR.
        assert_eq!(code(ctx.answer(&[], guest).await), None);
        assert_eq!(code(ctx.answer(&[1], guest).await), None);
        let header_only = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            code(ctx.answer(&header_only, guest).await),
            Some(ResponseCode::FormErr)
        );
        let mut looped = header_only.to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(
            code(ctx.answer(&looped, guest).await),
            Some(ResponseCode::FormErr)
        );
        // A response is not answered; two questions are not implemented.
        let mut q = Message::query();
        q.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut resp = q.clone();
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(code(ctx.answer(&resp.to_vec().unwrap(), guest).await), None);
        let mut two = q.clone();
        two.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("x.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            code(ctx.answer(&two.to_vec().unwrap(), guest).await),
            Some(ResponseCode::NotImp)
        );
        // Not from the network: refused. From it: answered.
        let outsider: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        let bytes = q.to_vec().unwrap();
        assert_eq!(
            code(ctx.answer(&bytes, outsider).await),
            Some(ResponseCode::Refused)
        );
        assert_eq!(
            code(ctx.answer(&bytes, guest).await),
            Some(ResponseCode::NoError)
        );
        // Nowhere to forward: SERVFAIL, not silence.
        let mut other = Message::query();
        other.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let r = ctx.answer(&other.to_vec().unwrap(), guest).await;
        assert_eq!(code(r), Some(ResponseCode::ServFail));
        // Random bytes never panic.
        let mut x: u32 = 0x2545_f491;
        for len in 0..600 {
            let buf: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = ctx.answer(&buf, guest).await;
        }
    }

    #[test]
    fn resolv_conf_is_read() {
        let p = std::env::temp_dir().join(format!("mvm-net-resolv-{}", std::process::id()));
        std::fs::write(
            &p,
            "# x\nnameserver 127.0.0.53\nsearch lan\nnameserver fe80::1%eth0\nnameserver bad\n",
        )
        .unwrap();
        let r = host_resolvers(p.to_str().unwrap());
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            r,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
