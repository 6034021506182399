//! virtio-net end to end on real KVM: guests with net devices on TAPs in
//! a network namespace each test makes (so its traffic stays there),
//! their interfaces configured by guest init from the launch spec's
//! network section (the workloads only use them): ping both ways and a
//! TCP transfer each way checked with md5; two NICs in two subnets found
//! by MAC with a default route through one; the /etc files init writes;
//! and what init refuses.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvm_e2e::netns::Netns;
use mvm_e2e::{StatusExt, Vm};
use mvm_protocol::launch::{Dns, HostEntry, Interface, IpCidr, Network, Route};
use mvm_runtime::launch::Nic;
use mvm_vmm_api::{MacAddr, TapConfig};

const HOST_IP: &str = "10.213.0.1";
const GUEST_IP: &str = "10.213.0.2";
const TAP: &str = "mvmtap0";
const MAC: MacAddr = MacAddr([0x02, 0x6d, 0x76, 0x6d, 0x00, 0x01]);

fn md5(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn cidr(s: &str) -> IpCidr {
    let (a, p) = s.split_once('/').unwrap();
    IpCidr {
        address: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn interface(name: &str, mac: MacAddr, addrs: &[&str]) -> Interface {
    Interface {
        mac: mac.to_string(),
        name: name.into(),
        addresses: addrs.iter().map(|a| cidr(a)).collect(),
        mtu: None,
    }
}

/// The console text between the lines `BEGIN name` and `END name`.
fn console_block(console: &str, name: &str) -> Option<String> {
    let console = console.replace("\r\n", "\n");
    let begin = format!("BEGIN {name}\n");
    let start = console.find(&begin)? + begin.len();
    let len = console[start..].find(&format!("END {name}\n"))?;
    Some(console[start..start + len].to_string())
}

/// The value after `key ` on the console line that starts with it.
fn console_value(console: &str, key: &str) -> Option<String> {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key} ")))
        .map(|v| v.trim().to_string())
}

#[test]
fn net_guest_and_host_ping_and_move_tcp_data_both_ways_over_a_tap() {
    let ns = Netns::new("net-e2e").unwrap();
    ns.add_tap(TAP, &format!("{HOST_IP}/24")).unwrap();

    // Host side of guest -> host: accept one connection, read to EOF.
    let listener = ns
        .run(|| TcpListener::bind((HOST_IP, 5001)).unwrap())
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (peer, got)
    });

    let script = format!(
        "set -e
echo \"eth0-mac $(cat /sys/class/net/eth0/address)\"
echo \"eth0-mtu $(cat /sys/class/net/eth0/mtu)\"
echo \"eth0-carrier $(cat /sys/class/net/eth0/carrier)\"
ping -c 3 -W 5 {HOST_IP} > /tmp/ping && echo guest-ping-ok || cat /tmp/ping
dd if=/dev/urandom of=/tmp/out bs=64k count=48 2>/dev/null
echo \"g2h-md5 $(md5sum < /tmp/out)\"
nc {HOST_IP} 5001 < /tmp/out
echo g2h-sent
nc -l -p 5002 -e md5sum < /dev/null
echo net-done"
    );
    let mut vm = Vm::new(&["/bin/sh", "-c", &script]);
    vm.memory_mib = 256;
    vm.nics = vec![Nic::new("eth0", TapConfig::Name(TAP.into()), MAC)];
    vm.spec.network = Some(Network {
        interfaces: vec![interface("eth0", MAC, &[&format!("{GUEST_IP}/24")])],
        ..Default::default()
    });
    vm.netns = Some(ns.name().to_string());
    let mut r = vm.spawn();

    r.wait_for_console("g2h-sent");
    let console = r.console();
    assert_eq!(
        console_value(&console, "eth0-mac").as_deref(),
        Some("02:6d:76:6d:00:01"),
        "{console}"
    );
    assert_eq!(console_value(&console, "eth0-mtu").as_deref(), Some("1500"));
    assert_eq!(
        console_value(&console, "eth0-carrier").as_deref(),
        Some("1")
    );
    assert!(console.contains("guest-ping-ok"), "{console}");
    // Init configured eth0 and timed it: shown past libtest's capture
    // (a direct write) for docs/benchmarks.md.
    let timing = console
        .lines()
        .find(|l| l.contains("network configured (1 interfaces, 0 routes) in "))
        .unwrap_or_else(|| panic!("no network timing from init: {console}"));
    let _ = writeln!(std::io::stderr(), "net e2e: {}", timing.trim());

    // Guest -> host: 3 MiB with the guest's md5.
    let (peer, got) = receiver.join().unwrap();
    assert_eq!(peer.ip().to_string(), GUEST_IP);
    assert_eq!(got.len(), 48 * 64 * 1024);
    let guest_md5 = console_value(&console, "g2h-md5").unwrap();
    assert_eq!(
        guest_md5.split_whitespace().next(),
        Some(md5(&got).as_str())
    );

    // Host -> guest ping, while the guest waits in `nc -l`.
    let out = ns
        .exec(&["busybox", "ping", "-c", "3", "-W", "5", GUEST_IP])
        .unwrap();
    assert!(
        out.status.success(),
        "host -> guest ping: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Host -> guest: 4 MiB; the guest answers with its md5.
    let data = pattern(4 << 20);
    let want = md5(&data);
    let answer = ns
        .run(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut s = loop {
                match TcpStream::connect((GUEST_IP, 5002)) {
                    Ok(s) => break s,
                    // The guest's `nc -l` may not listen yet.
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("connect to the guest: {e}"),
                }
            };
            s.write_all(&data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
    assert_eq!(answer.split_whitespace().next(), Some(want.as_str()));

    r.wait_for_console("net-done");
    let out = r.wait();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
}

#[test]
fn net_tap_that_cannot_be_opened_is_a_clear_vmm_error() {
    let mut vm = Vm::new(&["/bin/true"]);
    // Not a TAP of ours: a descriptor the VMM does not have.
    vm.nics = vec![Nic::new("eth0", TapConfig::Fd(200), MAC)];
    let out = vm.run();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let msg = &out.status().message;
    assert!(
        msg.contains("eth0") && msg.contains("descriptor 200"),
        "{msg}"
    );
}

/// Two NICs on two TAPs in two subnets. The spec names them against the
/// order the kernel probes them in (the second device becomes eth0), so
/// init must find them by MAC and rename them; the default route goes
/// through eth0, which the guest proves by reaching an address that is
/// in neither subnet. The same boot checks the /etc files init writes
/// and that a name from `hosts` resolves.
#[test]
fn net_two_nics_by_mac_with_a_default_route_and_the_etc_files() {
    const TAP_A: &str = "mvmtapa";
    const TAP_B: &str = "mvmtapb";
    const MAC_A: MacAddr = MacAddr([0x02, 0x6d, 0x76, 0x6d, 0x01, 0x0a]);
    const MAC_B: MacAddr = MacAddr([0x02, 0x6d, 0x76, 0x6d, 0x01, 0x0b]);
    let ns = Netns::new("net2-e2e").unwrap();
    ns.add_tap(TAP_A, "10.221.0.1/24").unwrap();
    ns.add_tap(TAP_B, "10.222.0.1/24").unwrap();
    // Host side of IPv6 on A, usable at once like the guest's.
    ns.ip(&["addr", "add", "fd00:221::1/64", "dev", TAP_A, "nodad"])
        .unwrap();
    // Only reachable from the guest through its default route (B).
    ns.ip(&["addr", "add", "10.223.0.1/32", "dev", "lo"])
        .unwrap();

    let script = "
echo \"eth0-mac $(cat /sys/class/net/eth0/address)\"
echo \"eth1-mac $(cat /sys/class/net/eth1/address)\"
echo \"eth1-mtu $(cat /sys/class/net/eth1/mtu)\"
echo \"links $(ls /sys/class/net | tr '\\n' ' ')\"
ping -c 1 -W 10 10.221.0.1 > /dev/null && echo ping-a-ok
ping -c 1 -W 10 10.222.0.1 > /dev/null && echo ping-b-ok
ping -c 1 -W 10 10.223.0.1 > /dev/null && echo ping-default-ok
ping -c 1 -W 10 fd00:221::1 > /dev/null && echo ping-v6-ok
echo \"default $(ip route show default)\"
echo \"resolve $(ping -c 1 -W 10 hostside | head -n 1)\"
echo \"hostname $(hostname)\"
for f in hosts resolv.conf hostname; do echo BEGIN $f; cat /etc/$f; echo END $f; done
echo net2-done";
    let mut vm = Vm::new(&["/bin/sh", "-c", script]);
    vm.memory_mib = 256;
    vm.netns = Some(ns.name().to_string());
    vm.nics = vec![
        Nic::new("nic-a", TapConfig::Name(TAP_A.into()), MAC_A),
        Nic::new("nic-b", TapConfig::Name(TAP_B.into()), MAC_B),
    ];
    vm.spec.hostname = Some("web-1".into());
    let mut eth1 = interface("eth1", MAC_A, &["10.221.0.2/24", "fd00:221::2/64"]);
    eth1.mtu = Some(1400);
    vm.spec.network = Some(Network {
        interfaces: vec![interface("eth0", MAC_B, &["10.222.0.2/24"]), eth1],
        routes: vec![Route {
            destination: cidr("0.0.0.0/0"),
            gateway: Some("10.222.0.1".parse().unwrap()),
            interface: "eth0".into(),
        }],
        dns: Dns {
            nameservers: vec![
                "10.222.0.1".parse().unwrap(),
                "fd00:221::1".parse().unwrap(),
            ],
            search: vec!["svc.example".into(), "example".into()],
            options: vec!["ndots:2".into()],
        },
        hosts: vec![HostEntry {
            address: "10.221.0.1".parse().unwrap(),
            names: vec!["hostside".into(), "hostside.svc.example".into()],
        }],
    });
    let out = vm.run();
    let console = &out.console;
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
    assert!(console.contains("net2-done"), "{}", out.describe());
    assert_eq!(
        console_value(console, "eth0-mac").as_deref(),
        Some("02:6d:76:6d:01:0b"),
        "{console}"
    );
    assert_eq!(
        console_value(console, "eth1-mac").as_deref(),
        Some("02:6d:76:6d:01:0a"),
        "{console}"
    );
    assert_eq!(console_value(console, "eth1-mtu").as_deref(), Some("1400"));
    assert_eq!(
        console_value(console, "links").as_deref(),
        Some("eth0 eth1 lo"),
        "{console}"
    );
    for ok in ["ping-a-ok", "ping-b-ok", "ping-default-ok", "ping-v6-ok"] {
        assert!(console.contains(ok), "{ok}: {console}");
    }
    let default = console_value(console, "default").unwrap_or_default();
    assert!(
        default.starts_with("default via 10.222.0.1 dev eth0"),
        "{default}"
    );
    let resolve = console_value(console, "resolve").unwrap_or_default();
    assert!(
        resolve.starts_with("PING hostside (10.221.0.1)"),
        "{resolve}"
    );
    assert_eq!(console_value(console, "hostname").as_deref(), Some("web-1"));
    assert_eq!(
        console_block(console, "hosts").as_deref(),
        Some(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n10.222.0.2\tweb-1\n10.221.0.2\tweb-1\n\
             fd00:221::2\tweb-1\n10.221.0.1\thostside hostside.svc.example\n"
        ),
        "{console}"
    );
    assert_eq!(
        console_block(console, "resolv.conf").as_deref(),
        Some(
            "nameserver 10.222.0.1\nnameserver fd00:221::1\n\
             search svc.example example\noptions ndots:2\n"
        ),
        "{console}"
    );
    assert_eq!(
        console_block(console, "hostname").as_deref(),
        Some("web-1\n"),
        "{console}"
    );
}

/// A spec interface whose MAC no device has: init says which, and the
/// boot ends with the network's init error instead of a workload that
/// would run without its network.
#[test]
fn net_interface_no_device_has_fails_the_boot_clearly() {
    let ns = Netns::new("net3-e2e").unwrap();
    ns.add_tap(TAP, &format!("{HOST_IP}/24")).unwrap();
    let mut vm = Vm::new(&["/bin/sh", "-c", "echo workload-ran"]);
    vm.netns = Some(ns.name().to_string());
    vm.nics = vec![Nic::new("eth0", TapConfig::Name(TAP.into()), MAC)];
    vm.unchecked_network = Some(Network {
        interfaces: vec![interface(
            "eth0",
            MacAddr([0x02, 0, 0, 0, 0, 0x99]),
            &[&format!("{GUEST_IP}/24")],
        )],
        ..Default::default()
    });
    let out = vm.run();
    assert!(!out.console.contains("workload-ran"), "{}", out.describe());
    assert!(
        out.console.contains(
            "network interface \"eth0\": no network device has MAC 02:00:00:00:00:99 \
             (devices: eth0 02:6d:76:6d:00:01)"
        ),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.status().init_error(),
        Some("the guest's network could not be configured"),
        "{}",
        out.describe()
    );
    assert_eq!(out.status().exit_code(), Some(125), "{}", out.describe());
}

/// `--network none`: a network section without interfaces. Only `lo`,
/// up, and init's /etc files (no nameserver).
#[test]
fn net_section_without_interfaces_leaves_only_loopback() {
    let mut vm = Vm::new(&[
        "/bin/sh",
        "-c",
        "echo \"links $(ls /sys/class/net | tr '\\n' ' ')\"
ping -c 1 -W 5 127.0.0.1 > /dev/null && echo lo-ok
echo \"resolv-bytes $(wc -c < /etc/resolv.conf)\"
echo \"localhost $(grep -c localhost /etc/hosts)\"",
    ]);
    vm.spec.network = Some(Network::default());
    let out = vm.run();
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
    let console = &out.console;
    assert_eq!(
        console_value(console, "links").as_deref(),
        Some("lo"),
        "{console}"
    );
    assert!(console.contains("lo-ok"), "{console}");
    assert_eq!(
        console_value(console, "resolv-bytes").as_deref(),
        Some("0"),
        "{console}"
    );
    assert_eq!(
        console_value(console, "localhost").as_deref(),
        Some("2"),
        "{console}"
    );
}
