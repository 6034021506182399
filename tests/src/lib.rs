//! Harness for the end-to-end tests: find the built artifacts, make root
//! disks, boot `mvm-vmm` on real KVM and collect what came back.
//!
//! The tests need hardware-virtualized KVM. On hosts without it (PVM
//! development machines) `make e2e` runs the test binaries inside the
//! emulated KVM host (`resources/testhost/run`), which sets the same
//! environment variables. Run directly on a PVM host, every test fails with a
//! message saying so: a skipped boot test would hide a broken product.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mvm_protocol::launch::LaunchSpec;
use serde::Deserialize;

pub mod daemon;
pub mod rootfs;

/// Paths of the artifacts under test, from the environment `make e2e` sets.
#[derive(Debug)]
pub struct Artifacts {
    pub kernel: PathBuf,
    pub init: PathBuf,
    pub vmm: PathBuf,
    /// The shared initramfs with `/init`, built once per test process.
    pub init_cpio: PathBuf,
    _dir: tempfile::TempDir,
}

fn env_path(name: &str) -> PathBuf {
    let v = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the end-to-end tests with `make e2e`, which builds the artifacts and sets it")
    });
    let p = PathBuf::from(v);
    assert!(
        p.exists(),
        "{name}={} does not exist: run `make e2e`",
        p.display()
    );
    p
}

impl Artifacts {
    /// The artifacts, checked once; also checks that KVM can boot a guest.
    pub fn get() -> &'static Artifacts {
        static A: OnceLock<Artifacts> = OnceLock::new();
        A.get_or_init(|| {
            require_hardware_kvm();
            let kernel = env_path("MVM_KERNEL");
            let init = env_path("MVM_INIT");
            let vmm = env_path("MVM_VMM");
            let dir = tempfile::tempdir().expect("temp dir");
            let bin = fs::read(&init).expect("read init binary");
            let cpio = mvm_protocol::initramfs::init_archive(&bin).expect("init archive");
            let init_cpio = dir.path().join("init.cpio");
            fs::write(&init_cpio, cpio).expect("write init archive");
            Artifacts {
                kernel,
                init,
                vmm,
                init_cpio,
                _dir: dir,
            }
        })
    }
}

/// Panics unless `/dev/kvm` is hardware-virtualized KVM.
pub fn require_hardware_kvm() {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    assert!(
        hw && !pvm && Path::new("/dev/kvm").exists(),
        "these tests boot real microVMs and need hardware-virtualized KVM \
         (vmx/svm: {hw}, PVM: {pvm}); run them with `make e2e`, which uses the \
         emulated KVM host on machines without it"
    );
}

/// What the VMM wrote to its status file.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub guest: String,
    pub workload: Option<serde_json::Value>,
    pub boot_time_us: Option<u64>,
    pub message: Option<String>,
}

impl Status {
    pub fn exit_code(&self) -> Option<i64> {
        self.workload.as_ref()?.get("exit_code")?.as_i64()
    }
    pub fn signal(&self) -> Option<i64> {
        self.workload.as_ref()?.get("signal")?.as_i64()
    }
    pub fn init_error(&self) -> Option<&str> {
        self.workload.as_ref()?.get("init_error")?.as_str()
    }
}

/// A drive attached to a test VM.
#[derive(Debug, Clone)]
pub struct Drive {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// A microVM to boot, with a busybox root disk and a scratch disk unless
/// told otherwise.
pub struct Vm {
    pub spec: LaunchSpec,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub cmdline: String,
    pub drives: Vec<Drive>,
    pub timeout: Duration,
    /// Raw JSON config overrides merged over the generated config.
    pub config_patch: serde_json::Value,
    pub dir: tempfile::TempDir,
}

/// Result of a finished VMM run.
#[derive(Debug)]
pub struct Outcome {
    pub exit: ExitStatus,
    pub status: Option<Status>,
    pub console: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub dir: PathBuf,
}

impl Outcome {
    /// The VMM's exit code (None if it was killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.exit.code()
    }
    /// The status file, which must exist.
    pub fn status(&self) -> &Status {
        self.status
            .as_ref()
            .unwrap_or_else(|| panic!("no status file; {}", self.describe()))
    }
    /// Everything useful for an assertion message.
    pub fn describe(&self) -> String {
        format!(
            "vmm exit {:?} after {:?}\n--- status\n{:?}\n--- stderr\n{}\n--- console\n{}",
            self.exit, self.elapsed, self.status, self.stderr, self.console
        )
    }
}

impl Vm {
    /// A VM running `args` on the shared busybox root disk with a fresh
    /// 64 MiB scratch disk.
    pub fn new(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mvm-e2e-")
            .tempdir()
            .expect("temp dir");
        let scratch = dir.path().join("scratch.ext4");
        rootfs::scratch_disk(&scratch, 64).expect("scratch disk");
        let mut spec = LaunchSpec::new(args.iter().map(|s| s.to_string()).collect());
        spec.rootfs.scratch_drive = Some("scratch".into());
        Vm {
            spec,
            vcpus: 1,
            memory_mib: 128,
            cmdline: String::new(),
            drives: vec![
                Drive {
                    id: "rootfs".into(),
                    path: rootfs::busybox().to_path_buf(),
                    read_only: true,
                },
                Drive {
                    id: "scratch".into(),
                    path: scratch,
                    read_only: false,
                },
            ],
            timeout: Duration::from_secs(180),
            config_patch: serde_json::Value::Null,
            dir,
        }
    }

    /// Path of the scratch disk of this VM.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch.ext4")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("vm.json")
    }

    fn console_path(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn status_path(&self) -> PathBuf {
        self.dir.path().join("status.json")
    }

    /// Write the spec archive and the VMM config; returns the config path.
    pub fn write_config(&self) -> PathBuf {
        let a = Artifacts::get();
        let spec_cpio = self.dir.path().join("spec.cpio");
        let json = self.spec.to_json().expect("valid spec");
        fs::write(
            &spec_cpio,
            mvm_protocol::initramfs::spec_archive(&json).unwrap(),
        )
        .unwrap();
        let drives: Vec<_> = self
            .drives
            .iter()
            .map(|d| serde_json::json!({"id": d.id, "path": d.path, "read_only": d.read_only}))
            .collect();
        let mut cfg = serde_json::json!({
            "kernel": a.kernel,
            "initrd": [a.init_cpio, spec_cpio],
            "cmdline": self.cmdline,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "drives": drives,
            "console": {"file": self.console_path()},
            "status_file": self.status_path(),
        });
        if let (Some(c), Some(p)) = (cfg.as_object_mut(), self.config_patch.as_object()) {
            for (k, v) in p {
                c.insert(k.clone(), v.clone());
            }
        }
        fs::write(self.config_path(), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        self.config_path()
    }

    /// Start the VMM and return at once.
    pub fn spawn(&self) -> Running<'_> {
        let cfg = self.write_config();
        let child = Command::new(&Artifacts::get().vmm)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.path().join("vmm.stderr")).unwrap())
            .spawn()
            .expect("spawn mvm-vmm");
        Running {
            vm: self,
            child,
            started: Instant::now(),
        }
    }

    /// Boot, wait for the VMM to end, and collect the outcome.
    pub fn run(&self) -> Outcome {
        self.spawn().wait()
    }
}

/// A VMM process that is running.
pub struct Running<'a> {
    pub vm: &'a Vm,
    pub child: Child,
    pub started: Instant,
}

impl Running<'_> {
    /// The console output so far.
    pub fn console(&self) -> String {
        read_lossy(&self.vm.console_path())
    }

    /// Wait until the console shows `marker`; panics after the VM's timeout.
    pub fn wait_for_console(&mut self, marker: &str) {
        while !self.console().contains(marker) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "VMM ended ({st}) before {marker:?} appeared:\n{}",
                    self.console()
                );
            }
            assert!(
                self.started.elapsed() < self.vm.timeout,
                "{marker:?} did not appear within {:?}:\n{}",
                self.vm.timeout,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the VMM to exit (killing it after the timeout) and collect.
    pub fn wait(mut self) -> Outcome {
        let exit = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if self.started.elapsed() > self.vm.timeout {
                let _ = self.child.kill();
                let st = self.child.wait().expect("wait");
                panic!(
                    "VMM did not finish within {:?} (killed: {st}); console:\n{}",
                    self.vm.timeout,
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let status = fs::read(self.vm.status_path())
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("status file is valid JSON"));
        Outcome {
            exit,
            status,
            console: self.console(),
            stderr: read_lossy(&self.vm.dir.path().join("vmm.stderr")),
            elapsed: self.started.elapsed(),
            dir: self.vm.dir.path().to_path_buf(),
        }
    }
}

fn read_lossy(p: &Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Poll `f` every `every` until it holds; panics with "timed out waiting
/// for {what}" once `timeout` has passed. The pace is the caller's: each
/// suite keeps the one it had when it carried its own copy.
pub fn wait_until(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Run `mvm-vmm` with raw arguments (for configuration error tests).
pub fn vmm_with_args(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new(&Artifacts::get().vmm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("spawn mvm-vmm")?;
    Ok(out)
}

/// Read a file from an ext4 image without mounting it.
pub fn debugfs_cat(image: &Path, path: &str) -> Result<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .context("run debugfs (e2fsprogs)")?;
    if !out.status.success() {
        bail!("debugfs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}
