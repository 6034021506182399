//! The installed product, used only as a user would: `make install` into a
//! temporary prefix, `PATH` pointing there, no `MVM_*` variables, a fresh
//! `HOME`; nothing from the build tree is named. On a host without
//! hardware KVM (like the development machines) every command goes
//! through the mvm machine that mvctl starts by itself, as it would for a
//! user; with hardware KVM, mvctl starts a local mvmd.
//!
//! Real parts only: Debian's `docker-registry` on the host's loopback
//! (plain and htpasswd), `skopeo` as an independent OCI client, real
//! microVMs for `run` and for every RUN step of `build`.
//!
//! It runs on the HOST (it boots the machine itself when there is no
//! hardware KVM), after the in-L1 suites: `tests/run-e2e.sh` runs it with
//! the machine tests. It needs the default state locations to itself (it
//! uses them as a user does): it refuses to start if a daemon or a machine
//! already answers there, and stops what it started.

#[path = "../../images/tests/registry_support/mod.rs"]
mod registry_support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use registry_support::Registry;

/// The repository (for `make install` and the base image scripts).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A temporary installation and a user environment around it.
struct Product {
    prefix: tempfile::TempDir,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
}

/// The longest one command may take (machine mode under emulation: the
/// first command boots the machine).
const COMMAND_LIMIT: Duration = Duration::from_secs(900);

impl Product {
    /// `make install` into a fresh prefix (the debug build unless
    /// `MVM_PROFILE_DIR=release`, as `make e2e` builds it).
    fn install() -> Product {
        let prefix = tempfile::Builder::new()
            .prefix("mvm-installed-")
            .tempdir()
            .unwrap();
        let profile = match std::env::var("MVM_PROFILE_DIR").as_deref() {
            Ok("release") => "release",
            _ => "debug",
        };
        let t0 = Instant::now();
        let out = Command::new("make")
            .arg("-C")
            .arg(repo())
            .arg("install")
            .arg(format!("PREFIX={}", prefix.path().display()))
            .arg(format!("PROFILE={profile}"))
            .stdin(Stdio::null())
            .output()
            .expect("run make");
        assert!(
            out.status.success(),
            "make install failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "installed into {} in {:.1} s",
            prefix.path().display(),
            t0.elapsed().as_secs_f64()
        );
        Product {
            prefix,
            home: tempfile::Builder::new()
                .prefix("mvm-home-")
                .tempdir()
                .unwrap(),
            work: tempfile::Builder::new()
                .prefix("mvm-work-")
                .tempdir()
                .unwrap(),
        }
    }

    /// The user's environment: the install first on PATH, the system
    /// tools after it, a HOME of its own, nothing else.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.prefix.path().join("bin").display()
                ),
            )
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        c
    }

    /// `mvctl ARGS` with `stdin`, under a time limit; prints what happened.
    fn mvctl_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let t0 = Instant::now();
        let mut cmd = self.command("timeout");
        cmd.arg("--kill-after=10")
            .arg(COMMAND_LIMIT.as_secs().to_string())
            .arg("mvctl")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("run mvctl");
        if let Some(data) = stdin {
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "$ mvctl {} ({:.1} s, exit {:?})\n{}{}",
            args.join(" "),
            t0.elapsed().as_secs_f64(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn mvctl(&self, args: &[&str]) -> Output {
        self.mvctl_in(args, None)
    }

    /// A command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.mvctl(args);
        assert!(out.status.success(), "mvctl {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.mvctl(args);
        assert!(!out.status.success(), "mvctl {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `mvctl images` as (sorted) lines, to check the store is unchanged.
    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ok(&["images", "--format", "json"])
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    fn write(&self, rel: &str, data: &str) -> PathBuf {
        let p = self.work.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    }
}

/// `skopeo ARGS` (an independent OCI client), which must succeed.
fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base image tarball `resources/images/busybox.sh` makes (cached).
fn busybox_tarball() -> PathBuf {
    let out = Command::new(repo().join("resources/images/busybox.sh"))
        .output()
        .expect("run resources/images/busybox.sh");
    assert!(
        out.status.success(),
        "resources/images/busybox.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert!(p.is_file(), "no busybox tarball at {}", p.display());
    p
}

/// Stops what the product started (the machine, or a local mvmd), also
/// when an assertion failed.
struct Stop<'a>(&'a Product);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let p = self.0;
        if p.mvctl(&["machine", "status"]).status.success() {
            p.mvctl(&["machine", "stop"]);
        } else {
            let _ = Command::new("pkill")
                .arg("-f")
                .arg(p.prefix.path().join("bin/mvmd"))
                .status();
        }
    }
}

#[test]
fn the_installed_product_runs_builds_pulls_and_pushes() {
    // The default locations must be free: this test uses them as a user
    // would and must not drive someone else's daemon.
    assert!(
        !Path::new("/run/mvm/mvmd.sock").exists() && !Path::new("/run/mvm/machine.json").exists(),
        "a daemon or machine already uses /run/mvm: stop it (mvctl machine stop, or stop mvmd) before this suite"
    );
    registry_support::require_tool("/usr/bin/skopeo", "skopeo");
    let p = Product::install();
    let _stop = Stop(&p);

    // The product finds its own pieces: version, then system info (which
    // starts the daemon, or the machine).
    p.ok(&["version"]);
    let info = p.ok(&["system", "info"]);
    assert!(
        info.contains(&p.prefix.path().display().to_string()) || info.contains("machine"),
        "system info should show the installed kernel/init or the machine's: {info}"
    );

    // An image from a tarball, and a sandbox of it.
    let tarball = busybox_tarball();
    p.ok(&["import", tarball.to_str().unwrap(), "inst/busybox:1"]);
    let out = p.ok(&[
        "run",
        "--rm",
        "inst/busybox:1",
        "echo",
        "hello from the installed mvm",
    ]);
    assert!(out.contains("hello from the installed mvm"), "{out}");

    // Push ours to a registry on the host's loopback; skopeo reads it back.
    let reg = Registry::start();
    let host = reg.host();
    let pushed = format!("{host}/inst/busybox:1");
    p.ok(&["tag", "inst/busybox:1", &pushed]);
    let out = p.ok(&["push", "--insecure", &pushed]);
    let digest = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("push printed no digest: {out}"))
        .to_string();
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{pushed}"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v["Digest"],
        digest.as_str(),
        "skopeo sees the digest we pushed: {inspect}"
    );

    // An image pushed by skopeo, absent from the store: `run` pulls it.
    let archive = p.work.path().join("busybox-archive.tar");
    p.ok(&["save", "-o", archive.to_str().unwrap(), "inst/busybox:1"]);
    let foreign = format!("{host}/inst/from-skopeo:1");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://{foreign}"),
    ]);
    let out = p.mvctl(&["run", "--rm", "--insecure", &foreign, "cat", "/etc/passwd"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "run of an absent image pulls it: {text}"
    );
    assert!(
        text.contains("Unable to find image") && text.contains("root:x:0:0"),
        "{text}"
    );

    // A multi-stage Dockerfile with RUN steps, FROM an image the store
    // does not have (the build pulls it), then a fully cached rebuild.
    let base = format!("{host}/inst/base:1");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://{base}"),
    ]);
    p.write(
        "app/Dockerfile",
        &format!(
            "FROM {base} AS build\n\
             RUN echo built-in-a-microvm > /out.txt && rm /etc/nsswitch.conf\n\
             FROM {base}\n\
             COPY --from=build /out.txt /out.txt\n\
             RUN cat /out.txt > /again.txt && echo step-two-$((1+1))-ran\n\
             CMD [\"cat\", \"/again.txt\"]\n"
        ),
    );
    p.write("app/unused.txt", "context file\n");
    let t0 = Instant::now();
    let out = p.mvctl(&["build", "--progress", "plain", "-t", "inst/built:1", "app"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed: {log}");
    assert!(
        log.contains("step-two-2-ran"),
        "the RUN step's output (not only its command line) is shown: {log}"
    );
    eprintln!("first build: {:.1} s", t0.elapsed().as_secs_f64());
    let out = p.ok(&["run", "--rm", "inst/built:1"]);
    assert_eq!(out.trim(), "built-in-a-microvm");
    let out = p.mvctl(&["build", "--progress", "plain", "-t", "inst/built:1", "app"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rebuild failed: {log}");
    assert!(
        !log.contains("step-two-2-ran"),
        "a cached rebuild runs nothing: {log}"
    );
    assert_eq!(
        log.matches("CACHED").count(),
        3,
        "COPY and both RUNs cached: {log}"
    );

    // Login against an htpasswd registry: a wrong password stores nothing,
    // the right one is kept 0600 in the user's HOME; logout forgets it.
    let auth_reg = Registry::start_with_user("mvm-user", "s3cret-pass");
    let ahost = auth_reg.host();
    let secured = format!("{ahost}/inst/secure:1");
    p.ok(&["tag", "inst/busybox:1", &secured]);
    let e = p.fails(&["push", "--insecure", &secured]);
    assert!(
        e.contains("login"),
        "an anonymous push is refused, saying to log in: {e}"
    );
    let login = |pw: &str| {
        p.mvctl_in(
            &[
                "login",
                "--insecure",
                "-u",
                "mvm-user",
                "--password-stdin",
                &ahost,
            ],
            Some(format!("{pw}\n").as_bytes()),
        )
    };
    let out = login("wrong");
    assert!(!out.status.success());
    let auth_file = p.home.path().join(".config/mvm/auth.json");
    assert!(!auth_file.exists(), "a refused login stores nothing");
    let out = login("s3cret-pass");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Login Succeeded")
    );
    let mode = fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials are kept 0600");
    p.ok(&["push", "--insecure", &secured]);
    p.ok(&["rmi", &secured]);
    p.ok(&["pull", "--insecure", &secured]);
    p.ok(&["logout", &ahost]);
    let e = p.fails(&["pull", "--insecure", &secured]);
    assert!(e.contains("login"), "{e}");

    // Volumes as a user keeps data: written by one sandbox, read by the
    // next and through --volumes-from, exported to a file on this host (in
    // machine mode the archive crosses from the machine), imported into a
    // new volume, and not overwritten without -f.
    p.ok(&["volume", "create", "inst-data"]);
    p.ok(&[
        "run",
        "--rm",
        "-v",
        "inst-data:/data",
        "inst/busybox:1",
        "sh",
        "-c",
        "echo kept > /data/f && mkdir /data/d && echo deep > /data/d/g",
    ]);
    p.ok(&[
        "run",
        "-d",
        "--name",
        "inst-holder",
        "-v",
        "inst-data:/data",
        "inst/busybox:1",
        "sleep",
        "600",
    ]);
    let out = p.ok(&[
        "run",
        "--rm",
        "--volumes-from",
        "inst-holder:ro",
        "inst/busybox:1",
        "sh",
        "-c",
        "cat /data/f; touch /data/x 2>&1 || echo refused",
    ]);
    assert!(
        out.contains("kept") && out.contains("refused"),
        "--volumes-from NAME:ro shares the volume read-only: {out}"
    );
    p.ok(&["rm", "-f", "inst-holder"]);
    let exported = p.work.path().join("inst-data.tar");
    p.ok(&[
        "volume",
        "export",
        "inst-data",
        "-o",
        exported.to_str().unwrap(),
    ]);
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&exported)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l.trim_start_matches("./") == "d/g"),
        "the export is a tar that tar(1) reads: {listing}"
    );
    p.ok(&["volume", "import", "inst-copy", exported.to_str().unwrap()]);
    let out = p.ok(&[
        "run",
        "--rm",
        "-v",
        "inst-copy:/c",
        "inst/busybox:1",
        "cat",
        "/c/f",
        "/c/d/g",
    ]);
    assert!(out.contains("kept") && out.contains("deep"), "{out}");
    let e = p.fails(&["volume", "import", "inst-copy", exported.to_str().unwrap()]);
    assert!(e.contains("not empty") && e.contains("force"), "{e}");
    p.ok(&["volume", "rm", "inst-data", "inst-copy"]);

    // Published ports as a user: a TCP and a UDP server in a sandbox
    // answer on this host's 127.0.0.1 (in machine mode through the
    // forwards mvctl adds before `run` returns), and both ports are free
    // again once `rm` returns.
    published_ports_reach_this_host(&p);

    // A checkpoint as a user: the sandbox stops with its memory saved and
    // `start --checkpoint` continues the same guest (a counter in its
    // tmpfs goes on from where it was).
    checkpoint_and_restore(&p);

    // Bad input: clear errors, and the store as it was.
    let before = p.images();
    let closed = registry_support::free_port();
    let e = p.fails(&[
        "pull",
        "--insecure",
        &format!("127.0.0.1:{closed}/inst/nothing:1"),
    ]);
    assert!(e.contains("connection refused"), "{e}");
    let e = p.fails(&[
        "pull",
        "--insecure",
        &format!("{host}/inst/busybox:no-such-tag"),
    ]);
    assert!(e.contains("manifest unknown"), "{e}");
    assert_eq!(p.images(), before, "failed pulls leave the store unchanged");
}

/// The guest tools' UDP echo server, built static by `make init` (busybox
/// has no UDP server); test data copied into an image, not the product.
fn udp_echo_tool() -> PathBuf {
    let p = repo().join("target/x86_64-unknown-linux-gnu/release/mvm-udp-echo");
    assert!(
        p.exists(),
        "{} is missing: `make init` builds it (crate mvm-guest-tools)",
        p.display()
    );
    p
}

/// Polls `what` every 200 ms until it gives a value or `limit` passes.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn published_ports_reach_this_host(p: &Product) {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fs::create_dir_all(p.work.path().join("web")).unwrap();
    fs::copy(udp_echo_tool(), p.work.path().join("web/mvm-udp-echo")).unwrap();
    p.write(
        "web/Dockerfile",
        "FROM inst/busybox:1\n\
         COPY mvm-udp-echo /bin/mvm-udp-echo\n\
         RUN mkdir /www && echo hello-published > /www/index.html\n",
    );
    p.ok(&["build", "--progress", "plain", "-t", "inst/web:1", "web"]);
    let tcp = registry_support::free_port();
    let udp = loop {
        let port = registry_support::free_port();
        if port != tcp && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    p.ok(&[
        "run",
        "-d",
        "--name",
        "inst-web",
        "-p",
        &format!("{tcp}:8080"),
        "-p",
        &format!("{udp}:7070/udp"),
        "inst/web:1",
        "sh",
        "-c",
        "mvm-udp-echo 7070 & exec httpd -f -p 8080 -h /www",
    ]);
    let ports = p.ok(&["port", "inst-web"]);
    assert!(
        ports.contains(&format!("8080/tcp -> 0.0.0.0:{tcp}"))
            && ports.contains(&format!("7070/udp -> 0.0.0.0:{udp}")),
        "mvctl port names both: {ports}"
    );

    let page = wait_for(
        "the published TCP port to answer",
        Duration::from_secs(120),
        || {
            let mut s = TcpStream::connect(("127.0.0.1", tcp)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            body.contains("hello-published").then_some(body)
        },
    );
    assert!(page.starts_with("HTTP/1."), "{page}");

    // The echo server says when it listens; then a datagram through the
    // published port comes back (sent again while the reply is missing:
    // UDP may drop it, and nothing says the forward carried the first).
    wait_for("the UDP server to listen", Duration::from_secs(60), || {
        p.ok(&["logs", "inst-web"])
            .contains("udp-listening 7070")
            .then_some(())
    });
    let sock = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let answer = wait_for(
        "the UDP echo through the published port",
        Duration::from_secs(60),
        || {
            sock.send_to(b"ping-installed", ("127.0.0.1", udp)).ok()?;
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        },
    );
    assert!(
        answer.ends_with(" 7070 ping-installed"),
        "the guest's echo server answered: {answer}"
    );

    p.ok(&["rm", "-f", "inst-web"]);
    assert!(
        TcpListener::bind(("127.0.0.1", tcp)).is_ok(),
        "TCP port {tcp} is released when rm returns"
    );
    assert!(
        UdpSocket::bind(("127.0.0.1", udp)).is_ok(),
        "UDP port {udp} is released when rm returns"
    );
}

fn checkpoint_and_restore(p: &Product) {
    p.ok(&[
        "run",
        "-d",
        "--name",
        "inst-count",
        "inst/busybox:1",
        "sh",
        "-c",
        // Renamed into place: `cat` never sees the file between the
        // truncation and the write of `echo >`.
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; echo tick $i; sleep 0.2; done",
    ]);
    let last_tick = || -> u64 {
        p.ok(&["logs", "--tail", "1", "inst-count"])
            .trim()
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    wait_for("the workload to count", Duration::from_secs(120), || {
        (last_tick() >= 3).then_some(())
    });
    p.ok(&["checkpoint", "create", "inst-count", "c1"]);
    let at_checkpoint = last_tick();
    assert!(p.ok(&["checkpoint", "ls", "inst-count"]).contains("c1"));
    p.ok(&["start", "--checkpoint", "c1", "inst-count"]);
    wait_for(
        "the restored workload to count",
        Duration::from_secs(120),
        || (last_tick() > at_checkpoint).then_some(()),
    );
    let count: u64 = p
        .ok(&["exec", "inst-count", "cat", "/tmp/count"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        count > at_checkpoint,
        "the tmpfs counter is {count}; it was {at_checkpoint} at the checkpoint"
    );
    let logs = p.ok(&["logs", "inst-count"]);
    assert_eq!(
        logs.lines().filter(|l| *l == "tick 1").count(),
        1,
        "the count did not start again after the restore: {logs}"
    );
    p.ok(&["rm", "-f", "inst-count"]);
}
