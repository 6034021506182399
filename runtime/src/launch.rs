//! The files a start needs: the per-sandbox launch spec archive and the
//! VMM configuration (format: vmm/README.md).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use mvm_protocol::launch::{LaunchSpec, Output, ROOTFS_DRIVE_ID, SCRATCH_DRIVE_ID};
use serde::Serialize;

use crate::paths::SandboxPaths;
use crate::spec::SandboxSpec;

/// Extra kernel arguments for sandboxes: init's informational lines off,
/// so the console carries the workload's output only.
pub const SANDBOX_CMDLINE: &str = "mvm.quiet";

/// The VMM's configuration file (the subset mvm uses).
#[derive(Debug, Clone, Serialize)]
pub struct VmmConfig {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Shared init archive, then the spec archive.
    pub initrd: Vec<PathBuf>,
    /// Appended to the VMM's defaults.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory_mib: u64,
    /// rootfs (read-only, shared) and scratch.
    pub drives: Vec<Drive>,
    /// `{"file": path}`.
    pub console: serde_json::Value,
    /// Where the outcome goes.
    pub status_file: PathBuf,
    /// The vsock device, when the agent is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
}

/// A virtio-blk disk.
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// Serial seen by the guest.
    pub id: String,
    /// Host file.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// The VMM's hybrid vsock device.
#[derive(Debug, Clone, Serialize)]
pub struct Vsock {
    /// The guest's CID.
    pub guest_cid: u32,
    /// The Unix socket the VMM listens on.
    pub uds_path: PathBuf,
}

/// The launch spec for a sandbox spec. `agent`: the workload's output
/// (and stdin, terminal) go through the guest agent rather than the
/// console; `size`: the terminal's rows and columns at start, so a
/// workload that asks at once (`stty size`) gets the client's size.
pub fn launch_spec(spec: &SandboxSpec, agent: bool, size: Option<(u16, u16)>) -> LaunchSpec {
    let p = &spec.process;
    let mut l = LaunchSpec::new(p.entrypoint.iter().chain(&p.cmd).cloned().collect());
    l.hostname = Some(p.hostname.clone());
    l.rootfs.image_drive = ROOTFS_DRIVE_ID.into();
    l.rootfs.scratch_drive = Some(SCRATCH_DRIVE_ID.into());
    l.process.env = p.env.clone();
    l.process.cwd = p.working_dir.clone();
    l.process.user = p.user.clone();
    if agent {
        l.process.output = Output::Agent;
        l.process.terminal = p.tty;
        l.process.stdin = p.open_stdin;
        if let (true, Some((rows, cols))) = (p.tty, size) {
            l.process.rows = rows;
            l.process.cols = cols;
        }
    }
    l
}

/// Write the spec archive and the VMM config of a start.
pub fn write_launch_files(
    spec: &SandboxSpec,
    paths: &SandboxPaths,
    kernel: &Path,
    init_archive: &Path,
    agent: bool,
    size: Option<(u16, u16)>,
) -> io::Result<()> {
    let json = launch_spec(spec, agent, size)
        .to_json()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let cpio = mvm_protocol::initramfs::spec_archive(&json)?;
    write_atomic(&paths.spec_cpio, &cpio)?;
    let cfg = VmmConfig {
        kernel: kernel.into(),
        initrd: vec![init_archive.into(), paths.spec_cpio.clone()],
        cmdline: SANDBOX_CMDLINE.into(),
        vcpus: spec.host.vcpus,
        memory_mib: spec.host.memory_mib,
        drives: vec![
            Drive {
                id: ROOTFS_DRIVE_ID.into(),
                path: spec.root_disk.clone(),
                read_only: true,
            },
            Drive {
                id: SCRATCH_DRIVE_ID.into(),
                path: paths.scratch.clone(),
                read_only: false,
            },
        ],
        console: serde_json::json!({ "file": paths.console }),
        status_file: paths.status.clone(),
        // Always present: exec, copy, stats, stop signals and kill -s go
        // through the guest agent even when the workload's output stays
        // on the console.
        vsock: Some(Vsock {
            guest_cid: 3,
            uds_path: paths.vsock.clone(),
        }),
    };
    let bytes = serde_json::to_vec_pretty(&cfg).map_err(io::Error::other)?;
    write_atomic(&paths.vm_config, &bytes)
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}
