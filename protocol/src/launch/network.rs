//! The launch spec's `network` section: the guest's interfaces (found by
//! MAC), routes, resolver and hosts file, and the rules that make it safe
//! for init to apply.
//!
//! The host writes it from its networks' endpoints; init configures the
//! interfaces through netlink and writes /etc/hosts, /etc/resolv.conf and
//! /etc/hostname from it before the workload starts. To init the section
//! is hostile input: [`Network::validate`] refuses anything that could
//! rename an interface unexpectedly (`eth%d` makes the kernel choose),
//! inject lines into the /etc files (a newline or `#` in a name), or fail
//! only half-way through the configuration (a route through an interface
//! the spec does not have, a gateway of the wrong family).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::SpecError;

/// Most interfaces in one spec: as many as the VMM has virtio-net devices
/// (`mvm_vmm_api::MAX_NET_DEVICES`; the runtime checks they agree).
pub const MAX_INTERFACES: usize = 8;
/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Most addresses on one interface.
pub const MAX_ADDRESSES: usize = 32;
/// Most routes.
pub const MAX_ROUTES: usize = 256;
/// Most nameservers (resolvers read the first three; Docker writes all).
pub const MAX_NAMESERVERS: usize = 16;
/// Most `search` domains.
pub const MAX_SEARCH: usize = 32;
/// Most `options` entries.
pub const MAX_OPTIONS: usize = 32;
/// Longest `options` entry (`ndots:15`, `timeout:30`, `edns0`...).
pub const MAX_OPTION_LEN: usize = 64;
/// Most /etc/hosts entries from the spec.
pub const MAX_HOSTS: usize = 1024;
/// Most names on one /etc/hosts entry.
pub const MAX_NAMES_PER_HOST: usize = 64;
/// Longest domain or host name (RFC 1035's 253 characters in text form).
pub const MAX_NAME_LEN: usize = 253;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU (a frame must fit a 64 KiB buffer).
pub const MAX_MTU: u32 = 65535;
/// Smallest MTU of an interface with an IPv6 address: below it the kernel
/// disables IPv6 on the interface (RFC 8200).
pub const MIN_IPV6_MTU: u32 = 1280;

/// The guest's network, as a Docker container's: interfaces, routes, the
/// resolver and the hosts file. Written by the host from its networks'
/// endpoints; init applies it through netlink before the workload starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// One entry per virtio-net device, matched by MAC address.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Routes added after every interface is up, in order; the default
    /// route is `destination: 0.0.0.0/0`. The kernel adds the subnet route
    /// of each address itself: listing one here again is an error (the
    /// route exists).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// /etc/resolv.conf. Written as given (an empty `nameservers` writes a
    /// file without any, so lookups fail fast rather than leak to the
    /// image's resolver).
    #[serde(default)]
    pub dns: Dns,
    /// Extra /etc/hosts lines after the standard `localhost` ones and the
    /// guest's own addresses (`--add-host`, and on the default bridge,
    /// nothing else: names resolve there only through these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
}

/// A guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The virtio-net device's MAC (the VMM's `net[].mac`), lower-case
    /// `aa:bb:cc:dd:ee:ff`: how init finds the interface whatever order the
    /// kernel probed devices in.
    pub mac: String,
    /// The name init gives it (`eth0`, `eth1`, ...): at most 15 bytes.
    pub name: String,
    /// Addresses with their prefix length. IPv6 ones are usable at once:
    /// init adds them without duplicate address detection (the host's
    /// IPAM already made them unique), as Docker does.
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    /// MTU; `None` keeps the device's (the VMM's `net[].mtu`, which is
    /// also the most the device takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address and prefix length, `10.88.0.2/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpCidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl IpCidr {
    /// Whether the prefix length fits the address family.
    pub fn is_valid(&self) -> bool {
        self.prefix_len <= self.max_prefix_len()
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_prefix_len(&self) -> u8 {
        if self.address.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Whether no bit beyond the prefix is set (`10.0.0.0/8`, not
    /// `10.0.0.1/8`): the form the kernel wants for a route's destination.
    pub fn is_network(&self) -> bool {
        if !self.is_valid() {
            return false;
        }
        let host_bits = u32::from(self.max_prefix_len() - self.prefix_len);
        match self.address {
            IpAddr::V4(a) => u32::from(a).checked_shl(32 - host_bits).unwrap_or(0) == 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(128 - host_bits).unwrap_or(0) == 0,
        }
    }
}

/// A route in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network (no bits set beyond the prefix); `0.0.0.0/0`
    /// or `::/0` for the default route.
    pub destination: IpCidr,
    /// Next hop, of the destination's family; `None` for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The interface's `name` from [`Interface`].
    pub interface: String,
}

/// /etc/resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// `options` line entries such as `ndots:0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One /etc/hosts line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub address: IpAddr,
    /// At least one name.
    pub names: Vec<String>,
}

/// The six bytes of a MAC written as the spec wants it: six lower-case
/// hex pairs separated by `:` (how the kernel prints it in sysfs).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if p.len() != 2 || !p.bytes().all(lower_hex) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether `name` can name a guest interface: 1 to
/// [`MAX_INTERFACE_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`, not `.`, `..` or
/// `lo`. Stricter than the kernel, which also takes `%` (`eth%d` asks it
/// to pick a number, so the interface would not get the name asked for)
/// and most punctuation.
pub fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME_LEN
        && !matches!(name, "." | ".." | "lo")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Why `s`, a word of /etc/hosts or /etc/resolv.conf, is unusable there:
/// empty, too long, or holding a byte that would end the word, the line
/// or the file's meaning (whitespace, control characters, `#` and `;`
/// which start comments).
fn word_problem(s: &str, max: usize) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > max {
        return Some("it is too long");
    }
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '#' || c == ';';
    s.contains(bad)
        .then_some("it contains whitespace, a control character, '#' or ';'")
}

impl Network {
    /// Check everything init relies on; each error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        too_many("network.interfaces", self.interfaces.len(), MAX_INTERFACES)?;
        too_many("network.routes", self.routes.len(), MAX_ROUTES)?;
        let mut names = HashSet::new();
        let mut macs: HashMap<[u8; 6], &str> = HashMap::new();
        let mut addresses: HashMap<IpAddr, &str> = HashMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            if !is_valid_interface_name(&iface.name) {
                return Err(SpecError::InterfaceName {
                    index: i,
                    name: iface.name.clone(),
                });
            }
            if !names.insert(iface.name.as_str()) {
                return Err(SpecError::DuplicateInterface(iface.name.clone()));
            }
            let mac = parse_mac(&iface.mac)
                .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
                .ok_or_else(|| SpecError::Mac {
                    interface: iface.name.clone(),
                    mac: iface.mac.clone(),
                })?;
            if let Some(first) = macs.insert(mac, &iface.name) {
                return Err(SpecError::DuplicateMac {
                    mac: iface.mac.clone(),
                    first: first.into(),
                    second: iface.name.clone(),
                });
            }
            let field = |what: &str| format!("network.interfaces[{i}] ({}) {what}", iface.name);
            too_many(
                "addresses on one interface",
                iface.addresses.len(),
                MAX_ADDRESSES,
            )?;
            for a in &iface.addresses {
                if let Some(why) = address_problem(a) {
                    return Err(SpecError::Address {
                        field: field("address"),
                        value: a.to_string(),
                        why,
                    });
                }
                if let Some(first) = addresses.insert(a.address, &iface.name) {
                    return Err(SpecError::DuplicateAddress {
                        address: a.address,
                        first: first.into(),
                        second: iface.name.clone(),
                    });
                }
            }
            if let Some(mtu) = iface.mtu {
                let has_v6 = iface.addresses.iter().any(|a| a.address.is_ipv6());
                let min = if has_v6 { MIN_IPV6_MTU } else { MIN_MTU };
                if !(min..=MAX_MTU).contains(&mtu) {
                    return Err(SpecError::Mtu {
                        interface: iface.name.clone(),
                        mtu,
                        min,
                    });
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let field = |what: &str| format!("network.routes[{i}].{what}");
            let bad = |field: String, value: String, why| SpecError::Address { field, value, why };
            let d = r.destination;
            if !d.is_valid() {
                return Err(bad(
                    field("destination"),
                    d.to_string(),
                    "its prefix length is too long for its address family",
                ));
            }
            if !d.is_network() {
                return Err(bad(field("destination"), d.to_string(), "it has bits set beyond the prefix length (write the network address, like 10.1.0.0/16)"));
            }
            if let Some(gw) = r.gateway {
                if gw.is_ipv4() != d.address.is_ipv4() {
                    return Err(bad(
                        field("gateway"),
                        gw.to_string(),
                        "it is not of the destination's address family",
                    ));
                }
                if gw.is_unspecified() || gw.is_multicast() || is_v4_broadcast(gw) {
                    return Err(bad(
                        field("gateway"),
                        gw.to_string(),
                        "it is not a unicast address",
                    ));
                }
            }
            if !names.contains(r.interface.as_str()) {
                return Err(SpecError::RouteInterface {
                    index: i,
                    interface: r.interface.clone(),
                });
            }
        }
        self.dns.validate()?;
        too_many("network.hosts", self.hosts.len(), MAX_HOSTS)?;
        for (i, h) in self.hosts.iter().enumerate() {
            if h.names.is_empty() {
                return Err(SpecError::NetworkText {
                    field: format!("network.hosts[{i}].names"),
                    value: String::new(),
                    why: "it is empty: an entry needs at least one name",
                });
            }
            too_many(
                "names on one hosts entry",
                h.names.len(),
                MAX_NAMES_PER_HOST,
            )?;
            for (j, n) in h.names.iter().enumerate() {
                text(&format!("network.hosts[{i}].names[{j}]"), n, MAX_NAME_LEN)?;
            }
        }
        Ok(())
    }
}

impl Dns {
    fn validate(&self) -> Result<(), SpecError> {
        too_many(
            "network.dns.nameservers",
            self.nameservers.len(),
            MAX_NAMESERVERS,
        )?;
        too_many("network.dns.search", self.search.len(), MAX_SEARCH)?;
        too_many("network.dns.options", self.options.len(), MAX_OPTIONS)?;
        for (i, ns) in self.nameservers.iter().enumerate() {
            if ns.is_unspecified() || ns.is_multicast() || is_v4_broadcast(*ns) {
                return Err(SpecError::Address {
                    field: format!("network.dns.nameservers[{i}]"),
                    value: ns.to_string(),
                    why: "it is not a unicast address",
                });
            }
        }
        for (i, s) in self.search.iter().enumerate() {
            text(&format!("network.dns.search[{i}]"), s, MAX_NAME_LEN)?;
        }
        for (i, o) in self.options.iter().enumerate() {
            text(&format!("network.dns.options[{i}]"), o, MAX_OPTION_LEN)?;
        }
        Ok(())
    }
}

/// Why `a` cannot be an interface's address.
fn address_problem(a: &IpCidr) -> Option<&'static str> {
    if !a.is_valid() {
        return Some("its prefix length is too long for its address family");
    }
    let ip = a.address;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || is_v4_broadcast(ip) {
        return Some("it is not a unicast address an interface can have");
    }
    None
}

fn is_v4_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(a) if a.is_broadcast())
}

fn text(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    match word_problem(value, max) {
        None => Ok(()),
        Some(why) => Err(SpecError::NetworkText {
            field: field.into(),
            value: value.into(),
            why,
        }),
    }
}

fn too_many(what: &'static str, count: usize, max: usize) -> Result<(), SpecError> {
    if count > max {
        return Err(SpecError::TooMany { what, count, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::LaunchSpec;
    use super::*;

    fn cidr(s: &str) -> IpCidr {
        let (a, p) = s.split_once('/').unwrap();
        IpCidr {
            address: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    fn iface(name: &str, mac: &str, addrs: &[&str]) -> Interface {
        Interface {
            mac: mac.into(),
            name: name.into(),
            addresses: addrs.iter().map(|a| cidr(a)).collect(),
            mtu: None,
        }
    }

    fn good() -> Network {
        Network {
            interfaces: vec![
                iface(
                    "eth0",
                    "02:42:ac:11:00:02",
                    &["172.17.0.2/16", "fd00::2/64"],
                ),
                iface("eth1", "02:42:0a:00:00:05", &["10.0.0.5/24"]),
            ],
            routes: vec![
                Route {
                    destination: cidr("0.0.0.0/0"),
                    gateway: Some("172.17.0.1".parse().unwrap()),
                    interface: "eth0".into(),
                },
                Route {
                    destination: cidr("::/0"),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: "eth0".into(),
                },
                Route {
                    destination: cidr("192.168.7.0/24"),
                    gateway: None,
                    interface: "eth1".into(),
                },
            ],
            dns: Dns {
                nameservers: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                search: vec!["example.com".into()],
                options: vec!["ndots:0".into()],
            },
            hosts: vec![HostEntry {
                address: "10.0.0.9".parse().unwrap(),
                names: vec!["db".into(), "db.example.com".into()],
            }],
        }
    }

    fn spec_with(n: Network) -> LaunchSpec {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        s.network = Some(n);
        s
    }

    #[test]
    fn a_full_network_round_trips_and_none_stays_off_the_wire() {
        let s = spec_with(good());
        let json = s.to_json().unwrap();
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);
        let plain = LaunchSpec::new(vec!["true".into()]);
        let text = String::from_utf8(plain.to_json().unwrap()).unwrap();
        assert!(!text.contains("network"), "{text}");
        // `--network none`: a section with nothing in it is valid.
        spec_with(Network::default()).validate().unwrap();
        let unknown = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"network":{"interfaces":[{"mac":"02:00:00:00:00:01","name":"eth0","vlan":3}]}}"#;
        assert!(LaunchSpec::from_json(unknown).is_err());
    }

    #[test]
    fn macs_must_be_lower_case_unicast_and_unique() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        for bad in [
            "02:42:AC:11:00:02",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "0242ac110002",
            "02-42-ac-11-00-02",
            "2:42:ac:11:00:02",
            "02:42:ac:11:00:0g",
            "+2:42:ac:11:00:02",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        for bad in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "02:42:AC:11:00:02",
        ] {
            let mut n = good();
            n.interfaces[0].mac = bad.into();
            let e = n.validate().unwrap_err();
            assert!(matches!(e, SpecError::Mac { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("\"eth0\""), "{e}");
        }
        let mut n = good();
        n.interfaces[1].mac = n.interfaces[0].mac.clone();
        let e = n.validate().unwrap_err();
        assert!(matches!(e, SpecError::DuplicateMac { .. }), "{e}");
        assert!(
            e.to_string().contains("eth0") && e.to_string().contains("eth1"),
            "{e}"
        );
    }

    #[test]
    fn interface_names_are_checked() {
        let long = "x".repeat(16);
        for bad in [
            "",
            "lo",
            ".",
            "..",
            "eth/0",
            "eth 0",
            "eth\t0",
            "eth\n0",
            "eth\x000",
            "eth%d",
            "eth:1",
            long.as_str(),
            "é",
        ] {
            let mut n = good();
            n.interfaces[0].name = bad.into();
            n.routes.clear();
            let e = n.validate().unwrap_err();
            assert!(
                matches!(e, SpecError::InterfaceName { index: 0, .. }),
                "{bad:?}: {e}"
            );
        }
        let mut n = good();
        n.interfaces[0].name = "x".repeat(15);
        n.routes.clear();
        n.validate().unwrap();
        n.interfaces[1].name = "x".repeat(15);
        assert!(matches!(
            n.validate(),
            Err(SpecError::DuplicateInterface(_))
        ));
    }

    #[test]
    fn addresses_and_mtus_are_checked() {
        for (bad, why) in [
            ("10.0.0.1/33", "prefix"),
            ("fd00::1/129", "prefix"),
            ("0.0.0.0/8", "unicast"),
            ("224.0.0.1/4", "unicast"),
            ("255.255.255.255/32", "unicast"),
            ("127.0.0.2/8", "unicast"),
            ("::1/128", "unicast"),
            ("::/0", "unicast"),
            ("ff02::1/64", "unicast"),
        ] {
            let mut n = good();
            n.interfaces[1].addresses = vec![cidr(bad)];
            let e = n.validate().unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, SpecError::Address { .. }), "{bad}: {e}");
            assert!(
                text.contains(why) && text.contains("(eth1) address"),
                "{text}"
            );
        }
        let mut n = good();
        n.interfaces[1].addresses = vec![cidr("172.17.0.2/24")];
        let e = n.validate().unwrap_err();
        assert!(matches!(e, SpecError::DuplicateAddress { .. }), "{e}");
        let mut n = good();
        n.interfaces[1].mtu = Some(67);
        assert!(matches!(n.validate(), Err(SpecError::Mtu { min: 68, .. })));
        n.interfaces[1].mtu = Some(65536);
        assert!(matches!(n.validate(), Err(SpecError::Mtu { .. })));
        n.interfaces[1].mtu = Some(576);
        n.validate().unwrap();
        // eth0 has an IPv6 address: the kernel would turn IPv6 off below 1280.
        n.interfaces[0].mtu = Some(1279);
        let e = n.validate().unwrap_err();
        assert!(matches!(e, SpecError::Mtu { min: 1280, .. }), "{e}");
        n.interfaces[0].mtu = Some(9000);
        n.validate().unwrap();
        let mut n = good();
        n.interfaces[0].addresses = (0..33).map(|i| cidr(&format!("10.9.0.{i}/24"))).collect();
        assert!(matches!(
            n.validate(),
            Err(SpecError::TooMany { max: 32, .. })
        ));
    }

    #[test]
    fn routes_are_checked() {
        let check = |f: &dyn Fn(&mut Route)| {
            let mut n = good();
            f(&mut n.routes[0]);
            n.validate()
        };
        let e = check(&|r| r.interface = "eth9".into()).unwrap_err();
        assert!(
            matches!(e, SpecError::RouteInterface { index: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("eth9"), "{e}");
        let e = check(&|r| r.destination = cidr("10.1.2.3/16")).unwrap_err();
        assert!(
            e.to_string().contains("network.routes[0].destination"),
            "{e}"
        );
        assert!(e.to_string().contains("beyond the prefix"), "{e}");
        let e = check(&|r| r.destination = cidr("10.0.0.0/40")).unwrap_err();
        assert!(e.to_string().contains("prefix length"), "{e}");
        let e = check(&|r| r.gateway = Some("fd00::1".parse().unwrap())).unwrap_err();
        assert!(e.to_string().contains("network.routes[0].gateway"), "{e}");
        assert!(e.to_string().contains("family"), "{e}");
        let e = check(&|r| r.gateway = Some("0.0.0.0".parse().unwrap())).unwrap_err();
        assert!(e.to_string().contains("unicast"), "{e}");
        check(&|r| r.destination = cidr("10.1.0.0/16")).unwrap();
        check(&|r| r.destination = cidr("10.1.2.3/32")).unwrap();
        check(&|r| r.gateway = None).unwrap();
        assert!(cidr("fd00:1::/32").is_network());
        assert!(!cidr("fd00:1::1/64").is_network());
        assert!(cidr("::/0").is_network());
        assert!(cidr("fd00::1/128").is_network());
    }

    #[test]
    fn resolver_and_hosts_text_cannot_inject_lines() {
        for bad in [
            "",
            "a b",
            "a\nnameserver 6.6.6.6",
            "a\tb",
            "a#b",
            "a;b",
            "a\0",
            "a\r",
            "a\u{85}b",
            &"x".repeat(254),
        ] {
            let mut n = good();
            n.dns.search[0] = bad.into();
            let e = n.validate().unwrap_err();
            assert!(matches!(e, SpecError::NetworkText { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("network.dns.search[0]"), "{e}");
            let mut n = good();
            n.hosts[0].names[1] = bad.into();
            let e = n.validate().unwrap_err();
            assert!(e.to_string().contains("network.hosts[0].names[1]"), "{e}");
            if bad.len() <= MAX_OPTION_LEN {
                let mut n = good();
                n.dns.options[0] = bad.into();
                let e = n.validate().unwrap_err();
                assert!(e.to_string().contains("network.dns.options[0]"), "{e}");
            }
        }
        let mut n = good();
        n.dns.options[0] = "x".repeat(65);
        assert!(n.validate().is_err());
        let mut n = good();
        n.hosts[0].names.clear();
        assert!(n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least one name"));
        let mut n = good();
        n.dns.nameservers.push("0.0.0.0".parse().unwrap());
        assert!(n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nameservers[2]"));
        let mut n = good();
        n.dns.nameservers = vec!["10.0.0.1".parse().unwrap(); MAX_NAMESERVERS + 1];
        assert!(matches!(n.validate(), Err(SpecError::TooMany { .. })));
        let mut n = good();
        n.interfaces = (0..9)
            .map(|i| iface(&format!("eth{i}"), &format!("02:00:00:00:00:{i:02x}"), &[]))
            .collect();
        n.routes.clear();
        let e = n.validate().unwrap_err();
        assert!(
            e.to_string().contains("9 network.interfaces; at most 8"),
            "{e}"
        );
    }
}
