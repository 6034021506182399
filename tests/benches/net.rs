//! virtio-net benchmark on real KVM: TCP throughput guest -> host and host
//! -> guest, and ping round trips both ways, through mvm-vmm's virtio-net
//! and a TAP; next to the same measurements over a veth pair between two
//! network namespaces (the container baseline), in the same run, so that
//! the ratios mean something even under the emulated KVM host.
//!
//! The same tools on both sides of both setups: the "guest" end is busybox
//! (`nc -e` with `dd` as the source, `nc -l -e` with `dd` as the sink,
//! `ping`), the "host" end a Rust socket timed from the first byte to the
//! end of the stream. Every address lives in a namespace this program
//! makes and deletes.
//!
//! Then HTTP requests per second through a published port (issue 12): a
//! sandbox started through a real `mvmd` (`mvctl run -d -p
//! 18080:8080 ... httpd`, busybox's httpd serving a 4 KiB page), loaded
//! by ApacheBench (`ab`, Debian's apache2-utils) on the host side through
//! each path a client can take: 127.0.0.1 (mvmd's userspace proxy), the
//! bridge's address (nftables DNAT in the host's output path), and the
//! sandbox's own address (routed over the bridge, no NAT: virtio-net
//! alone). The reference is the same httpd and page in a namespace behind
//! a veth pair (`ab` in the other namespace), and on the host's loopback.
//! Every path is loaded for the same time with the same concurrency;
//! busybox httpd forks a process per connection on either side, so the
//! ratio compares the paths, not the servers.
//!
//! Last, iperf3 (Debian's, issue 12's tool): TCP throughput both ways
//! between the host and a sandbox run through mvmd from a Debian image
//! that has iperf3 (`iperf3 -s` in the sandbox, `iperf3 -c` on the host
//! to the sandbox's own address, `-R` for the guest's direction), next
//! to the same two runs over a veth pair between namespaces. iperf3 sends
//! from a buffer in a loop, so unlike the busybox rows above the tool
//! costs next to nothing on either side.
//!
//! A standalone program (no libtest harness); needs what the end-to-end
//! tests need (`MVM_KERNEL`, `MVM_INIT`, `MVM_VMM`, hardware KVM, root),
//! and `mvmd`, `mvctl`, `mvm-jailer` next to `MVM_VMM`, `ab` and `iperf3`.
//! Optional: `MVM_BENCH_NET_MIB` (default 64 MiB per direction; 0 skips
//! the throughput and ping part), `MVM_BENCH_PINGS` (default 20),
//! `MVM_BENCH_HTTP_SECS` (default 10 s of load per path; 0 skips the
//! HTTP part), `MVM_BENCH_HTTP_CONC` (default 4 requests in flight),
//! `MVM_BENCH_IPERF_SECS` (default 10 s per run; 0 skips the iperf3
//! part), which needs `MVM_BENCH_IPERF_IMAGE`, the rootfs tarball of
//! `resources/images/iperf3.sh` (`tests/run-bench.sh` sets it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mvm_e2e::bench;
use mvm_e2e::netns::{veth_pair, Netns};
use mvm_e2e::{Running, Vm};
use mvm_runtime::launch::Nic;
use mvm_vmm_api::{MacAddr, TapConfig};

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;
const TAP: &str = "mvmtap0";
const VM_HOST: &str = "10.213.1.1";
const VM_GUEST: &str = "10.213.1.2";
const VETH_HOST: &str = "10.213.2.1";
const VETH_PEER: &str = "10.213.2.2";
/// The receiving end: `dd` reading straight from the socket to its end,
/// then `done` back into it. (Busybox `wc -c` costs ten times the CPU of
/// `dd` per byte and would measure itself; the byte count is checked by
/// the end-to-end test, with md5.)
const SINK: &str = "#!/bin/sh\ndd of=/dev/null bs=64k 2>/dev/null\necho done\n";

/// The sending end: `dd` writing 64 KiB blocks straight into the socket
/// (`nc -e` makes it the program's stdout). Busybox `nc` itself copies in
/// 1 KiB pieces and would measure its own system calls, not the network.
fn source_script(count: usize) -> String {
    format!("#!/bin/sh\nexec dd if=/dev/zero bs=64k count={count} 2>/dev/null\n")
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// The average of busybox ping's `round-trip min/avg/max = a/b/c ms`.
fn ping_avg_ms(output: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}

/// Accepts one connection on `listener` and reads it to the end; returns
/// the byte count and the time from the first byte to the end.
fn receive(listener: TcpListener) -> (usize, Duration) {
    let (mut s, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let n = s.read(&mut buf).unwrap();
    let start = Instant::now();
    let mut total = n;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    (total, start.elapsed())
}

/// Connects (retrying while the listener is not up yet), sends `bytes`,
/// half-closes and waits for the sink's `done`; returns the time from the
/// connection to the answer.
fn send_to_sink(addr: &str, port: u16, bytes: usize) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut s = loop {
        match TcpStream::connect((addr, port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect to {addr}:{port}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = CHUNK.min(bytes - sent);
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let took = start.elapsed();
    assert_eq!(answer.trim(), "done", "the sink's answer");
    took
}

/// CPU time (user + system, clock ticks) of each thread of process `pid`,
/// by thread name: the VMM's main thread runs the event loop (all device
/// work), its `vcpuN` threads the guest.
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." - comm may hold spaces: split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; `rest` starts at 3.
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push((name, ticks));
    }
    out.sort();
    out
}

/// Share of one CPU each thread used between two samples over `wall`.
fn cpu_shares(before: &[(String, u64)], after: &[(String, u64)], wall: Duration) -> String {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut parts = Vec::new();
    for (name, t1) in after {
        let t0 = before
            .iter()
            .find(|(n, _)| n == name)
            .map(|x| x.1)
            .unwrap_or(0);
        let share = (t1 - t0.min(*t1)) as f64 / hz / wall.as_secs_f64() * 100.0;
        let label = if name.starts_with("vcpu") {
            name.clone()
        } else {
            format!("{name} (event loop)")
        };
        parts.push(format!("{label} {share:.0}%"));
    }
    parts.join(", ")
}

/// One setup's figures.
#[derive(Debug, Default)]
struct Figures {
    out_mib_s: f64,
    in_mib_s: f64,
    ping_out_ms: f64,
    ping_in_ms: f64,
    /// Ping on the "guest" side's own loopback: what answering costs
    /// there without any network in between.
    ping_lo_ms: f64,
}

fn busybox_ping(ns: &Netns, addr: &str, count: usize) -> f64 {
    let out = ns
        .exec(&[
            "busybox",
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            addr,
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    ping_avg_ms(&text).unwrap_or_else(|| panic!("ping {addr}: {text}"))
}

/// The microVM: guest eth0 on a TAP in `ns`.
fn vm_figures(bytes: usize, pings: usize) -> Figures {
    let ns = Netns::new("net-bench").unwrap();
    ns.add_tap(TAP, &format!("{VM_HOST}/24")).unwrap();
    let listener = ns
        .run(|| TcpListener::bind((VM_HOST, 5001)).unwrap())
        .unwrap();
    let receiver = std::thread::spawn(move || receive(listener));
    let count = bytes / CHUNK;
    let script = format!(
        "set -e
ip link set lo up
ip addr add {VM_GUEST}/24 dev eth0
ip link set eth0 up
printf '{sink}' > /tmp/sink; chmod +x /tmp/sink
printf '{source}' > /tmp/source; chmod +x /tmp/source
ping -c 1 -W 10 {VM_HOST} > /dev/null || true
echo \"ping-lo $(ping -c {pings} -i 0.2 127.0.0.1 | grep min/avg/max)\"
echo \"ping-out $(ping -c {pings} -i 0.2 {VM_HOST} | grep min/avg/max)\"
nc {VM_HOST} 5001 -e /tmp/source
echo out-done
nc -l -p 5002 -e /tmp/sink
echo bench-done",
        sink = SINK.replace('\n', "\\n"),
        source = source_script(count).replace('\n', "\\n"),
    );
    let mut vm = Vm::new(&["/bin/sh", "-c", &script]);
    vm.memory_mib = 256;
    vm.timeout = Duration::from_secs(1800);
    vm.nics = vec![Nic::new(
        "eth0",
        TapConfig::Name(TAP.into()),
        MacAddr([0x02, 0x6d, 0x76, 0x6d, 0x00, 0x02]),
    )];
    vm.netns = Some(ns.name().to_string());
    let mut r: Running<'_> = vm.spawn();
    let pid = r.child.id();
    r.wait_for_console("ping-out");
    let (t0, c0) = (Instant::now(), thread_ticks(pid));
    let (got, out_time) = receiver.join().unwrap();
    let out_cpu = cpu_shares(&c0, &thread_ticks(pid), t0.elapsed());
    assert_eq!(got, count * CHUNK);
    r.wait_for_console("out-done");
    let console = r.console();
    let ping_out = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("ping-out "))
        .and_then(ping_avg_ms)
        .unwrap_or_else(|| panic!("no guest ping figure:\n{console}"));
    let ping_lo = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("ping-lo "))
        .and_then(ping_avg_ms)
        .unwrap_or_else(|| panic!("no guest loopback ping figure:\n{console}"));
    let ping_in = busybox_ping(&ns, VM_GUEST, pings);
    let (t0, c0) = (Instant::now(), thread_ticks(pid));
    let in_time = ns
        .run(move || send_to_sink(VM_GUEST, 5002, count * CHUNK))
        .unwrap();
    let in_cpu = cpu_shares(&c0, &thread_ticks(pid), t0.elapsed());
    r.wait_for_console("bench-done");
    let out = r.wait();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    // The device's counters (logged by the VMM at exit, MVM_LOG=debug).
    if let Some(line) = out.stderr.lines().find(|l| l.contains("net eth0: rx")) {
        println!("  microVM {}", line.trim());
    }
    println!("  VMM threads' CPU, guest->host: {out_cpu}");
    println!("  VMM threads' CPU, host->guest: {in_cpu}");
    Figures {
        out_mib_s: mib_s(count * CHUNK, out_time),
        in_mib_s: mib_s(count * CHUNK, in_time),
        ping_out_ms: ping_out,
        ping_in_ms: ping_in,
        ping_lo_ms: ping_lo,
    }
}

fn spawn_in(ns: &Netns, script: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "busybox", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The baseline: the "guest" is namespace `peer`, joined to `host` by a
/// veth pair, running the same busybox commands.
fn veth_figures(bytes: usize, pings: usize) -> Figures {
    let (host, peer) = veth_namespaces("veth");
    let dir = tempfile::tempdir().unwrap();
    let count = bytes / CHUNK;
    let script = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    let sink = script("sink", SINK);
    let source = script("source", &source_script(count));

    let ping_out = busybox_ping(&peer, VETH_HOST, pings);
    let ping_in = busybox_ping(&host, VETH_PEER, pings);
    let ping_lo = busybox_ping(&peer, "127.0.0.1", pings);

    let listener = host
        .run(|| TcpListener::bind((VETH_HOST, 5001)).unwrap())
        .unwrap();
    let receiver = std::thread::spawn(move || receive(listener));
    let mut sender = spawn_in(
        &peer,
        &format!("busybox nc {VETH_HOST} 5001 -e {}", source.display()),
    );
    let (got, out_time) = receiver.join().unwrap();
    assert_eq!(got, count * CHUNK);
    sender.wait().unwrap();

    let mut sink_proc = spawn_in(
        &peer,
        &format!("busybox nc -l -p 5002 -e {}", sink.display()),
    );
    let in_time = host
        .run(move || send_to_sink(VETH_PEER, 5002, count * CHUNK))
        .unwrap();
    sink_proc.wait().unwrap();
    Figures {
        out_mib_s: mib_s(count * CHUNK, out_time),
        in_mib_s: mib_s(count * CHUNK, in_time),
        ping_out_ms: ping_out,
        ping_in_ms: ping_in,
        ping_lo_ms: ping_lo,
    }
}

/// The published host port of the HTTP part, and the guest's.
const WEB_PORT: u16 = 18080;
const GUEST_PORT: u16 = 8080;
/// The host-loopback reference server's port.
const LOOPBACK_PORT: u16 = 18081;
/// The image the HTTP part imports (busybox and the page).
const WEB_IMAGE: &str = "bench/busybox:web";
/// Size of the page every server serves.
const PAGE_BYTES: usize = 4096;

/// [`bench::mvctl`]'s stdout.
fn mvctl(d: &bench::Daemon, args: &[&str]) -> String {
    bench::mvctl(d, args).0
}

/// Two namespaces `TAG-host` and `TAG-peer` joined by a veth pair,
/// [`VETH_HOST`] and [`VETH_PEER`] on its ends: the container baseline.
fn veth_namespaces(tag: &str) -> (Netns, Netns) {
    let host = Netns::new(&format!("{tag}-host")).unwrap();
    let peer = Netns::new(&format!("{tag}-peer")).unwrap();
    veth_pair(
        &host,
        &format!("{VETH_HOST}/24"),
        &peer,
        &format!("{VETH_PEER}/24"),
    )
    .unwrap();
    (host, peer)
}

/// The IPv4 address (no prefix length) of sandbox `name`, from `mvctl
/// inspect`.
fn sandbox_address(d: &bench::Daemon, name: &str) -> String {
    let inspect: serde_json::Value =
        serde_json::from_str(&mvctl(d, &["inspect", name])).expect("inspect prints JSON");
    inspect[0]["network_settings"]["ipv4_address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no sandbox address: {inspect}"))
        .to_string()
}

/// One HTTP GET of `/` at `addr`: the response, or why there was none.
fn http_get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    if buf.starts_with("HTTP/1.") && buf.contains(" 200 ") {
        Ok(buf)
    } else {
        Err(format!("not a 200 answer: {buf:?}"))
    }
}

/// Wait until `addr` serves the page (a sandbox boots meanwhile);
/// `run_in` makes the attempt in a namespace if given.
fn wait_http(addr: &str, run_in: Option<&Netns>) {
    let t = Instant::now();
    loop {
        let a = addr.to_string();
        let got = match run_in {
            Some(ns) => ns.run(move || http_get(&a)).unwrap(),
            None => http_get(&a),
        };
        match got {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(180),
                    "http://{addr}/ did not answer within 180 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// What `ab` measured on one path.
#[derive(Debug, Clone, Copy)]
struct Ab {
    requests: u64,
    per_s: f64,
    /// Median and 99th percentile of the requests' times, ms.
    p50_ms: f64,
    p99_ms: f64,
}

/// `ab` against `url` for `secs` seconds with `conc` requests in flight
/// (in namespace `ns` if given): every request must have succeeded with
/// the whole page.
fn ab(url: &str, secs: usize, conc: usize, ns: Option<&Netns>) -> Ab {
    let mut args: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["ip", "netns", "exec", ns.name()].map(String::from));
    }
    // -t first: it implies -n 50000, which the -n after it raises.
    args.extend(
        [
            "ab",
            "-q",
            "-t",
            &secs.to_string(),
            "-n",
            "10000000",
            "-c",
            &conc.to_string(),
            url,
        ]
        .map(String::from),
    );
    let out = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("spawn ab (apache2-utils; resources/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ab {url} failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    let pct = |p: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(p))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (Some(done), Some(failed), Some(len), Some(per_s), Some(p50), Some(p99)) = (
        field("Complete requests:"),
        field("Failed requests:"),
        field("Document Length:"),
        field("Requests per second:"),
        pct("50%"),
        pct("99%"),
    ) else {
        panic!("ab {url}: unexpected report:\n{text}");
    };
    assert!(
        done > 0.0 && failed == 0.0 && !text.contains("Non-2xx responses"),
        "ab {url}: failed requests:\n{text}"
    );
    assert_eq!(len as usize, PAGE_BYTES, "ab {url}: the page's length");
    Ab {
        requests: done as u64,
        per_s,
        p50_ms: p50,
        p99_ms: p99,
    }
}

/// A busybox tree whose `/www/index.html` is the page.
fn web_tree(root: &Path) {
    mvm_e2e::rootfs::busybox_tree(root).expect("busybox tree");
    let www = root.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), page()).unwrap();
}

fn page() -> Vec<u8> {
    let mut p = b"<html><body><pre>\n".to_vec();
    while p.len() < PAGE_BYTES - 20 {
        p.extend_from_slice(b"mvm benchmark page\n");
    }
    p.resize(PAGE_BYTES - 20, b'.');
    p.extend_from_slice(b"</pre></body></html>");
    assert_eq!(p.len(), PAGE_BYTES);
    p
}

/// HTTP through the published port's paths and the references (see the
/// module doc): (path, figures) rows.
fn http_figures(secs: usize, conc: usize) -> Vec<(String, Ab)> {
    let mut rows = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("mvm-bench-http-")
        .tempdir()
        .unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), page()).unwrap();
    let www = www.to_str().unwrap().to_string();

    // The references first: busybox httpd behind a veth pair, and on the
    // host's loopback.
    {
        let (host, peer) = veth_namespaces("http");
        let mut server = Command::new("ip")
            .args(["netns", "exec", peer.name(), "busybox", "httpd", "-f"])
            .args(["-p", &GUEST_PORT.to_string(), "-h", &www])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("{VETH_PEER}:{GUEST_PORT}");
        wait_http(&url, Some(&host));
        eprintln!("net: HTTP over the veth pair");
        ab(&format!("http://{url}/"), 1, 1, Some(&host));
        rows.push((
            "veth pair between namespaces (reference)".to_string(),
            ab(&format!("http://{url}/"), secs, conc, Some(&host)),
        ));
        let _ = server.kill();
        let _ = server.wait();
    }
    {
        let mut server = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{LOOPBACK_PORT}")])
            .args(["-h", &www])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("127.0.0.1:{LOOPBACK_PORT}");
        wait_http(&url, None);
        eprintln!("net: HTTP on the host's loopback");
        ab(&format!("http://{url}/"), 1, 1, None);
        rows.push((
            "host loopback, no VM (reference)".to_string(),
            ab(&format!("http://{url}/"), secs, conc, None),
        ));
        let _ = server.kill();
        let _ = server.wait();
    }

    // The sandbox, through mvmd as `mvctl run -p` does it.
    let d = bench::start_daemon_with(&[]);
    let tree = dir.path().join("tree");
    web_tree(&tree);
    let tar = dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the busybox tree failed");
    mvctl(&d, &["import", tar.to_str().unwrap(), WEB_IMAGE]);
    let publish = format!("{WEB_PORT}:{GUEST_PORT}");
    let port = GUEST_PORT.to_string();
    mvctl(
        &d,
        &[
            "run", "-d", "--name", "web", "-p", &publish, WEB_IMAGE, "httpd", "-f", "-p", &port,
            "-h", "/www",
        ],
    );
    let guest = sandbox_address(&d, "web");
    let net: serde_json::Value =
        serde_json::from_str(&mvctl(&d, &["network", "inspect", "bridge"])).expect("JSON");
    let gateway = net[0]["gateway"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway: {net}"))
        .to_string();
    for (what, addr) in [
        (
            "published port, 127.0.0.1 (mvmd's userspace proxy)",
            format!("127.0.0.1:{WEB_PORT}"),
        ),
        (
            "published port, the bridge's address (nftables DNAT)",
            format!("{gateway}:{WEB_PORT}"),
        ),
        (
            "the sandbox's address, routed over the bridge (no NAT)",
            format!("{guest}:{GUEST_PORT}"),
        ),
    ] {
        wait_http(&addr, None);
        eprintln!("net: HTTP to the sandbox, {what}");
        ab(&format!("http://{addr}/"), 1, 1, None);
        rows.push((
            what.to_string(),
            ab(&format!("http://{addr}/"), secs, conc, None),
        ));
    }
    mvctl(&d, &["rm", "-f", "web"]);
    rows
}

fn print_http(rows: &[(String, Ab)], secs: usize, conc: usize) {
    println!();
    println!(
        "HTTP through a published port: ab -c {conc} for {secs} s per path, GET of a {PAGE_BYTES}-byte page from busybox httpd (a process per connection)"
    );
    println!();
    println!("| path | requests | requests/s | x veth | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let veth = rows[0].1.per_s;
    for (what, f) in rows {
        println!(
            "| {what} | {} | {:.1} | {:.2}x | {:.0} | {:.0} |",
            f.requests,
            f.per_s,
            f.per_s / veth,
            f.p50_ms,
            f.p99_ms
        );
    }
}

fn main() {
    // The VMM logs its net counters at debug level when the VM ends.
    if std::env::var_os("MVM_LOG").is_none() {
        std::env::set_var("MVM_LOG", "debug");
    }
    let mib = env_usize("MVM_BENCH_NET_MIB", 64);
    let pings = env_usize("MVM_BENCH_PINGS", 20).max(1);
    let http_secs = env_usize("MVM_BENCH_HTTP_SECS", 10);
    let http_conc = env_usize("MVM_BENCH_HTTP_CONC", 4).max(1);
    if mib > 0 {
        tcp_and_ping(mib * MIB, pings);
    }
    if http_secs > 0 {
        let rows = http_figures(http_secs, http_conc);
        print_http(&rows, http_secs, http_conc);
    }
    let iperf_secs = env_usize("MVM_BENCH_IPERF_SECS", 10);
    if iperf_secs > 0 {
        let image = std::env::var_os("MVM_BENCH_IPERF_IMAGE").unwrap_or_else(|| {
            panic!("MVM_BENCH_IPERF_IMAGE is not set: the tarball of resources/images/iperf3.sh (tests/run-bench.sh sets it; MVM_BENCH_IPERF_SECS=0 skips the iperf3 part)")
        });
        print_iperf(&iperf_figures(iperf_secs, Path::new(&image)), iperf_secs);
    }
}

/// The image of the iperf3 part (Debian bookworm with iperf3).
const IPERF_IMAGE: &str = "bench/iperf3:bookworm";

/// TCP throughput in Gbit/s as iperf3's receiver counted it: `iperf3 -c
/// ADDR -t SECS -J`, with `-R` when the server should send, in namespace
/// `ns` if given. Tried again until the server answers (a sandbox may
/// still be booting), for at most 180 s.
fn iperf3(addr: &str, secs: usize, reverse: bool, ns: Option<&Netns>) -> f64 {
    let t = Instant::now();
    loop {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), "iperf3"]);
                c
            }
            None => Command::new("iperf3"),
        };
        cmd.args(["-c", addr, "-t", &secs.to_string(), "-J"]);
        if reverse {
            cmd.arg("-R");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run iperf3 (Debian's iperf3: make deps)");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // iperf3 3.12 can exit 0 with an error in its JSON ("unable to
        // connect to server: No route to host" while the sandbox boots):
        // only a receiver total counts as a run.
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
        if let (true, None, Some(bps)) = (out.status.success(), v.get("error"), bps) {
            return bps / 1e9;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "iperf3 -c {addr} did not succeed within 180 s: {} {}",
            v["error"],
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// iperf3 both ways: (direction, microVM Gbit/s, veth Gbit/s) rows.
fn iperf_figures(secs: usize, image: &Path) -> Vec<(&'static str, f64, f64)> {
    // The reference: the server in one namespace, the client in the
    // other, a veth pair between them.
    let (veth_out, veth_in) = {
        let (host, peer) = veth_namespaces("iperf");
        let mut server = Command::new("ip")
            .args(["netns", "exec", peer.name(), "iperf3", "-s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("run iperf3 -s");
        eprintln!("net: iperf3 over the veth pair");
        iperf3(VETH_PEER, 1, false, Some(&host));
        let into = iperf3(VETH_PEER, secs, false, Some(&host));
        let out = iperf3(VETH_PEER, secs, true, Some(&host));
        let _ = server.kill();
        let _ = server.wait();
        (out, into)
    };

    // The sandbox, through mvmd on its default network; the client on
    // the host, to the sandbox's own address (virtio-net, the TAP and
    // the bridge; no NAT).
    let d = bench::start_daemon_with(&[]);
    mvctl(&d, &["import", image.to_str().unwrap(), IPERF_IMAGE]);
    mvctl(
        &d,
        &["run", "-d", "--name", "iperf", IPERF_IMAGE, "iperf3", "-s"],
    );
    let guest = sandbox_address(&d, "iperf");
    eprintln!("net: iperf3 to the sandbox at {guest}");
    iperf3(&guest, 1, false, None);
    let vm_in = iperf3(&guest, secs, false, None);
    let vm_out = iperf3(&guest, secs, true, None);
    mvctl(&d, &["rm", "-f", "iperf"]);
    vec![
        ("TCP guest->host", vm_out, veth_out),
        ("TCP host->guest", vm_in, veth_in),
    ]
}

fn print_iperf(rows: &[(&str, f64, f64)], secs: usize) {
    println!();
    println!(
        "iperf3 (Debian's), {secs} s per direction: a sandbox through mvmd (1 vCPU) against a veth pair between namespaces"
    );
    println!();
    println!("| direction | microVM Gbit/s | veth Gbit/s | microVM / veth |");
    println!("| --- | --- | --- | --- |");
    for (what, vm, veth) in rows {
        println!("| {what} | {vm:.3} | {veth:.3} | {:.2}x |", vm / veth);
    }
}

/// The throughput and ping table (the module doc's first part).
fn tcp_and_ping(bytes: usize, pings: usize) {
    let baseline = veth_figures(bytes, pings);
    let vm = vm_figures(bytes, pings);
    println!();
    let mib = bytes / MIB;
    let rows = [
        (
            format!("TCP guest->host, {mib} MiB (MiB/s)"),
            vm.out_mib_s,
            baseline.out_mib_s,
            vm.out_mib_s / baseline.out_mib_s,
        ),
        (
            format!("TCP host->guest, {mib} MiB (MiB/s)"),
            vm.in_mib_s,
            baseline.in_mib_s,
            vm.in_mib_s / baseline.in_mib_s,
        ),
        (
            format!("ping guest->host, avg of {pings} (ms)"),
            vm.ping_out_ms,
            baseline.ping_out_ms,
            vm.ping_out_ms / baseline.ping_out_ms,
        ),
        (
            format!("ping host->guest, avg of {pings} (ms)"),
            vm.ping_in_ms,
            baseline.ping_in_ms,
            vm.ping_in_ms / baseline.ping_in_ms,
        ),
        (
            format!("ping guest's own loopback, avg of {pings} (ms)"),
            vm.ping_lo_ms,
            baseline.ping_lo_ms,
            vm.ping_lo_ms / baseline.ping_lo_ms,
        ),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!(
        "virtio-net benchmark (1 vCPU, 256 MiB guest; TAP in a namespace) vs a veth pair between namespaces"
    );
    println!(
        "  {:width$}  {:>10}  {:>10}  {:>8}",
        "", "microVM", "veth", "ratio"
    );
    for (k, v, b, ratio) in rows {
        println!("  {k:width$}  {v:>10.2}  {b:>10.2}  {ratio:>7.2}x");
    }
}
