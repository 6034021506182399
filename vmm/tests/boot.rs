//! End-to-end checks of mvm-vmm itself, independent of mvm-init: a
//! busybox initramfs stands in for init, and a 1 KiB static helper
//! (`guest/mvm-status.c`) reports on the status port like init does.
//!
//! The boot tests need hardware KVM, so they are `#[ignore]`d in plain
//! `cargo test` and run on real KVM with:
//!
//! ```text
//! cargo test -p mvm-vmm --test boot --no-run   # note the binary path
//! resources/testhost/run --env MVM_KERNEL -- <binary> --ignored --test-threads=1
//! ```
//!
//! (`MVM_KERNEL` defaults to `resources/kernel/build.sh --print-path`.) The
//! configuration error tests at the bottom need no KVM and always run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mvm_protocol::initramfs::{Entry, Writer};
use mvm_vmm_api::kvm::{self, KvmMode};
use mvm_vmm_api::{Console, GuestState, StatusReport, VmConfig, WorkloadReport};

const VMM: &str = env!("CARGO_BIN_EXE_mvm-vmm");
const BUSYBOX: &str = "/bin/busybox";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("MVM_KERNEL") {
        return k.into();
    }
    let out = Command::new(repo_root().join("resources/kernel/build.sh"))
        .arg("--print-path")
        .output()
        .expect("run resources/kernel/build.sh --print-path");
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert!(
        p.is_file(),
        "guest kernel {} missing: run resources/kernel/build.sh",
        p.display()
    );
    p
}

fn require_hardware_kvm() {
    let mode = kvm::detect();
    assert!(
        matches!(mode, KvmMode::Hardware { .. }),
        "this test boots a guest and needs hardware KVM; here: {mode}"
    );
}

/// Build the status helper for the guest (static, no libc).
fn status_helper(dir: &Path) -> Vec<u8> {
    let out = dir.join("mvm-status");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/mvm-status.c");
    let st = Command::new("cc")
        .args(["-static", "-nostdlib", "-O2", "-fno-stack-protector", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc (install gcc)");
    assert!(st.success(), "building the guest status helper failed");
    fs::read(out).unwrap()
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
/bin/mvm-status boot
echo "cpus=$(nproc)"
grep MemTotal /proc/meminfo
. /scenario.sh
"#;

/// A guest to boot: the shared busybox archive plus a scenario archive.
struct Guest {
    dir: tempfile::TempDir,
    args: Vec<String>,
}

struct Run {
    out: Output,
    console: String,
    status: Option<StatusReport>,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- status\n{:?}\n--- stderr\n{}\n--- console\n{}",
            self.out.status,
            self.elapsed,
            self.status,
            self.stderr(),
            self.console
        )
    }
}

impl Guest {
    fn new(scenario: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let helper = status_helper(dir.path());
        let busybox = fs::read(BUSYBOX).expect("busybox-static at /bin/busybox");
        let mut w = Writer::new(Vec::new());
        for d in ["bin", "dev", "proc", "sys", "mnt"] {
            w.add(&Entry::Dir {
                path: d,
                mode: 0o755,
            })
            .unwrap();
        }
        w.add(&Entry::CharDev {
            path: "dev/console",
            mode: 0o600,
            major: 5,
            minor: 1,
        })
        .unwrap();
        w.add(&Entry::File {
            path: "bin/busybox",
            mode: 0o755,
            data: &busybox,
        })
        .unwrap();
        w.add(&Entry::File {
            path: "bin/mvm-status",
            mode: 0o755,
            data: &helper,
        })
        .unwrap();
        w.add(&Entry::File {
            path: "init",
            mode: 0o755,
            data: INIT.as_bytes(),
        })
        .unwrap();
        fs::write(dir.path().join("base.cpio"), w.finish().unwrap()).unwrap();
        let mut w = Writer::new(Vec::new());
        w.add(&Entry::File {
            path: "scenario.sh",
            mode: 0o644,
            data: scenario.as_bytes(),
        })
        .unwrap();
        fs::write(dir.path().join("scenario.cpio"), w.finish().unwrap()).unwrap();
        // The configuration file every caller writes (mvm-vmm-api's type);
        // tests add flags on top, as the VMM's command line allows.
        let p = |n: &str| dir.path().join(n);
        let mut cfg = VmConfig::new(kernel());
        cfg.initrd = vec![p("base.cpio"), p("scenario.cpio")];
        cfg.console = Console::File(p("console.log"));
        cfg.status_file = Some(p("status.json"));
        cfg.save(&p("vm.json")).unwrap();
        let args = vec!["--config".into(), p("vm.json").display().to_string()];
        Self { dir, args }
    }

    fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    fn spawn(&self) -> std::process::Child {
        Command::new(VMM)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn finish(&self, child: std::process::Child, started: Instant) -> Run {
        let out = child.wait_with_output().unwrap();
        let elapsed = started.elapsed();
        let console = fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        let status = StatusReport::read(&self.dir.path().join("status.json"));
        Run {
            out,
            console: String::from_utf8_lossy(&console).into_owned(),
            status,
            elapsed,
        }
    }

    /// Boot and wait (at most `limit`, then SIGKILL).
    fn run(&self, limit: Duration) -> Run {
        let started = Instant::now();
        let mut child = self.spawn();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                child.kill().unwrap();
                let r = self.finish(child, started);
                panic!("mvm-vmm did not end within {limit:?}: {}", r.describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.finish(child, started)
    }
}

const LIMIT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn two_vcpus_and_256_mib_then_clean_power_off() {
    require_hardware_kvm();
    let g = Guest::new("mvm-status exit 0; mvm-status poweroff; reboot -f\n")
        .arg("--cpus")
        .arg("2")
        .arg("--memory")
        .arg("256");
    let r = g.run(LIMIT);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(r.console.contains("cpus=2"), "{}", r.describe());
    let kib: u64 = r
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {}", r.describe()));
    assert!(
        (200 * 1024..=256 * 1024).contains(&kib),
        "MemTotal {kib} kB"
    );
    let s = r.status.as_ref().expect("status file");
    assert_eq!(s.guest, GuestState::PoweredOff, "{}", r.describe());
    assert_eq!(s.workload, Some(WorkloadReport::Exited { exit_code: 0 }));
    let boot_us = s.boot_time_us.expect("boot time");
    assert!(
        r.stderr().contains("guest boot complete after"),
        "{}",
        r.describe()
    );
    eprintln!(
        "timing: boot complete {} ms, whole run {:?}",
        boot_us / 1000,
        r.elapsed
    );
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn reboot_without_power_off_notice_is_a_crash() {
    require_hardware_kvm();
    let r = Guest::new("reboot -f\n").run(LIMIT);
    assert_eq!(r.code(), Some(2), "{}", r.describe());
    let s = r.status.as_ref().expect("status file");
    assert_eq!(s.guest, GuestState::Crashed);
    assert!(s.message.contains("without init's power-off notice"));
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn power_off_report_ends_the_vm_when_the_guest_never_resets() {
    require_hardware_kvm();
    // The report, then a guest that keeps running: the VMM ends it after
    // its grace, cleanly, with the reported status.
    let r =
        Guest::new("mvm-status exit 3; mvm-status poweroff; echo still-up; sleep 600\n").run(LIMIT);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(r.console.contains("still-up"), "{}", r.describe());
    let s = r.status.as_ref().expect("status file");
    assert_eq!(s.guest, GuestState::PoweredOff, "{}", r.describe());
    assert_eq!(s.workload, Some(WorkloadReport::Exited { exit_code: 3 }));
    assert!(
        r.stderr().contains("did not reset within"),
        "{}",
        r.describe()
    );
    assert!(
        r.elapsed < LIMIT / 2,
        "ended by the grace, not the test's limit: {:?}",
        r.elapsed
    );
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn kernel_panic_exits_2_and_quotes_the_panic() {
    require_hardware_kvm();
    let r = Guest::new("echo c > /proc/sysrq-trigger; sleep 600\n").run(LIMIT);
    assert_eq!(r.code(), Some(2), "{}", r.describe());
    assert!(r.stderr().contains("Kernel panic"), "{}", r.describe());
    let s = r.status.as_ref().expect("status file");
    assert_eq!(s.guest, GuestState::Crashed);
    assert!(s.message.contains("Kernel panic"));
    assert!(!r.stderr().contains("panicked at"), "{}", r.describe());
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn workload_status_and_signal_are_reported() {
    require_hardware_kvm();
    let r = Guest::new("mvm-status signal 9; mvm-status poweroff; reboot -f\n").run(LIMIT);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert_eq!(
        r.status.as_ref().unwrap().workload,
        Some(WorkloadReport::Signaled { signal: 9 })
    );
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn virtio_blk_disks_are_found_by_serial() {
    require_hardware_kvm();
    let g0 = tempfile::tempdir().unwrap();
    let tree = g0.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("hello.txt"), "hello from ext4\n").unwrap();
    let img = g0.path().join("data.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(st.success());
    let scratch = g0.path().join("scratch.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&scratch)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let script = r#"
for d in /sys/block/vd*; do echo "disk $(basename $d) serial=$(cat $d/serial) ro=$(cat $d/ro)"; done
for d in /sys/block/vd*; do [ "$(cat $d/serial)" = data ] && mount -t ext4 -o ro /dev/$(basename $d) /mnt; done
cat /mnt/hello.txt
for d in /sys/block/vd*; do [ "$(cat $d/serial)" = scratch ] && dev=/dev/$(basename $d); done
mkdir -p /s && mount -t ext4 $dev /s && echo written > /s/out.txt && umount /s && echo scratch-ok
test -e /sys/class/misc/hw_random && echo rng=$(cat /sys/class/misc/hw_random/rng_current)
mvm-status exit 0; mvm-status poweroff; reboot -f
"#;
    let g = Guest::new(script)
        .arg("--drive")
        .arg(&format!("id=scratch,path={}", scratch.display()))
        .arg("--drive")
        .arg(&format!("id=data,path={},ro", img.display()));
    let r = g.run(LIMIT);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    assert!(r.console.contains("serial=data ro=1"), "{}", r.describe());
    assert!(
        r.console.contains("serial=scratch ro=0"),
        "{}",
        r.describe()
    );
    assert!(r.console.contains("hello from ext4"), "{}", r.describe());
    assert!(r.console.contains("scratch-ok"), "{}", r.describe());
    assert!(r.console.contains("rng=virtio"), "{}", r.describe());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg("cat /out.txt")
        .arg(&scratch)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written\n");
}

#[test]
#[ignore = "needs hardware KVM: run inside resources/testhost/run (see the file's doc)"]
fn sigterm_stops_the_vm_with_143() {
    require_hardware_kvm();
    let g = Guest::new("echo ready; sleep 600\n");
    let started = Instant::now();
    let child = g.spawn();
    let console = g.dir.path().join("console.log");
    while !fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(started.elapsed() < LIMIT, "guest never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = g.finish(child, started);
    assert_eq!(r.code(), Some(143), "{}", r.describe());
    assert_eq!(r.status.as_ref().unwrap().guest, GuestState::Stopped);
}

// ---- configuration errors: no KVM needed ----

fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked at"), "mvm-vmm panicked: {err}");
    (out.status.code(), err)
}

#[test]
fn configuration_errors_exit_1_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("not-elf");
    fs::write(&not_elf, "not a kernel").unwrap();
    let ne = not_elf.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--kernel", "/no/such/vmlinux"], "/no/such/vmlinux"),
        (&["--kernel", ne], "resources/kernel/build.sh"),
        (&["--kernel", ne], "not an ELF"),
        (&["--cpus", "x"], "invalid value"),
        (&["--config", "/no/such/vm.json"], "/no/such/vm.json"),
        (&[], "no guest kernel given"),
        (&["--kernel", ne, "--drive", "id=a"], "--drive"),
        (&["--kernel", ne, "--console", "tty"], "--console"),
    ];
    for (args, expect) in cases {
        let (code, err) = vmm(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
    }
    let cfg = dir.path().join("vm.json");
    fs::write(&cfg, r#"{"kernel": "/k", "bogus_key": 1}"#).unwrap();
    let (code, err) = vmm(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bogus_key"), "{err}");
}

#[test]
fn help_and_kvm_check_work_anywhere() {
    let (code, _) = vmm(&["--help"]);
    assert_eq!(code, Some(0));
    let out = Command::new(VMM).arg("--check-kvm").output().unwrap();
    let word = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        ["hardware", "pvm", "none"].contains(&word.as_str()),
        "{word}"
    );
    assert_eq!(out.status.code(), Some(i32::from(word != "hardware")));
}
