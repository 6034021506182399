//! What the API tests share: a real `mvmd` process with its own root and
//! placeholder kernel, init and VMM files (nothing here boots a microVM),
//! the `mvctl` binary against it, and raw HTTP requests.
//!
//! `mvctl` is taken from next to the `mvmd` test binary's target dir
//! (`target/debug/mvctl`): `cargo build -p mvctl` first (`cargo test
//! --workspace` builds it).

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running mvmd with its own root, and a home for mvctl's credentials.
pub struct Mvmd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub sock: PathBuf,
}

/// What an mvctl run printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "mvctl failed: {self:#?}");
        self
    }

    #[track_caller]
    pub fn fails_with(self, text: &str) -> Out {
        assert_eq!(self.code, 125, "mvctl should have failed: {self:#?}");
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}: {self:#?}"
        );
        self
    }
}

pub fn mvctl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_mvmd")).with_file_name("mvctl");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p mvctl` first",
        p.display()
    );
    p
}

impl Mvmd {
    pub fn start() -> Mvmd {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("artifacts");
        std::fs::create_dir_all(&fake).unwrap();
        for f in ["vmlinux", "mvm-init", "mvm-vmm", "mvm-jailer"] {
            std::fs::write(fake.join(f), b"not used: no microVM boots here").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let log = std::fs::File::create(dir.path().join("mvmd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvmd"));
        cmd.arg("--no-network")
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .env("MVM_KERNEL", fake.join("vmlinux"))
            .env("MVM_INIT", fake.join("mvm-init"))
            .env("MVM_VMM", fake.join("mvm-vmm"))
            .env("HOME", dir.path().join("daemon-home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl in the child before exec; async-signal-safe. The
        // daemon goes with the test's thread, which owns it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn mvmd");
        let sock = dir.path().join("run/mvmd.sock");
        let m = Mvmd { dir, child, sock };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if m.sock.exists() && api(&m.sock, "GET", "/_ping", &[], "").0 == 200 {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mvmd did not start: {}", m.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mvmd.log")).unwrap_or_default()
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// mvctl with a clean environment: its own HOME, no MVM_CONFIG or
    /// DOCKER_CONFIG unless given.
    pub fn mvctl(&self, args: &[&str]) -> Out {
        self.mvctl_with(args, &[], None)
    }

    pub fn mvctl_with(&self, args: &[&str], env: &[(&str, OsString)], stdin: Option<&str>) -> Out {
        let mut cmd = Command::new(mvctl_bin());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("HOME", self.home())
            .env_remove("MVM_CONFIG")
            .env_remove("DOCKER_CONFIG")
            .env_remove("MVM_HOST")
            .env_remove("MVM_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let input = stdin.unwrap_or("").to_string();
        let mut pipe = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Mvmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to mvmd (the answer ends with the connection, so
/// a streamed body needs no de-chunking): status and body.
pub fn api(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: mvmd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
