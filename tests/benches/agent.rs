//! Guest agent benchmark on real KVM: `exec true` round trips and stream
//! throughput through the agent (host -> guest and back), next to a plain
//! Unix socket pair on the same host moving the same number of bytes, all
//! in the same run so the figures compare.
//!
//! A standalone program (no libtest harness); needs the same environment
//! as the end-to-end tests: `MVM_KERNEL`, `MVM_INIT`, `MVM_VMM`, and
//! hardware KVM (inside the emulated KVM host on machines without it).
//! Optional: `MVM_BENCH_EXECS` (default 200 round trips), `MVM_BENCH_MIB`
//! (default 64 MiB per stream).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mvm_e2e::Vm;
use mvm_protocol::agent::client::{AgentClient, Event};
use mvm_protocol::agent::{Exec, Exit};

const MIB: usize = 1 << 20;
const CHUNK: usize = 256 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn sh(script: &str) -> Exec {
    Exec {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Exec::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// `bytes` one way through a host Unix socket pair (writer and reader on
/// two threads, the same chunk size as the agent streams).
fn plain_unix_socket(bytes: usize) -> Duration {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < bytes {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0, "early EOF");
            got += n;
        }
    });
    let buf = vec![0x5au8; CHUNK];
    for _ in 0..bytes / CHUNK {
        a.write_all(&buf).unwrap();
    }
    reader.join().unwrap();
    t.elapsed()
}

async fn client(uds: &PathBuf) -> AgentClient {
    AgentClient::connect(uds, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Time from `exec` to `exited` of `script`, which must write `bytes` to
/// stdout.
async fn guest_to_host(uds: &PathBuf, script: &str, bytes: usize) -> Duration {
    let t = Instant::now();
    let s = client(uds).await.exec(sh(script)).await.unwrap();
    let mut out = s.output;
    let mut got = 0usize;
    loop {
        match out.next().await.unwrap() {
            Event::Stdout(b) => got += b.len(),
            Event::Stderr(b) => panic!("{script}: stderr: {}", String::from_utf8_lossy(&b)),
            Event::Exited(x) => {
                assert_eq!(x, Exit::code(0), "{script}");
                break;
            }
        }
    }
    assert_eq!(got, bytes, "{script}");
    t.elapsed()
}

async fn bench(uds: PathBuf, execs: usize, bytes: usize) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let boot = Instant::now();
    client(&uds).await.ping().await.unwrap();
    rows.push(("agent ready after VMM start".into(), ms(boot.elapsed())));

    // Connection set-up plus hello, exec, exit: what `docker exec` costs.
    let mut times = Vec::with_capacity(execs);
    for _ in 0..execs {
        let t = Instant::now();
        let s = client(&uds)
            .await
            .exec(Exec {
                args: vec!["true".into()],
                ..Exec::default()
            })
            .await
            .unwrap();
        assert_eq!(s.output.wait().await.unwrap(), Exit::code(0));
        times.push(t.elapsed());
    }
    times.sort();
    rows.push((
        format!("exec true round trip p50 (n={execs})"),
        ms(percentile(&times, 0.5)),
    ));
    rows.push((
        format!("exec true round trip p99 (n={execs})"),
        ms(percentile(&times, 0.99)),
    ));

    let mut c = client(&uds).await;
    let mut pings = Vec::with_capacity(execs);
    for _ in 0..execs {
        let t = Instant::now();
        c.ping().await.unwrap();
        pings.push(t.elapsed());
    }
    pings.sort();
    rows.push((
        "ping on an open connection p50".into(),
        ms(percentile(&pings, 0.5)),
    ));
    rows.push((
        "ping on an open connection p99".into(),
        ms(percentile(&pings, 0.99)),
    ));

    // Host -> guest: stdin frames into `cat > /dev/null`.
    let mut e = sh("cat > /dev/null");
    e.stdin = true;
    let mut s = client(&uds).await.exec(e).await.unwrap();
    let mut stdin = s.stdin.take().unwrap();
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    for _ in 0..bytes / CHUNK {
        stdin.write(&buf).await.unwrap();
    }
    stdin.close().await.unwrap();
    assert_eq!(s.output.wait().await.unwrap(), Exit::code(0));
    let up = t.elapsed();

    // Guest -> host: stdout frames, written by the guest program in 4 KiB
    // pieces (busybox head) and in 256 KiB pieces (dd): the agent sends
    // what one pipe read gives, so the writer's size shows.
    let head = guest_to_host(&uds, &format!("head -c {bytes} /dev/zero"), bytes).await;
    let dd = guest_to_host(
        &uds,
        &format!(
            "dd if=/dev/zero bs=256k count={} 2>/dev/null",
            bytes / CHUNK
        ),
        bytes,
    )
    .await;

    let plain = tokio::task::block_in_place(|| plain_unix_socket(bytes));
    let mib = bytes / MIB;
    rows.push((
        format!("{mib} MiB host->guest (stdin to cat)"),
        format!("{:.1} MiB/s", mib_s(bytes, up)),
    ));
    rows.push((
        format!("{mib} MiB guest->host (stdout of head, 4 KiB writes)"),
        format!("{:.1} MiB/s", mib_s(bytes, head)),
    ));
    rows.push((
        format!("{mib} MiB guest->host (stdout of dd, 256 KiB writes)"),
        format!("{:.1} MiB/s", mib_s(bytes, dd)),
    ));
    rows.push((
        format!("{mib} MiB plain host Unix socket pair"),
        format!("{:.1} MiB/s", mib_s(bytes, plain)),
    ));

    c.shutdown(libc::SIGKILL, Duration::from_millis(100))
        .await
        .unwrap();
    rows
}

fn main() {
    let execs = env_usize("MVM_BENCH_EXECS", 200).max(1);
    let bytes = env_usize("MVM_BENCH_MIB", 64).max(1) * MIB;
    let mut vm = Vm::new(&["/bin/sh", "-c", "sleep 3600"]);
    vm.memory_mib = 256;
    vm.timeout = Duration::from_secs(1800);
    let uds = vm.vsock_path();
    let running = vm.spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(bench(uds, execs, bytes));
    let out = running.wait();
    assert_eq!(out.code(), Some(0), "{}", out.describe());

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("guest agent benchmark (1 vCPU, 256 MiB guest; vsock through mvm-vmm)");
    for (k, v) in rows {
        println!("  {k:width$}  {v:>14}");
    }
}
