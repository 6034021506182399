//! Harness for the end-to-end tests: find the built artifacts, make root
//! disks, boot `mvm-vmm` on real KVM and collect what came back.
//!
//! A [`Vm`] boots from what the runtime produces: its launch files are
//! written by `mvm_runtime::launch` (the same spec archive and typed VMM
//! configuration a sandbox gets), its init archive by the runtime's
//! `Artifacts::init_archive`; a test changes typed fields before the boot,
//! never hand-written JSON.
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
use mvm_runtime::launch::{self, BootFiles};
use mvm_runtime::share::{self, Backends, HostShare};
use mvm_runtime::{Layout, Resources, SandboxPaths};
use mvm_vmm_api::kvm::{self, KvmMode};
pub use mvm_vmm_api::{GuestState, StatusReport, VmConfig, WorkloadReport};

pub mod bench;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod netns;
pub mod procmem;
pub mod pty;
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

/// A static guest test program of crate `mvm-guest-tools`
/// (`mvm-vsock-tool`, `mvm-hostile-agent`): in `MVM_GUEST_TOOLS` (a
/// directory), else next to the static init (`make init` builds both).
pub fn guest_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("MVM_GUEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env_path("MVM_INIT")
                .parent()
                .expect("the init's directory")
                .to_path_buf()
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: `make init` builds it (crate mvm-guest-tools)",
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
            let runtime_artifacts = mvm_runtime::Artifacts {
                kernel: kernel.clone(),
                init: init.clone(),
                vmm: vmm.clone(),
            };
            let init_cpio = runtime_artifacts
                .init_archive(dir.path())
                .expect("init archive");
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

/// Panics unless `/dev/kvm` is hardware-virtualized KVM (the one probe
/// the VMM, mvmd and mvctl use).
pub fn require_hardware_kvm() {
    let mode = kvm::detect();
    assert!(
        matches!(mode, KvmMode::Hardware { .. }),
        "these tests boot real microVMs and need hardware-virtualized KVM ({mode}); \
         run them with `make e2e`, which uses the emulated KVM host on machines without it"
    );
}

/// The workload's fate in a status report, for assertions.
pub trait StatusExt {
    /// The exit status, if it exited (an init error's code included).
    fn exit_code(&self) -> Option<i32>;
    /// The killing signal.
    fn signal(&self) -> Option<i32>;
    /// Init's description of why it could not start the workload.
    fn init_error(&self) -> Option<&str>;
}

impl StatusExt for StatusReport {
    fn exit_code(&self) -> Option<i32> {
        match self.workload.as_ref()? {
            WorkloadReport::Exited { exit_code } | WorkloadReport::InitError { exit_code, .. } => {
                Some(*exit_code)
            }
            WorkloadReport::Signaled { .. } => None,
        }
    }
    fn signal(&self) -> Option<i32> {
        match self.workload.as_ref()? {
            WorkloadReport::Signaled { signal } => Some(*signal),
            _ => None,
        }
    }
    fn init_error(&self) -> Option<&str> {
        match self.workload.as_ref()? {
            WorkloadReport::InitError { init_error, .. } => Some(init_error),
            _ => None,
        }
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
/// told otherwise, and the vsock device every sandbox has.
pub struct Vm {
    pub spec: LaunchSpec,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub cmdline: String,
    pub drives: Vec<Drive>,
    pub timeout: Duration,
    /// The console file's cap (the VMM rotates it; `None`: unbounded).
    pub console_max_bytes: Option<u64>,
    /// JSON merged over the written configuration: only for tests of
    /// configurations the VMM must refuse (a typed one cannot be wrong).
    pub invalid_patch: serde_json::Value,
    /// Host directories shared into the guest over virtio-fs: the
    /// runtime starts a virtiofsd for each ([`share::Backends`]) before
    /// the VMM and stops it after.
    pub shares: Vec<HostShare>,
    /// virtio-net devices (their TAPs are the test's to make), added with
    /// `spec.network` (the guest's view of them) by the runtime's
    /// [`launch::add_network`].
    pub nics: Vec<launch::Nic>,
    /// A network section put into the spec past the runtime's checks
    /// (which refuse an interface no NIC has): only for tests of what
    /// guest init must refuse itself.
    pub unchecked_network: Option<mvm_protocol::launch::Network>,
    /// Run the VMM in this network namespace (`ip netns exec`), where its
    /// TAPs are: the test's traffic then stays in a namespace of its own.
    pub netns: Option<String>,
    pub dir: tempfile::TempDir,
}

/// The sandbox id of a test VM (its files' and vsock socket's name).
const VM_ID: &str = "vm";

/// Result of a finished VMM run.
#[derive(Debug)]
pub struct Outcome {
    pub exit: ExitStatus,
    pub status: Option<StatusReport>,
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
    pub fn status(&self) -> &StatusReport {
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
        let paths = layout(dir.path()).sandbox(VM_ID);
        fs::create_dir_all(&paths.dir).expect("sandbox dir");
        fs::create_dir_all(layout(dir.path()).vsock_dir()).expect("vsock dir");
        fs::create_dir_all(&paths.vm_dir).expect("VMM output dir");
        fs::create_dir_all(&paths.sockets).expect("socket dir");
        let scratch = paths.scratch.clone();
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
            console_max_bytes: None,
            invalid_patch: serde_json::Value::Null,
            shares: Vec::new(),
            nics: Vec::new(),
            unchecked_network: None,
            netns: None,
            dir,
        }
    }

    /// The runtime's files of this VM.
    pub fn paths(&self) -> SandboxPaths {
        layout(self.dir.path()).sandbox(VM_ID)
    }

    /// Path of the scratch disk of this VM.
    pub fn scratch(&self) -> PathBuf {
        self.paths().scratch
    }

    /// The vsock socket host clients connect to (`CONNECT <port>`).
    pub fn vsock_path(&self) -> PathBuf {
        self.paths().vsock
    }

    fn config_path(&self) -> PathBuf {
        self.paths().vm_config
    }

    fn console_path(&self) -> PathBuf {
        self.paths().console
    }

    fn status_path(&self) -> PathBuf {
        self.paths().status
    }

    /// The VMM configuration: the runtime's for a sandbox, with this
    /// test's drives, size and command line (its NICs and shares are
    /// added when the files are written).
    pub fn config(&self) -> VmConfig {
        let a = Artifacts::get();
        let boot = BootFiles {
            kernel: &a.kernel,
            init_archive: &a.init_cpio,
        };
        let resources = Resources {
            vcpus: self.vcpus,
            cpu_quota: None,
            memory_mib: self.memory_mib,
            scratch_mib: 64,
            workload_memory_mib: None,
        };
        let paths = self.paths();
        let mut cfg = launch::vm_config(boot, &paths, rootfs::busybox(), &resources);
        cfg.cmdline = self.cmdline.clone();
        cfg.console_max_bytes = self.console_max_bytes;
        cfg.drives = self
            .drives
            .iter()
            .map(|d| mvm_vmm_api::DriveConfig::new(&d.id, &d.path, d.read_only))
            .collect();
        cfg
    }

    /// Write the spec archive and the VMM config (the runtime's
    /// `launch::write`); returns the config path.
    pub fn write_config(&self) -> PathBuf {
        self.write_config_with(&[])
    }

    /// [`Self::write_config`] with running share backends added.
    fn write_config_with(&self, shares: &[launch::Share]) -> PathBuf {
        let mut cfg = self.config();
        let mut spec = self.spec.clone();
        let network = spec.network.take();
        launch::add_network(&mut spec, &mut cfg, &self.nics, network).expect("NICs");
        if let Some(n) = &self.unchecked_network {
            spec.network = Some(n.clone());
        }
        launch::add_shares(&mut spec, &mut cfg, shares);
        launch::write(&spec, &cfg, &self.paths()).expect("launch files");
        if let Some(p) = self.invalid_patch.as_object() {
            let mut v = serde_json::to_value(&cfg).unwrap();
            if let Some(c) = v.as_object_mut() {
                for (k, val) in p {
                    c.insert(k.clone(), val.clone());
                }
            }
            fs::write(self.config_path(), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
        self.config_path()
    }

    /// Start the share backends (if any), then the VMM, and return at once.
    pub fn spawn(&self) -> Running<'_> {
        let (backends, boot) = if self.shares.is_empty() {
            (None, Vec::new())
        } else {
            let bin = share::locate_virtiofsd(None).expect(
                "virtiofsd (make deps runs resources/virtiofsd/build.sh; or set MVM_VIRTIOFSD)",
            );
            let (b, boot) =
                Backends::start(&bin, &self.paths(), &self.shares).expect("share backends");
            (Some(b), boot)
        };
        let cfg = self.write_config_with(&boot);
        let vmm = &Artifacts::get().vmm;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the VMM: the child is the VMM itself.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(vmm);
                c
            }
            None => Command::new(vmm),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.paths().vmm_log).unwrap())
            .spawn()
            .expect("spawn mvm-vmm");
        Running {
            vm: self,
            child,
            started: Instant::now(),
            backends,
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
    /// The share backends, stopped when this is dropped (after the VMM).
    pub backends: Option<Backends>,
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
        let status = StatusReport::read(&self.vm.status_path());
        Outcome {
            exit,
            status,
            console: self.console(),
            stderr: read_lossy(&self.vm.paths().vmm_log),
            elapsed: self.started.elapsed(),
            dir: self.vm.paths().dir,
        }
    }
}

/// The runtime's layout of a test's private directory (state root and
/// run dir both in it).
fn layout(dir: &Path) -> Layout {
    Layout::new(dir, dir)
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

/// Run `cmd` for at most `limit`: its stdin gets `input` (or nothing),
/// its stdout and stderr are collected. `Err` with what it wrote when it
/// did not finish in time (it is killed then): the suites' deadline for
/// one CLI call, so that a hang fails its test with something to read
/// instead of running its binary out of time.
pub fn output_within(
    mut cmd: Command,
    input: Option<&[u8]>,
    limit: Duration,
) -> std::result::Result<std::process::Output, std::process::Output> {
    use std::io::Write;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            s
        })
    };
    let t_out = reader(Box::new(child.stdout.take().unwrap()));
    let t_err = reader(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let (status, finished) = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break (st, true);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().unwrap(), false);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::process::Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    };
    if finished {
        Ok(out)
    } else {
        Err(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_collects_or_kills_at_the_deadline() {
        let mut cat = Command::new("cat");
        cat.arg("-");
        let out = output_within(cat, Some(b"in\n"), Duration::from_secs(30)).unwrap();
        assert_eq!(
            (out.status.success(), out.stdout.as_slice()),
            (true, &b"in\n"[..])
        );
        let mut sleep = Command::new("sh");
        sleep.args(["-c", "echo started; exec sleep 60"]);
        let t0 = Instant::now();
        let out = output_within(sleep, None, Duration::from_millis(500)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(30));
        assert_eq!(out.stdout, b"started\n");
        assert!(!out.status.success());
    }
}
