//! A real `mvmd` for the suites that drive it (`api`, `cli`, `example`):
//! where the built binaries are, starting a daemon that goes away with the
//! test process, and asking it whether it answers.
//!
//! One copy here because each suite had its own, and a fix to one (the
//! PR_SET_PDEATHSIG thread, for one) must reach them all.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A binary next to the test binary's directory (`target/debug/`), built
/// by `make build`, or the path in `MVM_<NAME>`.
pub fn binary(name: &str) -> PathBuf {
    let env = format!("MVM_{}", name.to_uppercase());
    if let Some(p) = std::env::var_os(&env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make build` first (or set {env})",
        p.display()
    );
    p
}

/// Start mvmd (state under `root`, socket under `run`, both output streams
/// to `log`) from a thread that lives as long as the process, so that
/// PR_SET_PDEATHSIG (which fires when the forking *thread* ends) takes
/// the daemon down with the test process, not with the first test.
pub fn start_daemon(root: &Path, run: &Path, log: &Path) {
    start_daemon_with(root, run, log, &[]);
}

/// [`start_daemon`] with more flags for mvmd (`--init PATH`, say).
pub fn start_daemon_with(root: &Path, run: &Path, log: &Path, flags: &[&str]) {
    let (tx, rx) = mpsc::channel();
    let (root, run, log) = (root.to_path_buf(), run.to_path_buf(), log.to_path_buf());
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    std::thread::spawn(move || {
        let mut cmd = Command::new(binary("mvmd"));
        cmd.arg("--root")
            .arg(&root)
            .arg("--run-dir")
            .arg(&run)
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn mvmd");
        tx.send(()).unwrap();
        let _keep = child;
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("mvmd started");
}

/// Wait until the daemon at `socket` answers [`ping`], for at most 60 s
/// (its start under nested emulation takes seconds), else panic with its
/// `log`. mvmd has no readiness notification to wait on, so this asks
/// every 50 ms.
pub fn wait_answering(socket: &Path, log: &Path) {
    let t = Instant::now();
    while !ping(socket) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mvmd did not answer at {} within 60 s; its log:\n{}",
            socket.display(),
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`start_daemon`], then [`wait_answering`]; returns the socket's path.
pub fn start_answering(root: &Path, run: &Path, log: &Path) -> PathBuf {
    start_daemon(root, run, log);
    let socket = run.join("mvmd.sock");
    wait_answering(&socket, log);
    socket
}

/// Whether the daemon at `socket` answers `GET /_ping` with 200.
pub fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: mvmd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}
