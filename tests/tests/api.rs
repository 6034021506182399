//! Issue 4, REST level: a real mvmd (started by the test with its own root
//! and run dir) runs busybox sandboxes on real KVM, driven through its API
//! on the Unix socket (and TCP with a token). Run with
//! `tests/run-e2e.sh api`, which uses the emulated KVM host here.
//!
//! The images are made here: a busybox root filesystem imported through
//! `POST /v1/images/import`, and a docker-archive with an image config
//! (ENTRYPOINT, CMD, ENV, WORKDIR, USER) loaded through
//! `POST /v1/images/load`, for the image-default tests.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mvm_e2e::{require_hardware_kvm, rootfs};
use serde_json::{json, Value};

// ---------------------------------------------------------------------
// A minimal HTTP/1.1 client (Unix socket or TCP), enough for the API:
// Content-Length and chunked bodies, one request per connection.
// ---------------------------------------------------------------------

enum Conn {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(b),
            Conn::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(b),
            Conn::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The error code of an error answer.
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
    fn ndjson(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))
            })
            .collect()
    }
}

/// Where the API is.
#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String, Option<String>),
}

fn connect(ep: &Endpoint) -> Conn {
    match ep {
        Endpoint::Unix(p) => Conn::Unix(
            UnixStream::connect(p).unwrap_or_else(|e| panic!("connect {}: {e}", p.display())),
        ),
        Endpoint::Tcp(a, _) => Conn::Tcp(std::net::TcpStream::connect(a).unwrap()),
    }
}

/// Send a request; returns the connection positioned at the body and the
/// status and headers.
fn send(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: &[u8],
    ctype: &str,
) -> (BufReader<Conn>, u16, Vec<(String, String)>) {
    let mut c = connect(ep);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: mvmd\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    if let Endpoint::Tcp(_, Some(tok)) = ep {
        head.push_str(&format!("Authorization: Bearer {tok}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (r, status, headers)
}

/// Reads a (possibly chunked) body incrementally.
struct BodyReader {
    r: BufReader<Conn>,
    chunked: bool,
    left: Option<usize>,
    done: bool,
}

impl BodyReader {
    fn new(r: BufReader<Conn>, headers: &[(String, String)]) -> Self {
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let left = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        Self {
            r,
            chunked,
            left,
            done: false,
        }
    }

    /// The next piece of the body; None at the end.
    fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if self.chunked {
            let mut size = String::new();
            if self.r.read_line(&mut size).unwrap_or(0) == 0 {
                self.done = true;
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                self.done = true;
                return None;
            }
            let mut buf = vec![0; n + 2];
            self.r.read_exact(&mut buf).unwrap();
            buf.truncate(n);
            Some(buf)
        } else {
            let mut buf = Vec::new();
            match self.left {
                Some(n) => {
                    buf.resize(n, 0);
                    self.r.read_exact(&mut buf).unwrap();
                }
                None => {
                    self.r.read_to_end(&mut buf).unwrap();
                }
            }
            self.done = true;
            Some(buf)
        }
    }

    fn rest(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.next() {
            out.extend(b);
        }
        out
    }
}

fn request(ep: &Endpoint, method: &str, path: &str, body: &[u8], ctype: &str) -> Resp {
    let (r, status, headers) = send(ep, method, path, body, ctype);
    Resp {
        status,
        body: BodyReader::new(r, &headers).rest(),
    }
}

// ---------------------------------------------------------------------
// The daemon under test.
// ---------------------------------------------------------------------

struct Mvmd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ep: Endpoint,
    extra: Vec<String>,
}

impl Mvmd {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn socket(&self) -> PathBuf {
        self.run_dir().join("mvmd.sock")
    }

    /// Start a fresh daemon with its own state.
    fn start(extra: &[&str]) -> Mvmd {
        require_hardware_kvm();
        let dir = tempfile::Builder::new()
            .prefix("mvmd-e2e-")
            .tempdir()
            .unwrap();
        let mut d = Mvmd {
            ep: Endpoint::Unix(dir.path().join("run/mvmd.sock")),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mvmd.log"))
            .unwrap();
        let child = Command::new(mvm_e2e::daemon::binary("mvmd"))
            .arg("--root")
            .arg(self.root())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args([
                "--scratch-size",
                "256",
                "--default-memory",
                "128",
                "--log",
                "mvmd=debug,info",
                // Tests run side by side, each with its own daemon, and
                // the host's networking has one owner (tests/netwire.rs
                // covers it).
                "--no-network",
            ])
            .args(&self.extra)
            .env_remove("MVM_ROOT")
            .env_remove("MVM_RUN_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn mvmd");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if UnixStream::connect(self.socket()).is_ok()
                && request(&self.ep, "GET", "/_ping", b"", "").status == 200
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mvmd exited ({st}) during start:\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "mvmd did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mvmd.log")).unwrap_or_default()
    }

    /// SIGKILL the daemon (sandboxes keep running).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn req(&self, method: &str, path: &str) -> Resp {
        request(&self.ep, method, path, b"", "")
    }

    fn post_json(&self, path: &str, body: &Value) -> Resp {
        request(
            &self.ep,
            "POST",
            path,
            body.to_string().as_bytes(),
            "application/json",
        )
    }

    /// Create; panics on failure.
    fn create(&self, body: Value) -> String {
        let r = self.post_json("/v1/sandboxes", &body);
        assert_eq!(r.status, 201, "create {body}: {}\n{}", r.text(), self.log());
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn start_sb(&self, id: &str) {
        let r = self.req("POST", &format!("/v1/sandboxes/{id}/start"));
        assert!(
            r.status == 204 || r.status == 200,
            "start {id}: {} {}\n{}",
            r.status,
            r.text(),
            self.log()
        );
    }

    fn wait(&self, id: &str, cond: &str) -> Value {
        let r = self.req("POST", &format!("/v1/sandboxes/{id}/wait?condition={cond}"));
        assert_eq!(r.status, 200, "wait {id}: {}", r.text());
        r.json()
    }

    fn inspect(&self, id: &str) -> Value {
        let r = self.req("GET", &format!("/v1/sandboxes/{id}"));
        assert_eq!(r.status, 200, "inspect {id}: {}", r.text());
        r.json()
    }

    /// All stdout+stderr log text.
    fn logs(&self, id: &str) -> String {
        let r = self.req("GET", &format!("/v1/sandboxes/{id}/logs"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.ndjson()
            .iter()
            .map(|v| v["log"].as_str().unwrap().to_string())
            .collect()
    }

    /// Create, start, wait; returns (exit code, logs, id).
    fn run(&self, body: Value) -> (i64, String, String) {
        let id = self.create(body);
        self.start_sb(&id);
        let w = self.wait(&id, "not-running");
        let code = w["exit_code"].as_i64().unwrap();
        (code, self.logs(&id), id)
    }

    fn vmm_pids(&self) -> Vec<i32> {
        vmm_processes_under(&self.root())
    }
}

impl Drop for Mvmd {
    fn drop(&mut self) {
        // Kill every VMM of this daemon, then the daemon.
        for pid in self.vmm_pids() {
            // SAFETY: kill(2) on a pid we found running our VMM config.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- mvmd log ({}):\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// Pids of mvm-vmm processes whose config lives under `root`.
fn vmm_processes_under(root: &Path) -> Vec<i32> {
    let needle = root.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if cmd.contains("mvm-vmm") && cmd.contains(&needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------
// Images.
// ---------------------------------------------------------------------

fn tar_of(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// A busybox rootfs tarball, shared by the tests of this process.
fn busybox_tar() -> &'static Path {
    static T: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = T.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        rootfs::busybox_tree(&tree).unwrap();
        fs::write(tree.join("etc/app.conf"), "configured\n").unwrap();
        fs::create_dir_all(tree.join("app")).unwrap();
        let tar = d.path().join("rootfs.tar");
        tar_of(&tree, &tar);
        (d, tar)
    });
    p
}

fn sha256_hex(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A docker-archive of the busybox rootfs with an image config that has
/// defaults for everything the merge rules touch.
fn app_image_archive() -> Vec<u8> {
    let layer = fs::read(busybox_tar()).unwrap();
    let layer_hex = sha256_hex(&layer);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo image-default-cmd; echo cwd=$(pwd) user=$(id -u) greeting=$GREETING path=$PATH"],
            "Env": ["PATH=/usr/bin:/bin", "GREETING=from-image", "KEEP=kept"],
            "WorkingDir": "/app",
            "User": "1000",
            "Labels": {"origin": "image"},
            "StopSignal": "SIGINT"
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]}
    })
    .to_string();
    let cfg_hex = sha256_hex(config.as_bytes());
    let manifest = json!([{
        "Config": format!("{cfg_hex}.json"),
        "RepoTags": ["app:1"],
        "Layers": [format!("{layer_hex}/layer.tar")]
    }])
    .to_string();
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join(&layer_hex)).unwrap();
    fs::write(d.path().join(&layer_hex).join("layer.tar"), &layer).unwrap();
    fs::write(d.path().join(format!("{cfg_hex}.json")), &config).unwrap();
    fs::write(d.path().join("manifest.json"), &manifest).unwrap();
    // The archive goes next to the tree, in a directory of its own: tests
    // run in parallel, and one shared path let them overwrite and remove
    // each other's archive.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("app-archive.tar");
    tar_of(d.path(), &out);
    fs::read(&out).unwrap()
}

/// Import busybox as `busybox:latest` and load `app:1`.
fn with_images(d: &Mvmd) {
    let tar = fs::read(busybox_tar()).unwrap();
    let r = request(
        &d.ep,
        "POST",
        "/v1/images/import?ref=busybox:latest",
        &tar,
        "application/x-tar",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = r.ndjson();
    assert_eq!(lines.last().unwrap()["type"], "result", "{lines:?}");
    let r = request(
        &d.ep,
        "POST",
        "/v1/images/load",
        &app_image_archive(),
        "application/x-tar",
    );
    let lines = r.ndjson();
    assert_eq!(lines.last().unwrap()["type"], "result", "{lines:?}");
}

fn daemon() -> Mvmd {
    let d = Mvmd::start(&[]);
    with_images(&d);
    d
}

fn sh(script: &str) -> Value {
    json!({"image": "busybox", "cmd": ["/bin/sh", "-c", script]})
}

/// What a daemon leaves on disk and in its database per sandbox.
fn footprint(d: &Mvmd) -> (BTreeSet<String>, usize, Vec<i32>, BTreeSet<String>) {
    let dirs: BTreeSet<String> = fs::read_dir(d.root().join("sandboxes"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let rows = Command::new("sqlite3")
        .arg(d.root().join("mvmd.db"))
        .arg("SELECT count(*) FROM sandboxes")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(usize::MAX)
        })
        .unwrap_or_else(|| {
            // No sqlite3 CLI: the API's list is the database's content.
            d.req("GET", "/v1/sandboxes?all=true")
                .json()
                .as_array()
                .unwrap()
                .len()
        });
    let socks: BTreeSet<String> = fs::read_dir(d.run_dir().join("vsock"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (dirs, rows, d.vmm_pids(), socks)
}

/// `mvm_e2e::wait_until`, looking again every 50 ms.
fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    mvm_e2e::wait_until(what, timeout, Duration::from_millis(50), f);
}

// ---------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------

#[test]
fn run_exit_codes_and_output() {
    let d = daemon();
    let (code, logs, id) = d.run(sh("echo hello; echo to-stderr >&2; cat /etc/app.conf"));
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("hello\n"), "{logs:?}");
    assert!(logs.contains("to-stderr"), "{logs:?}");
    assert!(logs.contains("configured"), "{logs:?}");
    let info = d.inspect(&id);
    assert_eq!(info["state"]["status"], "exited");
    assert_eq!(info["state"]["reason"], "exited");
    assert!(info["state"]["started_at"].is_string() && info["state"]["finished_at"].is_string());
    // Hostname defaults to the id's first 12 characters.
    let (code, logs, id) = d.run(sh("hostname; exit 3"));
    assert_eq!(code, 3);
    assert!(logs.contains(&id[..12]), "{logs:?}");
    let (code, _, _) = d.run(sh("kill -9 $$"));
    assert_eq!(code, 137);
    let (code, _, id) = d.run(json!({"image": "busybox", "cmd": ["/no/such/binary"]}));
    assert_eq!(code, 127);
    let info = d.inspect(&id);
    assert_eq!(info["state"]["reason"], "start_failed", "{info}");
    // The console is kept separately.
    let c = d.req("GET", &format!("/v1/sandboxes/{id}/console"));
    assert_eq!(c.status, 200);
}

#[test]
fn overrides_and_image_defaults() {
    let d = daemon();
    // Image defaults: entrypoint + cmd, env, workdir, user, labels, stop signal.
    let (code, logs, id) = d.run(json!({"image": "app:1"}));
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("image-default-cmd"), "{logs:?}");
    assert!(
        logs.contains("cwd=/app user=1000 greeting=from-image path=/usr/bin:/bin"),
        "{logs:?}"
    );
    let info = d.inspect(&id);
    assert_eq!(info["config"]["labels"]["origin"], "image");
    assert_eq!(info["config"]["stop_signal"], "SIGINT");
    // Overrides: cmd replaces CMD (entrypoint kept), env by key, workdir, user.
    let (code, logs, _) = d.run(json!({
        "image": "app:1",
        "cmd": ["echo cwd=$(pwd) user=$(id -u):$(id -g) greeting=$GREETING keep=$KEEP extra=$EXTRA"],
        "env": ["GREETING=from-request", "EXTRA=x"],
        "working_dir": "/tmp/work",
        "user": "0:1500",
        "hostname": "custom-host",
        "labels": {"k": "v"}
    }));
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("cwd=/tmp/work user=0:1500 greeting=from-request keep=kept extra=x"),
        "{logs:?}"
    );
    // --entrypoint resets CMD: the new entrypoint runs alone.
    let (code, logs, _) =
        d.run(json!({"image": "app:1", "entrypoint": ["/bin/echo", "only-entrypoint"]}));
    assert_eq!(code, 0);
    assert_eq!(logs.trim(), "only-entrypoint", "{logs:?}");
    // Entrypoint cleared, command alone, with the hostname given. Under the
    // image's entrypoint (`/bin/sh -c`) this command would be `sh -c
    // /bin/sh -c ...`: an inner shell reading empty stdin, printing nothing.
    let (code, logs, _) = d.run(json!({
        "image": "app:1", "entrypoint": [], "cmd": ["/bin/sh", "-c", "echo alone; hostname"],
        "hostname": "named"
    }));
    assert_eq!(code, 0, "{logs}");
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        ["alone", "named"],
        "{logs:?}"
    );
}

#[test]
fn names_list_inspect_and_remove() {
    let d = daemon();
    let id = d.create(
        json!({"image": "busybox", "name": "web", "cmd": ["true"], "labels": {"tier": "front"}}),
    );
    // Names are unique.
    let r = d.post_json(
        "/v1/sandboxes",
        &json!({"image": "busybox", "name": "web", "cmd": ["true"]}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.text()
    );
    assert!(r.json()["message"].as_str().unwrap().contains("web"));
    // By name, id and prefix.
    assert_eq!(d.inspect("web")["id"], id.as_str());
    assert_eq!(d.inspect(&id[..8])["name"], "web");
    // Created sandboxes are listed with all only.
    let list = d.req("GET", "/v1/sandboxes").json();
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    let list = d
        .req("GET", "/v1/sandboxes?all=true&label=tier=front")
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status_text"], "Created");
    let list = d
        .req("GET", "/v1/sandboxes?all=true&label=tier=back")
        .json();
    assert!(list.as_array().unwrap().is_empty());
    // Running: listed, not removable without force.
    let id2 = d.create(json!({"image": "busybox", "name": "sleeper", "cmd": ["sleep", "600"]}));
    d.start_sb(&id2);
    let list = d.req("GET", "/v1/sandboxes").json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(
        list[0]["status_text"].as_str().unwrap().starts_with("Up "),
        "{list}"
    );
    let r = d.req("POST", "/v1/sandboxes/sleeper/start");
    assert_eq!((r.status, r.code().as_str()), (409, "invalid_state"));
    let r = d.req("DELETE", "/v1/sandboxes/sleeper");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = d.req("DELETE", "/v1/sandboxes/sleeper?force=true");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(d.req("GET", "/v1/sandboxes/sleeper").status, 404);
    let r = d.req("DELETE", "/v1/sandboxes/web");
    assert_eq!(r.status, 204);
    // Nothing left: no dirs, rows, VMMs, sockets.
    let (dirs, rows, pids, socks) = footprint(&d);
    assert!(
        dirs.is_empty() && rows == 0 && pids.is_empty() && socks.is_empty(),
        "{dirs:?} {rows} {pids:?} {socks:?}"
    );
    // The name is free again.
    d.create(json!({"image": "busybox", "name": "web", "cmd": ["true"]}));
}

#[test]
fn stop_kill_restart_and_wait() {
    let d = daemon();
    let id = d.create(json!({"image": "busybox", "name": "svc", "cmd": ["sleep", "600"]}));
    d.start_sb(&id);
    let t0 = Instant::now();
    let r = d.req("POST", "/v1/sandboxes/svc/stop?timeout=2");
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(60));
    let s = &d.inspect(&id)["state"];
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("exited"), Some("stopped")),
        "{s}"
    );
    assert_eq!(s["exit_code"], 143);
    // Stop again: not running.
    assert_eq!(
        d.req("POST", "/v1/sandboxes/svc/stop").code(),
        "invalid_state"
    );
    // Restart from exited.
    let r = d.req("POST", "/v1/sandboxes/svc/restart?timeout=1");
    assert!(r.status == 204 || r.status == 200, "{}", r.text());
    assert_eq!(d.inspect(&id)["state"]["status"], "running");
    // Restart while running.
    let pid1 = d.inspect(&id)["state"]["pid"].as_i64().unwrap();
    let r = d.req("POST", "/v1/sandboxes/svc/restart?timeout=1");
    assert!(r.status == 204 || r.status == 200, "{}", r.text());
    let pid2 = d.inspect(&id)["state"]["pid"].as_i64().unwrap();
    assert_ne!(pid1, pid2);
    // next-exit wait, answered by a kill.
    let ep = d.ep.clone();
    let waiter = std::thread::spawn(move || {
        request(
            &ep,
            "POST",
            "/v1/sandboxes/svc/wait?condition=next-exit",
            b"",
            "",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = d.req("POST", "/v1/sandboxes/svc/kill?signal=SIGKILL");
    assert_eq!(r.status, 204, "{}", r.text());
    let w = waiter.join().unwrap().json();
    assert_eq!(w["exit_code"], 137, "{w}");
    let s = &d.inspect(&id)["state"];
    assert_eq!(s["reason"], "killed", "{s}");
    // A bad signal is a bad request.
    d.start_sb(&id);
    let r = d.req("POST", "/v1/sandboxes/svc/kill?signal=SIGBOGUS");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));
    let r = d.req("POST", "/v1/sandboxes/svc/kill?signal=SIGINT");
    assert_eq!(r.status, 204, "{}", r.text());
    // Kill answers once the signal is delivered, as Docker's does; the
    // exit is the wait's to report.
    let w = d.req("POST", "/v1/sandboxes/svc/wait").json();
    assert_eq!(w["exit_code"], 130, "{w}");
    assert_eq!(d.inspect(&id)["state"]["exit_code"], 130);
    assert!(d.vmm_pids().is_empty());
}

#[test]
fn auto_remove_and_logs_follow() {
    let d = daemon();
    // Follow opened on a created sandbox streams its first run.
    let id = d.create(json!({"image": "busybox", "auto_remove": true,
        "cmd": ["/bin/sh", "-c", "echo line-1; sleep 2; echo line-2; echo line-3; exit 7"]}));
    let (r, status, headers) = send(
        &d.ep,
        "GET",
        &format!("/v1/sandboxes/{id}/logs?follow=true"),
        b"",
        "",
    );
    assert_eq!(status, 200);
    let follower = std::thread::spawn(move || {
        let mut body = BodyReader::new(r, &headers);
        let mut lines = Vec::new();
        let t0 = Instant::now();
        while let Some(chunk) = body.next() {
            for l in String::from_utf8_lossy(&chunk).lines() {
                let v: Value = serde_json::from_str(l).unwrap();
                lines.push((v["log"].as_str().unwrap().to_string(), t0.elapsed()));
            }
        }
        lines
    });
    d.start_sb(&id);
    let w = d.wait(&id, "removed");
    assert_eq!(w["exit_code"], 7);
    let lines = follower.join().unwrap();
    let text: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(text, ["line-1\n", "line-2\n", "line-3\n"], "{lines:?}");
    // Lines arrived as they were written, not all at the end. (Output the
    // guest wrote before mvmd's attach arrives with the attach, so the gap
    // is wide: on a loaded emulated host the attach lags a few 100 ms.)
    assert!(
        lines[2].1 - lines[0].1 >= Duration::from_millis(1000),
        "{lines:?}"
    );
    // Removed: gone from the API and the disk; a late wait still answers.
    assert_eq!(d.req("GET", &format!("/v1/sandboxes/{id}")).status, 404);
    assert_eq!(d.wait(&id, "not-running")["exit_code"], 7);
    let (dirs, rows, pids, _) = footprint(&d);
    assert!(
        dirs.is_empty() && rows == 0 && pids.is_empty(),
        "{dirs:?} {rows} {pids:?}"
    );
    // tail and stream filters.
    let (_, _, id) = d.run(sh("echo a; echo b; echo c >&2"));
    let r = d.req(
        "GET",
        &format!("/v1/sandboxes/{id}/logs?tail=1&stdout=true"),
    );
    let v = r.ndjson();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["log"], "b\n");
    assert_eq!(v[0]["stream"], "stdout");
    assert!(v[0]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn mvmd_killed_and_restarted_keeps_control() {
    let mut d = daemon();
    let a = d.create(json!({"image": "busybox", "name": "a", "cmd": ["sleep", "600"]}));
    d.start_sb(&a);
    let b = d.create(
        json!({"image": "busybox", "name": "b", "cmd": ["/bin/sh", "-c", "sleep 3; echo while-away; exit 5"]}),
    );
    d.start_sb(&b);
    let pids_before = d.vmm_pids();
    assert_eq!(pids_before.len(), 2);
    d.kill9();
    // The VMMs survive the daemon.
    assert_eq!(d.vmm_pids().len(), 2);
    std::thread::sleep(Duration::from_secs(4));
    d.spawn();
    // Still listed and controllable; b's exit was recorded after the fact.
    let list = d.req("GET", "/v1/sandboxes?all=true").json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(d.inspect("a")["state"]["status"], "running");
    let w = d.wait("b", "not-running");
    assert_eq!(w["exit_code"], 5, "{w}");
    // What b wrote while no mvmd was attached was held by the guest and
    // collected by the restarted mvmd.
    assert_eq!(d.logs(&b), "while-away\n");
    let r = d.req("POST", "/v1/sandboxes/a/stop?timeout=1");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(d.inspect("a")["state"]["reason"], "stopped");
    assert!(d.vmm_pids().is_empty());
    // A second daemon on the same root is refused.
    let out = Command::new(mvm_e2e::daemon::binary("mvmd"))
        .arg("--root")
        .arg(d.root())
        .arg("--run-dir")
        .arg(d.run_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another mvmd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vmm_killed_is_reported_and_restart_policy_applies() {
    let d = daemon();
    let id = d.create(json!({"image": "busybox", "name": "victim", "cmd": ["sleep", "600"]}));
    d.start_sb(&id);
    let pid = d.inspect(&id)["state"]["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the VMM's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let w = d.wait(&id, "not-running");
    // mvmd reaped it (its child subreaper): 128 + SIGKILL, as runc
    // reports a container whose init was killed.
    assert_eq!(w["exit_code"], 137, "{w}");
    let s = &d.inspect(&id)["state"];
    assert_eq!(s["reason"], "vmm_died", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("signal 9 (SIGKILL) from outside") && error.contains("status file"),
        "{s}"
    );
    // With a restart policy it comes back.
    let id = d.create(
        json!({"image": "busybox", "name": "phoenix", "cmd": ["sleep", "600"],
        "restart_policy": {"name": "always"}}),
    );
    d.start_sb(&id);
    let pid = d.inspect(&id)["state"]["pid"].as_i64().unwrap() as i32;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("the policy restart", Duration::from_secs(60), || {
        let s = &d.inspect(&id)["state"];
        s["status"] == "running" && s["pid"].as_i64() != Some(pid as i64)
    });
    assert_eq!(d.inspect(&id)["state"]["restart_count"], 1);
    // on-failure:2 with a failing workload: two restarts, then exited.
    let id = d.create(
        json!({"image": "busybox", "cmd": ["/bin/sh", "-c", "exit 1"],
        "restart_policy": {"name": "on-failure", "maximum_retry_count": 1}}),
    );
    d.start_sb(&id);
    wait_until("retries to run out", Duration::from_secs(300), || {
        let s = &d.inspect(&id)["state"];
        s["status"] == "exited" && s["restart_count"] == 1
    });
    // A manual stop is not undone by the policy.
    let r = d.req("POST", "/v1/sandboxes/phoenix/stop?timeout=1");
    assert_eq!(r.status, 204);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.inspect("phoenix")["state"]["status"], "exited");
}

#[test]
fn ten_parallel_starts() {
    let d = daemon();
    let ids: Vec<String> = (0..10)
        .map(|i| d.create(json!({"image": "busybox", "name": format!("p{i}"), "cmd": ["/bin/sh", "-c", format!("echo from-{i}")]})))
        .collect();
    let handles: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let ep = d.ep.clone();
            std::thread::spawn(move || {
                let r = request(&ep, "POST", &format!("/v1/sandboxes/{id}/start"), b"", "");
                assert!(r.status == 204 || r.status == 200, "{}", r.text());
                request(&ep, "POST", &format!("/v1/sandboxes/{id}/wait"), b"", "").json()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let w = h.join().unwrap();
        assert_eq!(w["exit_code"], 0, "{w}");
        assert!(d.logs(&ids[i]).contains(&format!("from-{i}")));
    }
}

#[test]
fn bad_input_is_refused_cleanly() {
    let d = daemon();
    let before = footprint(&d);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"image": "nosuch:image", "cmd": ["true"]}),
            404,
            "not_found",
            "no such image",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "memory_mib": 0}),
            400,
            "bad_request",
            "at least 32",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "memory_mib": 100_000_000}),
            507,
            "resource_unavailable",
            "MemAvailable",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "vcpus": 1000}),
            507,
            "resource_unavailable",
            "CPUs",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "bogus_flag": 1}),
            400,
            "bad_request",
            "bogus_flag",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "name": "bad name"}),
            400,
            "bad_request",
            "invalid sandbox name",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "env": ["NOEQUALS"]}),
            400,
            "bad_request",
            "KEY=VALUE",
        ),
        (
            json!({"image": "busybox", "cmd": ["true"], "auto_remove": true, "restart_policy": {"name": "always"}}),
            400,
            "bad_request",
            "conflict",
        ),
    ];
    for (body, status, code, text) in cases {
        let r = d.post_json("/v1/sandboxes", &body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{body}: {}",
            r.text()
        );
        assert!(
            r.json()["message"].as_str().unwrap().contains(text),
            "{body}: {}",
            r.text()
        );
    }
    // Malformed JSON.
    let r = request(
        &d.ep,
        "POST",
        "/v1/sandboxes",
        b"{\"image\": ",
        "application/json",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "bad_request"),
        "{}",
        r.text()
    );
    assert!(r.json()["message"].as_str().unwrap().contains("JSON"));
    // Unknown endpoint and method.
    assert_eq!(d.req("GET", "/v1/nope").code(), "not_found");
    // Name conflict.
    d.create(json!({"image": "busybox", "name": "taken", "cmd": ["true"]}));
    let r = d.post_json(
        "/v1/sandboxes",
        &json!({"image": "busybox", "name": "taken", "cmd": ["true"]}),
    );
    assert_eq!(r.code(), "conflict");
    assert_eq!(d.req("DELETE", "/v1/sandboxes/taken").status, 204);
    // Nothing was left behind by any of it.
    assert_eq!(footprint(&d), before);
    // The OpenAPI document is served.
    let doc = d.req("GET", "/openapi.json").json();
    assert!(doc["paths"]["/v1/sandboxes"].is_object());
}

#[test]
fn tcp_needs_the_token() {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let d0 = tempfile::tempdir().unwrap();
    let token_file = d0.path().join("token");
    fs::write(&token_file, "0123456789abcdef-secret-token").unwrap();
    let d = Mvmd::start(&["--tcp", &addr, "--token-file", token_file.to_str().unwrap()]);
    wait_until("TCP", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let none = Endpoint::Tcp(addr.clone(), None);
    let wrong = Endpoint::Tcp(addr.clone(), Some("wrong".into()));
    let right = Endpoint::Tcp(addr.clone(), Some("0123456789abcdef-secret-token".into()));
    for ep in [&none, &wrong] {
        let r = request(ep, "GET", "/v1/info", b"", "");
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "unauthorized"),
            "{}",
            r.text()
        );
        let r = request(ep, "GET", "/_ping", b"", "");
        assert_eq!(r.status, 401);
        let r = request(
            ep,
            "POST",
            "/v1/sandboxes",
            br#"{"image":"busybox"}"#,
            "application/json",
        );
        assert_eq!(r.status, 401);
    }
    let r = request(&right, "GET", "/v1/info", b"", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["api_version"], "1");
    // Nothing was created by the refused requests.
    assert!(request(&right, "GET", "/v1/sandboxes?all=true", b"", "")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // The Unix socket needs no token, and has mode 0660.
    assert_eq!(d.req("GET", "/_ping").text(), "OK");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777,
        0o660
    );
}

/// A local user who is not root reads nothing of mvmd's state: not a
/// sandbox's launch spec (its environment), its logs or console, nor the
/// database. The test's own temp dir is opened up first, so only mvmd's
/// modes stand in the way.
#[test]
fn state_and_logs_are_private_to_root() {
    use std::os::unix::fs::PermissionsExt;
    let d = daemon();
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (code, logs, id) = d.run(json!({
        "image": "busybox",
        "cmd": ["/bin/sh", "-c", "echo output-$SECRET"],
        "env": ["SECRET=hunter2"],
    }));
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("output-hunter2"), "{logs}");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&d.root()), 0o700, "the state root");
    assert_eq!(mode(&d.run_dir()), 0o711, "the run dir");
    assert_eq!(mode(&d.socket()), 0o660, "the API socket");
    // Everything under the root is its owner's alone (root's, or a
    // sandbox's VMM's), but for what every jailed VMM reads (the init
    // archive, image disks: behind the 0700 root all the same) and the
    // jails' empty mount points.
    let shared = |p: &Path| {
        p.starts_with(d.root().join("init"))
            || p.starts_with(d.root().join("images/disks"))
            || p.components().any(|c| c.as_os_str() == "jail")
    };
    let mut open = Vec::new();
    let mut stack = vec![d.root()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.file_type().is_symlink() {
                continue;
            }
            if md.permissions().mode() & 0o077 != 0 && !shared(&e.path()) {
                open.push(format!(
                    "{:o} {}",
                    md.permissions().mode() & 0o7777,
                    e.path().display()
                ));
            }
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(open.is_empty(), "readable by others: {open:#?}");
    // And a real unprivileged process is refused.
    let sb = d.root().join("sandboxes").join(&id);
    for f in [
        sb.join("spec.cpio"),
        sb.join("vm.json"),
        sb.join("logs/json.log"),
        sb.join("vm/console.log"),
        d.root().join("mvmd.db"),
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&f)
            .output()
            .expect("setpriv (util-linux)");
        assert!(!out.status.success(), "nobody read {}", f.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn cpu_quota_and_memory() {
    let d = daemon();
    let (code, logs, id) = d.run(json!({"image": "busybox", "cpus": 1.5, "memory_mib": 200,
        "cmd": ["/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo"]}));
    assert_eq!(code, 0, "{logs}");
    let info = d.inspect(&id);
    assert_eq!(info["host_config"]["vcpus"], 2);
    assert!(logs.lines().next().unwrap().trim() == "2", "{logs}");
    let kib: u64 = logs
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {logs}"));
    assert!((150 * 1024..=200 * 1024).contains(&kib), "{kib}");
}

// ---------------------------------------------------------------------
// Issue 5: operations through the guest agent.
// ---------------------------------------------------------------------

/// Read one agent-protocol frame (`u32 LE length | kind | payload`).
fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).ok()?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    assert!((1..=(1 << 20) + 1).contains(&len), "bad frame length {len}");
    let mut p = vec![0u8; len - 1];
    r.read_exact(&mut p).unwrap();
    Some((h[4], p))
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

// Frame kinds of mvm_protocol::agent::Kind.
const K_CONTROL: u8 = 1;
const K_STDIN: u8 = 2;
const K_STDOUT: u8 = 3;
const K_STDERR: u8 = 4;
const K_STDIN_EOF: u8 = 5;

/// `POST path` on the daemon's Unix socket, upgraded to an `mvm-stream`
/// (exec start, attach); returns the connection past the `101` head, with
/// `read_timeout` on its reads.
fn upgrade(d: &Mvmd, path: &str, read_timeout: Duration) -> UnixStream {
    let Endpoint::Unix(sock) = &d.ep else {
        unreachable!()
    };
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(read_timeout)).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: mvmd\r\nConnection: Upgrade\r\nUpgrade: mvm-stream\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    // The response head, byte by byte: frames follow it directly.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 1, "closed in the response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c
}

/// Create and start an exec over an upgraded connection; feed `stdin`
/// (then EOF) when given; returns stdout, stderr and the `exited` message.
fn exec(d: &Mvmd, sandbox: &str, body: Value, stdin: Option<&[u8]>) -> (String, String, Value) {
    let r = d.post_json(&format!("/v1/sandboxes/{sandbox}/exec"), &body);
    assert_eq!(r.status, 201, "exec create: {}", r.text());
    let exec_id = r.json()["id"].as_str().unwrap().to_string();
    let mut c = upgrade(
        d,
        &format!("/v1/exec/{exec_id}/start"),
        Duration::from_secs(120),
    );
    if let Some(data) = stdin {
        c.write_all(&frame(K_STDIN, data)).unwrap();
        c.write_all(&frame(K_STDIN_EOF, b"")).unwrap();
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let (kind, p) = read_frame(&mut c).expect("the stream ended before `exited`");
        match kind {
            K_STDOUT => out.extend_from_slice(&p),
            K_STDERR => err.extend_from_slice(&p),
            K_CONTROL => {
                let v: Value = serde_json::from_slice(&p).unwrap();
                if v["op"] == "exited" {
                    let info = d.req("GET", &format!("/v1/exec/{exec_id}")).json();
                    return (
                        String::from_utf8_lossy(&out).into(),
                        String::from_utf8_lossy(&err).into(),
                        info,
                    );
                }
            }
            k => panic!("unexpected frame kind {k}"),
        }
    }
}

#[test]
fn exec_archive_stats_and_stop_through_the_agent() {
    let d = daemon();
    let id = d.create(json!({"image": "busybox", "name": "agentbox", "cmd": ["sleep", "600"]}));
    d.start_sb(&id);
    // Output, exit code, inspect.
    let (out, err, info) = exec(
        &d,
        "agentbox",
        json!({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 7"]}),
        None,
    );
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(info["exit_code"], 7, "{info}");
    assert_eq!(info["running"], false, "{info}");
    // Stdin, env and working dir.
    let (out, _, info) = exec(
        &d,
        "agentbox",
        json!({"cmd": ["sh", "-c", "cat; echo \" $X $(pwd)\""], "stdin": true,
               "env": ["X=y"], "working_dir": "/tmp"}),
        Some(b"hello"),
    );
    assert_eq!(out, "hello y /tmp\n");
    assert_eq!(info["exit_code"], 0);
    // A missing program: Docker's 127.
    let (_, err, info) = exec(&d, "agentbox", json!({"cmd": ["/no/such"]}), None);
    assert_eq!(info["exit_code"], 127, "{err}");
    // An exec starts once.
    let r = d.post_json("/v1/sandboxes/agentbox/exec", &json!({"cmd": []}));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));

    // Archive round trip: a tar in, the file seen by the workload, a tar out.
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/greeting.txt"), b"hi from the host\n").unwrap();
    let tarball = src.path().join("in.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(src.path())
        .arg("d")
        .status()
        .unwrap();
    assert!(ok.success());
    let r = request(
        &d.ep,
        "PUT",
        "/v1/sandboxes/agentbox/archive?path=/tmp",
        &fs::read(&tarball).unwrap(),
        "application/x-tar",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let (out, _, _) = exec(
        &d,
        "agentbox",
        json!({"cmd": ["cat", "/tmp/d/greeting.txt"]}),
        None,
    );
    assert_eq!(out, "hi from the host\n");
    let r = d.req("GET", "/v1/sandboxes/agentbox/archive?path=/tmp/d");
    assert_eq!(r.status, 200, "{}", r.text());
    let dst = tempfile::tempdir().unwrap();
    fs::write(dst.path().join("out.tar"), &r.body).unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(dst.path().join("out.tar"))
        .arg("-C")
        .arg(dst.path())
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(
        fs::read(dst.path().join("d/greeting.txt")).unwrap(),
        b"hi from the host\n"
    );
    let r = d.req("GET", "/v1/sandboxes/agentbox/archive?path=/no/such");
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "not_found"),
        "{}",
        r.text()
    );

    // Stats of the workload.
    let r = d.req("GET", "/v1/sandboxes/agentbox/stats");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert!(s["online_cpus"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["memory_usage_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["pids"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["system_cpu_usec"].as_u64().unwrap() > 0, "{s}");

    // Stop through the agent: the workload gets SIGTERM (143).
    let r = d.req("POST", "/v1/sandboxes/agentbox/stop?timeout=30");
    assert_eq!(r.status, 204, "{}", r.text());
    let s = &d.inspect(&id)["state"];
    assert_eq!(
        (s["reason"].as_str(), s["exit_code"].as_i64()),
        (Some("stopped"), Some(143)),
        "{s}"
    );
    // Not running: agent operations are refused clearly.
    let r = d.req("GET", "/v1/sandboxes/agentbox/stats");
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "invalid_state"),
        "{}",
        r.text()
    );
}

/// Open `POST /v1/sandboxes/{id}/attach?query` as an upgraded stream.
fn attach_stream(d: &Mvmd, sandbox: &str, query: &str) -> UnixStream {
    upgrade(
        d,
        &format!("/v1/sandboxes/{sandbox}/attach?{query}"),
        Duration::from_secs(180),
    )
}

/// Read an attach stream to its `exited` frame: stdout, stderr, status.
fn attach_collect(c: &mut UnixStream) -> (String, String, i64) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let (kind, p) = read_frame(c).expect("the attach stream ended before `exited`");
        match kind {
            K_STDOUT => out.extend_from_slice(&p),
            K_STDERR => err.extend_from_slice(&p),
            K_CONTROL => {
                let v: Value = serde_json::from_slice(&p).unwrap();
                assert_eq!(v["op"], "exited", "{v}");
                return (
                    String::from_utf8_lossy(&out).into(),
                    String::from_utf8_lossy(&err).into(),
                    v["exit_code"].as_i64().unwrap(),
                );
            }
            k => panic!("unexpected frame kind {k}"),
        }
    }
}

/// Issue 5: the main process's streams through mvmd's attach fan-out:
/// attach before start gets the run from its first byte, stdout and
/// stderr apart; stdin reaches a sandbox created with open_stdin; a
/// second client and a `logs=true` replay see the same output; `top`
/// lists the workload; `resize` needs a terminal.
#[test]
fn attach_stdin_resize_and_top() {
    let d = daemon();
    let id = d.create(
        json!({"image": "busybox", "name": "att", "open_stdin": true,
        "cmd": ["/bin/sh", "-c", "echo out-1; echo err-1 >&2; read line; echo got-$line; exit 4"]}),
    );
    let mut a = attach_stream(&d, "att", "stdin=true&stdout=true&stderr=true");
    let mut b = attach_stream(&d, &id, "stdout=true");
    // Stdin written before the start waits for the guest's agent.
    a.write_all(&frame(K_STDIN, b"typed\n")).unwrap();
    d.start_sb(&id);
    let (out, err, code) = attach_collect(&mut a);
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("out-1\ngot-typed\n", "err-1\n", 4)
    );
    let (out, err, code) = attach_collect(&mut b);
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("out-1\ngot-typed\n", "", 4)
    );
    // The logs have the streams apart too.
    let r = d.req("GET", &format!("/v1/sandboxes/{id}/logs?stderr=true"));
    let v = r.ndjson();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0]["log"].as_str(), v[0]["stream"].as_str()),
        (Some("err-1\n"), Some("stderr"))
    );
    // No terminal: no resize.
    let r = d.req("POST", &format!("/v1/sandboxes/{id}/resize?h=10&w=20"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "invalid_state"),
        "{}",
        r.text()
    );
    // Not running: top is refused clearly.
    let r = d.req("GET", &format!("/v1/sandboxes/{id}/top"));
    assert_eq!(r.code(), "invalid_state", "{}", r.text());

    // A tty sandbox: the size set before the start is the size at launch;
    // replayed logs come first on an attach with logs=true.
    let t = d.create(json!({"image": "busybox", "name": "tty", "tty": true,
        "cmd": ["/bin/sh", "-c", "stty size; sleep 600"]}));
    let r = d.req("POST", "/v1/sandboxes/tty/resize?h=33&w=101");
    assert_eq!(r.status, 204, "{}", r.text());
    let r = d.req("POST", "/v1/sandboxes/tty/resize?h=0&w=101");
    assert_eq!(r.code(), "bad_request", "{}", r.text());
    d.start_sb(&t);
    wait_until(
        "the tty workload's output",
        Duration::from_secs(120),
        || d.logs(&t).contains("33 101"),
    );
    // top: Docker's shape, the workload's command line in it.
    let r = d.req("GET", "/v1/sandboxes/tty/top");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["Titles"],
        json!(["PID", "PPID", "USER", "TIME", "COMMAND"])
    );
    let rows = v["Processes"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|p| p[4].as_str().unwrap().contains("sleep 600")),
        "{v}"
    );
    assert!(rows.iter().all(|p| p[2] == "root"), "{v}");
    let mut c = attach_stream(&d, "tty", "logs=true");
    let (kind, p) = read_frame(&mut c).unwrap();
    assert_eq!(kind, K_STDOUT);
    assert!(String::from_utf8_lossy(&p).contains("33 101"), "{p:?}");
    // Stopping ends the attach with the run's recorded status.
    let r = d.req("POST", "/v1/sandboxes/tty/stop?timeout=5");
    assert_eq!(r.status, 204, "{}", r.text());
    let (_, _, code) = attach_collect(&mut c);
    assert_eq!(d.inspect(&t)["state"]["exit_code"].as_i64(), Some(code));
}

// ---------------------------------------------------------------------
// The jail (issue 11 item 2): every VMM mvmd starts runs through
// mvm-jailer.
// ---------------------------------------------------------------------

/// A `/proc/<pid>/status` field.
fn status_field(pid: i32, name: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Start a long-running sandbox and return its id and VMM pid.
fn running_vmm(d: &Mvmd) -> (String, i32) {
    let before = d.vmm_pids();
    let id = d.create(sh("sleep 600"));
    d.start_sb(&id);
    (id.clone(), new_vmm(d, &id, &before))
}

/// The pid of the VMM of `id` that is not one of `before` (the API has no
/// "running" event to wait on: its process is looked for until it shows).
fn new_vmm(d: &Mvmd, id: &str, before: &[i32]) -> i32 {
    let t0 = Instant::now();
    loop {
        let info = d.inspect(id);
        assert_ne!(info["state"]["status"], "exited", "{info}\n{}", d.log());
        if let Some(p) = d.vmm_pids().into_iter().find(|p| !before.contains(p)) {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no VMM for {id}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jailed_vmm_has_no_privilege_and_only_its_files() {
    use std::os::unix::fs::MetadataExt;
    let d = daemon();
    let info = d.req("GET", "/v1/info").json();
    assert_eq!(info["jail"], true, "{info}");
    assert_eq!(info["jail_uids"], "100000-165535", "{info}");
    assert_eq!(info["seccomp"], true, "{info}");

    let (id, pid) = running_vmm(&d);
    // Its own uid and gid from the range, every capability gone, no way
    // to gain one.
    let uid: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let gid: Vec<u32> = status_field(pid, "Gid")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        uid.iter().all(|u| (100_000..165_536).contains(u)),
        "{uid:?}"
    );
    assert!(uid.iter().all(|u| *u == uid[0]), "{uid:?}");
    assert!(gid.iter().all(|g| *g == uid[0]), "{gid:?}");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    // Its root is the sandbox's jail directory, holding mount points only.
    let jail = d.root().join("sandboxes").join(&id).join("jail");
    let (r, j) = (
        fs::metadata(format!("/proc/{pid}/root/")).unwrap(),
        fs::metadata(&jail).unwrap(),
    );
    assert_eq!(
        (r.dev(), r.ino()),
        (j.dev(), j.ino()),
        "root is not the jail"
    );
    let top: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/root/"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        top.contains("dev") && !top.contains("etc") && !top.contains("bin"),
        "{top:?}"
    );
    let inside = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(inside.join("dev/kvm").exists());
    assert!(!inside.join("dev/null").exists(), "only /dev/kvm");
    assert!(!inside
        .join(d.root().join("mvmd.db").strip_prefix("/").unwrap())
        .exists());
    // Namespaces of its own.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(
            fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "{ns} namespace shared with the host"
        );
    }
    // cgroup limits: guest memory (128 MiB here) plus the VMM's overhead,
    // and tasks.
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line: {cg}"));
    assert!(rel.ends_with(&format!("/mvm/{id}")), "{rel}");
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap().trim().to_string();
    assert_eq!(read("memory.max"), ((128u64 + 64) << 20).to_string());
    assert_eq!(read("pids.max"), (32 + 1).to_string());

    // seccomp: once the guest answers through the agent (the main
    // thread's event loop runs, so every filter is in place), the VMM and
    // each of its threads are in filter mode (2).
    let (out, _, x) = exec(&d, &id, json!({"cmd": ["echo", "filtered"]}), None);
    assert_eq!(
        (out.as_str(), &x["exit_code"]),
        ("filtered\n", &json!(0)),
        "{x}"
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let tasks: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // The main thread and the vCPU (the sandbox has one).
    assert!(tasks.len() >= 2, "{tasks:?}");
    for t in &tasks {
        let s = fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
        let name = s.lines().next().unwrap_or_default().to_string();
        assert!(
            s.lines().any(|l| l == "Seccomp:\t2"),
            "thread {t} ({name}): {s}"
        );
    }

    // The sandbox works through the jail: the agent (vsock), logs.
    let (code, logs, _) = d.run(sh("echo jailed-hello"));
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("jailed-hello"), "{logs}");
    // A second sandbox gets another uid; a restart keeps each one's.
    let (id2, pid2) = running_vmm(&d);
    let uid2: u32 = status_field(pid2, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid2, uid[0]);
    let r = d.req("POST", &format!("/v1/sandboxes/{id}/stop?timeout=1"));
    assert!(r.status == 204 || r.status == 200, "{}", r.text());
    d.wait(&id, "not-running");
    d.start_sb(&id);
    let pid3 = new_vmm(&d, &id, &[pid2]);
    assert_eq!(
        status_field(pid3, "Uid").split_whitespace().next().unwrap(),
        uid[0].to_string()
    );
    let _ = id2;
}

#[test]
fn no_jail_is_shown_and_runs_the_vmm_as_root() {
    let d = Mvmd::start(&["--no-jail"]);
    with_images(&d);
    let info = d.req("GET", "/v1/info").json();
    assert_eq!(info["jail"], false, "{info}");
    let (_, pid) = running_vmm(&d);
    assert_eq!(
        status_field(pid, "Uid").split_whitespace().next().unwrap(),
        "0"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap()
    );
}

#[test]
fn no_seccomp_is_shown_and_the_vmm_runs_unfiltered() {
    let d = Mvmd::start(&["--no-seccomp"]);
    with_images(&d);
    let info = d.req("GET", "/v1/info").json();
    assert_eq!(info["seccomp"], false, "{info}");
    assert_eq!(info["jail"], true, "{info}");
    let (id, pid) = running_vmm(&d);
    let (out, _, _) = exec(&d, &id, json!({"cmd": ["echo", "up"]}), None);
    assert_eq!(out, "up\n");
    assert_eq!(status_field(pid, "Seccomp"), "0");
}

/// The seccomp filter kills: a VMM built with the `seccomp-test-trigger`
/// feature (tests/run-e2e.sh builds it as a separate binary, never the
/// product's) makes a forbidden system call once its main thread's filter
/// is on; it dies by SIGSYS, and the sandbox ends failed with the reason.
#[test]
fn a_vmm_killed_by_its_seccomp_filter_fails_its_sandbox_with_the_reason() {
    let trigger = std::env::var("MVM_VMM_SECCOMP_TRIGGER").expect(
        "MVM_VMM_SECCOMP_TRIGGER: the VMM built with --features seccomp-test-trigger; \
         run this through tests/run-e2e.sh, which builds it",
    );
    assert!(Path::new(&trigger).is_file(), "{trigger} is missing");
    let d = Mvmd::start(&["--vmm", &trigger]);
    with_images(&d);
    let id = d.create(sh("sleep 600"));
    d.start_sb(&id);
    let w = d.wait(&id, "not-running");
    assert_eq!(w["exit_code"], 128 + libc::SIGSYS, "{w}\n{}", d.log());
    let s = &d.inspect(&id)["state"];
    assert_eq!(s["reason"], "vmm_died", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the VMM was killed by its seccomp filter (SIGSYS): a bug in mvm-vmm or a missing allowlist entry; see vmm.log"),
        "{s}"
    );
    // The VMM's log shows it got as far as the filters.
    let log = fs::read_to_string(d.root().join("sandboxes").join(&id).join("vm/vmm.log"))
        .unwrap_or_default();
    assert!(log.contains("seccomp-test-trigger"), "{log}");
}

#[test]
fn a_bad_uid_range_is_refused_by_name() {
    let out = Command::new(mvm_e2e::daemon::binary("mvmd"))
        .args(["--jail-uid-range", "0-10", "--root", "/nonexistent-mvm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("START-END"), "{err}");
}
