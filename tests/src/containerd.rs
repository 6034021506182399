//! A containerd of a test's own (Debian's 1.6: its own root, state,
//! socket and config, never the system one) that finds
//! `containerd-shim-mvm-v1` on its PATH in an installed prefix
//! ([`installed_bin`]: `make install`, which tests/run-e2e.sh runs), with
//! none of the `MVM_*` artifact variables, so the shim finds its kernel,
//! init, VMM, jailer and virtiofsd as an installed one does,
//! with a busybox image imported (a docker-archive, `ctr images import`)
//! into the `native` snapshotter. Used by `tests/shim.rs` and the
//! `containerd` benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::{rootfs, wait_until, Artifacts};

/// The mvm runtime's name.
pub const RUNTIME: &str = "io.containerd.mvm.v1";
/// The imported image.
pub const IMAGE: &str = "docker.io/mvm-e2e/busybox:latest";
/// The pod sandbox image of [`Containerd::start_cri`]: busybox whose
/// command sleeps, in the role of Kubernetes' `pause`.
pub const PAUSE_IMAGE: &str = "docker.io/mvm-e2e/pause:latest";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A containerd of the test's own, with the image imported.
/// The longest a single `ctr` call may take (a `ctr run` boots a microVM
/// in the emulated host).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Containerd {
    /// Its directory (config, sockets, roots, log).
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`Self::start`] with containerd's CRI plugin on (what the kubelet
    /// talks to; [`Self::cri`]): a runtime handler `mvm` for the mvm
    /// runtime, as a RuntimeClass names it, the `native` snapshotter, and
    /// [`PAUSE_IMAGE`] as the pod sandbox image, both images imported
    /// into the CRI plugin's namespace `k8s.io` too.
    pub fn start_cri() -> Self {
        Self::start_with(true)
    }

    fn start_with(cri: bool) -> Self {
        let _ = Artifacts::get();
        let shim = installed_bin("containerd-shim-mvm-v1");
        let dir = tempfile::Builder::new()
            .prefix("ctd-e2e-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let (disabled_cri, cri_config) = if cri {
            (
                "",
                format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "mvm"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mvm]
      runtime_type = "{RUNTIME}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#,
                    d = d.display()
                ),
            )
        } else {
            (r#""io.containerd.grpc.v1.cri", "#, String::new())
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled_cri}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[debug]
  level = "debug"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{cri_config}"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = spawn_daemon(d, &shim);
        let c = Containerd { dir, child };
        c.wait_ready();
        c.import_image("default", "busybox", &["sh"]);
        if cri {
            c.import_image(CRI_NAMESPACE, "busybox", &["sh"]);
            c.import_image(CRI_NAMESPACE, "pause", &["sleep", "1000000000"]);
        }
        c
    }

    /// A CRI client on this containerd ([`Self::start_cri`]), once the
    /// CRI plugin knows both images (it learns of imports from events).
    pub fn cri(&self) -> crate::cri::Cri {
        let mut cri = crate::cri::Cri::connect(&self.dir.path().join("c.sock"))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
        for image in [IMAGE, PAUSE_IMAGE] {
            let t0 = std::time::Instant::now();
            loop {
                let answer = cri.has_image(image);
                if matches!(answer, Ok(true)) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    panic!(
                        "the CRI plugin does not know {image} after 60 s (last answer: {answer:?})\n{}",
                        self.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cri
    }

    /// Wait until containerd answers on its socket.
    fn wait_ready(&self) {
        wait_until(
            "containerd's socket",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || self.ctr(&["version"]).status.success(),
        );
    }

    /// Stop containerd with `signal` (SIGTERM: its own shutdown; SIGKILL:
    /// a crash), wait for it to end, and start it again with the same
    /// config, root, state and socket, as a restarted service is. The
    /// shims are not touched: containerd must find them again.
    pub fn restart(&mut self, signal: i32) {
        // SAFETY: kill on the pid of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
        let status = self.child.wait().unwrap();
        eprintln!("containerd ended ({status}) after signal {signal}; starting it again");
        let shim = installed_bin("containerd-shim-mvm-v1");
        self.child = spawn_daemon(self.dir.path(), &shim);
        self.wait_ready();
    }

    /// `ctr ARGS` with a terminal (a pty of the test's own, of `rows` x
    /// `cols`) as its stdin, stdout, stderr and controlling terminal, as
    /// `ctr run -t` and `ctr task exec -t` need; its exit status and what
    /// it wrote to the terminal (carriage returns removed). Bounded by
    /// [`CTR_TIMEOUT`] like [`Self::ctr`].
    pub fn ctr_tty(&self, args: &[&str], rows: u16, cols: u16) -> (ExitStatus, String) {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args);
        match crate::pty::run(cmd, rows, cols, b"", CTR_TIMEOUT) {
            Ok((status, out)) => (status, out.replace('\r', "")),
            Err(e) => panic!("ctr {args:?} with a terminal: {e}\n{}", self.log_tail()),
        }
    }

    /// `ctr events` of this containerd, running until dropped.
    pub fn events(&self) -> Events {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.dir.path().join("ctr-events.err"))
                    .expect("ctr events' stderr file"),
            )
            .spawn()
            .expect("run ctr events");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let events = Events {
            child,
            lines,
            stderr: self.dir.path().join("ctr-events.err"),
        };
        // Subscribed once an event made after the start arrives: a label
        // on the namespace (`/namespaces/update`). `ctr events` subscribes
        // some time after it starts (seconds in the emulated host) and an
        // event published before that is never shown, so a probe that got
        // no answer is sent again, with a new value, until one arrives:
        // the subscription itself is the event waited on.
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let t0 = std::time::Instant::now();
        loop {
            let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let label = format!("mvm-e2e-probe={}-{n}", std::process::id());
            self.ok(&["namespaces", "label", "default", &label]);
            let seen = label.replace('=', "\":\"");
            if events
                .wait_until(Duration::from_secs(1), |l| {
                    l.contains("/namespaces/update") && l.contains(&seen)
                })
                .is_some()
            {
                break;
            }
            if t0.elapsed() >= CTR_TIMEOUT {
                events.timed_out("the subscription's probe event");
            }
        }
        events
    }
    /// `ctr ARGS` against this containerd; a call that has not ended
    /// after [`CTR_TIMEOUT`] is killed and the test fails with what
    /// containerd and the shims logged, instead of hanging the suite.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.try_ctr(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::ctr`], with a timeout as an error (for cleanup, which must
    /// not panic while a failed test unwinds).
    pub fn try_ctr(&self, args: &[&str]) -> Result<Output, String> {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = std::io::Read::read_to_end(&mut so, &mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = std::io::Read::read_to_end(&mut se, &mut b);
            b
        });
        let deadline = std::time::Instant::now() + CTR_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let out = t_out.join().unwrap_or_default();
                let out = String::from_utf8_lossy(&out);
                return Err(format!(
                    "ctr {args:?} did not end within {CTR_TIMEOUT:?}; stdout so far (its end): {}\nstderr so far: {}\n{}\n{}",
                    tail_str(&out, 2000),
                    String::from_utf8_lossy(&t_err.join().unwrap_or_default()),
                    self.log_tail(),
                    process_states()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        })
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let mut out = format!("--- containerd.log tail:\n{}", tail_str(&log, 4000));
        // Each microVM's guest console and VMM log: what the guest did
        // is often the answer when a task hangs or ends oddly.
        let mut logs = Vec::new();
        find_files(&self.mvm_root(), &["console.log", "vmm.log"], 6, &mut logs);
        logs.sort();
        for f in logs {
            let text = std::fs::read(&f).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            out.push_str(&format!(
                "\n--- {} tail:\n{}",
                f.display(),
                tail_str(&text, 2000)
            ));
        }
        out
    }

    /// A docker-archive (`docker save` format) of a busybox tree whose
    /// command is `cmd`, imported as `mvm-e2e/NAME:latest` into `namespace`.
    fn import_image(&self, namespace: &str, name: &str, cmd: &[&str]) {
        let d = self.dir.path().join(format!("image-{namespace}-{name}"));
        let tree = d.join("tree");
        rootfs::busybox_tree(&tree).unwrap();
        let layer = d.join("layer.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        let digest = sha256(&layer);
        let archive = d.join("archive");
        std::fs::create_dir_all(archive.join(&digest)).unwrap();
        std::fs::rename(&layer, archive.join(&digest).join("layer.tar")).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd,
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        std::fs::write(archive.join("config.json"), &config).unwrap();
        let cfg_digest = sha256(&archive.join("config.json"));
        std::fs::rename(
            archive.join("config.json"),
            archive.join(format!("{cfg_digest}.json")),
        )
        .unwrap();
        let manifest = serde_json::json!([{
            "Config": format!("{cfg_digest}.json"),
            "RepoTags": [format!("mvm-e2e/{name}:latest")],
            "Layers": [format!("{digest}/layer.tar")],
        }]);
        std::fs::write(
            archive.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let tar = d.join("busybox.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&archive)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        self.ok(&[
            "--namespace",
            namespace,
            "images",
            "import",
            "--snapshotter",
            "native",
            tar.to_str().unwrap(),
        ]);
        let listed = self.ok(&["--namespace", namespace, "images", "ls", "-q"]);
        assert!(
            listed.contains(&format!("docker.io/mvm-e2e/{name}:latest")),
            "{listed}"
        );
    }

    /// `ctr run` with the mvm runtime and the native snapshotter.
    pub fn run(&self, extra: &[&str], id: &str, cmd: &[&str]) -> Output {
        self.run_image(extra, IMAGE, id, cmd)
    }

    /// [`Self::run`] of another imported image.
    pub fn run_image(&self, extra: &[&str], image: &str, id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--runtime", RUNTIME, "--snapshotter", "native"];
        args.extend_from_slice(extra);
        args.push(image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// The mvm root the shims use (`MVM_ROOT`).
    pub fn mvm_root(&self) -> PathBuf {
        self.dir.path().join("mvm")
    }

    /// Pids of the VMMs and virtiofsd backends of this containerd's shims.
    pub fn vm_processes(&self) -> Vec<i32> {
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let is_vm = cmd.contains("mvm-vmm") || cmd.contains("virtiofsd");
            if is_vm && cmd.contains(&root) && !is_zombie(pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Sandbox directories left under the mvm root.
    pub fn leftover_sandboxes(&self) -> Vec<String> {
        std::fs::read_dir(self.mvm_root().join("transients"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pid of this containerd's mvm shim for task `id`.
    pub fn shim_pid(&self, id: &str) -> Option<i32> {
        shim_pid_of("containerd-shim-mvm-v1", id)
    }

    /// Wait until task `id` is STOPPED in `ctr task ls`.
    pub fn wait_stopped(&self, id: &str) {
        wait_until(
            &format!("task {id} to stop"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                self.ok(&["task", "ls"])
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            },
        );
    }
}

impl Containerd {
    /// What a failed test needs to be read: the tail of containerd's log
    /// (the shims' logs are in it), the console and VMM log of every
    /// microVM still on disk, and the state of every shim, jailer, VMM and
    /// virtiofsd.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        out.push_str(&format!(
            "--- containerd.log (with the shims' logs), last 24000 bytes:\n{}\n",
            tail_str(&log, 24_000)
        ));
        if let Ok(rd) = std::fs::read_dir(self.mvm_root().join("transients")) {
            for e in rd.flatten() {
                for f in ["console.log", "vmm.log"] {
                    let path = e.path().join("vm").join(f);
                    if let Ok(text) = std::fs::read(&path) {
                        out.push_str(&format!(
                            "--- {}, last 6000 bytes:\n{}\n",
                            path.display(),
                            tail_str(&String::from_utf8_lossy(&text), 6_000)
                        ));
                    }
                }
            }
        }
        out.push_str(&process_states());
        out
    }
}

/// The last `max` bytes of `s` (from a character boundary).
/// Files named one of `names` under `dir`, `depth` levels down at most
/// (symlinks not followed).
fn find_files(dir: &Path, names: &[&str], depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() && depth > 0 {
            find_files(&e.path(), names, depth - 1, out);
        } else if t.is_file() && names.iter().any(|n| e.file_name() == *n) {
            out.push(e.path());
        }
    }
}

fn tail_str(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test (an assertion, a timeout) is read from this.
        if std::thread::panicking() {
            eprintln!("=== the test failed: diagnostics\n{}", self.diagnostics());
        }
        // Tasks first (their shims end their microVMs), then containerd.
        let quiet = |args: &[&str]| match self.try_ctr(args) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => {
                eprintln!("cleanup: {e}");
                String::new()
            }
        };
        for line in quiet(&["task", "ls", "-q"]).lines() {
            quiet(&["task", "kill", "-s", "SIGKILL", line]);
            quiet(&["task", "delete", "-f", line]);
        }
        for line in quiet(&["containers", "ls", "-q"]).lines() {
            quiet(&["containers", "rm", line]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount whatever a shim left mounted under the test's dir.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
    }
}

impl Containerd {
    pub fn ok_quiet(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ctr(args).stdout).into_owned()
    }
}

/// `bin/NAME` of the installation tests/run-e2e.sh makes for the shim
/// suite (`make install PREFIX=target/e2e-install`).
pub fn installed_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the target directory above the test binary");
    let p = target.join("e2e-install/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: tests/run-e2e.sh installs the product there (make install PREFIX=target/e2e-install)",
        p.display()
    );
    p
}

/// The variables that name mvm's artifacts: containerd (and so the shim)
/// runs without them, as an installed one does.
const ARTIFACT_VARS: &[&str] = &[
    "MVM_KERNEL",
    "MVM_INIT",
    "MVM_VMM",
    "MVM_JAILER",
    "MVM_VIRTIOFSD",
    "MVM_CACHE",
];

/// Start containerd with the config in `dir`, logging (appended) to
/// `dir/containerd.log`, with `shim`'s directory first on its PATH and
/// none of [`ARTIFACT_VARS`].
fn spawn_daemon(dir: &Path, shim: &Path) -> Child {
    let path = format!(
        "{}:{}",
        shim.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    let mut cmd = Command::new("containerd");
    for var in ARTIFACT_VARS {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("MVM_ROOT", dir.join("mvm"))
        .env("MVM_RUN_DIR", dir.join("mvmrun"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd (apt-get install containerd; resources/deps.sh)")
}

/// A `ctr events` stream ([`Containerd::events`]): its lines
/// (`TIMESTAMP NAMESPACE TOPIC EVENT-JSON`) as they arrive.
pub struct Events {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Where `ctr events` writes its errors (shown when a wait times out).
    stderr: PathBuf,
}

impl Events {
    /// The first line matching `pred` within `limit`, if one came.
    pub fn wait_until(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            if t0.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (at most [`CTR_TIMEOUT`]) for a line matching `pred`; it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(CTR_TIMEOUT, pred)
            .unwrap_or_else(|| self.timed_out(what))
    }

    /// Fail the test: `what` never came; with what `ctr events` printed.
    fn timed_out(&self, what: &str) -> ! {
        let mut child = String::from("running");
        // SAFETY: waitpid-free probe of our own child's liveness.
        if unsafe { libc::kill(self.child.id() as i32, 0) } != 0 {
            child = "gone".into();
        }
        panic!(
            "timed out waiting for {what}; `ctr events` ({child}) printed:\n{}\nand on stderr:\n{}",
            self.lines().join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of a live containerd shim process (binary name ending in
/// `binary`) serving task `id` (`-id ID` on its command line).
pub fn shim_pid_of(binary: &str, id: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with(binary))
            && args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && !is_zombie(pid)
        {
            return Some(pid);
        }
    }
    None
}

/// What every shim, jailer, VMM and virtiofsd on the host is doing: state,
/// parent and, per thread, the kernel function it waits in (`wchan`) and
/// its kernel stack: what a hung `ctr` call was waiting for.
pub fn process_states() -> String {
    let mut out = String::from("--- processes (pid ppid state comm: per thread wchan):\n");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let interesting = [
            "containerd-shim",
            "mvm-jailer",
            "mvm-vmm",
            "virtiofsd",
            "containerd",
        ]
        .iter()
        .any(|n| comm.starts_with(&n[..n.len().min(15)]));
        if !interesting {
            continue;
        }
        let mut f = stat[close + 2..].split_whitespace();
        let (state, ppid) = (f.next().unwrap_or("?"), f.next().unwrap_or("?"));
        out.push_str(&format!("{pid} {ppid} {state} {comm}:"));
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let tid = t.file_name().to_string_lossy().into_owned();
                let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
                    .unwrap_or_default();
                out.push_str(&format!(" {tid}={wchan}"));
            }
        }
        out.push('\n');
        if comm.starts_with("containerd-shim") {
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            for l in stack.lines().take(12) {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    out
}

/// Whether `pid` is gone or a zombie.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
