//! The guest agent end to end: a microVM on real KVM with a vsock device,
//! init's agent in the guest, and the host client
//! (`mvm_protocol::agent::client`) going through the VMM's vsock Unix
//! socket (`CONNECT 1023`, `mvm_protocol::agent::AGENT_PORT`).
//!
//! Booting a guest is the expensive part in the emulated KVM host, so the
//! tests that leave the guest as they found it share one sandbox (booted
//! by whichever test comes first, killed when the test process exits).
//! Tests that end the workload, or that measure the workload cgroup and so
//! must not see other tests' processes, boot their own.
//!
//! The figures (`exec true` latency, throughput) are in the `agent`
//! benchmark (`tests/benches/agent.rs`); the 100 MiB test prints its rate
//! as an `agent-e2e:` line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mvm_e2e::{Running, StatusExt, Vm};
use mvm_protocol::agent::client::{AgentClient, Event, ExecOutput};
use mvm_protocol::agent::frame::{self, FrameReader, Kind};
use mvm_protocol::agent::{ErrorCode, Exec, Exit, Request, Response, Target};
use mvm_protocol::launch::Output;

/// How long the host waits for the agent of a booting guest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// Per-test limit, so a hang fails with a message instead of eating the
/// whole suite's time in the emulated host.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

const MIB: usize = 1 << 20;

/// Where to reach a booted guest's agent, and its console for failure
/// messages.
#[derive(Clone)]
struct Sandbox {
    uds: PathBuf,
    console: PathBuf,
}

impl Sandbox {
    fn of(vm: &Vm) -> Sandbox {
        Sandbox {
            uds: vm.vsock_path(),
            console: vm.dir.path().join("console.log"),
        }
    }

    /// The last lines of the guest console, for assertion messages.
    fn console_tail(&self) -> String {
        let text = std::fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.uds, CONNECT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- guest console (end)\n{}", self.console_tail()))
    }

    async fn run(&self, e: Exec) -> (String, String, Exit) {
        let s = self.client().await.exec(e).await.unwrap();
        let (o, e, x) = s.output.collect().await.unwrap();
        (
            String::from_utf8_lossy(&o).into(),
            String::from_utf8_lossy(&e).into(),
            x,
        )
    }

    /// Stop the guest through the agent and check the VMM ended cleanly.
    async fn shutdown(&self, running: Running<'_>) -> mvm_e2e::Outcome {
        self.client()
            .await
            .shutdown(libc::SIGKILL, Duration::from_millis(100))
            .await
            .unwrap();
        let out = tokio::task::block_in_place(|| running.wait());
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        out
    }
}

/// A VM running `script` with a vsock device, so its agent is reachable.
fn agent_vm(script: &str) -> Vm {
    let mut vm = Vm::new(&["/bin/sh", "-c", script]);
    vm.timeout = TEST_TIMEOUT;
    vm
}

/// The VMM of the shared sandbox, killed at exit: a static is never
/// dropped, and the guest must not outlive the test process.
static SHARED_VMM: AtomicI32 = AtomicI32::new(0);
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn kill_shared_vmm() {
    let pid = SHARED_VMM.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) on the pid of the VMM this process spawned and
        // never reaped, so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Some(d) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The sandbox shared by the tests that leave it as they found it: a
/// long `sleep` as the main workload, 256 MiB.
fn shared() -> &'static Sandbox {
    static SHARED: OnceLock<(Sandbox, Mutex<Running<'static>>)> = OnceLock::new();
    let (sb, _) = SHARED.get_or_init(|| {
        let mut vm = agent_vm("sleep 3600");
        vm.memory_mib = 256;
        // The VMM's own limit only applies to `Running::wait`, never
        // called here; the atexit hook ends it.
        let vm: &'static Vm = Box::leak(Box::new(vm));
        let _ = SHARED_DIR.set(vm.dir.path().to_path_buf());
        let running = vm.spawn();
        SHARED_VMM.store(running.child.id() as i32, Ordering::SeqCst);
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(kill_shared_vmm) };
        (Sandbox::of(vm), Mutex::new(running))
    });
    sb
}

/// A runtime for one test, with the per-test time limit.
struct Rt(tokio::runtime::Runtime);

impl Rt {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.block_on(async {
            tokio::time::timeout(TEST_TIMEOUT, f)
                .await
                .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"))
        })
    }
}

fn rt() -> Rt {
    Rt(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap())
}

fn sh(script: &str) -> Exec {
    Exec {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Exec::default()
    }
}

/// Print where the test harness's output capture does not swallow it.
fn report(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "agent-e2e: {args}");
}

async fn read_until(out: &mut ExecOutput, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(60), out.next()).await {
            Ok(Ok(Event::Stdout(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
    seen
}

#[test]
fn agent_exec_output_exit_codes_and_errors() {
    let sb = shared();
    rt().block_on(async {
        let (o, e, x) = sb.run(sh("echo out; echo err >&2; exit 3")).await;
        assert_eq!(
            (o.as_str(), e.as_str(), x),
            ("out\n", "err\n", Exit::code(3))
        );
        let mut e = sh("id -u; pwd; echo $GREETING");
        e.env = vec!["GREETING=hi there".into()];
        e.cwd = Some("/tmp".into());
        let (o, _, x) = sb.run(e).await;
        assert_eq!((o.as_str(), x), ("0\n/tmp\nhi there\n", Exit::code(0)));
        let (_, _, x) = sb.run(sh("kill -9 $$")).await;
        assert_eq!(x, Exit::signal(9));
        let mut e = sh("id -u; id -g");
        e.user = Some("user".into());
        assert_eq!(sb.run(e.clone()).await.0, "1000\n1000\n");
        e.user = Some("65534:1500".into());
        assert_eq!(sb.run(e).await.0, "65534\n1500\n");
        for (args, code) in [
            ("no-such-binary", ErrorCode::NotFound),
            ("/etc/passwd", ErrorCode::NotExecutable),
        ] {
            let err = sb
                .client()
                .await
                .exec(Exec {
                    args: vec![args.into()],
                    ..Exec::default()
                })
                .await
                .err()
                .unwrap();
            assert_eq!(err.code(), Some(code), "{args}: {err}");
        }
    });
}

#[test]
fn agent_twenty_concurrent_execs() {
    shared();
    rt().block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(tokio::spawn(async move {
                // All 20 are alive at once: each waits for the last one.
                let script = format!(
                    "touch /tmp/conc-{i}; n=0; while [ $n -lt 300 ]; do \
                     set -- /tmp/conc-*; [ $# -ge 20 ] && break; sleep 0.2; n=$((n+1)); done; \
                     set -- /tmp/conc-*; echo task-{i} $#; exit {i}"
                );
                shared().run(sh(&script)).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let (o, _, x) = t.await.unwrap();
            assert_eq!((o, x), (format!("task-{i} 20\n"), Exit::code(i as i32)));
        }
        report(format_args!(
            "20 concurrent execs took {:?}",
            start.elapsed()
        ));
    });
}

/// Deterministic pseudo-random bytes (xorshift), regenerated to compare.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// FNV-1a, the checksum of both ends of the stream.
fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
const BIG: usize = 100 * MIB;

#[test]
fn agent_hundred_mib_through_stdin_and_back_with_checksum() {
    // Its own guest: once this stream stalled the shared guest's vsock
    // path for every other test (see the commit message); alone, a stall
    // fails only this test.
    let mut vm = agent_vm("sleep 3600");
    vm.memory_mib = 256;
    let sb = Sandbox::of(&vm);
    let running = vm.spawn();
    rt().block_on(async {
        let mut e = sh("cat");
        e.stdin = true;
        let mut s = sb.client().await.exec(e).await.unwrap();
        let mut stdin = s.stdin.take().unwrap();
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            let mut gen = Stream(0x9e37_79b9_7f4a_7c15);
            let mut buf = vec![0u8; 256 * 1024];
            let mut sum = FNV_START;
            for _ in 0..BIG / buf.len() {
                gen.fill(&mut buf);
                fnv(&mut sum, &buf);
                stdin.write(&buf).await.unwrap();
            }
            stdin.close().await.unwrap();
            sum
        });
        let mut expect = Stream(0x9e37_79b9_7f4a_7c15);
        let mut pending: Vec<u8> = Vec::new();
        let mut got = 0usize;
        let mut sum = FNV_START;
        let exit = loop {
            match s.output.next().await.unwrap() {
                Event::Stdout(b) => {
                    fnv(&mut sum, &b);
                    pending.extend_from_slice(&b);
                    let whole = pending.len() / 8 * 8;
                    let mut want = vec![0u8; whole];
                    expect.fill(&mut want);
                    assert!(pending[..whole] == want[..], "data differs near byte {got}");
                    got += whole;
                    pending.drain(..whole);
                }
                Event::Stderr(b) => panic!("stderr: {}", String::from_utf8_lossy(&b)),
                Event::Exited(x) => break x,
            }
        };
        let elapsed = start.elapsed();
        let sent = writer.await.unwrap();
        assert_eq!(exit, Exit::code(0));
        assert!(pending.is_empty(), "{} trailing bytes", pending.len());
        assert_eq!(got, BIG);
        assert_eq!(sent, sum, "checksums differ");
        report(format_args!(
            "100 MiB host->guest->host through cat: {:.1} s, {:.1} MiB/s each way (fnv {sum:016x})",
            elapsed.as_secs_f64(),
            100.0 / elapsed.as_secs_f64()
        ));
        sb.shutdown(running).await;
    });
}

#[test]
fn agent_tty_session_size_and_resize() {
    let sb = shared();
    rt().block_on(async {
        let mut e = sh("tty; stty size; echo sized; read line; stty size; exit 0");
        e.tty = true;
        e.stdin = true;
        e.rows = 24;
        e.cols = 80;
        let mut s = sb.client().await.exec(e).await.unwrap();
        let seen = read_until(&mut s.output, "sized").await;
        assert!(seen.contains("/dev/pts/"), "not a pty: {seen:?}");
        assert!(seen.contains("24 80\r\n"), "{seen:?}");
        s.control.resize(50, 132).await.unwrap();
        s.stdin.as_mut().unwrap().write(b"\n").await.unwrap();
        read_until(&mut s.output, "50 132\r\n").await;
        assert_eq!(s.output.wait().await.unwrap(), Exit::code(0));
    });
}

fn listing(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -exec stat -c '%n %F %a %u:%g %Y %s %h' {} + | sort")
        .arg("sh")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn agent_copy_round_trip_keeps_content_modes_and_ownership() {
    let sb = shared();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    let script = format!(
        "set -e; umask 022; mkdir -p {0}/sub; printf hello > {0}/a; head -c 300000 /dev/urandom > {0}/sub/big; \
         chown 1000:1500 {0}/sub/big; chmod 4750 {0}/sub/big; chown 2000:2000 {0}/sub; chmod 700 {0}/sub; \
         ln -s ../a {0}/sub/link; ln {0}/a {0}/hard; \
         touch -d '2001-02-03 04:05:06' {0}/a {0}/sub/big {0}/sub {0}",
        src.display()
    );
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let tar = std::process::Command::new("tar")
        .args(["--numeric-owner", "-cf", "-", "-C"])
        .arg(work.path())
        .arg("tree")
        .output()
        .unwrap();
    assert!(tar.status.success());
    rt().block_on(async {
        let (_, _, x) = sb.run(sh("mkdir -p /tmp/copy-dst")).await;
        assert_eq!(x, Exit::code(0));
        let mut c = sb.client().await;
        c.copy_in("/tmp/copy-dst", &tar.stdout[..]).await.unwrap();
        let (o, _, x) = sb
            .run(sh(
                "cd /tmp/copy-dst/tree && stat -c '%n %a %u:%g %h' sub/big sub a hard && \
                     readlink sub/link && cat a && echo && md5sum sub/big",
            ))
            .await;
        assert_eq!(x, Exit::code(0), "{o}");
        let md5 = std::process::Command::new("md5sum")
            .arg("sub/big")
            .current_dir(&src)
            .output()
            .unwrap();
        assert_eq!(
            o,
            format!(
                "sub/big 4750 1000:1500 1\nsub 700 2000:2000 2\na 644 0:0 2\nhard 644 0:0 2\n\
                 ../a\nhello\n{}",
                String::from_utf8_lossy(&md5.stdout)
            )
        );
        let mut r = sb
            .client()
            .await
            .copy_out("/tmp/copy-dst/tree")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut bytes)
            .await
            .unwrap();
        let back = work.path().join("back");
        std::fs::create_dir(&back).unwrap();
        let mut untar = std::process::Command::new("tar")
            .args(["--numeric-owner", "-xpf", "-", "-C"])
            .arg(&back)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        untar.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(untar.wait().unwrap().success());
        assert_eq!(listing(&src), listing(&back.join("tree")));
        let big = std::fs::read(back.join("tree/sub/big")).unwrap();
        assert_eq!(big, std::fs::read(src.join("sub/big")).unwrap());
        let err = sb.client().await.copy_out("/no/such").await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
    });
}

/// A raw stream to the agent through the VMM's socket.
fn raw(uds: &Path) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.write_all(format!("CONNECT {}\n", mvm_protocol::agent::AGENT_PORT).as_bytes())
        .unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{line:?}");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn control(req: &Request) -> Vec<u8> {
    frame::encode(Kind::Control, &serde_json::to_vec(req).unwrap()).unwrap()
}

#[test]
fn agent_garbage_and_truncated_frames_close_only_their_connection() {
    let sb = shared();
    rt().block_on(async {
        let mut keep = sb.client().await;
        keep.ping().await.unwrap();
        let hello = control(&Request::Hello {
            version: 1,
            request: None,
        });
        // (what, bytes, whether the agent can only tell at end of stream)
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "oversized length",
                [hello.clone(), vec![0xff, 0xff, 0xff, 0xff, 1]].concat(),
                false,
            ),
            (
                "unknown kind",
                [hello.clone(), vec![1, 0, 0, 0, 200]].concat(),
                false,
            ),
            ("garbage before hello", (0..255u8).collect(), false),
            (
                "truncated frame",
                [hello.clone(), vec![40, 0, 0, 0, 1, b'{', b'"']].concat(),
                true,
            ),
            ("truncated header", vec![9, 0], true),
        ];
        for (what, bytes, at_eof) in cases {
            tokio::task::block_in_place(|| {
                let mut s = raw(&sb.uds);
                s.write_all(&bytes).unwrap();
                // Otherwise the write side stays open: the agent must close
                // on what it got, not on EOF.
                if at_eof {
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                }
                let t = Instant::now();
                let mut rest = Vec::new();
                let r = s.read_to_end(&mut rest);
                assert!(
                    r.is_ok(),
                    "{what}: the agent did not close the connection: {r:?} after {:?}",
                    t.elapsed()
                );
                // At most the hello answer and an error frame came back.
                let mut frames = FrameReader::new(&rest[..]);
                while let Some((kind, _)) = frames.read_frame().unwrap_or(None) {
                    assert_eq!(kind, Kind::Control, "{what}");
                }
            });
            keep.ping().await.unwrap();
            sb.client().await.ping().await.unwrap();
        }
        // Unknown ops and well-framed but malformed requests: an error, and
        // the connection keeps working.
        let mut bytes = hello.clone();
        bytes.extend(frame::encode(Kind::Control, br#"{"op":"frobnicate"}"#).unwrap());
        bytes.extend(frame::encode(Kind::Control, b"{\"op\":").unwrap());
        bytes.extend(frame::encode(Kind::Control, br#"{"op":"signal","signal":"x"}"#).unwrap());
        bytes.extend(control(&Request::Ping));
        tokio::task::block_in_place(|| {
            let mut s = raw(&sb.uds);
            s.write_all(&bytes).unwrap();
            let mut r = FrameReader::new(s.try_clone().unwrap());
            let mut next = || match r.read_frame().unwrap().unwrap() {
                (Kind::Control, p) => frame::decode_json::<Response>(p).unwrap(),
                (k, _) => panic!("{k:?}"),
            };
            assert_eq!(next(), Response::Hello { version: 1 });
            for code in [
                ErrorCode::Unsupported,
                ErrorCode::BadRequest,
                ErrorCode::BadRequest,
            ] {
                match next() {
                    Response::Error { code: c, .. } if c == code => {}
                    other => panic!("wanted {code:?}, got {other:?}"),
                }
            }
            assert_eq!(next(), Response::Pong);
        });
        keep.ping().await.unwrap();
    });
}

#[test]
fn agent_stats_move_when_the_guest_burns_cpu_and_allocates_memory() {
    // Its own guest: the workload cgroup must hold only this test's work.
    let mut vm = agent_vm("sleep 600");
    vm.memory_mib = 256;
    let sb = Sandbox::of(&vm);
    let running = vm.spawn();
    rt().block_on(async {
        let mut c = sb.client().await;
        let before = c.stats().await.unwrap();
        assert!(
            before.cpu_usage_usec.is_some(),
            "no cgroup cpu stats: {before:?}"
        );
        assert!(before.pids.is_some_and(|p| p >= 1), "{before:?}");
        // Burn CPU, then hold 24 MiB of tmpfs pages (charged to the
        // workload cgroup) and keep a process alive while sampling.
        let mut e = sh("i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done; \
             dd if=/dev/zero of=/tmp/fill bs=1M count=24 2>/dev/null; echo filled; read x; exit 0");
        e.stdin = true;
        let mut s = sb.client().await.exec(e).await.unwrap();
        read_until(&mut s.output, "filled").await;
        let after = c.stats().await.unwrap();
        let cpu = after.cpu_usage_usec.unwrap() - before.cpu_usage_usec.unwrap();
        assert!(cpu > 100_000, "CPU did not move: {before:?} -> {after:?}");
        let user = after.cpu_user_usec.unwrap() - before.cpu_user_usec.unwrap();
        assert!(
            user > 50_000,
            "user CPU did not move: {before:?} -> {after:?}"
        );
        let mem =
            after.memory_usage_bytes.unwrap() as i64 - before.memory_usage_bytes.unwrap() as i64;
        assert!(
            mem > 20 << 20,
            "memory did not move: {before:?} -> {after:?}"
        );
        assert!(
            after.pids.unwrap() > before.pids.unwrap(),
            "pids did not move: {before:?} -> {after:?}"
        );
        let limit = after.memory_limit_bytes.unwrap();
        assert!(limit > 200 << 20 && limit <= 256 << 20, "{after:?}");
        assert!(after.block_read_bytes > 0, "{after:?}");
        assert!(after.system_cpu_usec > before.system_cpu_usec, "{after:?}");
        assert_eq!(after.online_cpus, 1, "{after:?}");
        s.stdin.as_mut().unwrap().close().await.unwrap();
        assert_eq!(s.output.wait().await.unwrap(), Exit::code(0));
        report(format_args!(
            "stats after burning CPU and 24 MiB of tmpfs: {after:?}"
        ));
        sb.shutdown(running).await;
    });
}

#[test]
fn agent_sigterm_reaches_the_workload() {
    let mut vm =
        agent_vm("trap 'echo got-term; exit 42' TERM; echo up; while :; do sleep 0.1; done");
    vm.spec.process.output = Output::Agent;
    let sb = Sandbox::of(&vm);
    let running = vm.spawn();
    let out = rt().block_on(async {
        let mut a = sb.client().await.attach(false).await.unwrap();
        read_until(&mut a.output, "up").await;
        sb.client()
            .await
            .signal(Target::Main, libc::SIGTERM)
            .await
            .unwrap();
        let (o, _, x) = a.output.collect().await.unwrap();
        assert_eq!(
            (String::from_utf8_lossy(&o).as_ref(), x),
            ("got-term\n", Exit::code(42))
        );
        tokio::task::block_in_place(|| running.wait())
    });
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.status().exit_code(), Some(42), "{}", out.describe());
}

#[test]
fn agent_stop_ends_a_workload_ignoring_sigterm_after_the_timeout() {
    let mut vm = agent_vm("trap '' TERM; echo up; while :; do sleep 0.1; done");
    vm.spec.process.output = Output::Agent;
    let sb = Sandbox::of(&vm);
    let running = vm.spawn();
    let (took, out) = rt().block_on(async {
        // Only once the trap is set: the agent can be faster than the shell.
        let mut a = sb.client().await.attach(false).await.unwrap();
        read_until(&mut a.output, "up").await;
        let mut c = sb.client().await;
        let t = Instant::now();
        c.shutdown(libc::SIGTERM, Duration::from_secs(2))
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(a.output.wait().await.unwrap(), Exit::signal(9));
        (took, tokio::task::block_in_place(|| running.wait()))
    });
    report(format_args!(
        "shutdown {{SIGTERM, 2000 ms}} of a workload ignoring SIGTERM answered after {took:?}"
    ));
    assert!(
        took >= Duration::from_secs(2),
        "{took:?}: {}",
        out.describe()
    );
    assert!(
        took < Duration::from_secs(6),
        "{took:?}: {}",
        out.describe()
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.status().signal(), Some(9), "{}", out.describe());
}
