//! Published-port data paths against a plain veth pair, in fresh network
//! namespaces (root only): `cargo bench -p mvm-net --bench net`.
//!
//! - baseline: a client namespace straight to a server namespace over one
//!   veth pair (no bridge, no nftables, no proxy);
//! - DNAT: the "outside" namespace to the host's uplink address, DNATed
//!   through mvm's ruleset and bridge to the guest namespace;
//! - proxy: the host to 127.0.0.1, relayed by mvm's userspace proxy.
//!
//! Each path: bulk TCP throughput (one connection, `MIB` MiB) and the
//! median time to connect and get one byte back (`CONNECTS` times).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mvm_net::spec::{DesiredState, PortSpec, Protocol};
use mvm_net::{Config, HostNet};

const MIB: usize = 512;
const CONNECTS: usize = 200;

/// A server in `ns` on `addr`: for each connection, sends one byte, then
/// reads to the end and answers with 8 bytes of the count read.
fn sink(ns: &Ns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let l = ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.write_all(b"!");
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = c.write_all(&total.to_be_bytes());
            });
        }
    });
}

/// (MiB/s, median connect+first byte in µs) from `ns` to `to`.
fn measure(ns: &Ns, to: &str) -> (f64, f64) {
    let to: SocketAddr = to.parse().unwrap();
    ns.run(move || {
        let mut lat = Vec::with_capacity(CONNECTS);
        for _ in 0..CONNECTS {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut ack = [0u8; 8];
            c.read_exact(&mut ack).unwrap();
        }
        lat.sort_by(f64::total_cmp);
        let mut c = TcpStream::connect(to).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..MIB {
            c.write_all(&chunk).unwrap();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut ack = [0u8; 8];
        c.read_exact(&mut ack).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(u64::from_be_bytes(ack), (MIB as u64) << 20, "bytes lost");
        (MIB as f64 / secs, lat[lat.len() / 2])
    })
}

fn main() {
    // Baseline: two namespaces, one veth pair.
    let a = Ns::new("bench-a");
    let b = Ns::new("bench-b");
    a.ip(&[
        "link", "add", "v", "type", "veth", "peer", "name", "v", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "v"]);
    b.ip(&["addr", "add", "198.18.0.2/24", "dev", "v"]);
    a.ip(&["link", "set", "v", "up"]);
    b.ip(&["link", "set", "v", "up"]);
    sink(&b, "198.18.0.2:9000");
    let base = measure(&a, "198.18.0.2:9000");

    // mvm: host, guest on a bridge, outside on an uplink.
    let host = Arc::new(Ns::new("bench-host"));
    let out = Arc::new(outside(&host));
    let n = network("bench01", "172.30.0.0/16");
    let e = endpoint("b1", &n, "172.30.0.2", &[]);
    let g = guest(&host, &e, &n);
    sink(&g, "172.30.0.2:9000");
    let state = DesiredState {
        networks: vec![n],
        endpoints: vec![e],
        ports: vec![PortSpec {
            endpoint: "b1".into(),
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: 19000,
            guest_port: 9000,
        }],
    };
    let h = host.clone();
    let (dnat, proxy) = in_host(&host, move || async move {
        let net = HostNet::new(Config::default()).unwrap();
        net.apply(&state).await.unwrap();
        off(move || {
            let dnat = measure(&out, "192.0.2.1:19000");
            let proxy = measure(&h, "127.0.0.1:19000");
            (dnat, proxy)
        })
        .await
    });

    println!(
        "Published TCP port, {MIB} MiB one connection; connect+first byte median of {CONNECTS}"
    );
    println!();
    println!("| path | MiB/s | connect (µs) |");
    println!("|---|---:|---:|");
    for (name, (tp, lat)) in [
        ("veth pair (baseline)", base),
        ("DNAT via bridge (mvm)", dnat),
        ("userspace proxy, 127.0.0.1 (mvm)", proxy),
    ] {
        println!("| {name} | {tp:.0} | {lat:.0} |");
    }
}
