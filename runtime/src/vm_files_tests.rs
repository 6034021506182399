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
