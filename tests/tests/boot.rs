//! Issue 2: a microVM boots our kernel on real KVM with the image on
//! virtio-blk, init runs a command, and its output and exit status come back.

use std::time::Duration;

use mvm_e2e::{debugfs_cat, rootfs, vmm_with_args, Artifacts, GuestState, StatusExt, Vm};

fn sh(script: &str) -> Vm {
    Vm::new(&["/bin/sh", "-c", script])
}

#[test]
fn output_reaches_the_host_and_exit_zero_is_reported() {
    let out = sh("echo hello-from-the-guest; cat /etc/image-marker").run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.status().guest,
        GuestState::PoweredOff,
        "{}",
        out.describe()
    );
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
    assert!(
        out.console.contains("hello-from-the-guest"),
        "{}",
        out.describe()
    );
    assert!(out.console.contains("from the image"), "{}", out.describe());
    assert!(
        out.status().boot_time_us.is_some_and(|t| t > 0),
        "{}",
        out.describe()
    );
}

#[test]
fn exit_status_three_is_reported() {
    let out = sh("exit 3").run();
    assert_eq!(
        out.code(),
        Some(0),
        "a workload failure is not a VMM failure: {}",
        out.describe()
    );
    assert_eq!(out.status().exit_code(), Some(3), "{}", out.describe());
}

#[test]
fn signal_death_is_reported() {
    let out = sh("kill -9 $$").run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.status().signal(), Some(9), "{}", out.describe());
    assert_eq!(out.status().exit_code(), None, "{}", out.describe());
}

#[test]
fn two_vcpus_are_visible() {
    let mut vm = sh("echo cpus=$(nproc)");
    vm.vcpus = 2;
    let out = vm.run();
    assert!(out.console.contains("cpus=2"), "{}", out.describe());
}

#[test]
fn configured_memory_is_visible() {
    let mut vm = sh("grep MemTotal /proc/meminfo");
    vm.memory_mib = 256;
    let out = vm.run();
    let kib: u64 = out
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal line: {}", out.describe()));
    // The kernel keeps some memory for itself; MemTotal is what it hands out.
    assert!(kib <= 256 * 1024, "MemTotal {kib} kB exceeds 256 MiB");
    assert!(kib >= 200 * 1024, "MemTotal {kib} kB is far below 256 MiB");
}

#[test]
fn image_disk_is_read_only_and_scratch_layer_writable() {
    let before = std::fs::read(rootfs::busybox()).unwrap();
    let vm = sh("cat /sys/block/vda/ro /sys/block/vdb/ro; \
         echo written > /etc/new-file && rm /etc/image-marker && echo write-ok; \
         cat /etc/new-file; test -e /etc/image-marker || echo marker-gone");
    let out = vm.run();
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
    let console: Vec<&str> = out.console.lines().map(str::trim).collect();
    assert!(
        console.contains(&"1"),
        "image disk not read-only: {}",
        out.describe()
    );
    assert!(
        console.contains(&"0"),
        "scratch disk read-only: {}",
        out.describe()
    );
    assert!(console.contains(&"write-ok"), "{}", out.describe());
    assert!(console.contains(&"marker-gone"), "{}", out.describe());
    // The image disk is byte-for-byte unchanged; the change is on scratch.
    assert!(
        std::fs::read(rootfs::busybox()).unwrap() == before,
        "image disk was modified"
    );
    let upper = debugfs_cat(&vm.scratch(), "/upper/etc/new-file").unwrap();
    assert_eq!(upper, b"written\n");
}

#[test]
fn synced_data_survives_sigkill_of_the_vmm() {
    let vm = sh("echo durable-data > /data.txt; sync; echo synced-now; sleep 600");
    let mut running = vm.spawn();
    running.wait_for_console("synced-now");
    running.child.kill().unwrap(); // SIGKILL
    let st = running.child.wait().unwrap();
    assert!(!st.success());
    let data = debugfs_cat(&vm.scratch(), "/upper/data.txt").unwrap();
    assert_eq!(data, b"durable-data\n");
}

#[test]
fn guest_kernel_panic_ends_the_vmm_with_an_error() {
    let out = sh("echo c > /proc/sysrq-trigger; sleep 600").run();
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert_eq!(
        out.status().guest,
        GuestState::Crashed,
        "{}",
        out.describe()
    );
    let msg = out.status().message.clone();
    assert!(
        msg.contains("panic") || out.stderr.contains("panic"),
        "no panic message: {}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked at"),
        "the VMM itself panicked: {}",
        out.describe()
    );
}

#[test]
fn big_argv_and_env_reach_the_workload() {
    // Far beyond the 2 KiB kernel command line.
    let big = "x".repeat(64 * 1024);
    let mut vm = sh("echo len=${#BIG} arg=${#0}; echo \"$SPECIAL\"");
    vm.spec.process.args.push(big.clone());
    vm.spec.process.env.push(format!("BIG={big}"));
    vm.spec
        .process
        .env
        .push("SPECIAL=quotes ' \" and $dollar; semi".into());
    let out = vm.run();
    assert!(
        out.console.contains("len=65536 arg=65536"),
        "{}",
        out.describe()
    );
    assert!(
        out.console.contains("quotes ' \" and $dollar; semi"),
        "{}",
        out.describe()
    );
}

#[test]
fn user_workdir_and_env_are_applied() {
    let mut vm = sh("echo id=$(id -u):$(id -g) groups=$(id -G) pwd=$(pwd) home=$HOME foo=$FOO");
    vm.spec.process.user = "user".into();
    vm.spec.process.cwd = "/home/user/work".into();
    vm.spec.process.env.push("FOO=bar".into());
    let out = vm.run();
    assert!(
        out.console
            .contains("id=1000:1000 groups=1000 1500 pwd=/home/user/work home=/home/user foo=bar"),
        "{}",
        out.describe()
    );
}

#[test]
fn missing_executable_is_an_init_error_with_docker_code() {
    let out = Vm::new(&["/no/such/binary"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.status().exit_code(), Some(127), "{}", out.describe());
    assert!(out.status().init_error().is_some(), "{}", out.describe());
}

#[test]
fn no_scratch_disk_means_a_tmpfs_upper() {
    let mut vm = sh("echo hi > /f && cat /f");
    vm.spec.rootfs.scratch_drive = None;
    vm.drives.truncate(1);
    let out = vm.run();
    assert_eq!(out.status().exit_code(), Some(0), "{}", out.describe());
    assert!(out.console.contains("hi"), "{}", out.describe());
}

/// A bad configuration is refused with a clear message, exit code 1, and
/// no panic.
fn assert_config_error(patch: serde_json::Value, expect: &str) {
    let mut vm = sh("true");
    vm.invalid_patch = patch;
    vm.timeout = Duration::from_secs(30);
    let out = vm.run();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.to_lowercase().contains(&expect.to_lowercase()),
        "expected {expect:?} in: {}",
        out.describe()
    );
    assert!(!out.stderr.contains("panicked at"), "{}", out.describe());
}

#[test]
fn bad_configs_give_clear_errors() {
    let a = Artifacts::get();
    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("not-elf");
    std::fs::write(&not_elf, b"this is not a kernel").unwrap();
    assert_config_error(
        serde_json::json!({"kernel": "/no/such/vmlinux"}),
        "/no/such/vmlinux",
    );
    assert_config_error(serde_json::json!({"kernel": not_elf}), "elf");
    assert_config_error(serde_json::json!({"vcpus": 0}), "vcpu");
    assert_config_error(serde_json::json!({"memory_mib": 1}), "memory");
    assert_config_error(serde_json::json!({"memory_mib": 1u64 << 30}), "memory");
    assert_config_error(
        serde_json::json!({"drives": [{"id": "rootfs", "path": "/no/such/disk.ext4", "read_only": true}]}),
        "/no/such/disk.ext4",
    );
    assert_config_error(
        serde_json::json!({"initrd": ["/no/such/initrd"]}),
        "/no/such/initrd",
    );
    assert_config_error(serde_json::json!({"bogus_key": 1}), "bogus_key");
    let _ = a;
}

#[test]
fn bad_flags_and_config_files_give_clear_errors() {
    let out = vmm_with_args(&["--config", "/no/such/config.json"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/config.json"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{ not json").unwrap();
    let out = vmm_with_args(&["--config", bad.to_str().unwrap()]).unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked at"));
    let out = vmm_with_args(&["--cpus", "banana"]).unwrap();
    assert_ne!(out.status.code(), Some(0));
}

/// A guest printing without pause cannot grow its console file past the
/// cap: the VMM rotates it live (one previous part kept), and the newest
/// output is where a reader looks first. 20 s at the emulated host's
/// console rate (about 1 KiB/s) fill the 4 KiB cap several times over.
#[test]
fn a_flooding_console_stays_within_its_cap() {
    // The smallest cap the VMM takes: a serial console under the emulated
    // host prints only about 1 KiB a second.
    const CAP: u64 = 4096;
    let mut vm = sh(
        "end=$(($(date +%s) + 20)); i=0; \
         while [ $(date +%s) -lt $end ]; do echo \"flood line $i with some padding to make it longer\"; i=$((i+1)); done; \
         echo \"flood done after $i lines\"",
    );
    vm.console_max_bytes = Some(CAP);
    let out = vm.run();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let current = std::fs::metadata(vm.paths().console).unwrap().len();
    let previous = std::fs::metadata(mvm_runtime::paths::previous_part(&vm.paths().console))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!("console: {current} + {previous} bytes on disk (cap {CAP})");
    assert!(current <= CAP && previous <= CAP, "{current} {previous}");
    assert!(
        previous > 0,
        "the guest printed more than the cap: a rotation happened"
    );
    // The newest output is in the two parts together: the last line may
    // have been rotated out by what followed it (init's and the kernel's
    // power-off lines), or split across the boundary.
    let mut text = std::fs::read_to_string(mvm_runtime::paths::previous_part(&vm.paths().console))
        .unwrap_or_default();
    text.push_str(&std::fs::read_to_string(vm.paths().console).unwrap());
    assert!(
        text.contains("flood done after"),
        "the newest output is kept: {text}"
    );
}
