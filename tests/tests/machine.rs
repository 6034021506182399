//! The mvm machine (`mvctl machine ...`): mvmd inside the emulated KVM host,
//! driven through the real mvctl binary.
//!
//! These tests boot L1 themselves (QEMU TCG works on every x86_64 host),
//! so they run on the HOST, never inside the emulated host:
//! `tests/run-e2e.sh` runs them natively after the in-L1 suite, one at a
//! time. Each L1 boot costs 15-40 s here, so each test covers a lot:
//! - `machine_life_cycle`: mvm installed under /tmp (which L1 does not
//!   share) and run from there with no `MVM_*` variables, as a user would:
//!   start (the machine copies its programs to its disk), status, system
//!   info, import, run, a file fetched by mvmd from a server on the host's
//!   127.0.0.1, a published port answering on the host's 127.0.0.1, stop
//!   (disk clean), a changed program refreshed (and only
//!   that one) at the second start (automatic where there is no hardware
//!   KVM), the image still there, the published port answering again (its
//!   sandbox restarted by its policy) and released by `rm -f`, a change
//!   while running reported, a final
//!   stop (disk clean again).
//! - `a_stalled_machine_is_restarted`: L1 frozen for real (QEMU stopped
//!   with SIGSTOP: no heartbeat, nothing moves); the watcher restarts it,
//!   and the next command names the sandbox that was lost, and only it.
//!
//! Each uses its own machine dir and run dir (`MVM_MACHINE_DIR`,
//! `MVM_RUN_DIR`), so they neither see nor touch a machine of the user.

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

/// An install of the built programs under /tmp, laid out as `make
/// install PREFIX=...` lays them out: bin/{mvctl,mvmd,mvm-vmm},
/// lib/mvm/{mvm-init,vmlinux}, lib/mvm/testhost/.
struct TmpInstall {
    prefix: tempfile::TempDir,
}

impl TmpInstall {
    fn new() -> Self {
        let built = mvctl_binary();
        let profile_dir = built.parent().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let init = std::env::var_os("MVM_INIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile_dir.join("../x86_64-unknown-linux-gnu/release/mvm-init"));
        let kernel = match std::env::var_os("MVM_KERNEL") {
            Some(k) => PathBuf::from(k),
            None => {
                let out = Command::new(repo.join("resources/kernel/build.sh"))
                    .arg("--print-path")
                    .output()
                    .expect("run resources/kernel/build.sh --print-path");
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let virtiofsd = match std::env::var_os("MVM_VIRTIOFSD") {
            Some(v) => PathBuf::from(v),
            None => {
                let out = Command::new(repo.join("resources/virtiofsd/build.sh"))
                    .arg("--print-path")
                    .output()
                    .expect("run resources/virtiofsd/build.sh --print-path");
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let prefix = tempfile::Builder::new()
            .prefix("mvm-install-")
            .tempdir_in("/tmp")
            .unwrap();
        let p = prefix.path();
        for d in ["bin", "lib/mvm/testhost"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        let copy = |from: &Path, to: &str| {
            fs::copy(from, p.join(to)).unwrap_or_else(|e| {
                panic!("copy {} to {to}: {e} (make build kernel?)", from.display())
            });
        };
        for b in ["mvctl", "mvmd", "mvm-vmm", "mvm-jailer"] {
            copy(&profile_dir.join(b), &format!("bin/{b}"));
        }
        copy(&init, "lib/mvm/mvm-init");
        copy(&kernel, "lib/mvm/vmlinux");
        copy(&virtiofsd, "lib/mvm/virtiofsd");
        for f in [
            "run",
            "init",
            "build-initramfs.sh",
            "kvm-mode",
            "machine-l1",
        ] {
            copy(
                &repo.join("resources/testhost").join(f),
                &format!("lib/mvm/testhost/{f}"),
            );
        }
        TmpInstall { prefix }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.prefix.path().join(rel)
    }

    /// Change a program's content (bytes after the end of an ELF file
    /// change nothing when it runs).
    fn change(&self, rel: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.path(rel))
            .unwrap();
        f.write_all(b"changed").unwrap();
    }
}

struct Machine {
    mvctl: PathBuf,
    dir: PathBuf,
    run_dir: PathBuf,
    env: Vec<(String, String)>,
    /// mvctl's working directory (the machine shares the one it starts
    /// from); the test's own when `None`.
    cwd: Option<PathBuf>,
    tmp: tempfile::TempDir,
}

/// One machine test at a time: each boots an L1 that takes both cores of
/// a small host, and a second one beside it would only slow both down.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Machine {
    fn new() -> Self {
        Self::with_mvctl(mvctl_binary())
    }

    fn with_mvctl(mvctl: PathBuf) -> Self {
        // Not under /tmp: the boot dir would work there (L1 mounts it
        // explicitly), but keep the big sparse disk off a possible tmpfs.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&base).unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("mvm-machine-test-")
            .tempdir_in(&base)
            .unwrap();
        Machine {
            mvctl,
            dir: tmp.path().join("machine"),
            run_dir: tmp.path().join("run"),
            env: Vec::new(),
            cwd: None,
            tmp,
        }
    }

    /// Run mvctl with this machine's dirs and no explicit daemon, under a
    /// hard time limit.
    fn mvctl(&self, args: &[&str]) -> Output {
        let t0 = Instant::now();
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", "900"])
            .arg(&self.mvctl)
            .args(args)
            .env("MVM_MACHINE_DIR", &self.dir)
            .env("MVM_RUN_DIR", &self.run_dir);
        // As a user: no daemon address, no programs named by variables
        // (the machine must find them where mvctl is installed).
        for (k, _) in std::env::vars() {
            if k.starts_with("MVM_")
                && k != "MVM_MACHINE_DIR"
                && k != "MVM_RUN_DIR"
                && k != "MVM_CACHE"
            {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let out = cmd.output().expect("run mvctl");
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
            "watch.log",
            "boot/machine-error",
            "boot/machine.log",
            "boot/mvmd.log",
            "boot/console.log",
            "boot/qemu.log",
        ] {
            let p = self.dir.join(f);
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

impl Machine {
    /// On a failure: the tails of the machine's logs (every boot dir's and
    /// the watcher's) on stderr, and the test's directory kept for a look.
    fn dump_logs(&mut self) {
        let mut logs = vec![self.dir.join("watch.log")];
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    for name in ["machine.log", "mvmd.log", "qemu.log", "console.log"] {
                        logs.push(e.path().join(name));
                    }
                }
            }
        }
        for log in logs {
            let Ok(text) = fs::read_to_string(&log) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- {} (last {} lines)\n{}",
                log.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        self.tmp.disable_cleanup(true);
        eprintln!("kept {}", self.tmp.path().display());
    }
}

impl Drop for Machine {
    /// A failed test must not leave an L1 (or its watcher, which would
    /// start another) running.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let Some(state) = self.state() else { return };
        let kill = |pid: Option<u64>, comm: &str| {
            let Some(pid) = pid else { return };
            let c = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if c.trim() == comm {
                eprintln!("killing the test's {comm} (pid {pid})");
                // SAFETY: kill(2) on the pid of a process this test started
                // (checked by its process name); no memory is involved.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        };
        kill(state["watcher"]["pid"].as_u64(), "mvctl");
        kill(state["pid"].as_u64(), "mvm-machine");
    }
}

/// A one-file HTTP server on the host's 127.0.0.1: counts the requests
/// it answered.
struct LoopbackServer {
    port: u16,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LoopbackServer {
    fn start(body: &'static str) -> Self {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        LoopbackServer { port, served }
    }
}

/// A port on the host's 127.0.0.1 that is free now.
fn free_host_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A GET of `path` on the host's 127.0.0.1:`port`: the whole answer, or
/// "" when nothing answers (yet).
fn try_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
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

/// The lines of the current boot's machine.log that say what happened to
/// each program: `name: installed from PATH ...` or `name: up to date ...`.
fn program_lines(m: &Machine) -> Vec<String> {
    let log = fs::read_to_string(m.dir.join("boot/machine.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(": installed from ") || l.contains(": up to date"))
        .map(String::from)
        .collect()
}

fn program_line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(&format!("machine: {name}: ")))
        .unwrap_or_else(|| panic!("no line about {name} in machine.log: {lines:?}"))
}

#[test]
fn machine_life_cycle() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // mvm installed under /tmp, which L1 covers with a tmpfs of its own.
    let install = TmpInstall::new();
    let mut m = Machine::with_mvctl(install.path("bin/mvctl"));
    let tar = busybox_tarball(m.tmp.path());
    // The machine shares the home and the directory it starts from; a
    // directory elsewhere (made before the start, so L1's read-only view
    // of the host root has it) is not shared.
    let cwd = m.tmp.path().join("cwd");
    fs::create_dir_all(cwd.join("sub")).unwrap();
    m.cwd = Some(cwd.clone());
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let in_home = tempfile::Builder::new()
        .prefix(".mvm-machine-bind-")
        .tempdir_in(&home)
        .unwrap();
    fs::write(in_home.path().join("from-host"), "host\n").unwrap();
    let outside = tempfile::Builder::new()
        .prefix("mvm-machine-unshared-")
        .tempdir_in("/var/tmp")
        .unwrap();

    let (out, _) = m.ok(&["machine", "status"]);
    assert!(
        out.starts_with("Machine:") && out.lines().next().unwrap().contains("stopped"),
        "{out}"
    );

    // First start: makes the disk, boots L1, copies the programs onto the
    // machine's disk, starts mvmd from there.
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
    let lines = program_lines(&m);
    for (name, rel) in [
        ("mvmd", "bin/mvmd"),
        ("mvm-vmm", "bin/mvm-vmm"),
        ("mvm-init", "lib/mvm/mvm-init"),
        ("vmlinux", "lib/mvm/vmlinux"),
    ] {
        let l = program_line(&lines, name);
        let from = format!(": installed from {} ", install.path(rel).display());
        assert!(
            l.contains(&from),
            "{name} not copied from the /tmp install: {l}"
        );
    }
    let log = fs::read_to_string(m.dir.join("boot/machine.log")).unwrap();
    assert!(
        log.contains("starting /var/lib/mvm/machine/mvmd ")
            && log.contains(
                "--kernel /var/lib/mvm/machine/vmlinux --init /var/lib/mvm/machine/mvm-init"
            )
            && log.contains("--vmm /var/lib/mvm/machine/mvm-vmm"),
        "mvmd must run from the machine's disk with its programs named: {log}"
    );
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
    assert!(out.contains("(current;"), "{out}");

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

    // Bind mounts of host paths round-trip as natively: under the home,
    // and under the directory the machine was started from.
    let spec = format!("{}:/src", in_home.path().display());
    let (out, _) = m.ok(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "cat /src/from-host && echo guest > /src/from-guest",
    ]);
    assert_eq!(out, "host\n");
    assert_eq!(
        fs::read_to_string(in_home.path().join("from-guest")).unwrap(),
        "guest\n",
        "the guest's write must reach the host"
    );
    let spec = format!("{}:/w", cwd.join("sub").display());
    m.ok(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "echo cwd > /w/f",
    ]);
    assert_eq!(fs::read_to_string(cwd.join("sub/f")).unwrap(), "cwd\n");
    let spec = format!("{}:/x", outside.path().display());
    let out = m.mvctl(&["run", "--rm", "-v", &spec, "busybox", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    let canon = |p: &Path| fs::canonicalize(p).unwrap().display().to_string();
    assert!(
        err.contains("is not shared with the mvm machine")
            && err.contains(&canon(&home))
            && err.contains(&canon(&cwd)),
        "the error must name the shared paths: {err}"
    );
    let (out, _) = m.ok(&["machine", "status"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("Shares:") && l.contains(&canon(&home))),
        "{out}"
    );

    // A server on the host's 127.0.0.1 is reachable from mvmd in the
    // machine at the same address (as a registry at 127.0.0.1:5000 would
    // be): mvmd itself fetches an ADD <url> of a build.
    let server = LoopbackServer::start("from the host's loopback\n");
    let ctx = m.tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox\nADD http://127.0.0.1:{}/greeting /greeting\n",
            server.port
        ),
    )
    .unwrap();
    m.ok(&["build", "-t", "fetched", ctx.to_str().unwrap()]);
    assert!(
        server.served.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the host's server saw no request"
    );
    let (out, _) = m.ok(&["run", "--rm", "fetched", "cat", "/greeting"]);
    assert_eq!(out, "from the host's loopback\n");

    // -p in the machine answers on the host's 127.0.0.1: mvctl added the
    // forward when the sandbox started. `--restart always`: it comes back
    // after the machine's restart below, and so must its forward.
    let web_port = free_host_port();
    let publish = format!("{web_port}:80");
    m.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--restart",
        "always",
        "-p",
        &publish,
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    wait_until(
        Duration::from_secs(300),
        "the published port to answer on the host's 127.0.0.1",
        || try_get(web_port, "/image-marker").contains("from the image"),
    );
    let (out, _) = m.ok(&["port", "web"]);
    assert_eq!(out.trim(), format!("80/tcp -> 0.0.0.0:{web_port}"));

    m.stop();
    let (out, _) = m.ok(&["machine", "status"]);
    assert!(out.lines().next().unwrap().contains("stopped"), "{out}");
    // Stopping a stopped machine is fine.
    let (out, _) = m.ok(&["machine", "stop"]);
    assert!(out.contains("not running"), "{out}");

    // A new build of one program: the next start copies that one only.
    install.change("lib/mvm/mvm-init");
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
    let lines = program_lines(&m);
    assert!(
        program_line(&lines, "mvm-init").contains("installed from"),
        "{lines:?}"
    );
    for name in ["mvmd", "mvm-vmm", "vmlinux"] {
        assert!(
            program_line(&lines, name).contains("up to date"),
            "{name} was copied again though unchanged: {lines:?}"
        );
    }
    let (out, _) = m.ok(&["run", "--rm", "busybox", "cat", "/etc/image-marker"]);
    assert_eq!(out, "from the image\n");
    // The new machine's mvmd restarted `web` (its policy) and the watcher
    // forwarded its port again: nothing was run by hand for it.
    wait_until(
        Duration::from_secs(300),
        "the published port to answer again after the machine's restart",
        || try_get(web_port, "/image-marker").contains("from the image"),
    );
    // Removed: the host port is released (nothing listens there).
    m.ok(&["rm", "-f", "web"]);
    std::net::TcpListener::bind(("127.0.0.1", web_port))
        .unwrap_or_else(|e| panic!("127.0.0.1:{web_port} still taken after rm -f: {e}"));
    // A change while the machine runs is reported, not silently ignored.
    install.change("bin/mvm-vmm");
    let (out, _) = m.ok(&["machine", "status"]);
    assert!(
        out.contains("mvm-vmm changed on this host since the machine started"),
        "{out}"
    );
    m.stop();

    eprintln!(
        "timings: first machine start (disk made, programs copied) to ready {start_secs:.1} s; \
         `run --rm busybox echo hello` through the forward {run_secs:.1} s; second start + `images` \
         {restart_secs:.1} s"
    );
}

/// Seconds since the epoch of a file's mtime (0 if it has none).
fn mtime_secs(p: &Path) -> f64 {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Poll `cond` every 250 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_stalled_machine_is_restarted() {
    if hardware_kvm() {
        eprintln!("hardware KVM here: mvctl uses no machine; nothing to test");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut m = Machine::new();
    // The watcher inherits it: a stall is declared after 30 s without a
    // heartbeat (every 10 s from L1) instead of 120.
    m.env.push(("MVM_MACHINE_STALL_SECS".into(), "30".into()));
    let tar = busybox_tarball(m.tmp.path());
    m.ok(&["machine", "start"]);
    let first = m.state().unwrap();
    assert!(
        first["watcher"]["pid"].as_u64().is_some(),
        "no watcher recorded: {first}"
    );
    m.ok(&["import", tar.to_str().unwrap(), "busybox"]);
    // One sandbox that ended before the stall (not lost), one running.
    m.ok(&["run", "--name", "done-before", "busybox", "true"]);
    m.ok(&[
        "run", "-d", "--name", "victim", "busybox", "sleep", "100000",
    ]);
    // What mvmd wrote must be on the machine's disk before L1 freezes, as
    // it is for a sandbox that has run for a while: wait for machine-l1's
    // next flush of the disk.
    let created = now_secs();
    let synced = m.dir.join("boot/synced");
    wait_until(
        Duration::from_secs(60),
        "a flush of the machine's disk",
        || mtime_secs(&synced) > created + 0.5,
    );

    // Freeze L1 for real: no vCPU, no device, no heartbeat moves.
    let pid = first["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the QEMU this test's mvctl started (its pid from
    // the state file of this test's own machine dir).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
    let t_stop = Instant::now();
    wait_until(
        Duration::from_secs(400),
        "the watcher to restart the machine",
        || {
            m.state().is_some_and(|s| {
                s["pid"].as_u64() != Some(pid) && s["ready_secs"].as_f64().is_some()
            }) && m.dir.join("last-restart.json").exists()
        },
    );
    let restart_secs = t_stop.elapsed().as_secs_f64();
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
        "the frozen QEMU still exists: {state}"
    );

    // The next command tells what was lost, once.
    let (out, err) = m.ok(&["ps", "-a"]);
    assert!(
        err.contains("the machine failed (L1 stalled: no heartbeat from it for")
            && err.contains("victim ("),
        "{err}"
    );
    assert!(!err.contains("done-before"), "{err}");
    let victim = out
        .lines()
        .find(|l| l.ends_with(" victim"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(victim.contains("Exited (255)"), "{out}");
    let (_, err) = m.ok(&["ps", "-a"]);
    assert!(!err.contains("machine failed"), "told twice: {err}");
    let (out, _) = m.ok(&["inspect", "victim"]);
    assert!(out.contains("\"vmm_died\""), "{out}");
    let (out, _) = m.ok(&["machine", "status"]);
    assert!(
        out.contains("Last failure:") && out.contains("victim ("),
        "{out}"
    );
    // What the failed boot left for a diagnosis.
    let old = m.dir.join("boot.1");
    assert!(
        fs::read_to_string(old.join("stalled"))
            .unwrap()
            .contains("no heartbeat"),
        "boot.1/stalled"
    );
    assert!(old.join("l1-state.txt").exists());
    // The new L1 works, and stops cleanly.
    let (out, _) = m.ok(&["run", "--rm", "busybox", "echo", "alive"]);
    assert_eq!(out, "alive\n");
    m.stop();
    eprintln!("timings: stall to a restarted machine {restart_secs:.1} s (stall limit 30 s)");
}
