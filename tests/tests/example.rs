//! The example app of `examples/average/`, end to end as a user runs it:
//! the Python base image made offline by `resources/images/python.sh` is
//! imported with `mvctl import`, `mvctl build -t average examples/average`
//! builds it through a real `mvmd`, and `mvctl run --rm average` boots it
//! in a microVM and must print `Average: 3.0`.
//!
//! The base image tarball is made by `make test` (the `images` target,
//! about 2-3 minutes from nothing, then cached). Inside the emulated KVM
//! host there is no network to make it, so a missing tarball fails the
//! test with what to run; on a host with hardware KVM the test makes it
//! itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mvm_e2e::daemon::{binary, start_answering};

/// The repository root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python base image tarball of `resources/images/python.sh`.
fn python_tarball() -> PathBuf {
    let cache = std::env::var_os("MVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mvm"));
    let tar = cache.join("images/python3-bookworm.tar");
    if tar.is_file() {
        return tar;
    }
    assert!(
        std::env::var_os("MVM_TESTHOST").is_none(),
        "{} is missing and the emulated KVM host has no network to make it: \
         run `make images` (resources/images/python.sh) on the host first; `make test` does",
        tar.display()
    );
    // On a host with hardware KVM: make it (debootstrap from Debian's
    // mirror, a few minutes once, cached afterwards).
    let script = repo().join("resources/images/python.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run resources/images/python.sh");
    assert!(
        out.status.success(),
        "{} failed ({}); it needs root and Debian's mirror",
        script.display(),
        out.status
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "python.sh printed {path:?}, not a file");
    path
}

/// `mvctl ARGS` against the daemon at `host`, with a deadline.
fn mvctl(host: &str, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(binary("mvctl"))
        .args(args)
        .env("MVM_HOST", host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mvctl");
    let t = Instant::now();
    loop {
        if child.try_wait().expect("wait for mvctl").is_some() {
            break;
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("mvctl output");
            panic!(
                "mvctl {args:?} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("mvctl output");
    eprintln!(
        "mvctl {args:?}: {} in {:.1}s\n{}",
        out.status,
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn example_average_builds_and_prints_the_average() {
    mvm_e2e::require_hardware_kvm();
    for v in ["MVM_KERNEL", "MVM_INIT", "MVM_VMM"] {
        assert!(
            std::env::var_os(v).is_some(),
            "{v} is not set: run tests/run-e2e.sh"
        );
    }
    let tarball = python_tarball();
    let dir = tempfile::Builder::new()
        .prefix("mvm-example-e2e-")
        .tempdir()
        .unwrap();
    let (root, run, log) = (
        dir.path().join("root"),
        dir.path().join("run"),
        dir.path().join("mvmd.log"),
    );
    let socket = start_answering(&root, &run, &log);
    let host = format!("unix://{}", socket.display());
    let daemon_log = || fs::read_to_string(&log).unwrap_or_default();

    // Under nested emulation the 150 MB import and the first root disk
    // of the image take tens of seconds each.
    let long = Duration::from_secs(900);
    let out = mvctl(
        &host,
        &["import", tarball.to_str().unwrap(), "python:3-bookworm"],
        long,
    );
    assert!(
        out.status.success(),
        "import failed; mvmd:\n{}",
        daemon_log()
    );

    let example = repo().join("examples/average");
    let out = mvctl(
        &host,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "average",
            example.to_str().unwrap(),
        ],
        long,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build failed: {stderr}\nmvmd:\n{}",
        daemon_log()
    );
    for want in [
        "[stage-0 1/4] FROM python:3-bookworm",
        "[stage-0 2/4] WORKDIR /app",
        "[stage-0 3/4] COPY average.py .",
        "[stage-0 4/4] CMD [\"python3\", \"average.py\"]",
        "Successfully tagged docker.io/library/average:latest",
    ] {
        assert!(
            stderr.contains(want),
            "no {want:?} in the build output:\n{stderr}"
        );
    }

    let out = mvctl(&host, &["run", "--rm", "average"], long);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run failed ({}): {stdout}\nmvmd:\n{}",
        out.status,
        daemon_log()
    );
    assert_eq!(stdout, "Average: 3.0\n");
    // --rm left nothing behind.
    let out = mvctl(&host, &["ps", "-a", "-q"], Duration::from_secs(60));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}
