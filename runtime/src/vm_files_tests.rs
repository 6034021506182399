//! The host's readers and writers of a sandbox's `vm/` directory (the
//! VMM's, owned by its unprivileged uid when jailed) refuse what a
//! compromised VMM could leave there: a symlink to a host secret in place
//! of the console, the VMM log or the status file. No VM is needed: the
//! files are made as such a VMM would.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::exit::{self, Intent};
use crate::paths::{Layout, SandboxPaths};
use crate::process::{self, ProcessError, SpawnSpec};

/// A secret a VMM must never get the host to read or write: it reads as
/// a clean power-off and an OOM on the console, so following the link
/// would show in the results.
const SECRET: &str = r#"{"guest":"powered_off","workload":{"exit_code":0},"boot_time_us":1,"message":"oom-kill: root:SECRET-HASH"}"#;

fn sandbox(t: &Path) -> (SandboxPaths, std::path::PathBuf) {
    let layout = Layout::new(t.join("root"), t.join("run"));
    let paths = layout.sandbox("0123456789abcdef");
    std::fs::create_dir_all(&paths.vm_dir).unwrap();
    let secret = t.join("shadow");
    std::fs::write(&secret, SECRET).unwrap();
    (paths, secret)
}

#[test]
fn a_symlinked_console_is_not_read() {
    let t = tempfile::tempdir().unwrap();
    let (paths, secret) = sandbox(t.path());
    symlink(&secret, &paths.console).unwrap();
    // The secret says "oom-kill:": read through the link, this is true.
    assert!(!exit::console_shows_oom(&paths.console));
    let e = crate::paths::read_vm_file(&paths.console).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("console.log") && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "{msg}");
    // The rotated part likewise.
    let prev = crate::paths::previous_part(&paths.console);
    symlink(&secret, &prev).unwrap();
    assert!(crate::paths::read_vm_file(&prev).is_err());
}

#[test]
fn a_symlinked_status_file_fails_the_run_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let (paths, secret) = sandbox(t.path());
    // A real status file is read.
    std::fs::write(&paths.status, SECRET).unwrap();
    let info = crate::exit_info_of(&paths, Intent::None, None);
    assert_eq!(info.exit_code, 0, "{info:?}");
    std::fs::remove_file(&paths.status).unwrap();
    symlink(&secret, &paths.status).unwrap();
    let info = crate::exit_info_of(&paths, Intent::None, None);
    assert_ne!(info.exit_code, 0, "{info:?}");
    let err = info.error.unwrap_or_default();
    assert!(
        err.contains("status file was refused") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
    assert!(!info.oom_killed);
}

#[test]
fn a_symlinked_vmm_log_is_not_read_nor_written() {
    let t = tempfile::tempdir().unwrap();
    let (paths, secret) = sandbox(t.path());
    symlink(&secret, &paths.vmm_log).unwrap();
    // The tail shown in a transient's errors.
    let tail = crate::transient::tail(&paths.vmm_log, 4096);
    assert!(tail.contains("symbolic link"), "{tail}");
    assert!(!tail.contains("SECRET"), "{tail}");
    // The next start would append the VMM's stderr to it: refused before
    // anything runs.
    let spec = SpawnSpec {
        vmm: Path::new("/bin/true"),
        config: Path::new("/nonexistent"),
        log: &paths.vmm_log,
        cgroup_procs: None,
        log_filter: None,
        die_with_parent: false,
        jailer: None,
    };
    match process::spawn(&spec) {
        Err(ProcessError::Open { path, source }) => {
            assert_eq!(path, paths.vmm_log);
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
            let msg = source.to_string();
            assert!(msg.contains("symbolic link"), "{msg}");
        }
        other => panic!("spawn through a symlinked log: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
    // A dangling link would have been created through: not either.
    std::fs::remove_file(&paths.vmm_log).unwrap();
    let made = t.path().join("made-by-root");
    symlink(&made, &paths.vmm_log).unwrap();
    assert!(process::spawn(&spec).is_err());
    assert!(!made.exists());
}

#[test]
fn a_vm_directory_that_is_a_symlink_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (paths, _secret) = sandbox(t.path());
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("console.log"), "oom-kill:").unwrap();
    std::fs::remove_dir(&paths.vm_dir).unwrap();
    symlink(&elsewhere, &paths.vm_dir).unwrap();
    assert!(!exit::console_shows_oom(&paths.console));
    assert!(crate::paths::read_vm_file(&paths.console).is_err());
}

#[test]
fn a_fifo_console_is_refused_without_blocking() {
    let t = tempfile::tempdir().unwrap();
    let (paths, _secret) = sandbox(t.path());
    let c = std::ffi::CString::new(paths.console.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opened plainly, this would wait for a writer forever.
    assert!(!exit::console_shows_oom(&paths.console));
    let e = crate::paths::read_vm_file(&paths.console).unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");
}

/// The VMM's vsock socket lives in its socket directory, which is the
/// VMM's to write: a compromised VMM can put a link there in place of
/// `v.sock`. The agent connection every runtime caller makes (mvmd, the
/// builder, the shim) refuses it at once and never reaches the link's
/// target; the VMM's own socket still works.
#[tokio::test]
async fn a_link_planted_for_the_vsock_socket_is_refused() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    use mvm_protocol::agent::client::{AgentClient, ClientError};

    let t = tempfile::tempdir().unwrap();
    let (paths, _secret) = sandbox(t.path());
    std::fs::create_dir_all(&paths.sockets).unwrap();
    // Another socket of the host (mvmd's API socket, say).
    let host_socket = t.path().join("mvmd.sock");
    let other = UnixListener::bind(&host_socket).unwrap();
    other.set_nonblocking(true).unwrap();
    let reached = || match other.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    };
    for target in [host_socket.clone(), "../../../mvmd.sock".into()] {
        symlink(&target, &paths.vsock).unwrap();
        let started = Instant::now();
        let e = match AgentClient::connect(paths.agent_socket(), Duration::from_secs(10)).await {
            Ok(_) => panic!("connected through a link to {}", target.display()),
            Err(e) => e,
        };
        assert!(matches!(e, ClientError::Refused(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("v.sock") && msg.contains("symbolic link"),
            "{msg}"
        );
        // Refused, not retried until the deadline.
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
        assert!(!reached(), "the link's target got a connection");
        std::fs::remove_file(&paths.vsock).unwrap();
    }

    // The VMM's own socket: the hybrid handshake goes through.
    let vmm = UnixListener::bind(&paths.vsock).unwrap();
    let answer = std::thread::spawn(move || {
        let (mut s, _) = vmm.accept().unwrap();
        let mut line = [0u8; 13];
        s.read_exact(&mut line).unwrap();
        s.write_all(b"OK 1073741824\n").unwrap();
        line
    });
    let c = AgentClient::connect(paths.agent_socket(), Duration::from_secs(10)).await;
    assert!(c.is_ok(), "{:?}", c.err());
    assert_eq!(&answer.join().unwrap(), b"CONNECT 1023\n");
    assert!(!reached());
}
