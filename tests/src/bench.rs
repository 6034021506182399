//! What the benchmarks that drive a real `mvmd` through `mvctl` share
//! (`tests/benches/run.rs`, `restore.rs`): a private daemon, checked
//! `mvctl` calls timed as a user sees them, the busybox image, and
//! quantiles printed as table rows.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image [`import_busybox`] imports.
pub const IMAGE: &str = "bench/busybox:1";

/// A `usize` from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `mvmd` and `mvctl` sit next to `mvm-vmm` (one cargo target dir; the
/// profile is `run-bench.sh`'s `MVM_PROFILE_DIR`).
pub fn binary(name: &str) -> PathBuf {
    let vmm = std::env::var_os("MVM_VMM").expect("MVM_VMM is not set: run tests/run-bench.sh");
    let p = Path::new(&vmm).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it in the VMM's profile (`make build-release`, or `make build` with MVM_PROFILE_DIR=debug)",
        p.display()
    );
    p
}

/// A private `mvmd` (its own root, run directory and log), killed when
/// dropped.
#[derive(Debug)]
pub struct Daemon {
    /// The daemon process.
    pub child: Child,
    /// `MVM_HOST` for `mvctl`.
    pub host: String,
    /// Its root, run directory and log, and whatever a benchmark puts
    /// there.
    pub dir: tempfile::TempDir,
}

impl Drop for Daemon {
    /// SIGTERM, so a daemon with networking removes its bridge, TAPs and
    /// rules as it does when a user stops it; SIGKILL after 30 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// Start `mvmd` with `flags` and wait (at most 60 s) until its socket
/// accepts connections.
pub fn start_daemon_with(flags: &[&str]) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("mvm-bench-")
        .tempdir()
        .unwrap();
    let (root, run) = (dir.path().join("root"), dir.path().join("run"));
    let log = dir.path().join("mvmd.log");
    let child = Command::new(binary("mvmd"))
        .arg("--root")
        .arg(&root)
        .arg("--run-dir")
        .arg(&run)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn mvmd");
    let socket = run.join("mvmd.sock");
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mvmd did not listen within 60 s; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        host: format!("unix://{}", socket.display()),
        dir,
    }
}

/// Run mvctl; panics with its output unless it exits 0. Returns stdout and
/// the call's wall time.
pub fn mvctl(d: &Daemon, args: &[&str]) -> (String, Duration) {
    let t = Instant::now();
    let out = Command::new(binary("mvctl"))
        .args(args)
        .env("MVM_HOST", &d.host)
        .stdin(Stdio::null())
        .output()
        .expect("spawn mvctl");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "mvctl {args:?} failed ({}):\n{}{}\nmvmd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(d.dir.path().join("mvmd.log")).unwrap_or_default()
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

/// Import a busybox root filesystem as [`IMAGE`].
pub fn import_busybox(d: &Daemon) {
    let tree = d.dir.path().join("tree");
    crate::rootfs::busybox_tree(&tree).expect("busybox tree");
    let tar = d.dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar failed");
    mvctl(d, &["import", tar.to_str().unwrap(), IMAGE]);
}

/// `mvctl inspect ID`'s object.
pub fn inspect(d: &Daemon, id: &str) -> serde_json::Value {
    let (out, _) = mvctl(d, &["inspect", id]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

/// A `/proc/PID/status` field in KiB (0 if absent).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The q-quantile (nearest rank) of `v` in ms.
pub fn pct(v: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A `| what | n | p50 ms | p95 ms |` row.
pub fn row(what: &str, v: &[Duration]) {
    println!(
        "| {what} | {} | {:.0} | {:.0} |",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.95)
    );
}
