//! The mvm machine (`mvctl machine ...`): mvmd inside the emulated KVM host,
//! driven through the real mvctl binary.
//!
//! This test boots L1 itself (QEMU TCG works on every x86_64 host), so it
//! runs on the HOST, never inside the emulated host: `tests/run-e2e.sh`
//! runs it natively after the in-L1 suite. Each L1 boot costs 15-40 s
//! here, so one test covers the whole life cycle with two boots:
//! start, status, system info, import, run, stop (disk clean), then a
//! second start (automatic where there is no hardware KVM) that still has
//! the image, and a final stop (disk clean again).
//!
//! It uses its own machine dir and run dir (`MVM_MACHINE_DIR`,
//! `MVM_RUN_DIR`), so it neither sees nor touches a machine of the user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mvm_e2e::rootfs;

/// The built mvctl: `$MVCTL`, else next to the test executable's
/// `deps/` dir (target/<profile>/mvctl); mvmd must be next to it.
fn mvctl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MVCTL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let p = profile_dir.join("mvctl");
    assert!(
        p.is_file() && profile_dir.join("mvmd").is_file(),
        "{} or mvmd next to it is missing: build them first (make build, or cargo build -p mvctl -p mvmd)",
        p.display()
    );
    p
}

fn hardware_kvm() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    hw && !Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists()
}

struct Machine {
    mvctl: PathBuf,
    dir: PathBuf,
    run_dir: PathBuf,
    tmp: tempfile::TempDir,
}

impl Machine {
    fn new() -> Self {
        // Not under /tmp: the boot dir would work there (L1 mounts it
        // explicitly), but keep the big sparse disk off a possible tmpfs.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&base).unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("mvm-machine-test-")
            .tempdir_in(&base)
            .unwrap();
        Machine {
            mvctl: mvctl_binary(),
            dir: tmp.path().join("machine"),
            run_dir: tmp.path().join("run"),
            tmp,
        }
    }

    /// Run mvctl with this machine's dirs and no explicit daemon, under a
    /// hard time limit.
    fn mvctl(&self, args: &[&str]) -> Output {
        let t0 = Instant::now();
        let out = Command::new("timeout")
            .args(["--kill-after=10", "900"])
            .arg(&self.mvctl)
            .args(args)
            .env("MVM_MACHINE_DIR", &self.dir)
            .env("MVM_RUN_DIR", &self.run_dir)
            .env_remove("MVM_HOST")
            .env_remove("MVM_TOKEN")
            .output()
            .expect("run mvctl");
        eprintln!(
            "timing: mvctl {} took {:.1} s (exit {:?})\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            t0.elapsed().as_secs_f64(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.mvctl(args);
        assert!(
            out.status.success(),
            "mvctl {args:?} failed; {}",
            self.logs()
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state(&self) -> Option<serde_json::Value> {
        let text = fs::read_to_string(self.run_dir.join("machine.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// The ends of the machine's logs, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for f in [
            "machine-error",
            "machine.log",
            "mvmd.log",
            "console.log",
            "qemu.log",
        ] {
            let p = self.dir.join("boot").join(f);
            let text = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!(
                "\n--- {}\n{}",
                p.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            ));
        }
        s
    }

    /// The disk passes a forced, read-only e2fsck: nothing to replay, no
    /// errors.
    fn assert_disk_clean(&self) {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(self.disk())
            .output()
            .expect("run e2fsck");
        assert!(
            out.status.success(),
            "e2fsck -fn {} exit {:?}:\n{}{}",
            self.disk().display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let pid = self
            .state()
            .and_then(|s| s["pid"].as_u64())
            .expect("machine.json with a pid while running");
        let (out, err) = self.ok(&["machine", "stop"]);
        assert!(out.contains("Machine stopped"), "{out}");
        assert!(
            !err.contains("warning"),
            "the stop was not clean: {err}{}",
            self.logs()
        );
        // A zombie does not count: QEMU was mvctl's child, and whoever
        // inherited it reaps it in its own time.
        let alive = || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
                .unwrap_or(false)
        };
        let t = Instant::now();
        while alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!alive(), "QEMU (pid {pid}) still runs after stop");
        assert!(self.state().is_none(), "machine.json left after stop");
        assert_eq!(
            fs::read_to_string(self.dir.join("boot/stopped"))
                .unwrap()
                .trim(),
            "clean"
        );
        self.assert_disk_clean();
    }
}

impl Drop for Machine {
    /// A failed test must not leave an L1 running.
    fn drop(&mut self) {
        if let Some(pid) = self.state().and_then(|s| s["pid"].as_u64()) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "mvm-machine" {
                eprintln!("killing the test's machine (QEMU pid {pid})");
                // SAFETY: kill(2) on the pid of the QEMU this test started
                // (checked by its process name); no memory is involved.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// A GET without credentials; the whole answer.
fn raw_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn busybox_tarball(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    rootfs::busybox_tree(&tree).expect("busybox tree");
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success());
    tar
}

#[test]
fn machine_life_cycle() {
    let m = Machine::new();
    let tar = busybox_tarball(m.tmp.path());

    let (out, _) = m.ok(&["machine", "status"]);
    assert!(
        out.starts_with("Machine:") && out.lines().next().unwrap().contains("stopped"),
        "{out}"
    );

    // First start: makes the disk, boots L1, starts mvmd.
    let t0 = Instant::now();
    let (out, err) = m.ok(&["machine", "start"]);
    let start_secs = t0.elapsed().as_secs_f64();
    assert!(
        out.contains("Machine running: mvmd at tcp://127.0.0.1:"),
        "{out}"
    );
    assert!(
        err.contains("starting the emulated KVM host") && err.contains("ready in"),
        "{err}"
    );
    assert!(err.contains("created the machine's disk"), "{err}");
    let state = m.state().expect("machine.json");
    let port = state["port"].as_u64().unwrap();
    let mode = fs::metadata(m.run_dir.join("machine.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let token = PathBuf::from(state["token_file"].as_str().unwrap());
    let tmode = fs::metadata(&token).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&tmode.permissions()) & 0o777,
        0o600
    );
    // The disk is sparse: a 32 GiB file that uses little of the host's disk.
    let dm = fs::metadata(m.disk()).unwrap();
    assert_eq!(dm.len(), 32 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&dm) * 512 < 2 << 30);

    let (out, _) = m.ok(&["machine", "status"]);
    assert!(out.lines().next().unwrap().contains("running"), "{out}");
    assert!(out.contains(&format!("tcp://127.0.0.1:{port}")), "{out}");
    assert!(
        out.contains("answering") && !out.contains("not answering"),
        "{out}"
    );

    // A second start is a no-op.
    let (out, _) = m.ok(&["machine", "start"]);
    assert!(out.contains("already running"), "{out}");

    // The API without the token is refused: the forward is not open to all.
    let answer = raw_get(port as u16, "/v1/info");
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "a request without the token must be refused: {answer}"
    );

    let (out, _) = m.ok(&["system", "info"]);
    let mode_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("Mode:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(mode_line.contains("machine"), "{out}");
    let kvm_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("KVM:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        kvm_line.contains("machine"),
        "mvmd in L1 must report machine mode: {out}"
    );

    m.ok(&["import", tar.to_str().unwrap(), "busybox"]);
    let t0 = Instant::now();
    let (out, _) = m.ok(&["run", "--rm", "busybox", "echo", "hello"]);
    let run_secs = t0.elapsed().as_secs_f64();
    assert_eq!(out, "hello\n");
    let out = m.mvctl(&["run", "--rm", "busybox", "sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the workload's status comes back through the forward"
    );

    m.stop();
    let (out, _) = m.ok(&["machine", "status"]);
    assert!(out.lines().next().unwrap().contains("stopped"), "{out}");
    // Stopping a stopped machine is fine.
    let (out, _) = m.ok(&["machine", "stop"]);
    assert!(out.contains("not running"), "{out}");

    // Second boot: the image is still there. Without hardware KVM the
    // first command starts the machine by itself.
    let t0 = Instant::now();
    if hardware_kvm() {
        m.ok(&["machine", "start"]);
    }
    let (out, err) = m.ok(&["images"]);
    let restart_secs = t0.elapsed().as_secs_f64();
    if !hardware_kvm() {
        assert!(err.contains("starting the emulated KVM host"), "{err}");
    }
    assert!(
        out.lines().any(|l| l.starts_with("busybox ")),
        "the image did not survive the restart:\n{out}"
    );
    let (out, _) = m.ok(&["run", "--rm", "busybox", "cat", "/etc/image-marker"]);
    assert_eq!(out, "from the image\n");
    m.stop();

    eprintln!(
        "timings: first machine start (disk made) to ready {start_secs:.1} s; `run --rm busybox echo hello` \
         through the forward {run_secs:.1} s; second start + `images` {restart_secs:.1} s"
    );
}
