//! The files a boot needs, made in one place for every caller: the launch
//! spec (what guest init runs, `mvm_protocol::launch`) in its own
//! initramfs archive, and the VMM configuration (`mvm_vmm_api::VmConfig`,
//! the type `mvm-vmm` reads).
//!
//! Sandboxes, the builder's transient RUN sandboxes and the end-to-end
//! suites all boot from what [`vm_config`] and [`write`] produce, so a
//! change to the contract shows up in every one of them.

use std::io;
use std::path::{Path, PathBuf};

use mvm_protocol::launch::{LaunchSpec, Mount, Output, ROOTFS_DRIVE_ID, SCRATCH_DRIVE_ID};
use mvm_vmm_api::{Console, DriveConfig, FsConfig, VmConfig, VsockConfig};

use crate::paths::SandboxPaths;
use crate::spec::{ProcessSpec, Resources};

/// Extra kernel arguments for sandboxes: init's informational lines off,
/// so the console carries the kernel's and init's warnings only.
pub const SANDBOX_CMDLINE: &str = "mvm.quiet";

/// The guest CID of every sandbox: each VMM has its own vsock device and
/// Unix socket, so the CID never has to be unique on the host.
pub const GUEST_CID: u64 = 3;

/// The kernel and the shared init archive a boot uses.
#[derive(Debug, Clone, Copy)]
pub struct BootFiles<'a> {
    /// Guest kernel (ELF vmlinux with a PVH note).
    pub kernel: &'a Path,
    /// The shared initramfs holding `/init` (`Artifacts::init_archive`).
    pub init_archive: &'a Path,
}

/// How the workload's stdio is wired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    /// The workload's output (and stdin, terminal) go through the guest
    /// agent instead of the console.
    pub agent: bool,
    /// Terminal rows and columns at start, for a `tty` workload that asks
    /// at once (`stty size`).
    pub size: Option<(u16, u16)>,
}

/// The launch spec of a workload on the sandbox drives (`rootfs` image
/// disk, `scratch` disk for the overlay's upper directory).
pub fn launch_spec(p: &ProcessSpec, hostname: &str, stdio: Stdio) -> LaunchSpec {
    let mut l = LaunchSpec::new(p.argv());
    l.hostname = Some(hostname.to_string());
    l.rootfs.image_drive = ROOTFS_DRIVE_ID.into();
    l.rootfs.scratch_drive = Some(SCRATCH_DRIVE_ID.into());
    l.process.env = p.env.clone();
    l.process.cwd = p.working_dir.clone();
    l.process.user = p.user.clone();
    if stdio.agent {
        l.process.output = Output::Agent;
        l.process.terminal = p.tty;
        l.process.stdin = p.open_stdin;
        if let (true, Some((rows, cols))) = (p.tty, stdio.size) {
            l.process.rows = rows;
            l.process.cols = cols;
        }
    }
    l
}

/// The VMM configuration of a sandbox boot: the kernel, the init archive
/// then the spec archive, the image's read-only root disk and the
/// sandbox's scratch disk, the console and status files, and the vsock
/// device the guest agent listens on.
pub fn vm_config(
    boot: BootFiles<'_>,
    paths: &SandboxPaths,
    root_disk: &Path,
    resources: &Resources,
) -> VmConfig {
    let mut cfg = VmConfig::new(boot.kernel);
    cfg.initrd = vec![boot.init_archive.into(), paths.spec_cpio.clone()];
    cfg.cmdline = SANDBOX_CMDLINE.into();
    cfg.vcpus = resources.vcpus;
    cfg.memory_mib = resources.memory_mib;
    cfg.drives = vec![
        DriveConfig::new(ROOTFS_DRIVE_ID, root_disk, true),
        DriveConfig::new(SCRATCH_DRIVE_ID, &paths.scratch, false),
    ];
    cfg.console = Console::File(paths.console.clone());
    cfg.status_file = Some(paths.status.clone());
    // Always present: exec, copy, stats, stop signals and kill -s go
    // through the guest agent even when the workload's output stays on
    // the console.
    cfg.vsock = Some(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: paths.vsock.clone(),
    });
    cfg
}

/// A virtio-fs share as a boot sees it: the VMM's device (`tag`, the
/// backend's `socket`) and the guest's mount (`target`, `read_only`).
/// [`crate::share::Backends::start`] makes these for host directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag, unique per boot.
    pub tag: String,
    /// The vhost-user socket of its running backend.
    pub socket: PathBuf,
    /// Where the guest mounts it.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Add `shares` to a boot: a virtio-fs device each in `cfg`, a mount each
/// in `spec`. The spec's validation ([`write`]) checks tags and targets.
pub fn add_shares(spec: &mut LaunchSpec, cfg: &mut VmConfig, shares: &[Share]) {
    for s in shares {
        cfg.fs.push(FsConfig::new(&s.tag, &s.socket));
        spec.mounts.push(Mount {
            tag: s.tag.clone(),
            target: s.target.clone(),
            read_only: s.read_only,
        });
    }
}

/// Make the share `root` the boot's root filesystem
/// (`Rootfs::share`) instead of the image and scratch disks, which are
/// dropped from `cfg`. `root.target` is not used.
pub fn set_root_share(spec: &mut LaunchSpec, cfg: &mut VmConfig, root: &Share) {
    cfg.drives.clear();
    cfg.fs.push(FsConfig::new(&root.tag, &root.socket));
    spec.rootfs.image_drive.clear();
    spec.rootfs.scratch_drive = None;
    spec.rootfs.share = Some(root.tag.clone());
}

/// Why the launch files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launch spec is not valid (a NUL byte, a relative cwd...).
    #[error("invalid launch spec: {0}")]
    Spec(#[from] mvm_protocol::launch::SpecError),
    /// Writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Write the spec archive (to `paths.spec_cpio`, which `cfg` must load
/// after the init archive) and the VMM configuration (to
/// `paths.vm_config`), each atomically.
pub fn write(spec: &LaunchSpec, cfg: &VmConfig, paths: &SandboxPaths) -> Result<(), LaunchError> {
    let json = spec.to_json()?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::Write { path, source }
    };
    let cpio = mvm_protocol::initramfs::spec_archive(&json).map_err(werr(&paths.spec_cpio))?;
    mvm_vmm_api::write_atomic(&paths.spec_cpio, &cpio).map_err(werr(&paths.spec_cpio))?;
    mvm_vmm_api::write_atomic(&paths.vm_config, &cfg.to_json()).map_err(werr(&paths.vm_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_boots_its_disks_with_the_agent() {
        let paths = crate::paths::Layout::new("/var/lib/mvm", "/run/mvm").sandbox("abc");
        let res = Resources {
            vcpus: 2,
            cpu_quota: None,
            memory_mib: 512,
            scratch_mib: 1024,
        };
        let boot = BootFiles {
            kernel: Path::new("/k/vmlinux"),
            init_archive: Path::new("/i/init.cpio"),
        };
        let cfg = vm_config(boot, &paths, Path::new("/d/root.ext4"), &res);
        assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 512));
        assert_eq!(
            cfg.initrd,
            vec![PathBuf::from("/i/init.cpio"), paths.spec_cpio.clone()]
        );
        assert_eq!(
            cfg.drives[0],
            DriveConfig::new("rootfs", "/d/root.ext4", true)
        );
        assert_eq!(
            cfg.drives[1],
            DriveConfig::new("scratch", &paths.scratch, false)
        );
        assert_eq!(cfg.vsock.as_ref().unwrap().uds_path, paths.vsock);
        // What the VMM will read back.
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);

        let p = ProcessSpec {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            env: vec!["A=1".into()],
            working_dir: "/w".into(),
            user: "nobody".into(),
            tty: true,
            open_stdin: true,
        };
        let l = launch_spec(&p, "h", Stdio::default());
        assert_eq!(l.process.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(l.process.output, Output::Console);
        assert!(!l.process.terminal, "a terminal needs the agent");
        let l = launch_spec(
            &p,
            "h",
            Stdio {
                agent: true,
                size: Some((30, 100)),
            },
        );
        assert_eq!((l.process.terminal, l.process.stdin), (true, true));
        assert_eq!((l.process.rows, l.process.cols), (30, 100));
        assert_eq!(l.hostname.as_deref(), Some("h"));
    }

    #[test]
    fn shares_become_devices_and_mounts() {
        let paths = crate::paths::Layout::new("/var/lib/mvm", "/run/mvm").sandbox("abc");
        let boot = BootFiles {
            kernel: Path::new("/k/vmlinux"),
            init_archive: Path::new("/i/init.cpio"),
        };
        let res = Resources {
            vcpus: 1,
            cpu_quota: None,
            memory_mib: 128,
            scratch_mib: 64,
        };
        let mut cfg = vm_config(boot, &paths, Path::new("/d/root.ext4"), &res);
        let mut spec = LaunchSpec::new(vec!["true".into()]);
        add_shares(
            &mut spec,
            &mut cfg,
            &[
                Share {
                    tag: "src".into(),
                    socket: "/run/mvm/vsock/abc.fs0.sock".into(),
                    target: "/src".into(),
                    read_only: false,
                },
                Share {
                    tag: "conf".into(),
                    socket: "/run/mvm/vsock/abc.fs1.sock".into(),
                    target: "/etc/app".into(),
                    read_only: true,
                },
            ],
        );
        assert_eq!(
            cfg.fs,
            vec![
                FsConfig::new("src", "/run/mvm/vsock/abc.fs0.sock"),
                FsConfig::new("conf", "/run/mvm/vsock/abc.fs1.sock")
            ]
        );
        assert_eq!(spec.mounts.len(), 2);
        assert!(spec.mounts[1].read_only);
        assert_eq!(spec.mounts[0].target, "/src");
        spec.validate().unwrap();
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);
    }
}
