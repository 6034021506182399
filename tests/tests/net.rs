//! virtio-net end to end on real KVM: a guest with one net device on a TAP
//! in a network namespace this test makes (so its traffic stays there),
//! configuring eth0 with busybox `ip`, then ping both ways and a TCP
//! transfer each way checked with md5.
//!
//! Guest-side interface configuration from the launch spec is a later
//! step of the networks work; here the workload does it itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvm_e2e::netns::Netns;
use mvm_e2e::{StatusExt, Vm};
use mvm_vmm_api::{MacAddr, NetConfig, TapConfig};

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

/// The value after `key ` on the console line that starts with it.
fn console_value(console: &str, key: &str) -> Option<String> {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key} ")))
        .map(|v| v.trim().to_string())
}

#[test]
fn guest_and_host_ping_and_move_tcp_data_both_ways_over_a_tap() {
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
ip link set lo up
ip addr add {GUEST_IP}/24 dev eth0
ip link set eth0 up
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
    let mut net = NetConfig::new("eth0", TapConfig::Name(TAP.into()));
    net.mac = Some(MAC);
    net.mtu = 1500;
    vm.net = vec![net];
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
fn a_tap_that_cannot_be_opened_is_a_clear_vmm_error() {
    let mut vm = Vm::new(&["/bin/true"]);
    // Not a TAP of ours: a descriptor the VMM does not have.
    vm.net = vec![NetConfig::new("eth0", TapConfig::Fd(200))];
    let out = vm.run();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let msg = &out.status().message;
    assert!(
        msg.contains("eth0") && msg.contains("descriptor 200"),
        "{msg}"
    );
}
