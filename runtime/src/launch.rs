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

use mvm_protocol::launch::{
    parse_mac, LaunchSpec, Mount, Network, Output, ROOTFS_DRIVE_ID, SCRATCH_DRIVE_ID,
};
use mvm_vmm_api::config::{DEFAULT_MTU, MAX_NET_DEVICES};
use mvm_vmm_api::{
    Console, DriveConfig, FsConfig, MacAddr, NetConfig, RateLimit, TapConfig, VmConfig, VsockConfig,
};

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
            copy_up: false,
        });
    }
}

/// Add block volumes to a boot: a virtio-blk drive each in `cfg` (the
/// VMM locks it, exclusively when writable), a block mount each in
/// `spec`. The spec's validation ([`write`]) checks serials and targets.
pub fn add_block_mounts(
    spec: &mut LaunchSpec,
    cfg: &mut VmConfig,
    disks: &[crate::volume::BlockDisk],
) {
    for d in disks {
        cfg.drives
            .push(DriveConfig::new(&d.mount.drive, &d.path, d.mount.read_only));
        spec.block_mounts.push(d.mount.clone());
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

/// A NIC of a boot: a virtio-net device on a host TAP. The guest finds
/// it by `mac`, so every NIC has one (a random MAC would change at each
/// boot and match no interface of the spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The VMM's device id (messages, counters), unique per boot.
    pub id: String,
    /// The host side: a TAP by name or an inherited descriptor.
    pub tap: TapConfig,
    /// The guest's MAC; a spec interface with the same MAC configures it.
    pub mac: MacAddr,
    /// The MTU the device reports (the most an interface on it may use).
    pub mtu: u16,
    /// Limits on what the guest receives.
    pub rx_rate_limit: Option<RateLimit>,
    /// Limits on what the guest sends.
    pub tx_rate_limit: Option<RateLimit>,
}

impl Nic {
    /// A NIC `id` on `tap` with `mac`, the default MTU and no limits.
    pub fn new(id: impl Into<String>, tap: TapConfig, mac: MacAddr) -> Self {
        Self {
            id: id.into(),
            tap,
            mac,
            mtu: DEFAULT_MTU,
            rx_rate_limit: None,
            tx_rate_limit: None,
        }
    }
}

/// Add NICs and the guest's view of them to a boot: a virtio-net device
/// each in `cfg`, and `network` (interfaces by MAC, routes, resolver,
/// hosts) as the spec's network section, which guest init applies
/// before the workload. `network: None` leaves the section out (init then
/// only brings up `lo`, and any NIC stays down: the workload's to
/// configure). Every interface of `network` must name the MAC of one of
/// `nics`, with an MTU the NIC takes; a NIC no interface names stays
/// down in the guest. The section's own rules are checked by [`write`].
pub fn add_network(
    spec: &mut LaunchSpec,
    cfg: &mut VmConfig,
    nics: &[Nic],
    network: Option<Network>,
) -> Result<(), LaunchError> {
    let count = cfg.net.len() + nics.len();
    if count > MAX_NET_DEVICES {
        return Err(LaunchError::TooManyNics { count });
    }
    for (i, nic) in nics.iter().enumerate() {
        if nics[..i].iter().any(|n| n.mac == nic.mac)
            || cfg.net.iter().any(|n| n.mac == Some(nic.mac))
        {
            return Err(LaunchError::DuplicateNicMac {
                id: nic.id.clone(),
                mac: nic.mac.to_string(),
            });
        }
    }
    if let Some(net) = &network {
        for iface in &net.interfaces {
            let nic = parse_mac(&iface.mac).and_then(|m| nics.iter().find(|n| n.mac.0 == m));
            let Some(nic) = nic else {
                return Err(LaunchError::NoNic {
                    interface: iface.name.clone(),
                    mac: iface.mac.clone(),
                    nics: nics
                        .iter()
                        .map(|n| format!("{} {}", n.id, n.mac))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if let Some(mtu) = iface.mtu.filter(|m| *m > u32::from(nic.mtu)) {
                return Err(LaunchError::NicMtu {
                    interface: iface.name.clone(),
                    mtu,
                    nic: nic.id.clone(),
                    nic_mtu: nic.mtu,
                });
            }
        }
    }
    for nic in nics {
        cfg.net.push(NetConfig {
            id: nic.id.clone(),
            tap: nic.tap.clone(),
            mac: Some(nic.mac),
            mtu: nic.mtu,
            rx_rate_limit: nic.rx_rate_limit,
            tx_rate_limit: nic.tx_rate_limit,
        });
    }
    spec.network = network;
    Ok(())
}

/// Why the launch files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launch spec is not valid (a NUL byte, a relative cwd...).
    #[error("invalid launch spec: {0}")]
    Spec(#[from] mvm_protocol::launch::SpecError),
    /// More NICs than the VMM has virtio-net devices.
    #[error("a boot has {count} NICs; the VMM takes at most {MAX_NET_DEVICES}")]
    TooManyNics {
        /// NICs asked for.
        count: usize,
    },
    /// Two NICs with one MAC: the guest could not tell them apart.
    #[error("NIC {id:?} has MAC {mac}, which another NIC of the boot has; give each NIC its own")]
    DuplicateNicMac {
        /// The second NIC.
        id: String,
        /// The MAC.
        mac: String,
    },
    /// A spec interface matches no NIC.
    #[error("network interface {interface:?} has MAC {mac:?}, which no NIC of the boot has (NICs: {nics}); give the interface its NIC's MAC")]
    NoNic {
        /// The interface's name.
        interface: String,
        /// Its MAC.
        mac: String,
        /// The NICs, `id mac`.
        nics: String,
    },
    /// A spec interface asks for more MTU than its NIC reports.
    #[error("network interface {interface:?} asks for MTU {mtu}, more than its NIC {nic:?} takes ({nic_mtu}); raise the NIC's MTU or lower the interface's")]
    NicMtu {
        /// The interface's name.
        interface: String,
        /// The MTU it asks for.
        mtu: u32,
        /// The NIC's id.
        nic: String,
        /// The NIC's MTU.
        nic_mtu: u16,
    },
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
            workload_memory_mib: None,
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
            workload_memory_mib: None,
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

    #[test]
    fn nics_become_devices_and_the_network_section_matches_them() {
        use mvm_protocol::launch::{Interface, IpCidr};
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
            workload_memory_mib: None,
        };
        let base = vm_config(boot, &paths, Path::new("/d/root.ext4"), &res);
        let mac0 = MacAddr([2, 0x42, 0xac, 0x11, 0, 2]);
        let mac1 = MacAddr([2, 0x42, 0xac, 0x12, 0, 2]);
        let mut eth1 = Nic::new("eth1", TapConfig::Fd(5), mac1);
        eth1.mtu = 9000;
        eth1.rx_rate_limit = Some(RateLimit::default());
        let nics = [Nic::new("eth0", TapConfig::Name("tap0".into()), mac0), eth1];
        let iface = |name: &str, mac: &str, mtu| Interface {
            mac: mac.into(),
            name: name.into(),
            addresses: vec![IpCidr {
                address: "10.0.0.2".parse().unwrap(),
                prefix_len: 24,
            }],
            mtu,
        };
        let network = Network {
            interfaces: vec![iface("eth0", "02:42:ac:11:00:02", None)],
            ..Default::default()
        };

        let (mut cfg, mut spec) = (base.clone(), LaunchSpec::new(vec!["true".into()]));
        add_network(&mut spec, &mut cfg, &nics, Some(network.clone())).unwrap();
        assert_eq!(cfg.net.len(), 2);
        assert_eq!(cfg.net[0].mac, Some(mac0));
        assert_eq!(cfg.net[0].tap, TapConfig::Name("tap0".into()));
        assert_eq!((cfg.net[1].id.as_str(), cfg.net[1].mtu), ("eth1", 9000));
        assert_eq!(cfg.net[1].rx_rate_limit, Some(RateLimit::default()));
        assert_eq!(spec.network.as_ref(), Some(&network));
        spec.validate().unwrap();
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);

        // Without a section: devices only.
        let (mut cfg, mut spec) = (base.clone(), LaunchSpec::new(vec!["true".into()]));
        add_network(&mut spec, &mut cfg, &nics, None).unwrap();
        assert_eq!((cfg.net.len(), spec.network.is_none()), (2, true));

        let refused = |nics: &[Nic], net: Network| {
            let (mut cfg, mut spec) = (base.clone(), LaunchSpec::new(vec!["true".into()]));
            let e = add_network(&mut spec, &mut cfg, nics, Some(net)).unwrap_err();
            assert!(
                cfg.net.is_empty() && spec.network.is_none(),
                "nothing added"
            );
            e.to_string()
        };
        let e = refused(
            &nics,
            Network {
                interfaces: vec![iface("eth0", "02:42:ac:11:00:09", None)],
                ..Default::default()
            },
        );
        assert!(
            e.contains("\"eth0\"")
                && e.contains("02:42:ac:11:00:09")
                && e.contains("eth0 02:42:ac:11:00:02"),
            "{e}"
        );
        let e = refused(
            &nics,
            Network {
                interfaces: vec![iface("eth0", "02:42:ac:11:00:02", Some(1600))],
                ..Default::default()
            },
        );
        assert!(e.contains("MTU 1600") && e.contains("(1500)"), "{e}");
        let twins = [nics[0].clone(), Nic::new("x", TapConfig::Fd(6), mac0)];
        assert!(refused(&twins, Network::default()).contains("\"x\""));
        let many: Vec<Nic> = (0..9)
            .map(|i| {
                Nic::new(
                    format!("n{i}"),
                    TapConfig::Fd(3 + i),
                    MacAddr([2, 0, 0, 0, 0, i as u8]),
                )
            })
            .collect();
        assert!(refused(&many, Network::default()).contains("9 NICs"));
    }
}
