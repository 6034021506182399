//! TLS on mvmd's TCP API, through the real programs: `mvmd --tcp ...
//! --tlscert --tlskey --tlsverify --tlscacert` and the `mvctl` binary with
//! Docker's TLS flags. Certificates are made by the `openssl` command (a
//! CA, a server certificate for 127.0.0.1, a client certificate, and a
//! second CA nobody trusts). No microVM boots, so mvmd runs with
//! placeholder kernel, init and VMM files and the test needs no KVM.
//!
//! `mvctl` is taken from next to the `mvmd` test binary (`cargo build -p
//! mvctl` first; `cargo test --workspace` builds it).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mvctl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_mvmd")).with_file_name("mvctl");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p mvctl` first",
        p.display()
    );
    p
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `NAME-ca.pem`/`NAME-ca.key`, and certificates it signs.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
}

fn signed(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-days",
            "2",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: tempfile::TempDir, extra: &[String]) -> Daemon {
    let d = dir.path();
    let fake = d.join("artifacts");
    std::fs::create_dir_all(&fake).unwrap();
    for f in ["vmlinux", "mvm-init", "mvm-vmm", "mvm-jailer"] {
        std::fs::write(fake.join(f), b"not used: no microVM boots here").unwrap();
    }
    std::fs::write(d.join("token"), "a-token-of-sufficient-length\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(d.join("mvmd.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvmd"));
    cmd.arg("--no-network")
        .arg("--root")
        .arg(d.join("root"))
        .arg("--run-dir")
        .arg(d.join("run"))
        .arg("--tcp")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--token-file")
        .arg(d.join("token"))
        .args(extra)
        .env("MVM_KERNEL", fake.join("vmlinux"))
        .env("MVM_INIT", fake.join("mvm-init"))
        .env("MVM_VMM", fake.join("mvm-vmm"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn mvmd");
    let daemon = Daemon { dir, child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mvmd did not listen: {}",
            std::fs::read_to_string(daemon.dir.path().join("mvmd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

impl Daemon {
    fn mvctl(&self, args: &[&str], token: bool) -> Output {
        let mut cmd = Command::new(mvctl_bin());
        cmd.arg("-H")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(args)
            .arg("version")
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("MVM_HOST")
            .env_remove("MVM_TOKEN")
            .env_remove("MVM_TLS_VERIFY")
            .env_remove("MVM_CERT_PATH")
            .stdin(Stdio::null());
        if token {
            cmd.arg("--token-file").arg(self.dir.path().join("token"));
        }
        cmd.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn tcp_with_tls_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let d = d.as_path();
    ca(d, "good");
    ca(d, "rogue");
    signed(
        d,
        "good",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(d, "good", "client", "extendedKeyUsage=clientAuth\n");
    signed(d, "rogue", "intruder", "extendedKeyUsage=clientAuth\n");
    let p = |f: &str| d.join(f).display().to_string();
    let daemon = start(
        dir,
        &[
            "--tlscert".into(),
            p("server.pem"),
            "--tlskey".into(),
            p("server.key"),
            "--tlsverify".into(),
            "--tlscacert".into(),
            p("good-ca.pem"),
        ],
    );
    let verified = |cert: &str, key: &str, ca: &str| {
        vec![
            "--tlsverify".to_string(),
            "--tlscacert".into(),
            p(ca),
            "--tlscert".into(),
            p(cert),
            "--tlskey".into(),
            p(key),
        ]
    };
    let run = |v: Vec<String>, token: bool| {
        daemon.mvctl(&v.iter().map(String::as_str).collect::<Vec<_>>(), token)
    };

    // The right CA, certificate and token: through.
    let o = run(verified("client.pem", "client.key", "good-ca.pem"), true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Server"),
        "{}",
        text(&o)
    );

    // TLS and a good certificate, but no token: still refused.
    let o = run(verified("client.pem", "client.key", "good-ca.pem"), false);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("token"), "{}", text(&o));

    // A client certificate from a CA the daemon does not trust (TLS 1.3:
    // the daemon's refusal arrives as an alert after the client's half of
    // the handshake).
    let o = run(
        verified("intruder.pem", "intruder.key", "good-ca.pem"),
        true,
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("UnknownCA"), "{}", text(&o));

    // No client certificate at all.
    let o = run(
        vec!["--tlsverify".into(), "--tlscacert".into(), p("good-ca.pem")],
        true,
    );
    assert!(!o.status.success(), "{}", text(&o));

    // The client does not trust the server's CA.
    let o = run(verified("client.pem", "client.key", "rogue-ca.pem"), true);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("TLS handshake failed"), "{}", text(&o));

    // Plain HTTP to the TLS port.
    let o = run(vec![], true);
    assert!(!o.status.success(), "{}", text(&o));

    // Docker's --tls: encrypted without checking the server, with the
    // client certificate the daemon requires.
    let o = run(
        vec![
            "--tls".into(),
            "--tlscert".into(),
            p("client.pem"),
            "--tlskey".into(),
            p("client.key"),
        ],
        true,
    );
    assert!(o.status.success(), "{}", text(&o));
}
