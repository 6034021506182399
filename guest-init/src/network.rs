//! Applying the launch spec's `network` section to the guest's devices:
//! each interface is found by MAC, renamed while down, given its MTU and
//! addresses and brought up; then the routes are added in order.
//!
//! Devices are looked up through a netlink dump (index, name and MAC in
//! one reply) rather than /sys/class/net, which shows the namespace sysfs
//! was mounted in, not the caller's: the same code then runs in the
//! guest and in the unit tests' private namespaces. Devices the spec does
//! not name are left alone (down). The spec is validated before this
//! runs ([`mvm_protocol::launch::Network::validate`]); the kernel still
//! has the last word, and each refusal names the interface and the step.

use std::io;

use mvm_protocol::launch::{parse_mac, Network};

use crate::netlink::{Link, Netlink};

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open a netlink socket to configure the network: {0}")]
    Socket(io::Error),
    #[error("cannot list the guest's network devices: {0}")]
    List(io::Error),
    #[error(
        "network interface {name:?}: the launch spec gives MAC {mac:?}, which cannot be parsed"
    )]
    BadMac { name: String, mac: String },
    #[error("network interface {name:?}: no network device has MAC {mac} (devices: {found}); the VM must be given a virtio-net device with that MAC, or the interface removed from the launch spec")]
    NoDevice {
        name: String,
        mac: String,
        found: String,
    },
    #[error("network interface {interface:?}: cannot {op}: {source}")]
    Interface {
        interface: String,
        op: String,
        source: io::Error,
    },
    #[error("network route {index} ({route}): cannot add it through {interface:?}: {source}")]
    Route {
        index: usize,
        route: String,
        interface: String,
        source: io::Error,
    },
}

/// Configure every interface and route of `net`, through `nl`.
pub fn apply(nl: &mut Netlink, net: &Network) -> Result<(), NetworkError> {
    if net.interfaces.is_empty() {
        return Ok(());
    }
    let links = nl.links().map_err(NetworkError::List)?;
    // The device of each spec interface, in spec order.
    let mut targets: Vec<&Link> = Vec::with_capacity(net.interfaces.len());
    for iface in &net.interfaces {
        let mac = parse_mac(&iface.mac).ok_or_else(|| NetworkError::BadMac {
            name: iface.name.clone(),
            mac: iface.mac.clone(),
        })?;
        let link =
            links
                .iter()
                .find(|l| l.mac == Some(mac))
                .ok_or_else(|| NetworkError::NoDevice {
                    name: iface.name.clone(),
                    mac: iface.mac.clone(),
                    found: describe(&links),
                })?;
        targets.push(link);
    }
    let op_err = |name: &str, op: String| {
        let interface = name.to_string();
        move |source| NetworkError::Interface {
            interface,
            op,
            source,
        }
    };
    // Renaming needs the device down, and a name may be held by another
    // device of the spec (two NICs swapped): first move every device to be
    // renamed to a name of its own, then give each its final name.
    for (iface, link) in net.interfaces.iter().zip(&targets) {
        if link.name != iface.name {
            let temp = format!("mvm{}", link.index);
            nl.set_link(link.index, Some(&temp), None, Some(false))
                .map_err(op_err(
                    &iface.name,
                    format!("take device {} down to rename it", link.name),
                ))?;
        }
    }
    for (iface, link) in net.interfaces.iter().zip(&targets) {
        let name = (link.name != iface.name).then_some(iface.name.as_str());
        if name.is_some() || iface.mtu.is_some() {
            let op = match (name, iface.mtu) {
                (Some(_), Some(mtu)) => {
                    format!("rename device {} and set its MTU to {mtu}", link.name)
                }
                (Some(_), None) => format!("rename device {}", link.name),
                (None, mtu) => format!("set its MTU to {}", mtu.unwrap_or_default()),
            };
            nl.set_link(link.index, name, iface.mtu, None)
                .map_err(op_err(&iface.name, op))?;
        }
        for a in &iface.addresses {
            nl.add_address(link.index, a.address, a.prefix_len)
                .map_err(op_err(&iface.name, format!("add address {a}")))?;
        }
        nl.set_link(link.index, None, None, Some(true))
            .map_err(op_err(&iface.name, "bring it up".into()))?;
    }
    for (index, r) in net.routes.iter().enumerate() {
        let link = net
            .interfaces
            .iter()
            .position(|i| i.name == r.interface)
            .map(|i| targets[i]);
        let route = match r.gateway {
            Some(gw) => format!("{} via {gw}", r.destination),
            None => format!("{} on-link", r.destination),
        };
        let result = match link {
            Some(link) => nl.add_route(
                link.index,
                r.destination.address,
                r.destination.prefix_len,
                r.gateway,
            ),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the interface is not in the launch spec",
            )),
        };
        result.map_err(|source| NetworkError::Route {
            index,
            route,
            interface: r.interface.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `eth0 02:..:01, eth1 02:..:02` for an error message.
fn describe(links: &[Link]) -> String {
    let with_mac: Vec<String> = links
        .iter()
        .filter_map(|l| {
            let m = l.mac.filter(|m| *m != [0; 6])?;
            Some(format!(
                "{} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                l.name, m[0], m[1], m[2], m[3], m[4], m[5]
            ))
        })
        .collect();
    if with_mac.is_empty() {
        "none besides lo".into()
    } else {
        with_mac.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_protocol::launch::{Interface, IpCidr, Route};
    use serde_json::Value;
    use std::process::Command;

    /// Run `f` on a thread of its own in a fresh network namespace: unshare
    /// changes only the calling thread's, so the rest of the test process
    /// keeps the host's, and the namespace goes when the thread ends.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare with a constant flag affects this thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// `ip` run from the calling thread (its children inherit its
    /// namespace).
    fn ip(args: &[&str]) -> Value {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A veth pair with the given MACs, both down.
    fn veth(a: &str, a_mac: &str, b: &str, b_mac: &str) {
        ip(&[
            "link", "add", a, "address", a_mac, "type", "veth", "peer", "name", b, "address", b_mac,
        ]);
    }

    fn cidr(s: &str) -> IpCidr {
        let (a, p) = s.split_once('/').unwrap();
        IpCidr {
            address: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    fn iface(name: &str, mac: &str, addrs: &[&str], mtu: Option<u32>) -> Interface {
        Interface {
            mac: mac.into(),
            name: name.into(),
            addresses: addrs.iter().map(|a| cidr(a)).collect(),
            mtu,
        }
    }

    fn link_json(name: &str) -> Value {
        ip(&["-j", "-d", "addr", "show", "dev", name])[0].clone()
    }

    #[test]
    fn interfaces_are_found_by_mac_renamed_addressed_and_routed() {
        in_new_netns(|| {
            veth("va", "02:00:00:00:00:0a", "vb", "02:00:00:00:00:0b");
            veth("vc", "02:00:00:00:00:0c", "vd", "02:00:00:00:00:0d");
            // The peers come up too, so the carriers are up and routes
            // through the spec's devices are usable.
            ip(&["link", "set", "vb", "up"]);
            ip(&["link", "set", "vd", "up"]);
            let net = Network {
                interfaces: vec![
                    // Takes the name the other device of the spec has.
                    iface(
                        "vc",
                        "02:00:00:00:00:0a",
                        &["10.1.0.2/24", "fd01::2/64"],
                        Some(1400),
                    ),
                    iface("eth1", "02:00:00:00:00:0c", &["10.2.0.2/24"], None),
                ],
                routes: vec![
                    Route {
                        destination: cidr("0.0.0.0/0"),
                        gateway: Some("10.2.0.1".parse().unwrap()),
                        interface: "eth1".into(),
                    },
                    Route {
                        destination: cidr("::/0"),
                        gateway: Some("fd01::1".parse().unwrap()),
                        interface: "vc".into(),
                    },
                    Route {
                        destination: cidr("192.168.50.0/24"),
                        gateway: None,
                        interface: "vc".into(),
                    },
                ],
                ..Default::default()
            };
            net.validate().unwrap();
            let mut nl = Netlink::open().unwrap();
            apply(&mut nl, &net).unwrap();

            let a = link_json("vc");
            assert_eq!(a["address"], "02:00:00:00:00:0a", "{a}");
            assert_eq!(a["mtu"], 1400, "{a}");
            assert!(
                a["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
                "{a}"
            );
            let addrs: Vec<(String, u64, bool)> = a["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["local"].as_str().unwrap().to_string(),
                        i["prefixlen"].as_u64().unwrap(),
                        i["tentative"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            assert!(addrs.contains(&("10.1.0.2".into(), 24, false)), "{addrs:?}");
            // No DAD: usable at once, not tentative.
            assert!(addrs.contains(&("fd01::2".into(), 64, false)), "{addrs:?}");
            let c = link_json("eth1");
            assert_eq!(c["address"], "02:00:00:00:00:0c", "{c}");
            assert_eq!(c["mtu"], 1500, "{c}");

            let v4 = ip(&["-j", "-4", "route", "show"]);
            let default = v4
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["dst"] == "default")
                .unwrap_or_else(|| panic!("no default route: {v4}"));
            assert_eq!(default["gateway"], "10.2.0.1", "{v4}");
            assert_eq!(default["dev"], "eth1", "{v4}");
            assert!(
                v4.as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["dst"] == "192.168.50.0/24"
                        && r["dev"] == "vc"
                        && r["scope"] == "link"),
                "{v4}"
            );
            let v6 = ip(&["-j", "-6", "route", "show", "default"]);
            assert_eq!(v6[0]["gateway"], "fd01::1", "{v6}");
            assert_eq!(v6[0]["dev"], "vc", "{v6}");
        });
    }

    #[test]
    fn failures_name_the_interface_and_the_step() {
        in_new_netns(|| {
            veth("va", "02:00:00:00:00:0a", "vb", "02:00:00:00:00:0b");
            let mut nl = Netlink::open().unwrap();

            let net = Network {
                interfaces: vec![iface("eth0", "02:00:00:00:00:99", &[], None)],
                ..Default::default()
            };
            let e = apply(&mut nl, &net).unwrap_err();
            assert!(matches!(e, NetworkError::NoDevice { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("\"eth0\"")
                    && text.contains("02:00:00:00:00:99")
                    && text.contains("va 02:00:00:00:00:0a"),
                "{text}"
            );

            // The same address twice on one device: the kernel refuses
            // the second (validation refuses it too; this is the kernel's
            // word, for addresses already present).
            ip(&["addr", "add", "10.5.0.2/24", "dev", "va"]);
            let net = Network {
                interfaces: vec![iface("eth0", "02:00:00:00:00:0a", &["10.5.0.2/24"], None)],
                ..Default::default()
            };
            let e = apply(&mut nl, &net).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("\"eth0\"")
                    && text.contains("add address 10.5.0.2/24")
                    && text.contains("exists"),
                "{text}"
            );

            // A gateway the kernel cannot reach.
            let net = Network {
                interfaces: vec![iface("eth0", "02:00:00:00:00:0a", &[], None)],
                routes: vec![Route {
                    destination: cidr("0.0.0.0/0"),
                    gateway: Some("10.99.0.1".parse().unwrap()),
                    interface: "eth0".into(),
                }],
                ..Default::default()
            };
            let e = apply(&mut nl, &net).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("route 0 (0.0.0.0/0 via 10.99.0.1)") && text.contains("\"eth0\""),
                "{text}"
            );
        });
    }

    #[test]
    fn no_interfaces_touches_nothing() {
        in_new_netns(|| {
            let mut nl = Netlink::open().unwrap();
            apply(&mut nl, &Network::default()).unwrap();
            let links = nl.links().unwrap();
            assert_eq!(links.len(), 1, "{links:?}");
            assert_eq!(links[0].name, "lo");
            assert!(!links[0].up);
        });
    }
}
