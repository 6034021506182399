//! mvm-init in a real guest: the project's kernel booted by plain QEMU TCG
//! (`-M microvm`, no KVM needed) with init and a launch spec as the
//! initramfs, a busybox image disk and an ext4 scratch disk, each found by
//! its virtio-blk serial.
//!
//! QEMU has no status port device, but its `memory_region_ops_write` trace
//! event records every I/O port write, so the tests check the exact 32-bit
//! values init writes to the status port as well as the console.
//!
//! Needs (installed by `make deps`): qemu-system-x86, busybox-static,
//! e2fsprogs, file; the guest kernel comes from `resources/kernel/build.sh`
//! (cached) and the static init from `resources/guest/build-init.sh`.
//! QEMU runs one at a time: the machine has two cores.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mvm_protocol::initramfs::{init_archive, spec_archive};
use mvm_protocol::launch::{LaunchSpec, SCRATCH_DRIVE_ID};
use mvm_protocol::status::{GuestEvent, InitError, STATUS_PORT};

/// Per boot; TCG is slow and the machine may be busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    init: Vec<u8>,
    rootfs: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run a repository script and return the last line of its stdout (the
/// path it prints).
fn script_path(script: &str) -> PathBuf {
    let out = Command::new(repo_root().join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed ({})", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{script} printed no path"))
            .trim(),
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (make deps installs the tools)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let init_path = script_path("resources/guest/build-init.sh");
        let kernel = script_path("resources/kernel/build.sh");
        let init = fs::read(&init_path).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("mvm-init-qemu-")
            .tempdir()
            .unwrap();
        let tree = dir.path().join("tree");
        busybox_tree(&tree);
        let rootfs = dir.path().join("rootfs.ext4");
        mkfs(&rootfs, 32, Some(&tree));
        Fixture {
            dir,
            kernel,
            init,
            rootfs,
        }
    })
}

/// A small busybox userland with users, groups and a few test files.
fn busybox_tree(root: &Path) {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox: install busybox-static (make deps)");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["etc", "root", "home/app", "var", "usr/bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:1500:app\nnogroup:x:65534:\n",
    )
    .unwrap();
    fs::write(
        root.join("usr/bin/not-executable"),
        "#!/bin/sh\necho never\n",
    )
    .unwrap();
    // No /tmp in the image: init creates it and mounts a tmpfs.
}

fn mkfs(img: &Path, mib: u64, tree: Option<&Path>) {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-E", "root_owner=0:0"]);
    if let Some(tree) = tree {
        cmd.arg("-d").arg(tree);
    }
    run(cmd.arg(img).arg(format!("{mib}M")));
}

struct Outcome {
    console: String,
    events: Vec<GuestEvent>,
    elapsed: Duration,
}

impl Outcome {
    /// The events after boot, as the host would see them.
    fn assert_events(&self, expected: &[GuestEvent]) {
        assert_eq!(
            self.events, expected,
            "status port events; console:\n{}",
            self.console
        );
    }

    fn assert_console(&self, needle: &str) {
        assert!(
            self.console.contains(needle),
            "console lacks {needle:?}:\n{}",
            self.console
        );
    }
}

fn spec(args: &[&str]) -> LaunchSpec {
    LaunchSpec::new(args.iter().map(|s| s.to_string()).collect())
}

/// Boot `spec`, naming the scratch drive in it exactly when there is one.
fn boot_spec(mut spec: LaunchSpec, scratch: Option<&Path>) -> Outcome {
    spec.rootfs.scratch_drive = scratch.map(|_| SCRATCH_DRIVE_ID.into());
    boot(&spec.to_json().unwrap(), scratch)
}

fn scratch_disk(name: &str) -> PathBuf {
    let path = fixture().dir.path().join(name);
    mkfs(&path, 32, None);
    path
}

/// Boot one guest with `spec_json` as the launch spec and wait for QEMU to
/// exit (init reboots; `-no-reboot` turns that into an exit).
fn boot(spec_json: &[u8], scratch: Option<&Path>) -> Outcome {
    boot_with(spec_json, scratch, "")
}

/// [`boot`] with extra kernel command-line words.
fn boot_with(spec_json: &[u8], scratch: Option<&Path>, cmdline: &str) -> Outcome {
    boot_until(spec_json, scratch, cmdline, None)
}

/// [`boot_with`], stopping QEMU once the guest has reported `until` (a
/// guest that would wait for the host forever) instead of waiting for
/// its power-off.
fn boot_until(
    spec_json: &[u8],
    scratch: Option<&Path>,
    cmdline: &str,
    until: Option<GuestEvent>,
) -> Outcome {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let fx = fixture();
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run_dir = tempfile::tempdir_in(fx.dir.path()).unwrap();
    let initrd = run_dir.path().join("initrd.cpio");
    let mut archive = init_archive(&fx.init).unwrap();
    archive.extend(spec_archive(spec_json).unwrap());
    fs::write(&initrd, archive).unwrap();
    let console = run_dir.path().join("console.log");
    let trace = run_dir.path().join("trace.log");

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-smp",
        "2",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-trace")
    .arg(format!(
        "enable=memory_region_ops_write,file={}",
        trace.display()
    ))
    .arg("-kernel")
    .arg(&fx.kernel)
    .arg("-initrd")
    .arg(&initrd)
    // `no_timer_check` as mvm-vmm passes it: under TCG on a busy machine
    // the kernel's IO-APIC timer check can fail and panic the boot.
    .arg("-append")
    .arg(format!(
        "console=ttyS0 reboot=k panic=-1 quiet no_timer_check rdinit=/init {cmdline}"
    ))
    .arg("-drive")
    .arg(format!(
        "id=r,file={},format=raw,if=none,readonly=on",
        fx.rootfs.display()
    ))
    .args(["-device", "virtio-blk-device,drive=r,serial=rootfs"]);
    if let Some(scratch) = scratch {
        cmd.arg("-drive")
            .arg(format!(
                "id=s,file={},format=raw,if=none",
                scratch.display()
            ))
            .args(["-device", "virtio-blk-device,drive=s,serial=scratch"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .expect("qemu-system-x86_64: install qemu-system-x86 (make deps)");
    let mut stopped = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if until.is_some_and(|ev| status_events(&read_lossy(&trace)).contains(&ev)) {
            let _ = child.kill();
            stopped = true;
            break child.wait().unwrap();
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "guest did not power off within {BOOT_TIMEOUT:?}; console:\n{}",
                read_lossy(&console)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let out = child.wait_with_output().unwrap();
    let console = read_lossy(&console);
    assert!(
        stopped || status.success(),
        "qemu failed ({status}): {}\nconsole:\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = status_events(&read_lossy(&trace));
    Outcome {
        console,
        events,
        elapsed,
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).replace("\r\n", "\n")
}

/// The 32-bit writes to the status port in a QEMU trace, decoded. Lines
/// look like `memory_region_ops_write cpu 0 mr 0x... addr 0x5e0 value
/// 0x1000000 size 4 name 'io'` (possibly with a `pid@time:` prefix).
fn status_events(trace: &str) -> Vec<GuestEvent> {
    let addr = format!("addr {STATUS_PORT:#x} ");
    trace
        .lines()
        .filter(|l| {
            l.contains("memory_region_ops_write") && l.contains(&addr) && l.contains(" size 4")
        })
        .map(|l| {
            let value = l
                .split(" value ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap();
            let value = u32::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
            GuestEvent::decode(value)
                .unwrap_or_else(|| panic!("undecodable status value {value:#x}"))
        })
        .collect()
}

fn done(exit: GuestEvent) -> Vec<GuestEvent> {
    vec![GuestEvent::BootComplete, exit, GuestEvent::PowerOff]
}

fn failed(code: InitError) -> Vec<GuestEvent> {
    done(GuestEvent::InitError(code))
}

fn debugfs(img: &Path, request: &str) -> String {
    run(Command::new("debugfs").args(["-R", request]).arg(img))
}

#[test]
fn hello_world_and_the_system_it_sees() {
    let mut s = spec(&[
        "sh",
        "-c",
        "echo hello; id; pwd; hostname; ls -1 /; echo \"env=$HOME|$HOSTNAME|$PATH|$FOO\"; \
         cat /etc/hosts; cat /proc/mounts; cat /sys/class/net/lo/flags; ls -l /dev/ptmx; \
         echo ppid=$PPID; echo pid1=$(cat /proc/1/comm)",
    ]);
    s.hostname = Some("mvmtest".into());
    s.process.env = vec!["FOO=bar".into()];
    let scratch = scratch_disk("hello.ext4");
    let out = boot_spec(s, Some(&scratch));
    out.assert_events(&done(GuestEvent::Exited(0)));
    for needle in [
        "\nhello\n",
        "uid=0(root) gid=0(root)",
        "\n/\n",
        "\nmvmtest\n",
        "env=/root|mvmtest|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|bar",
        "127.0.0.1\tlocalhost",
        "127.0.1.1\tmvmtest",
        "overlay / overlay rw",
        "proc /proc proc",
        "sysfs /sys sysfs",
        "devtmpfs /dev devtmpfs",
        "devpts /dev/pts devpts",
        "/dev/shm tmpfs",
        "/tmp tmpfs",
        "cgroup2 /sys/fs/cgroup cgroup2",
        "\n0x9\n",
        "/dev/ptmx -> pts/ptmx",
        "ppid=1\n",
        "pid1=init",
        "mvm-init: workload exited with status 0",
        "mvm-init: powering off",
    ] {
        out.assert_console(needle);
    }
    for dir in ["bin", "dev", "etc", "proc", "sys", "tmp"] {
        assert!(
            out.console.lines().any(|l| l == dir),
            "ls / lacks {dir}:\n{}",
            out.console
        );
    }
    eprintln!("hello boot took {:?}", out.elapsed);
}

/// The host's clock and entropy a spec carries (a warm start's hand-over
/// sets them; a cold spec may too) are applied before the workload: its
/// date is the spec's, not the boot's, and the entropy ioctls succeed on
/// the real kernel. A warm boot itself needs the agent (vsock), which
/// this QEMU has not; tests/tests/warm.rs drives one on real KVM.
#[test]
fn the_specs_clock_and_entropy_are_applied_before_the_workload() {
    let mut s = spec(&[
        "sh",
        "-c",
        "date -u +%Y-%m-%dT%H; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo",
    ]);
    // 2031-06-01T00:00:00Z: not a date any boot of this test has.
    s.realtime_ns = Some(1_938_038_400 * 1_000_000_000);
    s.set_entropy(&[0x5a; mvm_protocol::launch::ENTROPY_LEN]);
    let out = boot_spec(s, None);
    out.assert_events(&done(GuestEvent::Exited(0)));
    out.assert_console("mvm-init: applied the host's clock and entropy (CRNG reseeded)");
    out.assert_console("\n2031-06-01T00\n");
    let random = out
        .console
        .lines()
        .find(|l| l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no 16 random bytes:\n{}", out.console));
    assert_ne!(random, "0".repeat(32));
}

/// A warm spec: init does only what does not depend on the sandbox and
/// reports `WarmReady`, then waits for the agent's `launch` (which this
/// QEMU, without vsock, cannot send; tests/tests/warm.rs does, on KVM).
/// No disk is mounted, no workload started, no power-off. A warm spec
/// that carries a process is refused at boot like any bad spec.
#[test]
fn a_warm_spec_stops_at_warm_ready() {
    let out = boot_until(
        &LaunchSpec::warm().to_json().unwrap(),
        None,
        "",
        Some(GuestEvent::WarmReady),
    );
    out.assert_events(&[GuestEvent::BootComplete, GuestEvent::WarmReady]);
    out.assert_console("mvm-init: warm: ready, waiting for the launch spec");
    for absent in ["workload", "powering off", "error"] {
        assert!(
            !out.console.contains(absent),
            "a warm guest printed {absent:?}:\n{}",
            out.console
        );
    }
    let hostile = br#"{"version":1,"warm":true,"process":{"args":["sh"]}}"#;
    let out = boot(hostile, None);
    out.assert_events(&failed(InitError::BadSpec));
    out.assert_console("launch spec is warm but sets process");
}

#[test]
fn exit_code_is_reported() {
    let out = boot_spec(
        spec(&["sh", "-c", "exit 3"]),
        Some(&scratch_disk("exit.ext4")),
    );
    out.assert_events(&done(GuestEvent::Exited(3)));
    out.assert_console("mvm-init: workload exited with status 3");
}

#[test]
fn quiet_console_still_reports() {
    let out = boot_with(
        &spec(&["sh", "-c", "echo only-this; exit 4"])
            .to_json()
            .unwrap(),
        None,
        "mvm.quiet",
    );
    out.assert_events(&done(GuestEvent::Exited(4)));
    out.assert_console("only-this");
    assert!(!out.console.contains("mvm-init:"), "{}", out.console);
}

#[test]
fn signal_death_is_reported() {
    let out = boot_spec(
        spec(&["sh", "-c", "kill -9 $$"]),
        Some(&scratch_disk("signal.ext4")),
    );
    out.assert_events(&done(GuestEvent::Signaled(9)));
    out.assert_console("mvm-init: workload killed by signal 9 (SIGKILL)");
}

#[test]
fn named_user_and_created_workdir() {
    let mut s = spec(&["sh", "-c", "id; pwd; echo home=$HOME; stat -c 'mode=%A owner=%U:%G' /srv/new/dir; touch /tmp/ok && echo tmp-ok"]);
    s.process.user = "nobody".into();
    s.process.cwd = "/srv/new/dir".into();
    let out = boot_spec(s, Some(&scratch_disk("nobody.ext4")));
    out.assert_events(&done(GuestEvent::Exited(0)));
    out.assert_console("uid=65534(nobody) gid=65534(nogroup)");
    out.assert_console("\n/srv/new/dir\n");
    out.assert_console("home=/nonexistent");
    out.assert_console("tmp-ok");
    // Created like runc's: root-owned, 0755.
    out.assert_console("mode=drwxr-xr-x owner=root:root");
}

#[test]
fn numeric_user_and_group() {
    let mut s = spec(&["sh", "-c", "id; echo home=$HOME"]);
    s.process.user = "1000:1000".into();
    let out = boot_spec(s, None);
    out.assert_events(&done(GuestEvent::Exited(0)));
    out.assert_console("uid=1000(app) gid=1000(app)");
    // Explicit group: no supplementary groups.
    assert!(!out.console.contains("extra"), "{}", out.console);
    out.assert_console("home=/home/app");
    out.assert_console("no scratch disk");

    let mut s = spec(&["id"]);
    s.process.user = "app".into();
    let out = boot_spec(s, None);
    // runc's rule: the groups listing the user, not the primary group
    // (busybox `id` prints getgroups(2) as is).
    out.assert_console("uid=1000(app) gid=1000(app) groups=1500(extra)\n");
}

#[test]
fn missing_and_unusable_programs() {
    let out = boot_spec(
        spec(&["no-such-program"]),
        Some(&scratch_disk("missing.ext4")),
    );
    out.assert_events(&failed(InitError::NotFound));
    out.assert_console(
        "mvm-init: error: exec: \"no-such-program\": executable file not found in $PATH",
    );

    let out = boot_spec(spec(&["/usr/bin/not-executable"]), None);
    out.assert_events(&failed(InitError::NotExecutable));
    out.assert_console("permission denied");

    let mut s = spec(&["true"]);
    s.process.user = "nosuchuser".into();
    let out = boot_spec(s, None);
    out.assert_events(&failed(InitError::User));
    out.assert_console("unable to find user nosuchuser");
}

#[test]
fn writes_land_on_the_scratch_disk_and_stragglers_are_stopped() {
    let scratch = scratch_disk("durable.ext4");
    // A background process that would outlive the workload by far.
    let s = spec(&[
        "sh",
        "-c",
        "sleep 600 & echo durable > /file; mkdir -p /var/x; echo more > /var/x/y; echo wrote",
    ]);
    let out = boot_spec(s, Some(&scratch));
    out.assert_events(&done(GuestEvent::Exited(0)));
    out.assert_console("wrote");
    assert!(
        out.elapsed < Duration::from_secs(120),
        "the sleep was not stopped: {:?}",
        out.elapsed
    );
    // debugfs does not replay the journal: this proves init left the disk
    // flushed and clean.
    assert_eq!(debugfs(&scratch, "cat /upper/file"), "durable\n");
    assert_eq!(debugfs(&scratch, "cat /upper/var/x/y"), "more\n");
    let header = run(Command::new("dumpe2fs").arg("-h").arg(&scratch));
    assert!(
        header.contains("Filesystem state:         clean"),
        "{header}"
    );
    assert!(!header.contains("needs_recovery"), "{header}");

    // A second boot on the same scratch disk sees the data: a restart.
    let out = boot_spec(spec(&["cat", "/file", "/var/x/y"]), Some(&scratch));
    out.assert_events(&done(GuestEvent::Exited(0)));
    out.assert_console("durable\nmore\n");
}

#[test]
fn bad_spec_and_missing_disk_are_init_errors() {
    let out = boot(
        br#"{"version":99,"rootfs":{"image_drive":"rootfs"},"process":{"args":["true"]}}"#,
        None,
    );
    out.assert_events(&failed(InitError::BadSpec));
    out.assert_console("mvm-init: error: launch spec version 99 is not supported");

    let mut s = spec(&["true"]);
    s.rootfs.image_drive = "nosuchdisk".into();
    let out = boot_spec(s, None);
    out.assert_events(&failed(InitError::Mount));
    out.assert_console("no disk with serial \"nosuchdisk\" (disks seen: vda \"rootfs\")");
}
