//! virtio-vsock end to end on real KVM: a guest with the vsock device and a
//! static test program (`mvm-vsock-tool`, crate `mvm-guest-tools`) talking
//! AF_VSOCK to host Unix sockets through the VMM, both ways.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mvm_e2e::{procmem, rootfs, Running, Vm};

const MIB: usize = 1024 * 1024;

/// The static guest tool.
fn tool() -> PathBuf {
    mvm_e2e::guest_tool("mvm-vsock-tool")
}

/// A busybox root disk with the tool at /bin/mvm-vsock-tool.
fn rootfs_with_tool() -> &'static Path {
    static DISK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DISK.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("mvm-vsock-rootfs-")
            .tempdir()
            .unwrap();
        let tree = dir.path().join("tree");
        rootfs::busybox_tree(&tree).unwrap();
        fs::copy(tool(), tree.join("bin/mvm-vsock-tool")).unwrap();
        let img = dir.path().join("rootfs.ext4");
        rootfs::mkfs_from_dir(&tree, &img, 48).unwrap();
        (dir, img)
    });
    p
}

/// A VM running `script` with a vsock device (CID 3).
fn vsock_vm(script: &str) -> Vm {
    let mut vm = Vm::new(&["/bin/sh", "-c", script]);
    vm.drives[0].path = rootfs_with_tool().to_path_buf();
    vm
}

fn uds(vm: &Vm) -> PathBuf {
    vm.vsock_path()
}

/// Host-initiated connection: `Ok` once the guest accepted (the OK line
/// was read), `Err(ConnectionRefused)` if the VMM closed the socket.
fn connect_guest(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("closed after {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        line.push(b[0]);
    }
    let text = String::from_utf8_lossy(&line);
    assert!(text.starts_with("OK "), "bad answer {text:?}");
    s.set_read_timeout(None)?;
    Ok(s)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes `data` (then half-closes) while reading the echo; returns it.
fn echo_through(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut s = s;
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// One-way stream to a sink that answers with the byte count; MiB/s.
fn stream_to_sink(mut s: UnixStream, total: usize) -> f64 {
    let chunk = pattern(64 * 1024, 7);
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(answer.trim(), total.to_string());
    total as f64 / MIB as f64 / secs
}

fn wait_listening(r: &mut Running<'_>, port: u32) {
    r.wait_for_console(&format!("vsock-listening {port}"));
}

#[test]
fn host_to_guest_echo_concurrency_refusal_and_throughput() {
    let vm = vsock_vm(
        "/bin/mvm-vsock-tool sink 5001 & /bin/mvm-vsock-tool echo 5000 51; wait; echo all-done",
    );
    let mut r = vm.spawn();
    wait_listening(&mut r, 5000);
    wait_listening(&mut r, 5001);
    let uds = uds(&vm);

    // Nobody listens on 9999 in the guest: the guest's RST closes us.
    let e = connect_guest(&uds, 9999).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");

    // 10 MiB there and back, checksummed.
    let data = pattern(10 * MIB, 1);
    let start = Instant::now();
    let got = echo_through(connect_guest(&uds, 5000).unwrap(), data.clone());
    let echo_secs = start.elapsed().as_secs_f64();
    assert_eq!(got.len(), data.len());
    assert_eq!(fnv(&got), fnv(&data), "echoed data differs");

    // 50 connections at once, each with its own data.
    let workers: Vec<_> = (0..50u32)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let data = pattern(64 * 1024 + i as usize, i + 100);
                let got = echo_through(connect_guest(&uds, 5000).unwrap(), data.clone());
                assert!(got == data, "connection {i}: echo differs");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }

    // Throughput: host -> guest stream of 32 MiB, then the same over a
    // plain Unix socket pair on this host.
    let vsock_mibs = stream_to_sink(connect_guest(&uds, 5001).unwrap(), 32 * MIB);
    let (a, mut b) = UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = b.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        b.write_all(format!("{total}\n").as_bytes()).unwrap();
    });
    let unix_mibs = stream_to_sink(a, 32 * MIB);
    sink.join().unwrap();
    eprintln!(
        "vsock throughput: host->guest stream {vsock_mibs:.1} MiB/s; plain Unix socket pair \
         {unix_mibs:.1} MiB/s; 10 MiB echo round trip {:.1} MiB/s each way",
        10.0 / echo_secs
    );

    let out = r.wait();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.console.contains("all-done"), "{}", out.describe());
}

#[test]
fn guest_to_host_connect_and_refusal() {
    let vm = vsock_vm(
        "/bin/mvm-vsock-tool connect 6000 hello-host; /bin/mvm-vsock-tool connect 6001 nobody; \
         echo guest-done",
    );
    let listener = UnixListener::bind(format!("{}_6000", uds(&vm).display())).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut msg = String::new();
        s.read_to_string(&mut msg).unwrap();
        s.write_all(format!("hi guest, you said {msg}").as_bytes())
            .unwrap();
        msg
    });
    let out = vm.run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(server.join().unwrap(), "hello-host");
    assert!(
        out.console
            .contains("vsock-reply: hi guest, you said hello-host"),
        "{}",
        out.describe()
    );
    // Nothing listens on <uds>_6001: the VMM answers the REQUEST with a
    // RST, which Linux reports as ECONNRESET.
    assert!(
        out.console.contains("vsock-connect-error: 104"),
        "{}",
        out.describe()
    );
    assert!(out.console.contains("guest-done"), "{}", out.describe());
}

/// The VMM's own anonymous memory (its heap) and its whole RSS, KiB.
/// Guest RAM, which the guest may touch as it likes, is left out of the
/// first: it is anonymous memory too (or a memfd), told apart by its size
/// (`mvm_e2e::procmem`).
fn vmm_kib(pid: u32, guest_bytes: u64) -> (u64, u64) {
    let m = procmem::read(pid, guest_bytes).unwrap_or_else(|| panic!("no /proc/{pid}/smaps"));
    (m.own_anon, m.own + m.guest)
}

#[test]
fn flooding_guest_cannot_grow_the_vmm() {
    let vm = vsock_vm("/bin/mvm-vsock-tool flood 7000");
    let mut r = vm.spawn();
    wait_listening(&mut r, 7000);
    let pid = r.child.id();
    let mut s = connect_guest(&uds(&vm), 7000).unwrap();
    // The host never reads: the guest writes until the credit is gone.
    std::thread::sleep(Duration::from_secs(2));
    let guest = vm.memory_mib << 20;
    let (anon0, rss0) = vmm_kib(pid, guest);
    std::thread::sleep(Duration::from_secs(8));
    let (anon1, rss1) = vmm_kib(pid, guest);
    eprintln!(
        "vsock flood: VMM's own anonymous memory {anon0} -> {anon1} KiB, RSS {rss0} -> {rss1} KiB"
    );
    assert!(
        anon1 <= anon0 + 2048,
        "the VMM's anonymous memory grew from {anon0} to {anon1} KiB while the guest flooded"
    );
    // The connection is live: the backlog (socket buffer plus the VMM's
    // 256 KiB) is there to read, and more follows.
    let mut buf = vec![0u8; 1 << 20];
    s.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// The agent's port is init's before the workload exists, and privileged:
/// a non-root workload may not bind it at all, a root one finds it taken.
/// Either way nothing in the guest receives what the host means for the
/// agent, and the agent still answers.
#[test]
fn no_workload_can_take_the_agent_port() {
    let port = mvm_protocol::agent::AGENT_PORT;
    let script = format!("/bin/mvm-vsock-tool echo {port} 1; echo tool-exit=$?");
    for (user, errno) in [("1000:1000", libc::EACCES), ("", libc::EADDRINUSE)] {
        let mut vm = vsock_vm(&script);
        vm.spec.process.user = user.into();
        let out = vm.run();
        assert!(
            out.console.contains(&format!("os error {errno})"))
                && out.console.contains("tool-exit=1"),
            "user {user:?}: binding the agent's port must fail with errno {errno}: {}",
            out.describe()
        );
        assert!(
            !out.console.contains("vsock-listening"),
            "{}",
            out.describe()
        );
    }
    // And the agent itself is there for the host.
    let vm = vsock_vm("sleep 600");
    let mut r = vm.spawn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = mvm_protocol::agent::client::AgentClient::connect(
            vm.vsock_path(),
            Duration::from_secs(120),
        )
        .await
        .expect("the agent answers on its port");
        c.ping().await.unwrap();
    });
    let _ = r.child.kill();
    let _ = r.child.wait();
}
