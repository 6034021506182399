//! mvctl and closed pipes: a daemon that closes the connection during an
//! upload is an error mvctl reports, never a SIGPIPE that kills it; a
//! closed stdout (`mvctl ... | head`) still ends it quietly.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Answer `GET /_ping` with 200; read a little of any other request, then
/// close the connection without an answer while the client still sends.
fn refusing_daemon(listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { return };
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let ping = line.starts_with("GET /_ping");
                // The rest of the head.
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                if ping {
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
                    continue;
                }
                let mut some = [0u8; 4096];
                let _ = r.read(&mut some);
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
        });
    }
}

#[test]
fn a_daemon_closing_an_upload_is_an_error_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || refusing_daemon(listener));
    // Larger than any socket buffer, so mvctl is still writing when the
    // daemon closes.
    let tarball = dir.path().join("big.tar");
    std::fs::File::create(&tarball)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mvctl"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(["load", "-q", "-i"])
        .arg(&tarball)
        .env_remove("MVM_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "mvctl died by a signal; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.contains("mvctl: error"), "stderr: {stderr}");
}

#[test]
fn a_closed_stdout_ends_mvctl_by_sigpipe_without_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mvctl"))
        .args(["completion", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
        "status {:?}; stderr: {stderr}",
        out.status
    );
}
