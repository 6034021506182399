//! The RUN executor: a transient microVM booted on the build's current
//! filesystem.
//!
//! The image so far becomes a read-only root disk (the image store's
//! cached conversion), a fresh scratch disk takes the writes (guest init
//! puts the overlay's upper directory at `/upper` on it), and the launch
//! spec carries the command, environment, user and working directory.
//! The workload's output is the serial console, streamed as it comes; the
//! exit status comes from the VMM's status file. After power-off (init
//! freezes the scratch filesystem first, so it is clean) the scratch disk
//! is loop-mounted read-only on the host and `/upper` becomes a layer.
//!
//! [`Executor`] is the seam: [`VmmExecutor`] spawns `mvm-vmm` directly.
//! (The sandbox runtime crate was not committed when this was written;
//! when it offers a transient-VM call this is where it plugs in.)

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvm_images::Store;
use mvm_protocol::launch::{LaunchSpec, SCRATCH_DRIVE_ID};
use serde::Deserialize;

use crate::tarlayer::{self, LayerWriter, UpperStats};

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A required artifact is missing.
    #[error("{var} is not set or does not exist ({what}); set it to the path of {what} (make build kernel; the runtime uses the same variables)")]
    Artifact {
        /// The environment variable.
        var: &'static str,
        /// What it names.
        what: &'static str,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The VMM failed (exit 1) or crashed the guest (exit 2).
    #[error("the build VM failed ({status}): {message}")]
    Vmm {
        /// Exit status of mvm-vmm.
        status: String,
        /// Its message (status file or stderr).
        message: String,
    },
    /// The step ran longer than allowed.
    #[error("the RUN step did not finish within {0:?}; the build VM was killed")]
    Timeout(Duration),
    /// Reading the scratch disk failed.
    #[error("reading the RUN step's changes from {}: {message}", path.display())]
    Scratch {
        /// The scratch disk.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The spec was invalid.
    #[error("invalid RUN command: {0}")]
    Spec(String),
}

type Result<T, E = VmError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VmError {
    let path = path.into();
    move |source| VmError::Io { op, path, source }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The current image as a read-only ext4 disk.
    pub root_disk: PathBuf,
    /// argv (SHELL + command, or the JSON form).
    pub argv: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// USER.
    pub user: String,
    /// WORKDIR (absolute).
    pub cwd: String,
    /// A private directory for this run's files (scratch disk, logs).
    pub dir: PathBuf,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit status.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Init could not start it (Docker's code: 125/126/127).
    InitError {
        /// Init's description.
        message: String,
        /// The Docker exit code.
        code: i32,
    },
}

impl Exit {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// The number Docker would report.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Signal(s) => 128 + s,
            Exit::InitError { code, .. } => *code,
        }
    }
}

/// A finished RUN.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: Exit,
    /// The scratch disk holding the changes.
    pub scratch: PathBuf,
    /// VMM start to guest init running.
    pub boot: Duration,
    /// Whole VM lifetime.
    pub total: Duration,
}

/// Runs RUN commands in isolation and returns their scratch disk.
pub trait Executor: Send + Sync {
    /// Runs `req`, passing each output line to `output`.
    fn run(&self, req: &RunRequest, output: &mut dyn FnMut(&str)) -> Result<RunOutcome>;
}

/// Spawns `mvm-vmm` per RUN.
#[derive(Debug, Clone)]
pub struct VmmExecutor {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// The VMM binary.
    pub vmm: PathBuf,
    /// The init initramfs (built from the init binary).
    pub init_cpio: PathBuf,
    /// Image store (for scratch disk templates).
    pub store: Store,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Scratch disk size (sparse).
    pub scratch_size: u64,
    /// Longest a RUN may take.
    pub timeout: Duration,
}

fn env_file(var: &'static str, what: &'static str) -> Result<PathBuf> {
    let p = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(VmError::Artifact { var, what })?;
    if !p.is_file() {
        return Err(VmError::Artifact { var, what });
    }
    Ok(p)
}

impl VmmExecutor {
    /// From `MVM_KERNEL`, `MVM_INIT` and `MVM_VMM`; the init archive is
    /// written to `work_dir`.
    pub fn from_env(store: Store, work_dir: &Path) -> Result<VmmExecutor> {
        let kernel = env_file("MVM_KERNEL", "the guest kernel (vmlinux)")?;
        let init = env_file("MVM_INIT", "the static mvm-init binary")?;
        let vmm = env_file("MVM_VMM", "the mvm-vmm binary")?;
        let bin = fs::read(&init).map_err(io_err("reading", &init))?;
        let cpio =
            mvm_protocol::initramfs::init_archive(&bin).map_err(io_err("archiving", &init))?;
        fs::create_dir_all(work_dir).map_err(io_err("creating", work_dir))?;
        let init_cpio = work_dir.join("init.cpio");
        fs::write(&init_cpio, cpio).map_err(io_err("writing", &init_cpio))?;
        Ok(VmmExecutor {
            kernel,
            vmm,
            init_cpio,
            store,
            memory_mib: 512,
            vcpus: 1,
            scratch_size: 8 << 30,
            timeout: Duration::from_secs(3600),
        })
    }
}

#[derive(Deserialize)]
struct StatusFile {
    #[allow(dead_code)]
    guest: String,
    workload: Option<serde_json::Value>,
    boot_time_us: Option<u64>,
    message: Option<String>,
}

/// Splits console bytes into lines, dropping kernel and init chatter.
struct ConsoleFilter {
    partial: Vec<u8>,
}

impl ConsoleFilter {
    fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(&str)) {
        self.partial.extend_from_slice(data);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            emit(&line[..line.len() - 1], out);
        }
    }

    fn flush(&mut self, out: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(&line, out);
        }
    }
}

fn emit(line: &[u8], out: &mut dyn FnMut(&str)) {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end_matches('\r');
    // The kernel's last words on the way down come without a timestamp.
    let kernel_exit = s == "reboot: Restarting system" || s == "reboot: Power down";
    if kernel_exit
        || is_kernel_line(s)
        || (s.starts_with("mvm-init: ") && !s.starts_with("mvm-init: error"))
    {
        return;
    }
    out(s);
}

/// `[    0.123456] ...` printk lines.
fn is_kernel_line(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('[') else {
        return false;
    };
    let Some(end) = rest.find(']') else {
        return false;
    };
    let ts = rest[..end].trim();
    !ts.is_empty() && ts.chars().all(|c| c.is_ascii_digit() || c == '.')
}

impl Executor for VmmExecutor {
    fn run(&self, req: &RunRequest, output: &mut dyn FnMut(&str)) -> Result<RunOutcome> {
        let dir = &req.dir;
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let scratch = dir.join("scratch.ext4");
        self.store
            .create_scratch_disk(&scratch, self.scratch_size)
            .map_err(|e| VmError::Scratch {
                path: scratch.clone(),
                message: e.to_string(),
            })?;
        let mut spec = LaunchSpec::new(req.argv.clone());
        spec.rootfs.scratch_drive = Some(SCRATCH_DRIVE_ID.into());
        spec.process.env = req.env.clone();
        spec.process.user = req.user.clone();
        spec.process.cwd = req.cwd.clone();
        let json = spec.to_json().map_err(|e| VmError::Spec(e.to_string()))?;
        let spec_cpio = dir.join("spec.cpio");
        let archive = mvm_protocol::initramfs::spec_archive(&json)
            .map_err(io_err("archiving", &spec_cpio))?;
        fs::write(&spec_cpio, archive).map_err(io_err("writing", &spec_cpio))?;
        let console = dir.join("console.log");
        let status = dir.join("status.json");
        fs::write(&console, b"").map_err(io_err("creating", &console))?;
        let cfg = serde_json::json!({
            "kernel": self.kernel,
            "initrd": [self.init_cpio, spec_cpio],
            "cmdline": "mvm.quiet",
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "drives": [
                {"id": "rootfs", "path": req.root_disk, "read_only": true},
                {"id": SCRATCH_DRIVE_ID, "path": scratch, "read_only": false},
            ],
            "console": {"file": console},
            "status_file": status,
        });
        let cfg_path = dir.join("vm.json");
        fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&cfg).unwrap_or_default(),
        )
        .map_err(io_err("writing", &cfg_path))?;
        let stderr_path = dir.join("vmm.stderr");
        let stderr = fs::File::create(&stderr_path).map_err(io_err("creating", &stderr_path))?;
        let started = Instant::now();
        let mut child = Command::new(&self.vmm)
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io_err("starting", &self.vmm))?;
        let mut con = fs::File::open(&console).map_err(io_err("opening", &console))?;
        let mut filter = ConsoleFilter {
            partial: Vec::new(),
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        let exit = loop {
            let done = child.try_wait().map_err(io_err("waiting for", &self.vmm))?;
            loop {
                con.seek(SeekFrom::Start(pos))
                    .map_err(io_err("reading", &console))?;
                let n = con.read(&mut buf).map_err(io_err("reading", &console))?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                filter.feed(&buf[..n], output);
            }
            if let Some(st) = done {
                break st;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmError::Timeout(self.timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        filter.flush(output);
        let total = started.elapsed();
        let st: Option<StatusFile> = fs::read(&status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let stderr_tail = || {
            let s = fs::read_to_string(&stderr_path).unwrap_or_default();
            let lines: Vec<&str> = s.lines().rev().take(10).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        if exit.code() != Some(0) {
            let message = st
                .as_ref()
                .and_then(|s| s.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(stderr_tail);
            return Err(VmError::Vmm {
                status: exit.to_string(),
                message,
            });
        }
        let st = st.ok_or_else(|| VmError::Vmm {
            status: exit.to_string(),
            message: format!("no status file was written; {}", stderr_tail()),
        })?;
        let w = st.workload.unwrap_or(serde_json::Value::Null);
        let exit = if let Some(msg) = w.get("init_error").and_then(|v| v.as_str()) {
            Exit::InitError {
                message: msg.to_string(),
                code: w.get("exit_code").and_then(|v| v.as_i64()).unwrap_or(125) as i32,
            }
        } else if let Some(s) = w.get("signal").and_then(|v| v.as_i64()) {
            Exit::Signal(s as i32)
        } else if let Some(c) = w.get("exit_code").and_then(|v| v.as_i64()) {
            Exit::Code(c as i32)
        } else {
            return Err(VmError::Vmm {
                status: exit.to_string(),
                message: "guest init reported no workload status".into(),
            });
        };
        Ok(RunOutcome {
            exit,
            scratch,
            boot: Duration::from_micros(st.boot_time_us.unwrap_or(0)),
            total,
        })
    }
}

/// Loop-mounts an ext4 scratch disk read-only for as long as it lives.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(disk: &Path, dir: &Path) -> Result<Mounted> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro,noload"])
            .arg(disk)
            .arg(dir)
            .output()
            .map_err(io_err("running mount for", disk))?;
        if !out.status.success() {
            return Err(VmError::Scratch {
                path: disk.to_path_buf(),
                message: format!(
                    "mount failed ({}): {}; the builder must run as root with loop devices available",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(Mounted {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Turns the overlay upper directory of a finished RUN's scratch disk
/// into a layer tarball at `out`.
pub fn scratch_to_layer(scratch: &Path, mount_dir: &Path, out: &Path) -> Result<UpperStats> {
    let m = Mounted::new(scratch, mount_dir)?;
    let upper = m.dir.join("upper");
    let mut w = LayerWriter::create(out).map_err(io_err("creating", out))?;
    let stats = if upper.is_dir() {
        tarlayer::upper_to_layer(&upper, &mut w).map_err(|e| VmError::Scratch {
            path: scratch.to_path_buf(),
            message: e.to_string(),
        })?
    } else {
        UpperStats::default()
    };
    w.finish().map_err(io_err("writing", out))?;
    drop(m);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_filter_keeps_workload_lines() {
        let mut f = ConsoleFilter {
            partial: Vec::new(),
        };
        let mut lines = Vec::new();
        f.feed(
            b"[    0.123] Linux version\nreboot: Restarting system\nhello\r\nmvm-init: workload exited\nmvm-init: error: x\n[not a ts] y\npart",
            &mut |l| lines.push(l.to_string()),
        );
        f.feed(b"ial", &mut |l| lines.push(l.to_string()));
        f.flush(&mut |l| lines.push(l.to_string()));
        assert_eq!(
            lines,
            ["hello", "mvm-init: error: x", "[not a ts] y", "partial"]
        );
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(Exit::Signal(9).code(), 137);
        assert!(Exit::Code(0).success());
        assert_eq!(
            Exit::InitError {
                message: "x".into(),
                code: 127
            }
            .code(),
            127
        );
    }
}
