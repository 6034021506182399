//! Issue 13, virtio-fs: host directories shared into a microVM through
//! the VMM's vhost-user frontend and a sandboxed virtiofsd per share, on
//! real KVM, with the real init mounting them from the launch spec.

use std::fs;
use std::path::Path;
use std::process::Command;

use mvm_e2e::{GuestState, StatusExt, Vm};
use mvm_runtime::share::{log_path, HostShare};

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A multi-MiB file of varied content (not all zeros: a lost or shifted
/// block changes the digest).
fn big_file(path: &Path, mib: usize) {
    let mut data = Vec::with_capacity(mib << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(path, data).unwrap();
}

fn backend_logs(vm: &Vm) -> String {
    (0..vm.shares.len())
        .map(|i| fs::read_to_string(log_path(&vm.paths(), i)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shares_read_write_and_read_only_cross_the_boundary_intact() {
    let host = tempfile::tempdir().unwrap();
    let rw = host.path().join("rw");
    let ro = host.path().join("ro");
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&ro).unwrap();
    fs::write(rw.join("host.txt"), "written by the host\n").unwrap();
    big_file(&rw.join("host-big.bin"), 8);
    fs::write(ro.join("ro.txt"), "read-only content\n").unwrap();
    let host_big = sha256(&rw.join("host-big.bin"));

    let script = r#"
set -e
echo "from the guest" > /data/guest.txt
mkdir -p /data/dir/sub && echo nested > /data/dir/sub/f
cat /data/host.txt
echo "host-big $(sha256sum /data/host-big.bin | cut -d' ' -f1)"
dd if=/dev/urandom of=/data/guest-big.bin bs=1M count=6 2>/dev/null
echo "guest-big $(sha256sum /data/guest-big.bin | cut -d' ' -f1)"
cat /ro/ro.txt
if echo nope > /ro/new.txt 2>/tmp/err; then echo "ro-write: allowed"; else echo "ro-write: $(cat /tmp/err)"; fi
if rm /ro/ro.txt 2>/tmp/err; then echo "ro-rm: allowed"; else echo "ro-rm: $(cat /tmp/err)"; fi
grep -E ' /(data|ro) ' /proc/mounts
sync
"#;
    let mut vm = Vm::new(&["/bin/sh", "-c", script]);
    vm.memory_mib = 256;
    vm.shares = vec![
        HostShare {
            tag: "data".into(),
            source: rw.clone(),
            target: "/data".into(),
            read_only: false,
        },
        HostShare {
            tag: "config.ro".into(),
            source: ro.clone(),
            // A missing mount point in the image: init creates it.
            target: "/ro".into(),
            read_only: true,
        },
    ];
    let out = vm.run();
    let why = format!("{}\n--- virtiofsd\n{}", out.describe(), backend_logs(&vm));
    assert_eq!(out.code(), Some(0), "{why}");
    assert_eq!(out.status().guest, GuestState::PoweredOff, "{why}");
    assert_eq!(out.status().exit_code(), Some(0), "{why}");
    let c = &out.console;

    // Host -> guest: a small file and a multi-MiB one, byte for byte.
    assert!(c.contains("written by the host"), "{why}");
    assert!(c.contains(&format!("host-big {host_big}")), "{why}");
    // Guest -> host.
    assert_eq!(
        fs::read_to_string(rw.join("guest.txt")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        fs::read_to_string(rw.join("dir/sub/f")).unwrap(),
        "nested\n"
    );
    let guest_big = sha256(&rw.join("guest-big.bin"));
    assert_eq!(
        fs::metadata(rw.join("guest-big.bin")).unwrap().len(),
        6 << 20
    );
    assert!(c.contains(&format!("guest-big {guest_big}")), "{why}");

    // Read-only: readable, writes refused with EROFS, nothing reaches the host.
    assert!(c.contains("read-only content"), "{why}");
    assert!(
        c.contains("ro-write: ") && !c.contains("ro-write: allowed"),
        "{why}"
    );
    assert!(c.contains("Read-only file system"), "{why}");
    assert!(!c.contains("ro-rm: allowed"), "{why}");
    assert!(!ro.join("new.txt").exists());
    assert!(ro.join("ro.txt").exists());
    assert!(
        c.lines()
            .any(|l| l.starts_with("config.ro /ro virtiofs ro")),
        "{why}"
    );
    assert!(
        c.lines().any(|l| l.starts_with("data /data virtiofs rw")),
        "{why}"
    );
}

#[test]
fn a_share_whose_backend_dies_ends_the_vm_with_an_error_naming_it() {
    let host = tempfile::tempdir().unwrap();
    // The guest reads the share once, then waits; the test kills the
    // backend meanwhile.
    let mut vm = Vm::new(&[
        "/bin/sh",
        "-c",
        "ls /s >/dev/null && echo share-ready && sleep 600",
    ]);
    vm.shares = vec![HostShare {
        tag: "doomed".into(),
        source: host.path().to_owned(),
        target: "/s".into(),
        read_only: false,
    }];
    let mut running = vm.spawn();
    running.wait_for_console("share-ready");
    let pid = running.backends.as_ref().unwrap().records()[0].process.pid;
    // SAFETY: kill(2) of the backend this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let out = running.wait();
    assert_eq!(out.code(), Some(1), "a VMM error: {}", out.describe());
    let status = out.status();
    assert_eq!(status.guest, GuestState::Error, "{}", out.describe());
    assert!(
        status.message.contains("\"doomed\"") && status.message.contains("backend"),
        "{}",
        out.describe()
    );
    assert!(
        out.elapsed < std::time::Duration::from_secs(120),
        "{}",
        out.describe()
    );
}

#[test]
fn a_mount_of_a_tag_the_vmm_does_not_have_is_an_init_error_naming_it() {
    let mut vm = Vm::new(&["/bin/true"]);
    vm.spec.mounts = vec![mvm_protocol::launch::Mount {
        tag: "absent".into(),
        target: "/x".into(),
        read_only: false,
        copy_up: false,
    }];
    let out = vm.run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let err = out.status().init_error().unwrap_or_default().to_string();
    assert!(!err.is_empty(), "{}", out.describe());
    assert!(
        out.console.contains("\"absent\"") && out.console.contains("/x"),
        "{}",
        out.describe()
    );
}

/// `CapEff` of the process that serves a backend: the child its
/// namespace sandbox forked (the process the runtime started keeps none).
fn served_cap_eff(backend_pid: i32) -> u64 {
    let children =
        fs::read_to_string(format!("/proc/{backend_pid}/task/{backend_pid}/children")).unwrap();
    let child: i32 = children
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("backend {backend_pid} has no sandboxed child"))
        .parse()
        .unwrap();
    let status = fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(v.trim(), 16).unwrap()
}

/// Each backend serving a running guest holds only the capabilities its
/// share needs (`runtime/src/share.rs`): `dac_override` alone for a
/// read-only share; chown, dac_override, fowner, fsetid, setgid, setuid
/// for a writable one (no mknod, setfcap, or dac_read_search); and the
/// guest still reads and writes through them.
#[test]
fn each_backend_keeps_only_the_capabilities_its_share_needs() {
    let host = tempfile::tempdir().unwrap();
    let (rw, ro) = (host.path().join("rw"), host.path().join("ro"));
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&ro).unwrap();
    fs::write(ro.join("ro.txt"), "read-only content\n").unwrap();
    // The guest waits for the host's go (a file on the writable share),
    // so the backends are measured while they serve it.
    let script = r#"
set -e
cat /ro/ro.txt
echo written > /data/guest.txt
echo shares-up
while [ ! -e /data/go ]; do sleep 0.1; done
echo "go seen"
"#;
    let mut vm = Vm::new(&["/bin/sh", "-c", script]);
    vm.shares = vec![
        HostShare {
            tag: "data".into(),
            source: rw.clone(),
            target: "/data".into(),
            read_only: false,
        },
        HostShare {
            tag: "conf".into(),
            source: ro.clone(),
            target: "/ro".into(),
            read_only: true,
        },
    ];
    let mut running = vm.spawn();
    running.wait_for_console("shares-up");
    let pids: Vec<i32> = running
        .backends
        .as_ref()
        .unwrap()
        .records()
        .iter()
        .map(|r| r.process.pid)
        .collect();
    let caps: Vec<u64> = pids.iter().map(|&p| served_cap_eff(p)).collect();
    fs::write(rw.join("go"), "").unwrap();
    let out = running.wait();
    let why = format!("{}\n--- virtiofsd\n{}", out.describe(), backend_logs(&vm));
    assert_eq!(out.code(), Some(0), "{why}");
    assert!(out.console.contains("read-only content"), "{why}");
    assert!(out.console.contains("go seen"), "{why}");
    assert_eq!(
        fs::read_to_string(rw.join("guest.txt")).unwrap(),
        "written\n"
    );
    // <linux/capability.h>: chown 0, dac_override 1, fowner 3, fsetid 4,
    // setgid 6, setuid 7.
    let writable = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7);
    eprintln!(
        "virtiofsd CapEff: writable {:#x}, read-only {:#x}",
        caps[0], caps[1]
    );
    assert_eq!(caps[0], writable, "writable share: CapEff {:#x}", caps[0]);
    assert_eq!(caps[1], 1 << 1, "read-only share: CapEff {:#x}", caps[1]);
}
