//! Address management: subnets for networks, addresses and MACs for
//! endpoints. Pure functions over what the caller knows; mvmd persists the
//! results (they are part of the desired state) and passes what is taken.
//!
//! Docker's model: a network's subnet comes from address pools, skipping
//! any subnet that overlaps a route of the host or another network (so a
//! new network never hides a LAN or a VPN the host reaches); the gateway
//! is the first host address; endpoints get the lowest free address and a
//! MAC derived from it (`02:42:` and the four address bytes, locally
//! administered), so a reused address comes back with the same MAC and
//! neighbours' ARP caches stay right.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mvm_vmm_api::MacAddr;

use crate::spec::{is_host_addr, MAX_PREFIX_LEN, MIN_PREFIX_LEN};

/// Where networks' subnets come from: `base` cut into `/prefix_len`
/// blocks, tried in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Ipv4Net,
    pub prefix_len: u8,
}

/// The default network's first choice, a /16 of private space that Docker
/// does not use by default (its `docker0` takes 172.17.0.0/16, its user
/// networks 172.18 and up).
pub const DEFAULT_NETWORK_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 30, 0, 0), 16);

/// The pools tried for every network after its first choice: Docker's
/// defaults (172.16.0.0/12 in /16s, 192.168.0.0/16 in /20s). Overlap with
/// the host's routes (a Docker on the same host included) is skipped.
pub fn default_pools() -> Vec<Pool> {
    vec![
        Pool {
            base: DEFAULT_NETWORK_SUBNET,
            prefix_len: 16,
        },
        Pool {
            base: Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
            prefix_len: 16,
        },
        Pool {
            base: Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
            prefix_len: 20,
        },
    ]
}

/// A range of addresses a new subnet must not overlap, and what it is
/// (for the error message): a host route, an interface address, a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub net: Ipv4Net,
    pub what: String,
}

/// Why no subnet or address could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free subnet left in the address pools ({pools}): every candidate overlaps a host route or another network; remove unused networks or give a subnet explicitly")]
    PoolsExhausted { pools: String },
    #[error("subnet {subnet} overlaps {what} ({net}); choose another subnet")]
    SubnetTaken {
        subnet: Ipv4Net,
        net: Ipv4Net,
        what: String,
    },
    #[error("subnet {subnet} must have a prefix of /{MIN_PREFIX_LEN} to /{MAX_PREFIX_LEN} and no host bits set (did you mean {}?)", .subnet.trunc())]
    BadSubnet { subnet: Ipv4Net },
    #[error("gateway {gateway} is not a usable host address of subnet {subnet}")]
    BadGateway { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is not in the network's subnet {subnet}")]
    NotInSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is the network address, the broadcast address or the gateway of {subnet}; choose another")]
    Reserved { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {ip} is already in use on this network; choose another or leave --ip out")]
    InUse { ip: Ipv4Addr },
    #[error("no free address left in subnet {subnet}; remove unused sandboxes from the network or use a larger subnet")]
    Exhausted { subnet: Ipv4Net },
}

/// Checks a subnet the user asked for against what is taken.
pub fn check_subnet(subnet: Ipv4Net, taken: &[Taken]) -> Result<(), IpamError> {
    let p = subnet.prefix_len();
    if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&p) || subnet.trunc() != subnet {
        return Err(IpamError::BadSubnet { subnet });
    }
    match taken.iter().find(|t| overlaps(t.net, subnet)) {
        Some(t) => Err(IpamError::SubnetTaken {
            subnet,
            net: t.net,
            what: t.what.clone(),
        }),
        None => Ok(()),
    }
}

/// The first block of the pools that overlaps nothing taken.
pub fn choose_subnet(pools: &[Pool], taken: &[Taken]) -> Result<Ipv4Net, IpamError> {
    for pool in pools {
        let Ok(blocks) = pool.base.subnets(pool.prefix_len) else {
            continue;
        };
        for block in blocks {
            if check_subnet(block, taken).is_ok() {
                return Ok(block);
            }
        }
    }
    Err(IpamError::PoolsExhausted {
        pools: pools
            .iter()
            .map(|p| format!("{} in /{}s", p.base, p.prefix_len))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Whether two networks share any address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The default gateway of a subnet: its first host address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// Checks a gateway the user asked for.
pub fn check_gateway(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), IpamError> {
    if is_host_addr(subnet, gateway) {
        Ok(())
    } else {
        Err(IpamError::BadGateway { gateway, subnet })
    }
}

/// An address for a new endpoint: `requested` (Docker's `--ip`) if it is
/// free and usable, else the lowest host address that is neither the
/// gateway nor in `used`.
pub fn allocate(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &[Ipv4Addr],
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    if let Some(ip) = requested {
        if !subnet.contains(&ip) {
            return Err(IpamError::NotInSubnet { ip, subnet });
        }
        if !is_host_addr(subnet, ip) || ip == gateway {
            return Err(IpamError::Reserved { ip, subnet });
        }
        if used.contains(&ip) {
            return Err(IpamError::InUse { ip });
        }
        return Ok(ip);
    }
    let used: std::collections::HashSet<Ipv4Addr> = used.iter().copied().collect();
    subnet
        .hosts()
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or(IpamError::Exhausted { subnet })
}

/// The MAC of the endpoint with address `ip`: `02:42:` then the address,
/// as Docker makes them (locally administered, unicast).
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
}

/// The bridge's own MAC for a network whose gateway is `gateway`: fixed
/// rather than inherited from whichever port the kernel sees first, so
/// guests' ARP caches never go stale when ports come and go. `02:42:`
/// and the gateway's address like any endpoint's (the gateway is never an
/// endpoint's address, so it is unique).
pub fn bridge_mac(gateway: Ipv4Addr) -> MacAddr {
    mac_for(gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn taken(s: &str, what: &str) -> Taken {
        Taken {
            net: net(s),
            what: what.into(),
        }
    }

    #[test]
    fn subnets_skip_host_routes_and_other_networks() {
        let pools = default_pools();
        assert_eq!(choose_subnet(&pools, &[]).unwrap(), net("172.30.0.0/16"));
        // The default network has 172.30; the next network starts at 172.16.
        let t = vec![taken("172.30.0.0/16", "network bridge")];
        assert_eq!(choose_subnet(&pools, &t).unwrap(), net("172.16.0.0/16"));
        // A host route inside a candidate (a VPN's /24) and Docker's
        // docker0 are both skipped; a default route is not passed as taken.
        let t = vec![
            taken("172.30.0.0/16", "network bridge"),
            taken("172.16.5.0/24", "route via tun0"),
            taken("172.17.0.0/16", "route via docker0"),
        ];
        assert_eq!(choose_subnet(&pools, &t).unwrap(), net("172.18.0.0/16"));
        // A wide host route covering all of 172.16/12 moves to 192.168/20s.
        let t = vec![taken("172.16.0.0/12", "route via eth1")];
        assert_eq!(choose_subnet(&pools, &t).unwrap(), net("192.168.0.0/20"));
        let t = vec![
            taken("172.16.0.0/12", "route via eth1"),
            taken("192.168.0.0/16", "route via wlan0"),
        ];
        let e = choose_subnet(&pools, &t).unwrap_err().to_string();
        assert!(
            e.contains("no free subnet") && e.contains("192.168.0.0/16 in /20s"),
            "{e}"
        );
    }

    #[test]
    fn requested_subnets_and_gateways_are_checked() {
        let t = vec![taken("10.0.0.0/8", "route via eth0")];
        let e = check_subnet(net("10.5.0.0/16"), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.0.0.0/8") && e.contains("route via eth0"),
            "{e}"
        );
        check_subnet(net("192.168.50.0/24"), &t).unwrap();
        let e = check_subnet(net("192.168.50.1/24"), &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean 192.168.50.0/24"), "{e}");
        assert!(check_subnet(net("192.168.50.0/31"), &t).is_err());
        assert!(check_subnet(net("0.0.0.0/0"), &t).is_err());
        assert_eq!(
            gateway_of(net("10.9.0.0/16")),
            "10.9.0.1".parse::<Ipv4Addr>().unwrap()
        );
        check_gateway(net("10.9.0.0/16"), "10.9.255.254".parse().unwrap()).unwrap();
        assert!(check_gateway(net("10.9.0.0/16"), "10.9.255.255".parse().unwrap()).is_err());
        assert!(check_gateway(net("10.9.0.0/16"), "10.8.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn addresses_are_the_lowest_free_or_the_requested_one() {
        let s = net("10.1.0.0/29");
        let gw = gateway_of(s);
        let ip = |x: &str| x.parse::<Ipv4Addr>().unwrap();
        assert_eq!(allocate(s, gw, &[], None).unwrap(), ip("10.1.0.2"));
        assert_eq!(
            allocate(s, gw, &[ip("10.1.0.2"), ip("10.1.0.4")], None).unwrap(),
            ip("10.1.0.3")
        );
        assert_eq!(
            allocate(s, ip("10.1.0.6"), &[], None).unwrap(),
            ip("10.1.0.1")
        );
        let all: Vec<_> = (2..=6).map(|i| ip(&format!("10.1.0.{i}"))).collect();
        let e = allocate(s, gw, &all, None).unwrap_err().to_string();
        assert!(
            e.contains("no free address left in subnet 10.1.0.0/29"),
            "{e}"
        );
        assert_eq!(
            allocate(s, gw, &[], Some(ip("10.1.0.5"))).unwrap(),
            ip("10.1.0.5")
        );
        for (req, want) in [
            ("10.1.0.9", "not in the network's subnet"),
            ("10.1.0.0", "network address"),
            ("10.1.0.7", "broadcast"),
            ("10.1.0.1", "gateway"),
        ] {
            let e = allocate(s, gw, &[], Some(ip(req))).unwrap_err().to_string();
            assert!(e.contains(want), "{req}: {e}");
        }
        let e = allocate(s, gw, &[ip("10.1.0.3")], Some(ip("10.1.0.3")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in use"), "{e}");
    }

    #[test]
    fn macs_come_from_addresses() {
        let m = mac_for("172.30.0.2".parse().unwrap());
        assert_eq!(m.to_string(), "02:42:ac:1e:00:02");
        assert!(!m.is_multicast());
        assert_eq!(m.0[0] & 2, 2, "locally administered");
        assert_eq!(
            bridge_mac("172.30.0.1".parse().unwrap()).to_string(),
            "02:42:ac:1e:00:01"
        );
    }
}
