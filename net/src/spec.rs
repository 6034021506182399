//! The desired state: what mvmd wants the host's networking to be.
//!
//! mvmd owns these records (it persists them in SQLite, as JSON); this
//! library owns the kernel objects and the servers that realise them and
//! brings the host to exactly this state on every
//! `HostNet::apply`. The state is always complete
//! (every network, endpoint and published port), never a delta, so that
//! after a restart or a crash of mvmd one call repairs everything.
//!
//! Validation is strict: a state that would make the rules ambiguous
//! (overlapping subnets, two endpoints with one address, two publications
//! of one host port, ids whose interface names collide) is refused as a
//! whole with an error naming the offending record, before anything on
//! the host changes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use mvm_vmm_api::MacAddr;
use serde::{Deserialize, Serialize};

use crate::names;

/// The smallest MTU a network may have (the VMM's lower bound).
pub const MIN_MTU: u16 = mvm_vmm_api::config::MIN_MTU;
/// The default MTU of a network.
pub const DEFAULT_MTU: u16 = 1500;
/// The longest subnet prefix a network may have: a /30 holds the gateway
/// and one endpoint.
pub const MAX_PREFIX_LEN: u8 = 30;
/// The shortest: a /8 (more is not private space and not useful).
pub const MIN_PREFIX_LEN: u8 = 8;
/// Most names (sandbox name, aliases) one endpoint may carry.
pub const MAX_NAMES_PER_ENDPOINT: usize = 64;

/// Which of Docker's two kinds of bridge network a network is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// Docker's default `bridge` network: bridge [`names::DEFAULT_BRIDGE`];
    /// its DNS server only forwards, names do not resolve there (as in
    /// Docker). At most one.
    Default,
    /// A user-defined network: bridge `mvmb-<id>`; sandbox names and
    /// aliases resolve to their addresses for sandboxes on the network.
    #[default]
    User,
}

/// One network: a bridge with the gateway address, its subnet, its DNS
/// server, its NAT and isolation rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// mvmd's id (lower-case hex); its first [`names::SHORT_ID_LEN`]
    /// characters name the bridge.
    pub id: String,
    /// The user's name for it (`bridge`, `mynet`), for messages.
    pub name: String,
    #[serde(default)]
    pub kind: NetworkKind,
    /// The subnet; chosen with [`crate::ipam`].
    pub subnet: Ipv4Net,
    /// The bridge's address, the guests' default gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// Docker's `--internal`: no route out, no NAT, no published ports;
    /// the DNS server answers names but forwards nothing.
    #[serde(default)]
    pub internal: bool,
    /// MTU of the bridge, its ports and the guests' interfaces.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl NetworkSpec {
    /// The bridge's interface name.
    pub fn bridge(&self) -> String {
        match self.kind {
            NetworkKind::Default => names::DEFAULT_BRIDGE.to_owned(),
            NetworkKind::User => names::bridge_name(&self.id),
        }
    }

    /// Whether sandbox names resolve on this network.
    pub fn resolves_names(&self) -> bool {
        self.kind == NetworkKind::User
    }

    /// The gateway with the subnet's prefix, as it sits on the bridge.
    pub fn gateway_cidr(&self) -> Ipv4Net {
        // The prefix length comes from a valid Ipv4Net.
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

/// One sandbox's attachment to one network: a bridge port (the TAP its
/// VMM opens) with an address and a MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// mvmd's id (lower-case hex); its first [`names::SHORT_ID_LEN`]
    /// characters name the TAP.
    pub id: String,
    /// The network's id.
    pub network: String,
    /// The sandbox's id, for messages.
    #[serde(default)]
    pub sandbox: String,
    /// The guest's address on the network (from [`crate::ipam`]).
    pub ip: Ipv4Addr,
    /// The guest's MAC ([`crate::ipam::mac_for`]); the only source MAC its
    /// port accepts.
    pub mac: MacAddr,
    /// Names that resolve to `ip` for the network's sandboxes: the
    /// sandbox's name, its `--network-alias`es, its short id. Matched
    /// without regard to case. Ignored on the default network.
    #[serde(default)]
    pub dns_names: Vec<String>,
}

impl EndpointSpec {
    /// The bridge port's interface name (the TAP the VMM opens).
    pub fn port(&self) -> String {
        names::port_name(&self.id)
    }
}

/// A transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port (`-p`), with a concrete host port: ranges are
/// expanded and ephemeral ports resolved by
/// `HostNet::reserve_ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The endpoint whose guest receives the traffic.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// The host address it listens on; `None` for all of them (`0.0.0.0`
    /// and `[::]`, Docker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The host port (not 0).
    pub host_port: u16,
    /// The port in the guest.
    pub guest_port: u16,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port, self.guest_port, self.protocol
        )
    }
}

/// Whether two host addresses of publications can both take one port:
/// not if either listens on all addresses of its family (or of both).
pub(crate) fn host_ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        }
    }
}

/// Everything mvm's host networking should be, all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// Why a desired state is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{what} id {id:?} is invalid: it must be 1 to 64 lower-case letters and digits")]
    BadId { what: &'static str, id: String },
    #[error("{what} id {id:?} is used twice")]
    DuplicateId { what: &'static str, id: String },
    #[error("{what} ids {a:?} and {b:?} share their first {} characters, so their interface names would collide; use ids that differ sooner", names::SHORT_ID_LEN)]
    ShortIdClash {
        what: &'static str,
        a: String,
        b: String,
    },
    #[error("networks {a:?} and {b:?} are both the default network; there is only one")]
    TwoDefaults { a: String, b: String },
    #[error("network {network:?}: subnet {subnet} must have a prefix of /{MIN_PREFIX_LEN} to /{MAX_PREFIX_LEN} and no host bits set")]
    BadSubnet { network: String, subnet: String },
    #[error("network {network:?}: gateway {gateway} is not a usable host address of {subnet}")]
    BadGateway {
        network: String,
        gateway: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("networks {a:?} ({a_subnet}) and {b:?} ({b_subnet}) overlap; each network needs its own subnet")]
    Overlap {
        a: String,
        a_subnet: Ipv4Net,
        b: String,
        b_subnet: Ipv4Net,
    },
    #[error(
        "network {network:?}: MTU {mtu} is out of range ({MIN_MTU} to {})",
        mvm_vmm_api::config::MAX_MTU
    )]
    BadMtu { network: String, mtu: u16 },
    #[error("endpoint {endpoint:?} is on network {network:?}, which is not in the state")]
    NoSuchNetwork { endpoint: String, network: String },
    #[error("endpoint {endpoint:?}: address {ip} is not a usable host address of network {network:?} ({subnet}, gateway excluded)")]
    BadEndpointIp {
        endpoint: String,
        ip: Ipv4Addr,
        network: String,
        subnet: Ipv4Net,
    },
    #[error("endpoints {a:?} and {b:?} both have address {ip}")]
    DuplicateIp { a: String, b: String, ip: Ipv4Addr },
    #[error("endpoint {endpoint:?}: MAC {mac} is not a unicast address")]
    BadMac { endpoint: String, mac: MacAddr },
    #[error("endpoints {a:?} and {b:?} both have MAC {mac}")]
    DuplicateMac { a: String, b: String, mac: MacAddr },
    #[error("endpoint {endpoint:?}: name {name:?} is not a valid DNS name (dot-separated labels of 1 to 63 letters, digits, '-' or '_', at most 253 bytes)")]
    BadName { endpoint: String, name: String },
    #[error("endpoint {endpoint:?} has more than {MAX_NAMES_PER_ENDPOINT} names")]
    TooManyNames { endpoint: String },
    #[error("published port {port} names endpoint {endpoint:?}, which is not in the state")]
    NoSuchEndpoint { port: String, endpoint: String },
    #[error("published port {port}: port 0 is not a port; resolve it with reserve_ports first")]
    ZeroPort { port: String },
    #[error("published port {port}: network {network:?} is internal, so nothing can reach it from outside; publish ports on a non-internal network")]
    InternalPublish { port: String, network: String },
    #[error("published ports {a} and {b} both want host port {port}/{protocol}")]
    PortClash {
        a: String,
        b: String,
        port: u16,
        protocol: Protocol,
    },
}

/// Whether `name` can be looked up in DNS: dot-separated labels of 1 to
/// 63 bytes of `[A-Za-z0-9_-]`, 253 bytes in all, an optional final dot.
pub fn valid_dns_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl DesiredState {
    /// The network with this id.
    pub fn network(&self, id: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.id == id)
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&EndpointSpec> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// Checks everything the host objects and the rules rely on.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_networks()?;
        self.validate_endpoints()?;
        self.validate_ports()
    }

    fn validate_networks(&self) -> Result<(), SpecError> {
        check_ids("network", self.networks.iter().map(|n| n.id.as_str()))?;
        let mut default: Option<&str> = None;
        for (i, n) in self.networks.iter().enumerate() {
            if n.kind == NetworkKind::Default {
                if let Some(a) = default {
                    return Err(SpecError::TwoDefaults {
                        a: a.to_owned(),
                        b: n.name.clone(),
                    });
                }
                default = Some(&n.name);
            }
            let p = n.subnet.prefix_len();
            if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&p) || n.subnet.trunc() != n.subnet {
                return Err(SpecError::BadSubnet {
                    network: n.name.clone(),
                    subnet: n.subnet.to_string(),
                });
            }
            if !is_host_addr(n.subnet, n.gateway) {
                return Err(SpecError::BadGateway {
                    network: n.name.clone(),
                    gateway: n.gateway,
                    subnet: n.subnet,
                });
            }
            // MAX_MTU is u16::MAX, so only the lower bound can fail.
            if n.mtu < MIN_MTU {
                return Err(SpecError::BadMtu {
                    network: n.name.clone(),
                    mtu: n.mtu,
                });
            }
            for m in &self.networks[..i] {
                if m.subnet.contains(&n.subnet) || n.subnet.contains(&m.subnet) {
                    return Err(SpecError::Overlap {
                        a: m.name.clone(),
                        a_subnet: m.subnet,
                        b: n.name.clone(),
                        b_subnet: n.subnet,
                    });
                }
            }
        }
        Ok(())
    }

    fn validate_endpoints(&self) -> Result<(), SpecError> {
        check_ids("endpoint", self.endpoints.iter().map(|e| e.id.as_str()))?;
        let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut macs: HashMap<MacAddr, &str> = HashMap::new();
        for e in &self.endpoints {
            let Some(n) = self.network(&e.network) else {
                return Err(SpecError::NoSuchNetwork {
                    endpoint: e.id.clone(),
                    network: e.network.clone(),
                });
            };
            if !is_host_addr(n.subnet, e.ip) || e.ip == n.gateway {
                return Err(SpecError::BadEndpointIp {
                    endpoint: e.id.clone(),
                    ip: e.ip,
                    network: n.name.clone(),
                    subnet: n.subnet,
                });
            }
            if let Some(a) = ips.insert(e.ip, &e.id) {
                return Err(SpecError::DuplicateIp {
                    a: a.to_owned(),
                    b: e.id.clone(),
                    ip: e.ip,
                });
            }
            if e.mac.is_multicast() || e.mac.0 == [0; 6] {
                return Err(SpecError::BadMac {
                    endpoint: e.id.clone(),
                    mac: e.mac,
                });
            }
            if let Some(a) = macs.insert(e.mac, &e.id) {
                return Err(SpecError::DuplicateMac {
                    a: a.to_owned(),
                    b: e.id.clone(),
                    mac: e.mac,
                });
            }
            if e.dns_names.len() > MAX_NAMES_PER_ENDPOINT {
                return Err(SpecError::TooManyNames {
                    endpoint: e.id.clone(),
                });
            }
            if let Some(bad) = e.dns_names.iter().find(|n| !valid_dns_name(n)) {
                return Err(SpecError::BadName {
                    endpoint: e.id.clone(),
                    name: bad.clone(),
                });
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), SpecError> {
        let mut by_port: HashMap<(Protocol, u16), Vec<&PortSpec>> = HashMap::new();
        for p in &self.ports {
            let Some(e) = self.endpoint(&p.endpoint) else {
                return Err(SpecError::NoSuchEndpoint {
                    port: p.to_string(),
                    endpoint: p.endpoint.clone(),
                });
            };
            if p.host_port == 0 || p.guest_port == 0 {
                return Err(SpecError::ZeroPort {
                    port: p.to_string(),
                });
            }
            if let Some(n) = self.network(&e.network).filter(|n| n.internal) {
                return Err(SpecError::InternalPublish {
                    port: p.to_string(),
                    network: n.name.clone(),
                });
            }
            let same = by_port.entry((p.protocol, p.host_port)).or_default();
            if let Some(q) = same.iter().find(|q| host_ips_overlap(q.host_ip, p.host_ip)) {
                return Err(SpecError::PortClash {
                    a: q.to_string(),
                    b: p.to_string(),
                    port: p.host_port,
                    protocol: p.protocol,
                });
            }
            same.push(p);
        }
        Ok(())
    }
}

/// Whether `ip` is a host address of `subnet` (neither its network nor
/// its broadcast address).
pub(crate) fn is_host_addr(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

fn check_ids<'a>(what: &'static str, ids: impl Iterator<Item = &'a str>) -> Result<(), SpecError> {
    let mut seen = HashSet::new();
    let mut short: HashMap<&str, &str> = HashMap::new();
    for id in ids {
        if !names::valid_id(id) {
            return Err(SpecError::BadId {
                what,
                id: id.to_owned(),
            });
        }
        if !seen.insert(id) {
            return Err(SpecError::DuplicateId {
                what,
                id: id.to_owned(),
            });
        }
        if let Some(a) = short.insert(names::short_id(id), id) {
            return Err(SpecError::ShortIdClash {
                what,
                a: a.to_owned(),
                b: id.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn net(id: &str, subnet: &str) -> NetworkSpec {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkSpec {
            id: id.into(),
            name: format!("net-{id}"),
            kind: NetworkKind::User,
            subnet,
            gateway: crate::ipam::gateway_of(subnet),
            internal: false,
            mtu: DEFAULT_MTU,
        }
    }

    pub(crate) fn ep(id: &str, network: &str, ip: &str) -> EndpointSpec {
        let ip: Ipv4Addr = ip.parse().unwrap();
        EndpointSpec {
            id: id.into(),
            network: network.into(),
            sandbox: format!("sb-{id}"),
            ip,
            mac: crate::ipam::mac_for(ip),
            dns_names: vec![format!("host-{id}")],
        }
    }

    fn port(endpoint: &str, host_ip: Option<&str>, host_port: u16) -> PortSpec {
        PortSpec {
            endpoint: endpoint.into(),
            protocol: Protocol::Tcp,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
            host_port,
            guest_port: 80,
        }
    }

    fn good() -> DesiredState {
        DesiredState {
            networks: vec![net("aa", "172.30.0.0/16"), net("bb", "10.1.0.0/24")],
            endpoints: vec![ep("e1", "aa", "172.30.0.2"), ep("e2", "bb", "10.1.0.2")],
            ports: vec![port("e1", None, 8080), port("e2", Some("127.0.0.1"), 8081)],
        }
    }

    #[test]
    fn a_good_state_passes_and_round_trips() {
        let s = good();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), s);
        assert!(json.contains(r#""mac":"02:42:ac:1e:00:02""#), "{json}");
        assert_eq!(s.networks[0].bridge(), "mvmb-aa");
        assert_eq!(s.endpoints[0].port(), "mvmt-e1");
        assert_eq!(s.networks[0].gateway_cidr().to_string(), "172.30.0.1/16");
        assert_eq!(s.ports[1].to_string(), "127.0.0.1:8081->80/tcp");
    }

    #[test]
    fn bad_states_name_what_is_wrong() {
        let check = |f: &dyn Fn(&mut DesiredState), want: &str| {
            let mut s = good();
            f(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        };
        check(&|s| s.networks[1].id = "AA".into(), "invalid");
        check(&|s| s.networks[1].id = "aa".into(), "used twice");
        check(
            &|s| {
                s.networks[0].id = "0123456789x".into();
                s.networks[1].id = "0123456789y".into();
                s.endpoints.clear();
                s.ports.clear();
            },
            "collide",
        );
        check(
            &|s| {
                s.networks[0].kind = NetworkKind::Default;
                s.networks[1].kind = NetworkKind::Default;
            },
            "only one",
        );
        check(
            &|s| s.networks[1].subnet = "10.1.0.1/24".parse().unwrap(),
            "host bits",
        );
        check(
            &|s| s.networks[1].subnet = "10.1.0.0/31".parse().unwrap(),
            "/30",
        );
        check(
            &|s| s.networks[1].gateway = "10.1.0.255".parse().unwrap(),
            "gateway",
        );
        check(
            &|s| s.networks[1].gateway = "10.2.0.1".parse().unwrap(),
            "gateway",
        );
        check(
            &|s| {
                s.networks[1].subnet = "172.30.5.0/24".parse().unwrap();
                s.networks[1].gateway = "172.30.5.1".parse().unwrap();
                s.endpoints[1].ip = "172.30.5.2".parse().unwrap();
            },
            "overlap",
        );
        check(&|s| s.networks[0].mtu = 10, "MTU");
        check(
            &|s| s.endpoints[0].network = "zz".into(),
            "not in the state",
        );
        check(
            &|s| s.endpoints[0].ip = "172.30.0.1".parse().unwrap(),
            "usable",
        );
        check(
            &|s| s.endpoints[0].ip = "10.1.0.3".parse().unwrap(),
            "usable",
        );
        check(
            &|s| s.endpoints[1].ip = "10.1.0.255".parse().unwrap(),
            "usable",
        );
        check(
            &|s| {
                s.endpoints[1].network = "aa".into();
                s.endpoints[1].ip = "172.30.0.2".parse().unwrap();
            },
            "both have address",
        );
        check(
            &|s| s.endpoints[1].mac = s.endpoints[0].mac,
            "both have MAC",
        );
        check(
            &|s| s.endpoints[1].mac = MacAddr([1, 0, 0, 0, 0, 1]),
            "unicast",
        );
        check(
            &|s| s.endpoints[1].dns_names = vec!["a b".into()],
            "DNS name",
        );
        check(
            &|s| s.endpoints[1].dns_names = vec!["a..b".into()],
            "DNS name",
        );
        check(&|s| s.ports[0].endpoint = "zz".into(), "not in the state");
        check(&|s| s.ports[0].host_port = 0, "port 0");
        check(
            &|s| {
                s.networks[0].internal = true;
            },
            "internal",
        );
        check(
            &|s| s.ports[1].host_port = 8080,
            "both want host port 8080/tcp",
        );
        check(
            &|s| {
                s.ports[0].host_ip = Some("0.0.0.0".parse().unwrap());
                s.ports[1].host_port = 8080;
            },
            "both want",
        );
    }

    #[test]
    fn host_addresses_overlap_as_sockets_do() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(host_ips_overlap(None, ip("127.0.0.1")));
        assert!(host_ips_overlap(ip("::"), ip("::1")));
        assert!(host_ips_overlap(ip("0.0.0.0"), ip("10.0.0.1")));
        assert!(!host_ips_overlap(ip("0.0.0.0"), ip("::1")));
        assert!(!host_ips_overlap(ip("127.0.0.1"), ip("127.0.0.2")));
        // Different protocols never clash.
        let mut s = good();
        s.ports[1].host_port = 8080;
        s.ports[1].protocol = Protocol::Udp;
        s.validate().unwrap();
    }

    #[test]
    fn dns_names() {
        for ok in ["web", "my_db", "a.b.c", "web.", "x-1", &"a".repeat(63)] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", ".a", "a b", "é", &"a".repeat(64), "a/b"] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
