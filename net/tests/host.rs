//! mvm-net against the real kernel: bridges, veth/TAP ports, the
//! nftables ruleset, the port proxy, each test in fresh network
//! namespaces (see `common`). Root only.

mod common;

use std::sync::Arc;

use common::*;
use mvm_net::spec::{DesiredState, PortSpec, Protocol};
use mvm_net::{names, Config, HostNet};

fn hostnet() -> HostNet {
    HostNet::new(Config::default()).unwrap()
}

#[test]
fn nat_out_and_host_protection() {
    let host = Arc::new(Ns::new("host"));
    let out = Arc::new(outside(&host));
    let n = network("aa01", "172.30.0.0/16");
    let e = endpoint("e1", &n, "172.30.0.2", &[]);
    let g = Arc::new(guest(&host, &e, &n));
    tcp_server(&out, "192.0.2.2:8000");
    // Stand-ins for mvmd's API and any host service: on the gateway, on
    // the uplink address, on all addresses.
    tcp_server(&host, "0.0.0.0:7000");
    let state = DesiredState {
        networks: vec![n],
        endpoints: vec![e],
        ports: vec![],
    };
    let (h, g2, o) = (host.clone(), g.clone(), out.clone());
    in_host(&host, move || async move {
        let net = hostnet();
        net.apply(&state).await.unwrap();
        let g = g2.clone();
        off(move || {
            // NAT out: the outside sees the host's uplink address.
            assert_eq!(tcp_hello(&g, "192.0.2.2:8000").unwrap(), "192.0.2.1");
            // The host: DNS on the gateway is open (the embedded server
            // answers; with no upstream resolver in this namespace, a
            // forwarded name fails cleanly with SERVFAIL).
            let r = dns_a(&g, "172.30.0.1:53", "nothing.invalid.", false);
            assert_eq!(r, Err("Server Failure".to_string()));
            for to in ["172.30.0.1:7000", "192.0.2.1:7000"] {
                assert!(
                    tcp_hello(&g, to).is_err(),
                    "guest reached host service {to}"
                );
            }
            // The host itself still reaches its service and the outside.
            assert!(tcp_hello(&o, "192.0.2.1:7000").is_ok());
        })
        .await;
        drop(h);
    });
}

#[test]
fn dns_answers_names_and_aliases_of_its_network_only_and_forwards_the_rest() {
    use mvm_net::spec::NetworkKind;
    let host = Arc::new(Ns::new("host"));
    let a = network("aa07", "172.30.0.0/16");
    let b = network("bb07", "10.55.0.0/24");
    let mut d = network("dd07", "10.56.0.0/24");
    d.kind = NetworkKind::Default;
    let e1 = endpoint("d1", &a, "172.30.0.2", &["web", "alias1"]);
    let e2 = endpoint("d2", &a, "172.30.0.3", &["db"]);
    let e3 = endpoint("d3", &b, "10.55.0.2", &["other"]);
    let e4 = endpoint("d4", &d, "10.56.0.2", &["dflt"]);
    let g2 = Arc::new(guest(&host, &e2, &a));
    let g3 = Arc::new(guest(&host, &e3, &b));
    let g4 = Arc::new(guest(&host, &e4, &d));
    let state = DesiredState {
        networks: vec![a.clone(), b, d],
        endpoints: vec![e1, e2, e3, e4],
        ports: vec![],
    };
    let h = host.clone();
    in_host(&host, move || async move {
        let fake: std::net::Ipv4Addr = "198.51.100.7".parse().unwrap();
        fake_resolver(&h, "127.0.0.1:5300", fake);
        let net = HostNet::new(Config {
            dns_upstreams: Some(vec!["127.0.0.1:5300".parse().unwrap()]),
            ..Config::default()
        })
        .unwrap();
        net.apply(&state).await.unwrap();
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let (g2c, g3c, g4c) = (g2.clone(), g3.clone(), g4.clone());
        off(move || {
            let gw = "172.30.0.1:53";
            assert_eq!(dns_a(&g2c, gw, "web.", false).unwrap(), [ip("172.30.0.2")]);
            assert_eq!(
                dns_a(&g2c, gw, "ALIAS1.", false).unwrap(),
                [ip("172.30.0.2")]
            );
            assert_eq!(dns_a(&g2c, gw, "web.", true).unwrap(), [ip("172.30.0.2")]);
            assert_eq!(dns_a(&g2c, gw, "example.com.", false).unwrap(), [fake]);
            // Another network's server does not know network A's names.
            assert_eq!(dns_a(&g3c, "10.55.0.1:53", "web.", false).unwrap(), [fake]);
            assert_eq!(
                dns_a(&g3c, "10.55.0.1:53", "other.", false).unwrap(),
                [ip("10.55.0.2")]
            );
            // Nor may it ask network A's server.
            assert!(dns_a(&g3c, gw, "web.", false).is_err());
            // The default network forwards everything, its names too.
            assert_eq!(dns_a(&g4c, "10.56.0.1:53", "dflt.", false).unwrap(), [fake]);
        })
        .await;
        // Names follow endpoints live.
        let e5 = endpoint("d5", &a, "172.30.0.9", &["newbie"]);
        net.add_endpoint(e5, vec![]).await.unwrap();
        let g = g2.clone();
        off(move || {
            assert_eq!(
                dns_a(&g, "172.30.0.1:53", "newbie.", false).unwrap(),
                [ip("172.30.0.9")]
            )
        })
        .await;
        net.remove_endpoint("d5").await.unwrap();
        let g = g2.clone();
        off(move || {
            assert_eq!(
                dns_a(&g, "172.30.0.1:53", "newbie.", false).unwrap(),
                [fake]
            )
        })
        .await;
    });
}

#[test]
fn networks_are_isolated_and_internal_ones_have_no_way_out() {
    let host = Arc::new(Ns::new("host"));
    let out = Arc::new(outside(&host));
    let a = network("aa02", "172.30.0.0/16");
    let mut b = network("bb02", "10.88.0.0/24");
    b.internal = true;
    let c = network("cc02", "10.89.0.0/24");
    let ea = endpoint("ea", &a, "172.30.0.2", &[]);
    let ea2 = endpoint("ea2", &a, "172.30.0.3", &[]);
    let eb = endpoint("eb", &b, "10.88.0.2", &[]);
    let ec = endpoint("ec", &c, "10.89.0.2", &[]);
    let ga = Arc::new(guest(&host, &ea, &a));
    let ga2 = Arc::new(guest(&host, &ea2, &a));
    let gb = Arc::new(guest(&host, &eb, &b));
    let gc = Arc::new(guest(&host, &ec, &c));
    tcp_server(&out, "192.0.2.2:8000");
    for (g, ip) in [
        (&ga, "172.30.0.2"),
        (&ga2, "172.30.0.3"),
        (&gb, "10.88.0.2"),
        (&gc, "10.89.0.2"),
    ] {
        tcp_server(g, &format!("{ip}:80"));
    }
    let state = DesiredState {
        networks: vec![a, b, c],
        endpoints: vec![ea, ea2, eb, ec],
        ports: vec![],
    };
    in_host(&host, move || async move {
        let net = hostnet();
        net.apply(&state).await.unwrap();
        off(move || {
            // Same network: direct, unmasqueraded.
            assert_eq!(tcp_hello(&ga, "172.30.0.3:80").unwrap(), "172.30.0.2");
            // Across networks, by address, either way: nothing passes.
            for (from, to) in [
                (&ga, "10.89.0.2:80"),
                (&gc, "172.30.0.2:80"),
                (&ga, "10.88.0.2:80"),
                (&gb, "172.30.0.2:80"),
            ] {
                assert!(tcp_hello(from, to).is_err(), "{} reached {to}", from.name);
            }
            // Out: the non-internal ones reach the outside, the internal not.
            assert_eq!(tcp_hello(&gc, "192.0.2.2:8000").unwrap(), "192.0.2.1");
            assert!(tcp_hello(&gb, "192.0.2.2:8000").is_err());
            // And nothing from outside reaches a guest unpublished.
            assert!(tcp_hello(&out, "172.30.0.2:80").is_err());
        })
        .await;
    });
}

#[test]
fn spoofed_addresses_are_dropped() {
    let host = Arc::new(Ns::new("host"));
    let a = network("aa03", "172.30.0.0/16");
    let e1 = endpoint("s1", &a, "172.30.0.2", &[]);
    let e2 = endpoint("s2", &a, "172.30.0.3", &[]);
    let g1 = Arc::new(guest(&host, &e1, &a));
    let g2 = Arc::new(guest(&host, &e2, &a));
    tcp_server(&g1, "172.30.0.2:80");
    let state = DesiredState {
        networks: vec![a],
        endpoints: vec![e1, e2],
        ports: vec![],
    };
    in_host(&host, move || async move {
        let net = hostnet();
        net.apply(&state).await.unwrap();
        off(move || {
            assert_eq!(tcp_hello(&g2, "172.30.0.2:80").unwrap(), "172.30.0.3");
            // Another source address (ARP sender and IP source both wrong).
            g2.ip(&["addr", "flush", "dev", "eth0"]);
            g2.ip(&["addr", "add", "172.30.0.9/16", "dev", "eth0"]);
            g2.ip(&["neigh", "flush", "all"]);
            assert!(
                tcp_hello(&g2, "172.30.0.2:80").is_err(),
                "spoofed IP passed"
            );
            // Its own address back but another MAC.
            g2.ip(&["addr", "flush", "dev", "eth0"]);
            g2.ip(&["addr", "add", "172.30.0.3/16", "dev", "eth0"]);
            g2.ip(&["link", "set", "eth0", "address", "02:42:ac:1e:00:63"]);
            assert!(
                tcp_hello(&g2, "172.30.0.2:80").is_err(),
                "spoofed MAC passed"
            );
            // Both right again: passes (the drops were the rules').
            g2.ip(&["link", "set", "eth0", "address", "02:42:ac:1e:00:03"]);
            assert_eq!(tcp_hello(&g2, "172.30.0.2:80").unwrap(), "172.30.0.3");
        })
        .await;
    });
}

#[test]
fn published_ports_reach_the_guest_by_proxy_and_by_dnat() {
    let host = Arc::new(Ns::new("host"));
    let out = Arc::new(outside(&host));
    let a = network("aa04", "172.30.0.0/16");
    let e = endpoint("p1", &a, "172.30.0.2", &[]);
    let other = network("bb04", "10.77.0.0/24");
    let eo = endpoint("p2", &other, "10.77.0.2", &[]);
    let g = Arc::new(guest(&host, &e, &a));
    let go = Arc::new(guest(&host, &eo, &other));
    tcp_server(&g, "172.30.0.2:80");
    udp_server(&g, "172.30.0.2:5353");
    let port = |protocol, host_port, guest_port| PortSpec {
        endpoint: "p1".into(),
        protocol,
        host_ip: None,
        host_port,
        guest_port,
    };
    let state = DesiredState {
        networks: vec![a, other],
        endpoints: vec![e, eo],
        ports: vec![
            port(Protocol::Tcp, 18080, 80),
            port(Protocol::Udp, 18081, 5353),
        ],
    };
    let h = host.clone();
    in_host(&host, move || async move {
        let net = hostnet();
        net.apply(&state).await.unwrap();
        off(move || {
            // Loopback: the proxy (the guest sees the host's bridge address).
            assert_eq!(tcp_hello(&h, "127.0.0.1:18080").unwrap(), "172.30.0.1");
            assert_eq!(
                udp_ask(&h, "127.0.0.1:18081", "hi").unwrap(),
                "172.30.0.1 hi"
            );
            assert_eq!(udp_ask(&h, "[::1]:18081", "v6").unwrap(), "172.30.0.1 v6");
            // The host to its own non-loopback address: output DNAT.
            assert_eq!(tcp_hello(&h, "192.0.2.1:18080").unwrap(), "192.0.2.1");
            // From outside: prerouting DNAT, the client's own address.
            assert_eq!(tcp_hello(&out, "192.0.2.1:18080").unwrap(), "192.0.2.2");
            assert_eq!(
                udp_ask(&out, "192.0.2.1:18081", "x").unwrap(),
                "192.0.2.2 x"
            );
            // From another network's guest, through the host's address
            // (masqueraded into the target's bridge, as Docker does).
            assert_eq!(tcp_hello(&go, "192.0.2.1:18080").unwrap(), "172.30.0.1");
            // Hairpin: the guest to its own published port.
            assert_eq!(tcp_hello(&g, "192.0.2.1:18080").unwrap(), "172.30.0.1");
        })
        .await;
    });
}

#[test]
fn a_port_in_use_is_refused_and_nothing_is_left() {
    let host = Arc::new(Ns::new("host"));
    let h = host.clone();
    in_host(&host, move || async move {
        // The port is held by another process (`sleep`, given the
        // listening socket), as in life; held by this test process, any
        // `ip` child forked meanwhile by a parallel test would briefly
        // share it and keep it busy after it is closed here.
        let held = std::net::TcpListener::bind("0.0.0.0:19090").unwrap();
        let mut holder = hold_in_child(std::os::fd::AsRawFd::as_raw_fd(&held));
        drop(held);
        let a = network("aa05", "172.30.0.0/16");
        let e = endpoint("u1", &a, "172.30.0.2", &[]);
        let state = DesiredState {
            networks: vec![a],
            endpoints: vec![e],
            ports: vec![PortSpec {
                endpoint: "u1".into(),
                protocol: Protocol::Tcp,
                host_ip: None,
                host_port: 19090,
                guest_port: 80,
            }],
        };
        let net = hostnet();
        let err = net.apply(&state).await.unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:19090/tcp is already in use"), "{err}");
        assert!(
            err.contains(&format!("pid {} (sleep)", holder.id())),
            "{err}"
        );
        assert!(net.links().owned().await.unwrap().is_empty());
        assert_eq!(h.nft(&["list", "ruleset"]).trim(), "");
        // Freed, the same state applies.
        holder.kill().unwrap();
        holder.wait().unwrap();
        net.apply(&state).await.unwrap();
        assert_eq!(net.links().owned().await.unwrap().len(), 2);
        // An ephemeral port comes back concrete and is then published.
        let req = mvm_net::publish::Publish::parse("80").unwrap();
        let specs = net.publish("u1", &[req]).await.unwrap();
        let p = specs[0].host_port;
        assert_ne!(p, 0);
        let mut s2 = state.clone();
        s2.ports = specs;
        net.apply(&s2).await.unwrap();
        let err = std::net::TcpListener::bind(("0.0.0.0", p)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    });
}

/// Starts `sleep` holding descriptor `fd` (as its descriptor 3).
fn hold_in_child(fd: i32) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new("sleep");
    c.arg("600");
    // SAFETY: the closure only calls dup2, which is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().unwrap()
}

fn listing(h: &Ns) -> (serde_json::Value, serde_json::Value) {
    let mut inet: serde_json::Value =
        serde_json::from_str(&h.nft(&["-j", "list", "table", "inet", names::TABLE])).unwrap();
    let mut bridge: serde_json::Value =
        serde_json::from_str(&h.nft(&["-j", "list", "table", "bridge", names::TABLE])).unwrap();
    strip_handles(&mut inet);
    strip_handles(&mut bridge);
    (inet, bridge)
}

#[test]
fn reconcile_after_a_crash_repairs_without_duplicates_and_empty_removes_all() {
    let host = Arc::new(Ns::new("host"));
    let a = network("aa06", "172.30.0.0/16");
    let mut b = network("bb06", "10.66.0.0/24");
    b.internal = true;
    // Real TAPs: no veth made for these endpoints.
    let e1 = endpoint("t1", &a, "172.30.0.2", &[]);
    let e2 = endpoint("t2", &b, "10.66.0.2", &[]);
    let state = Arc::new(DesiredState {
        networks: vec![a, b],
        endpoints: vec![e1, e2],
        ports: vec![PortSpec {
            endpoint: "t1".into(),
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: 18888,
            guest_port: 80,
        }],
    });
    let (h, s) = (host.clone(), state.clone());
    // The first mvmd applies, twice, then "crashes": its runtime, tasks
    // and sockets vanish without any teardown.
    let (links, before) = in_host(&host, move || async move {
        let first = hostnet();
        first.apply(&s).await.unwrap();
        let links = first.links().owned().await.unwrap();
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["mvmb-aa06", "mvmb-bb06", "mvmt-t1", "mvmt-t2"]);
        let tap = links.iter().find(|l| l.name == "mvmt-t1").unwrap();
        assert_eq!(tap.kind.as_deref(), Some("tun"));
        assert_eq!(tap.master, Some(links[0].index));
        // The VMM's flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and persistent.
        // (sysfs shows the namespace it was mounted in: ask `ip netns exec`.)
        let flags = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &h.name,
                "cat",
                "/sys/class/net/mvmt-t1/tun_flags",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&flags.stdout).trim(), "0x5802");
        let before = listing(&h);
        assert!(before.0.to_string().contains("masquerade"));
        // A second apply changes nothing.
        first.apply(&s).await.unwrap();
        assert_eq!(listing(&h), before);
        assert_eq!(first.links().owned().await.unwrap(), links);
        std::mem::forget(first);
        (links, before)
    });
    // Leftovers of an older state, and something that is not mvm's.
    host.run(|| mvm_net::links::create_tap("mvmt-stale").unwrap());
    host.ip(&["link", "add", "mvmb-stale", "type", "bridge"]);
    host.ip(&["link", "add", "notmvm0", "type", "bridge"]);
    let h = host.clone();
    in_host(&host, move || async move {
        let second = hostnet();
        second.apply(&state).await.unwrap();
        assert_eq!(listing(&h), before, "rules differ after reconcile");
        let now = second.links().owned().await.unwrap();
        assert_eq!(now, links, "links were recreated or leftovers kept");
        // Empty: everything of mvm's gone, the rest untouched.
        second.teardown().await.unwrap();
        assert!(second.links().owned().await.unwrap().is_empty());
        assert_eq!(h.nft(&["list", "ruleset"]).trim(), "");
        assert!(second.links().all().await.unwrap().contains_key("notmvm0"));
    });
}

/// A TAP opened as the VMM opens it, for a test to play the guest's
/// virtio-net: frames in and out with the 10-byte virtio-net header.
struct TapGuest {
    file: std::fs::File,
}

impl TapGuest {
    /// Attaches to the existing TAP `name` (in the calling thread's namespace).
    fn open(name: &str) -> Self {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: all-zero is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, alive for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(
            r,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        Self { file }
    }

    fn send(&mut self, frame: &[u8]) {
        use std::io::Write;
        let mut buf = vec![0u8; 10];
        buf.extend_from_slice(frame);
        self.file.write_all(&buf).unwrap();
    }

    /// The first frame `want` accepts within WAIT, if any.
    fn recv_until(&mut self, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut p = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, alive for the call.
            let r = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
            if r <= 0 {
                return None;
            }
            let n = self.file.read(&mut buf).unwrap();
            let frame = &buf[10..n];
            if want(frame) {
                return Some(frame.to_vec());
            }
        }
    }
}

fn arp_request(
    src_mac: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target: [u8; 4],
) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn is_arp_reply_to(f: &[u8], ip: [u8; 4]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[38..42] == ip
}

fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn is_udp_from(f: &[u8], src: [u8; 4], sport: u16) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x00]
        && f[23] == 17
        && f[26..30] == src
        && f[34..36] == sport.to_be_bytes()
}

#[test]
fn a_real_tap_passes_its_own_frames_and_drops_spoofed_ones() {
    let host = Arc::new(Ns::new("host"));
    let h = host.clone();
    in_host(&host, move || async move {
        let n = network("aa08", "172.30.0.0/16");
        let e = endpoint("r1", &n, "172.30.0.2", &["me"]);
        let state = DesiredState {
            networks: vec![n],
            endpoints: vec![e.clone()],
            ports: vec![],
        };
        let net = hostnet();
        net.apply(&state).await.unwrap();
        let name = e.port();
        let mac = e.mac.0;
        let gw = [172, 30, 0, 1];
        let me = [172, 30, 0, 2];
        let bridge_mac = mvm_net::ipam::bridge_mac("172.30.0.1".parse().unwrap()).0;
        let hh = h.clone();
        off(move || {
            hh.run(move || {
                let mut tap = TapGuest::open(&name);
                // Its own ARP: the gateway answers (with its fixed MAC). The
                // first frames can be lost while the kernel brings the port
                // and the bridge up after the TAP's carrier comes on (link
                // events are processed with a delay): ask until answered.
                let r = (0..5)
                    .find_map(|_| {
                        tap.send(&arp_request(mac, mac, me, gw));
                        tap.recv_until(|f| is_arp_reply_to(f, me))
                    })
                    .expect("no ARP reply");
                assert_eq!(r[22..28], bridge_mac, "the gateway's MAC is the fixed one");
                // ARP with a wrong sender address, then a wrong MAC: no answer.
                tap.send(&arp_request(mac, mac, [172, 30, 0, 99], gw));
                assert!(tap
                    .recv_until(|f| is_arp_reply_to(f, [172, 30, 0, 99]))
                    .is_none());
                let other = [2, 0x42, 0xac, 0x1e, 0, 0x63];
                tap.send(&arp_request(other, other, me, gw));
                assert!(tap.recv_until(|f| is_arp_reply_to(f, me)).is_none());
                // A DNS query from its own address is answered...
                let mut q = hickory_proto::op::Message::query();
                q.add_query(hickory_proto::op::Query::query(
                    hickory_proto::rr::Name::from_ascii("me.").unwrap(),
                    hickory_proto::rr::RecordType::A,
                ));
                let q = q.to_vec().unwrap();
                tap.send(&udp_frame(bridge_mac, mac, me, gw, 53, &q));
                let r = tap
                    .recv_until(|f| is_udp_from(f, gw, 53))
                    .expect("no DNS answer");
                let m = hickory_proto::op::Message::from_vec(&r[42..]).unwrap();
                assert_eq!(m.answers.len(), 1);
                // ...with another source MAC it is dropped (unfiltered, the
                // answer would come back: the host knows 172.30.0.2's MAC)...
                tap.send(&udp_frame(bridge_mac, other, me, gw, 53, &q));
                assert!(tap.recv_until(|f| is_udp_from(f, gw, 53)).is_none());
                // ...and from another source address too (unfiltered, the
                // host would ask who has that address, to answer it).
                tap.send(&udp_frame(bridge_mac, mac, [172, 30, 0, 99], gw, 53, &q));
                let asks = |f: &[u8]| {
                    f.len() >= 42 && f[12..14] == [8, 6] && f[38..42] == [172, 30, 0, 99]
                };
                assert!(tap
                    .recv_until(|f| is_udp_from(f, gw, 53) || asks(f))
                    .is_none());
            })
        })
        .await;
    });
}
