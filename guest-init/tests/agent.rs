//! The guest agent, run for real on the host: a forked child becomes PID 1
//! of a new PID namespace and does what init does after switching root
//! (reaper, workload cgroup, main workload, agent, supervision, stopping
//! the rest), with the agent on a Unix socket instead of vsock. The test
//! process is the host and talks to it with the real tokio client
//! (`mvm_protocol::agent::client`), or with raw frames for hostile input.
//!
//! Needs root (PID namespaces, chown in copy tests), like the reaper tests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvm_init::agent::{self, Agent, Router, Workload};
use mvm_init::process::Command;
use mvm_init::reaper::Reaper;
use mvm_init::user::ExecUser;
use mvm_protocol::agent::client::{AgentClient, ClientError, Event};
use mvm_protocol::agent::frame::{self, FrameReader, Kind};
use mvm_protocol::agent::{ErrorCode, Exec, Exit, Request, Response, Target};
use mvm_protocol::launch::{Output, Process};

/// How long any single test may run before its guest is killed.
const WATCHDOG: Duration = Duration::from_secs(120);

/// A guest-like init running in a forked child.
struct Guest {
    /// The outer child (the inner one is PID 1 of the new namespace).
    pid: libc::pid_t,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    started: Instant,
}

struct GuestSpec {
    args: Vec<String>,
    output: Output,
    terminal: bool,
    stdin: bool,
    env: Vec<String>,
    cgroup: Option<PathBuf>,
}

impl GuestSpec {
    fn sh(script: &str) -> Self {
        Self {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            output: Output::Agent,
            terminal: false,
            stdin: false,
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "FROM_SPEC=yes".into(),
            ],
            cgroup: None,
        }
    }

    fn process(&self) -> Process {
        let mut spec = mvm_protocol::launch::LaunchSpec::new(self.args.clone());
        spec.process.env = self.env.clone();
        spec.process.output = self.output;
        spec.process.terminal = self.terminal;
        spec.process.stdin = self.stdin;
        spec.process
    }
}

fn root_user() -> ExecUser {
    ExecUser {
        uid: 0,
        gid: 0,
        sgids: vec![],
        home: "/root".into(),
    }
}

/// Inner child: PID 1 of the namespace. Returns the exit code for the
/// outer child: the workload's shell status.
fn guest_main(spec: &GuestSpec, socket: &Path) -> i32 {
    let reaper = match Reaper::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("guest: reaper: {e}");
            return 200;
        }
    };
    let process = spec.process();
    let env = mvm_init::env::build(&process.env, "testhost", "/root");
    let mut cmd = Command::new(&process.args, &env, "/", root_user()).expect("command");
    if let Some(cg) = &spec.cgroup {
        cmd.cgroup(&cg.join("cgroup.procs"));
    }
    let workload = match Workload::spawn(&mut cmd, &process) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("guest: spawn: {e}");
            return 201;
        }
    };
    let config = agent::Config {
        env: process.env.clone(),
        user: String::new(),
        cwd: "/".into(),
        hostname: "testhost".into(),
        root: "/".into(),
        cgroup: spec.cgroup.clone(),
    };
    let agent = Agent::new(config, Arc::new(Router::new()), workload);
    let path = socket.to_path_buf();
    agent::start(agent.clone(), move || {
        Ok(OwnedFd::from(UnixListener::bind(&path)?))
    });
    let status = match agent::supervise(&reaper, &agent) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("guest: supervise: {e}");
            return 202;
        }
    };
    let _ = reaper.terminate_all(Duration::from_millis(100));
    agent::workload::exit_of(status).map_or(203, |e| e.shell_code())
}

impl Guest {
    fn start(spec: GuestSpec) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        // SAFETY: the child only runs guest code and `_exit`s; glibc keeps
        // malloc usable after fork in a multithreaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain syscalls in the child; it never returns.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    eprintln!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
                    libc::_exit(210);
                }
                let inner = libc::fork();
                if inner == 0 {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    let code =
                        std::panic::catch_unwind(|| guest_main(&spec, &socket)).unwrap_or(211);
                    libc::_exit(code);
                }
                let mut status = 0;
                libc::waitpid(inner, &mut status, 0);
                libc::_exit(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    212
                });
            }
        }
        Guest {
            pid,
            socket,
            _dir: dir,
            started: Instant::now(),
        }
    }

    /// A connected client (the agent listens a moment after the start).
    async fn client(&self) -> AgentClient {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match AgentClient::connect_unix(&self.socket).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "agent never listened: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// A raw connection for hostile input.
    async fn raw(&self) -> UnixStream {
        drop(self.client().await);
        UnixStream::connect(&self.socket).unwrap()
    }

    /// Wait for the guest to end; its exit code (the workload's status).
    fn wait(self) -> i32 {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child without blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                assert!(libc::WIFEXITED(status), "guest died: {status:#x}");
                return libc::WEXITSTATUS(status);
            }
            if self.started.elapsed() > WATCHDOG {
                // SAFETY: killing our own child; PDEATHSIG takes the rest.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                panic!("the guest did not end within {WATCHDOG:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // A test that failed midway: do not leave the guest running.
        // SAFETY: signalling and reaping our own child.
        unsafe {
            if libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) == 0 {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn exec(args: &[&str]) -> Exec {
    Exec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Exec::default()
    }
}

fn sh(script: &str) -> Exec {
    exec(&["sh", "-c", script])
}

async fn run(g: &Guest, e: Exec) -> (String, String, Exit) {
    let s = g.client().await.exec(e).await.unwrap();
    let (o, e, x) = s.output.collect().await.unwrap();
    (
        String::from_utf8(o).unwrap(),
        String::from_utf8(e).unwrap(),
        x,
    )
}

/// Stop the guest's main workload (a `sleep`) and collect the guest.
async fn stop(g: Guest) -> i32 {
    g.client()
        .await
        .shutdown(libc::SIGKILL, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || g.wait()).await.unwrap()
}

#[tokio::test]
async fn exec_output_streams_and_exit_codes() {
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let (out, err, x) = run(&g, sh("echo out; echo err >&2; exit 3")).await;
    assert_eq!(
        (out.as_str(), err.as_str(), x),
        ("out\n", "err\n", Exit::code(3))
    );

    // Environment: the spec's, plus the exec's; defaults from init.
    let mut e = sh("echo $FROM_SPEC $EXTRA $HOSTNAME; pwd");
    e.env = vec!["EXTRA=more".into()];
    e.cwd = Some("/tmp".into());
    let (out, _, x) = run(&g, e).await;
    assert_eq!(
        (out.as_str(), x),
        ("yes more testhost\n/tmp\n", Exit::code(0))
    );

    let (_, _, x) = run(&g, sh("kill -9 $$")).await;
    assert_eq!(x, Exit::signal(9));

    // Docker's exec failures.
    let err = g
        .client()
        .await
        .exec(exec(&["no-such-binary-mvm"]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert_eq!(ErrorCode::NotFound.docker_exit_code(), 127);
    assert!(
        err.to_string()
            .contains("executable file not found in $PATH"),
        "{err}"
    );
    let err = g
        .client()
        .await
        .exec(exec(&["/etc/passwd"]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotExecutable), "{err}");
    let mut e = exec(&["true"]);
    e.user = Some("no-such-user-mvm".into());
    let err = g.client().await.exec(e).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::User), "{err}");
    let mut e = exec(&["true"]);
    e.user = Some("65534:65534".into());
    let mut e2 = sh("id -u; id -g");
    e2.user = e.user.clone();
    let (out, _, _) = run(&g, e2).await;
    assert_eq!(out, "65534\n65534\n");
    let err = g.client().await.exec(exec(&[])).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");

    // A process that leaves a background child holding its output still
    // reports its exit (after the linger), with what it wrote.
    let t = Instant::now();
    let (out, _, x) = run(&g, sh("sleep 30 & echo bg-started")).await;
    assert_eq!((out.as_str(), x), ("bg-started\n", Exit::code(0)));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A connection carries requests one after another.
    let mut c = g.client().await;
    c.ping().await.unwrap();
    c.ping().await.unwrap();
    assert_eq!(stop(g).await, 137);
}

#[tokio::test]
async fn stdin_round_trip_with_checksum() {
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let mut e = exec(&["cat"]);
    e.stdin = true;
    let mut s = g.client().await.exec(e).await.unwrap();
    let mut stdin = s.stdin.take().unwrap();
    const SIZE: usize = 16 << 20;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4093) as u8).collect();
    let input = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(300_000) {
            stdin.write(chunk).await.unwrap();
        }
        stdin.close().await.unwrap();
    });
    let (out, err, x) = s.output.collect().await.unwrap();
    writer.await.unwrap();
    assert_eq!(x, Exit::code(0));
    assert!(err.is_empty());
    assert_eq!(out.len(), SIZE);
    assert!(out == data, "stdin came back altered");
    assert_eq!(stop(g).await, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_execs() {
    let g = Arc::new(Guest::start(GuestSpec::sh("sleep 600")));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            let script = format!("sleep 0.2; echo task-{i}; echo e{i} >&2; exit {i}");
            run(&g, sh(&script)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (out, err, x) = t.await.unwrap();
        assert_eq!(out, format!("task-{i}\n"));
        assert_eq!(err, format!("e{i}\n"));
        assert_eq!(x, Exit::code(i as i32));
    }
    let g = Arc::into_inner(g).unwrap();
    assert_eq!(stop(g).await, 137);
}

/// Read terminal output until it contains `want`.
async fn read_until(out: &mut mvm_protocol::agent::client::ExecOutput, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(30), out.next()).await {
            Ok(Ok(Event::Stdout(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn tty_exec_size_and_resize() {
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let mut e =
        sh("stty size; echo tty=$(tty | cut -c1-9) TERM=$TERM; read line; stty size; exit 4");
    e.tty = true;
    e.stdin = true;
    e.rows = 24;
    e.cols = 80;
    let mut s = g.client().await.exec(e).await.unwrap();
    let seen = read_until(&mut s.output, "TERM=xterm").await;
    assert!(seen.contains("24 80\r\n"), "{seen:?}");
    assert!(seen.contains("tty=/dev/pts"), "{seen:?}");
    s.control.resize(40, 132).await.unwrap();
    s.stdin.as_mut().unwrap().write(b"go\n").await.unwrap();
    read_until(&mut s.output, "40 132").await;
    // One stream on a terminal: nothing on stderr; the exit comes last.
    loop {
        match s.output.next().await.unwrap() {
            Event::Stdout(_) => {}
            Event::Stderr(b) => panic!("stderr on a tty: {b:?}"),
            Event::Exited(x) => {
                assert_eq!(x, Exit::code(4));
                break;
            }
        }
    }
    // Resize by pid from another connection.
    let mut e = sh("read line; stty size");
    e.tty = true;
    e.stdin = true;
    let mut s = g.client().await.exec(e).await.unwrap();
    let mut c = g.client().await;
    c.resize(Target::Pid(s.pid), 11, 22).await.unwrap();
    let err = c.resize(Target::Pid(999_999), 1, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchProcess));
    s.stdin.as_mut().unwrap().write(b"\n").await.unwrap();
    read_until(&mut s.output, "11 22").await;
    assert_eq!(stop(g).await, 137);
}

#[tokio::test]
async fn signals_in_band_by_pid_and_to_main() {
    let g = Guest::start(GuestSpec::sh(
        "trap 'echo main-got-term; exit 42' TERM; while :; do sleep 0.05; done",
    ));
    let script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done";
    let mut s = g.client().await.exec(sh(script)).await.unwrap();
    assert_eq!(
        s.output.next().await.unwrap(),
        Event::Stdout(b"ready\n".to_vec())
    );
    s.control.signal(libc::SIGTERM).await.unwrap();
    assert_eq!(s.output.wait().await.unwrap(), Exit::code(42));

    let mut s = g.client().await.exec(sh(script)).await.unwrap();
    assert_eq!(
        s.output.next().await.unwrap(),
        Event::Stdout(b"ready\n".to_vec())
    );
    let mut c = g.client().await;
    c.signal(Target::Pid(s.pid), libc::SIGUSR1).await.unwrap();
    assert_eq!(s.output.wait().await.unwrap(), Exit::signal(libc::SIGUSR1));
    let err = c.signal(Target::Pid(1), libc::SIGKILL).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    let err = c
        .signal(Target::Pid(999_999), libc::SIGKILL)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchProcess));
    let err = c.signal(Target::Main, 99).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));

    // SIGTERM reaches the main workload, whose exit ends the guest.
    let a = g.client().await.attach(false).await.unwrap();
    c.signal(Target::Main, libc::SIGTERM).await.unwrap();
    let (out, _, x) = {
        let (o, e, x) = a.output.collect().await.unwrap();
        (String::from_utf8(o).unwrap(), e, x)
    };
    assert_eq!((out.as_str(), x), ("main-got-term\n", Exit::code(42)));
    let code = tokio::task::spawn_blocking(move || g.wait()).await.unwrap();
    assert_eq!(code, 42);
}

#[tokio::test]
async fn shutdown_kills_a_workload_that_ignores_sigterm() {
    let g = Guest::start(GuestSpec::sh(
        "trap '' TERM; echo up; while :; do sleep 0.05; done",
    ));
    // Only once the trap is set: the agent can be faster than the shell.
    let mut a = g.client().await.attach(false).await.unwrap();
    read_until(&mut a.output, "up").await;
    let t = Instant::now();
    g.client()
        .await
        .shutdown(libc::SIGTERM, Duration::from_millis(500))
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "did not wait the grace: {took:?}"
    );
    assert_eq!(a.output.wait().await.unwrap(), Exit::signal(libc::SIGKILL));
    let code = tokio::task::spawn_blocking(move || g.wait()).await.unwrap();
    assert_eq!(code, 128 + libc::SIGKILL);
}

#[tokio::test]
async fn attach_gets_buffered_then_live_output_and_blocks_a_full_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("wrote-all");
    // 3 MiB is more than the 1 MiB buffer: the workload must block until
    // an attacher drains it.
    let script = format!(
        "echo early; head -c 3145728 /dev/zero | tr '\\0' x; echo; echo err-line >&2; touch {}; read go; echo live-$go; exit 5",
        marker.display()
    );
    let mut spec = GuestSpec::sh(&script);
    spec.stdin = true;
    let g = Guest::start(spec);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !marker.exists(),
        "the workload wrote 3 MiB with nobody attached: output is not bounded"
    );
    let mut a = g.client().await.attach(true).await.unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    while !err.ends_with(b"err-line\n") || out.len() < 3_145_728 + 7 {
        match a.output.next().await.unwrap() {
            Event::Stdout(b) => out.extend_from_slice(&b),
            Event::Stderr(b) => err.extend_from_slice(&b),
            Event::Exited(x) => panic!("exited early: {x:?}"),
        }
    }
    assert!(out.starts_with(b"early\nxxxx"));
    assert_eq!(out.len(), 6 + 3_145_728 + 1);
    a.stdin.as_mut().unwrap().write(b"now\n").await.unwrap();
    let (rest, _, x) = a.output.collect().await.unwrap();
    assert_eq!(
        (String::from_utf8(rest).unwrap().as_str(), x),
        ("live-now\n", Exit::code(5))
    );
    assert!(marker.exists());
    let code = tokio::task::spawn_blocking(move || g.wait()).await.unwrap();
    assert_eq!(code, 5);
}

#[tokio::test]
async fn a_new_attacher_replaces_the_old_and_late_attachers_get_the_exit() {
    let mut spec = GuestSpec::sh("echo first; read x; echo second; read y; exit 7");
    spec.stdin = true;
    let g = Guest::start(spec);
    let mut a1 = g.client().await.attach(true).await.unwrap();
    assert_eq!(
        a1.output.next().await.unwrap(),
        Event::Stdout(b"first\n".to_vec())
    );
    let mut a2 = g.client().await.attach(true).await.unwrap();
    let err = a1.output.next().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Detached), "{err}");
    a2.stdin.as_mut().unwrap().write(b"1\n").await.unwrap();
    assert_eq!(
        a2.output.next().await.unwrap(),
        Event::Stdout(b"second\n".to_vec())
    );
    // Detach by closing; the workload keeps running and output waits.
    drop(a2);
    let mut a3 = g.client().await.attach(true).await.unwrap();
    a3.stdin.as_mut().unwrap().write(b"2\n").await.unwrap();
    assert_eq!(a3.output.wait().await.unwrap(), Exit::code(7));
    assert_eq!(
        tokio::task::spawn_blocking(move || g.wait()).await.unwrap(),
        7
    );
}

#[tokio::test]
async fn attach_to_console_output_is_refused_and_exit_needs_no_attacher() {
    let mut spec = GuestSpec::sh("sleep 0.5; exit 9");
    spec.output = Output::Console;
    let g = Guest::start(spec);
    let err = g.client().await.attach(false).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotAttachable), "{err}");
    let t = Instant::now();
    let code = tokio::task::spawn_blocking(move || g.wait()).await.unwrap();
    assert_eq!(code, 9);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "console output must not wait for an attacher"
    );
}

/// A launched guest (here, one whose workload runs) refuses `launch`: a
/// warm guest takes exactly one, before its workload exists, and a cold
/// one none. The client's method and a raw request alike.
#[tokio::test]
async fn a_launch_to_a_launched_guest_is_refused() {
    let g = Guest::start(GuestSpec::sh("sleep 30"));
    let mut spec = mvm_protocol::launch::LaunchSpec::new(vec!["true".into()]);
    spec.hostname = Some("second".into());
    let mut c = g.client().await;
    let err = c.launch(&spec).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("launched already"), "{err}");
    // The connection stays usable.
    c.ping().await.unwrap();
    let mut s = g.raw().await;
    let mut bytes = hello();
    bytes.extend(control(&Request::Launch {
        spec: Box::new(mvm_protocol::launch::LaunchSpec::warm()),
    }));
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = responses(&mut s);
    assert!(
        matches!(&got[1], Response::Error { code: ErrorCode::BadRequest, message } if message.contains("launched already")),
        "{got:?}"
    );
    assert_eq!(stop(g).await, 128 + libc::SIGKILL);
}

#[tokio::test]
async fn terminal_main_workload() {
    let mut spec = GuestSpec::sh("stty size; read x; stty size; exit 0");
    spec.terminal = true;
    spec.stdin = true;
    let g = Guest::start(spec);
    let mut c = g.client().await;
    let mut a = g.client().await.attach(true).await.unwrap();
    read_until(&mut a.output, "0 0").await;
    c.resize(Target::Main, 50, 60).await.unwrap();
    a.stdin.as_mut().unwrap().write(b"\n").await.unwrap();
    read_until(&mut a.output, "50 60").await;
    assert_eq!(a.output.wait().await.unwrap(), Exit::code(0));
    assert_eq!(
        tokio::task::spawn_blocking(move || g.wait()).await.unwrap(),
        0
    );
}

/// Everything about a tree that a copy must keep.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let kind = if m.is_dir() {
            "dir".to_string()
        } else if m.file_type().is_symlink() {
            format!("link->{}", std::fs::read_link(p).unwrap().display())
        } else if m.is_file() {
            format!("file:{:?}", std::fs::read(p).unwrap())
        } else {
            format!("special:{:o}", m.mode() & 0o170000)
        };
        let mode = if m.file_type().is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        let mtime = m.mtime();
        out.insert(
            rel,
            format!(
                "{kind} {mode:o} {}:{} {mtime} nlink={}",
                m.uid(),
                m.gid(),
                if m.is_file() { m.nlink() } else { 0 }
            ),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// A tree with every kind of entry and unusual metadata.
fn make_tree(src: &Path) {
    use std::os::unix::fs::{chown, symlink};
    let d = src.join("tree");
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("plain"), b"hello\n").unwrap();
    std::fs::write(d.join("sub/setuid"), vec![0xabu8; 100_000]).unwrap();
    std::fs::set_permissions(
        d.join("sub/setuid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    chown(d.join("sub/setuid"), Some(1234), Some(5678)).unwrap();
    std::fs::write(d.join("sub/deeper/empty"), b"").unwrap();
    std::fs::set_permissions(
        d.join("sub/deeper/empty"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    symlink("../plain", d.join("sub/rel-link")).unwrap();
    symlink("/etc/passwd", d.join("abs-link")).unwrap();
    std::fs::hard_link(d.join("plain"), d.join("hard")).unwrap();
    let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    chown(d.join("sub"), Some(42), Some(43)).unwrap();
    let long = "l".repeat(150);
    std::fs::write(d.join(&long), b"long name").unwrap();
    // Fixed, distinct times, directories last (writing changes them).
    for (i, rel) in [
        "plain",
        "sub/setuid",
        "sub/deeper/empty",
        &long,
        "sub/deeper",
        "sub",
        "",
    ]
    .iter()
    .enumerate()
    {
        let t = filetime(1_600_000_000 + i as i64 * 1000);
        let p = std::ffi::CString::new(d.join(rel).to_str().unwrap()).unwrap();
        // SAFETY: utimensat with a C string and two timespecs.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                t.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
}

fn filetime(secs: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    [t, t]
}

#[tokio::test]
async fn copy_round_trip_keeps_content_modes_owners_times_links() {
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    // Host side: tar the tree with GNU tar, as `docker cp` would send it.
    let tar = std::process::Command::new("tar")
        .args(["--numeric-owner", "-cf", "-", "-C"])
        .arg(&src)
        .arg("tree")
        .output()
        .unwrap();
    assert!(tar.status.success());
    let dest = work.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let mut c = g.client().await;
    c.copy_in(dest.to_str().unwrap(), &tar.stdout[..])
        .await
        .unwrap();
    assert_eq!(snapshot(&src.join("tree")), snapshot(&dest.join("tree")));

    // And back out: GNU tar extracts what the agent sends to the same tree.
    let mut r = g
        .client()
        .await
        .copy_out(dest.join("tree").to_str().unwrap())
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
    assert_eq!(snapshot(&src.join("tree")), snapshot(&back.join("tree")));

    // `path/.`: the contents, without the directory's own entry.
    let mut r = g
        .client()
        .await
        .copy_out(&format!("{}/.", dest.join("tree/sub").display()))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut bytes)
        .await
        .unwrap();
    let mut names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["deeper", "deeper/empty", "rel-link", "setuid"]);

    // Errors: missing source, destination not a directory.
    let err = g
        .client()
        .await
        .copy_out("/no/such/path-mvm")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = c
        .copy_in(dest.join("tree/plain").to_str().unwrap(), &tar.stdout[..])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    // The connection is still usable after a failed copy.
    c.ping().await.unwrap();
    assert_eq!(stop(g).await, 137);
}

/// A tar with raw entries, as a hostile host could send.
fn hostile_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        // Bypass the builder's path checks: write the name bytes directly.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn hostile_tars_cannot_escape_the_destination() {
    use tar::EntryType::*;
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    let outside = work.path().join("outside");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut c = g.client().await;

    let t = hostile_tar(&[("../escaped", Regular, "", b"x")]);
    let err = c.copy_in(dest.to_str().unwrap(), &t[..]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let t = hostile_tar(&[("a/../../escaped", Regular, "", b"x")]);
    assert!(c.copy_in(dest.to_str().unwrap(), &t[..]).await.is_err());

    // A symlink to an absolute directory, then a file through it: the
    // link resolves inside the destination, where that directory does not
    // exist, so the entry fails and nothing is written outside.
    let abs = outside.to_str().unwrap();
    let t = hostile_tar(&[
        ("evil", Symlink, abs, b""),
        ("evil/pwned", Regular, "", b"x"),
    ]);
    assert!(c.copy_in(dest.to_str().unwrap(), &t[..]).await.is_err());
    assert!(
        !outside.join("pwned").exists(),
        "wrote through a symlink outside the destination"
    );
    // A link to "/" is the destination's root.
    let t = hostile_tar(&[
        ("root", Symlink, "/", b""),
        ("root/via-root", Regular, "", b"x"),
    ]);
    c.copy_in(dest.to_str().unwrap(), &t[..]).await.unwrap();
    assert_eq!(std::fs::read(dest.join("via-root")).unwrap(), b"x");

    // Relative symlink climbing out, then a file through it.
    // `..` in a link target stops at the destination's root.
    std::fs::create_dir(dest.join("outside")).unwrap();
    let t = hostile_tar(&[
        ("up", Symlink, "../../../../outside", b""),
        ("up/pwned2", Regular, "", b"x"),
    ]);
    c.copy_in(dest.to_str().unwrap(), &t[..]).await.unwrap();
    assert!(!outside.join("pwned2").exists());
    assert!(dest.join("outside/pwned2").exists());
    // A file entry replacing an existing symlink replaces the link, it does
    // not write through it.
    std::fs::write(outside.join("target"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.join("target"), dest.join("trap")).unwrap();
    let t = hostile_tar(&[("trap", Regular, "", b"new")]);
    c.copy_in(dest.to_str().unwrap(), &t[..]).await.unwrap();
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"keep");
    assert_eq!(std::fs::read(dest.join("trap")).unwrap(), b"new");
    // Hard link to a file outside: the target resolves inside (and fails).
    let t = hostile_tar(&[("hl", Link, "/etc/passwd", b"")]);
    assert!(c.copy_in(dest.to_str().unwrap(), &t[..]).await.is_err());
    let t = hostile_tar(&[("hl", Link, "../outside/target", b"")]);
    assert!(c.copy_in(dest.to_str().unwrap(), &t[..]).await.is_err());
    // Garbage instead of a tar.
    let err = c
        .copy_in(dest.to_str().unwrap(), &[0x55u8; 2000][..])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    c.ping().await.unwrap();
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "something landed outside"
    );
    assert_eq!(stop(g).await, 137);
}

/// Read control responses from a raw connection until it closes.
fn responses(s: &mut UnixStream) -> Vec<Response> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap());
    let mut out = Vec::new();
    while let Ok(Some((Kind::Control, p))) = r.read_frame() {
        out.push(frame::decode_json(p).unwrap());
    }
    out
}

fn control(req: &Request) -> Vec<u8> {
    frame::encode(Kind::Control, &serde_json::to_vec(req).unwrap()).unwrap()
}

fn hello() -> Vec<u8> {
    control(&Request::Hello {
        version: 1,
        request: None,
    })
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    let mut keep = g.client().await;
    keep.ping().await.unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized length",
            [hello(), vec![0xff, 0xff, 0xff, 0x7f, 1]].concat(),
        ),
        ("unknown kind", [hello(), vec![1, 0, 0, 0, 99]].concat()),
        ("zero length", [hello(), vec![0, 0, 0, 0]].concat()),
        (
            "truncated frame",
            [hello(), vec![50, 0, 0, 0, 1, b'{']].concat(),
        ),
        (
            "stdout from the host",
            [hello(), frame::encode(Kind::Stdout, b"x").unwrap()].concat(),
        ),
        (
            "data outside a copy",
            [hello(), frame::encode(Kind::Data, b"x").unwrap()].concat(),
        ),
        (
            "random bytes first",
            (0..200u8).map(|b| b.wrapping_mul(37)).collect(),
        ),
        ("no hello", control(&Request::Ping)),
        (
            "wrong version",
            control(&Request::Hello {
                version: 99,
                request: None,
            }),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = g.raw().await;
        s.write_all(&bytes).unwrap();
        // Half-close: a truncated frame is then final.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let got = responses(&mut s);
        if what == "wrong version" {
            assert!(
                matches!(
                    got.last(),
                    Some(Response::Error {
                        code: ErrorCode::Version,
                        ..
                    })
                ),
                "{what}: {got:?}"
            );
        }
        // The old connection and new ones keep working.
        keep.ping()
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    // Unknown ops and malformed requests get an error; the connection stays.
    let mut s = g.raw().await;
    let mut bytes = hello();
    bytes.extend(frame::encode(Kind::Control, br#"{"op":"teleport"}"#).unwrap());
    bytes.extend(frame::encode(Kind::Control, br#"{"op":"exec","args":5}"#).unwrap());
    bytes.extend(frame::encode(Kind::Control, b"{not json").unwrap());
    bytes.extend(control(&Request::Ping));
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = responses(&mut s);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], Response::Hello { version: 1 });
    assert!(
        matches!(&got[1], Response::Error { code: ErrorCode::Unsupported, message } if message.contains("teleport")),
        "{got:?}"
    );
    assert!(
        matches!(
            got[2],
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(
        matches!(
            got[3],
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{got:?}"
    );
    assert_eq!(got[4], Response::Pong);

    // A request inside hello, and a second request while an exec runs.
    let mut s = g.raw().await;
    let exec = Request::Exec(Exec {
        args: vec!["sh".into(), "-c".into(), "sleep 0.5".into()],
        ..Exec::default()
    });
    let mut bytes = control(&Request::Hello {
        version: 1,
        request: Some(Box::new(exec)),
    });
    bytes.extend(control(&Request::Stats));
    s.write_all(&bytes).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap());
    let mut next = || match r.read_frame().unwrap().unwrap() {
        (Kind::Control, p) => frame::decode_json::<Response>(p).unwrap(),
        (k, _) => panic!("{k:?}"),
    };
    assert_eq!(next(), Response::Hello { version: 1 });
    assert!(matches!(next(), Response::Started { .. }));
    assert!(matches!(
        next(),
        Response::Error {
            code: ErrorCode::Busy,
            ..
        }
    ));
    assert_eq!(next(), Response::Exited(Exit::code(0)));
    // After the exit the connection takes requests again.
    s.write_all(&control(&Request::Ping)).unwrap();
    assert_eq!(next(), Response::Pong);
    drop(keep);
    assert_eq!(stop(g).await, 137);
}

#[tokio::test]
async fn stats_count_the_workload_cgroup() {
    // The host's cgroup v2 hierarchy: cpu.stat works without controllers.
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .expect(
            "a cgroup v2 hierarchy (cgroup2 mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified)",
        );
    let test_root = unified.join(format!("mvm-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&test_root).unwrap();
    let (cg, _missing) = agent::cgroup::setup(&test_root).unwrap();
    let mut spec = GuestSpec::sh("sleep 600");
    spec.cgroup = Some(cg.clone());
    let g = Guest::start(spec);
    let mut c = g.client().await;
    let before = c.stats().await.unwrap();
    assert!(
        before.system_cpu_usec > 0 && before.online_cpus >= 1,
        "{before:?}"
    );
    let (_, _, x) = run(&g, sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")).await;
    assert_eq!(x, Exit::code(0));
    let after = c.stats().await.unwrap();
    let used = after.cpu_usage_usec.unwrap() - before.cpu_usage_usec.unwrap();
    assert!(
        used > 10_000,
        "the CPU burnt by an exec is not in the workload cgroup: {before:?} {after:?}"
    );
    assert!(after.system_cpu_usec > before.system_cpu_usec);
    // The main workload and execs joined the cgroup.
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty());
    assert_eq!(stop(g).await, 137);
    for _ in 0..100 {
        if std::fs::remove_dir(&cg).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(&test_root);
}

#[tokio::test]
async fn client_connect_times_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let t = Instant::now();
    let err = AgentClient::connect(&path, Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("vsock"), "{err}");

    // A VMM-like socket that accepts, refuses the port (closes) twice, then
    // accepts the CONNECT and relays to a real agent.
    let g = Guest::start(GuestSpec::sh("sleep 600"));
    drop(g.client().await);
    let vmm = UnixListener::bind(&path).unwrap();
    let agent_sock = g.socket.clone();
    let relay = std::thread::spawn(move || {
        for attempt in 0.. {
            let (mut s, _) = vmm.accept().unwrap();
            let want = format!("CONNECT {}\n", mvm_protocol::agent::AGENT_PORT);
            let mut line = vec![0u8; want.len()];
            s.read_exact(&mut line).unwrap();
            assert_eq!(line, want.as_bytes());
            if attempt < 2 {
                continue; // refused: closed without OK
            }
            s.write_all(b"OK 1073741824\n").unwrap();
            let a = UnixStream::connect(&agent_sock).unwrap();
            let (mut a2, mut s2) = (a.try_clone().unwrap(), s.try_clone().unwrap());
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut a2);
                let _ = a2.shutdown(std::net::Shutdown::Write);
            });
            let mut a = a;
            let _ = std::io::copy(&mut a, &mut s);
            let _ = up.join();
            break;
        }
    });
    let mut c = AgentClient::connect(&path, Duration::from_secs(30))
        .await
        .unwrap();
    c.ping().await.unwrap();
    drop(c);
    relay.join().unwrap();
    assert_eq!(stop(g).await, 137);
}
