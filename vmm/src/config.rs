//! The VM configuration as the VMM sees it: the file (`--config`, the
//! [`VmConfig`] of `mvm-vmm-api`, which every caller writes), flags, or
//! both; then one validation.
//!
//! Flags override file values (a repeatable flag such as `--drive` or
//! `--initrd` replaces the file's whole list). The merged result goes
//! through one validation, so both forms fail the same way, before any VM
//! is created: every message names the offending value and what to do.
//! The types themselves live in `mvm-vmm-api`; only what needs the VMM's
//! knowledge (the kernel's PVH note, the MMIO layout, the host's limits)
//! is here.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub use mvm_vmm_api::config::{
    ConfigFileError, Console, DriveConfig, MacAddr, NetConfig, RateLimit, TapConfig, TokenBucket,
    VmConfig, VsockConfig, DEFAULT_MEMORY_MIB, DEFAULT_MTU, DEFAULT_VCPUS, MAX_DRIVE_ID_LEN,
    MAX_MTU, MAX_NET_DEVICES, MAX_NET_ID_LEN, MAX_TAP_NAME_LEN, MAX_VSOCK_PATH_LEN, MIN_MTU,
};
pub use mvm_vmm_api::config::{FsConfig, MAX_FS_SOCKET_LEN, MAX_FS_TAG_LEN};

use crate::arch::layout::{self, MAX_VIRTIO_DEVICES};
use crate::arch::mptable::MAX_SUPPORTED_CPUS;
use crate::arch::pvh::{self, KernelImageError};
use crate::cmdline::{self, CmdlineError};

/// Below this the kernel plus initramfs do not fit comfortably.
pub const MIN_MEMORY_MIB: u64 = 32;
/// The smallest cap of a rotated file: one crash message must fit.
pub const MIN_FILE_CAP: u64 = 4096;

const KERNEL_HINT: &str = "build it with resources/kernel/build.sh (it prints the vmlinux path)";

/// Values given as flags (`None`/empty: not given).
#[derive(Debug, Clone, Default)]
pub struct FlagConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Vec<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub drives: Vec<DriveConfig>,
    pub console: Option<Console>,
    pub status_file: Option<PathBuf>,
    pub no_rng: bool,
    pub vsock: Option<VsockConfig>,
    pub fs: Vec<FsConfig>,
    pub net: Vec<NetConfig>,
    /// `--no-seccomp`.
    pub no_seccomp: bool,
}

/// Facts about the host that bound the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostLimits {
    /// MemTotal from /proc/meminfo, in MiB.
    pub mem_total_mib: Option<u64>,
    /// KVM_CAP_MAX_VCPUS, when KVM could be asked.
    pub kvm_max_vcpus: Option<u32>,
}

impl HostLimits {
    /// Read the limits of this host (best effort: unknown limits are skipped).
    pub fn probe() -> Self {
        Self {
            mem_total_mib: mem_total_mib(),
            kvm_max_vcpus: kvm_ioctls::Kvm::new()
                .ok()
                .map(|k| k.get_max_vcpus() as u32),
        }
    }
}

fn mem_total_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total_mib(&info)
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{what} is {got}: a rotated file needs at least {MIN_FILE_CAP} bytes")]
    FileCap { what: &'static str, got: u64 },
    #[error("no guest kernel given: pass --kernel PATH or set \"kernel\" in the config file ({KERNEL_HINT})")]
    NoKernel,
    #[error("kernel {path}: {source}; {KERNEL_HINT}")]
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is not usable: {source}; {KERNEL_HINT}")]
    KernelImage {
        path: PathBuf,
        source: KernelImageError,
    },
    #[error("initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {0} is not a regular file")]
    InitrdNotFile(PathBuf),
    #[error("vcpus is {got}: it must be between 1 and {max}{why}")]
    Vcpus {
        got: u32,
        max: u32,
        why: &'static str,
    },
    #[error("memory is {0} MiB: the guest needs at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error(
        "memory is {got} MiB but this host has only {host} MiB in total (MemTotal); ask for less"
    )]
    MemoryTooLarge { got: u64, host: u64 },
    #[error("drive id {0:?} is invalid: it must be 1 to {MAX_DRIVE_ID_LEN} bytes of letters, digits, '-', '_' or '.'")]
    DriveId(String),
    #[error("drive id {0:?} is used twice; each drive needs its own id (its virtio-blk serial)")]
    DuplicateDrive(String),
    #[error("drive {id:?} at {path}: {source}")]
    Drive {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drive {id:?} at {path} is not a regular file or block device")]
    DriveNotFile { id: String, path: PathBuf },
    #[error("{0} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit (one IRQ each)")]
    TooManyDevices(usize),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("the directory of {what} {path} does not exist; create it first")]
    NoParentDir { what: &'static str, path: PathBuf },
    #[error("bad --drive {0:?}: expected id=ID,path=PATH[,ro]")]
    DriveFlag(String),
    #[error("bad --console {0:?}: expected stdout, off or file:PATH")]
    ConsoleFlag(String),
    #[error("bad --vsock {0:?}: expected cid=CID,path=PATH")]
    VsockFlag(String),
    #[error(
        "vsock guest_cid {0} is invalid: it must be between 3 and 4294967294 (0-2 are reserved)"
    )]
    VsockCid(u64),
    #[error("vsock uds_path {path} is {len} bytes; at most {MAX_VSOCK_PATH_LEN} fit (\"<uds_path>_<port>\" must fit a Unix socket address): use a shorter path")]
    VsockPathTooLong { path: PathBuf, len: usize },
    #[error("vsock uds_path {0} exists and is not a socket; remove it or pick another path")]
    VsockPathNotSocket(PathBuf),
    #[error("control socket {path} is {len} bytes; at most {MAX_FS_SOCKET_LEN} fit a Unix socket address")]
    ControlSocketTooLong { path: PathBuf, len: usize },
    #[error("restore: the snapshot's {what} file {path} is not a readable file: {detail}")]
    RestoreFile {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("bad --fs {0:?}: expected tag=TAG,socket=PATH[,queue_size=N]")]
    FsFlag(String),
    #[error("fs tag {0:?} is invalid: it must be 1 to {MAX_FS_TAG_LEN} bytes of letters, digits, '-', '_' or '.'")]
    FsTag(String),
    #[error("fs tag {0:?} is used twice; each share needs its own tag")]
    DuplicateFsTag(String),
    #[error("fs {tag:?}: queue_size {size} must be a power of two between 2 and 32768")]
    FsQueueSize { tag: String, size: u16 },
    #[error("fs {tag:?}: socket {path} is {len} bytes; at most {MAX_FS_SOCKET_LEN} fit a Unix socket address: use a shorter path")]
    FsSocketTooLong {
        tag: String,
        path: PathBuf,
        len: usize,
    },
    #[error("fs {tag:?}: socket {path}: {source}; start the backend (virtiofsd --socket-path) before the VMM")]
    FsSocket {
        tag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fs {tag:?}: {path} is not a socket; point socket at the backend's vhost-user socket")]
    FsNotSocket { tag: String, path: PathBuf },
    #[error("bad --net {0:?}: expected id=ID,tap=NAME|fd=N[,mac=XX:XX:XX:XX:XX:XX][,mtu=N]")]
    NetFlag(String),
    #[error("{0} net devices requested; at most {MAX_NET_DEVICES} are supported")]
    TooManyNets(usize),
    #[error("net id {0:?} is invalid: it must be 1 to {MAX_NET_ID_LEN} bytes of letters, digits, '-', '_' or '.'")]
    NetId(String),
    #[error("net id {0:?} is used twice; each net device needs its own id")]
    DuplicateNet(String),
    #[error("net {id:?}: TAP name {name:?} is invalid: it must be 1 to {MAX_TAP_NAME_LEN} bytes (IFNAMSIZ) without '/', ':', whitespace or NUL")]
    TapName { id: String, name: String },
    #[error(
        "net {id:?}: TAP descriptor {fd} is invalid: it must be an inherited descriptor, 3 or more"
    )]
    TapFd { id: String, fd: i32 },
    #[error("net {id:?}: TAP {tap} is used by another net device too")]
    DuplicateTap { id: String, tap: String },
    #[error("net {id:?}: MAC {mac} is a multicast address; a guest interface needs a unicast one (the first byte even, e.g. 02:...)")]
    MacMulticast { id: String, mac: MacAddr },
    #[error("net {id:?}: MAC {mac} is all zeros; give a unicast address or leave \"mac\" out")]
    MacZero { id: String, mac: MacAddr },
    #[error("net {id:?}: MTU {mtu} is out of range ({MIN_MTU} to {MAX_MTU})")]
    Mtu { id: String, mtu: u16 },
    #[error(
        "net {id:?}: {which} rate limit: a token bucket needs a non-zero size and refill_time_ms"
    )]
    RateLimit { id: String, which: &'static str },
}

/// Read the configuration file at `path`.
pub fn load(path: &Path) -> Result<VmConfig, ConfigError> {
    Ok(VmConfig::load(path)?)
}

/// Parse a `--drive id=ID,path=PATH[,ro]` value.
pub fn parse_drive_flag(s: &str) -> Result<DriveConfig, ConfigError> {
    let bad = || ConfigError::DriveFlag(s.to_owned());
    let (mut id, mut path, mut read_only) = (None, None, false);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if id.is_none() => id = Some(v.to_owned()),
            Some(("path", v)) if path.is_none() && !v.is_empty() => path = Some(PathBuf::from(v)),
            None if part == "ro" => read_only = true,
            None if part == "rw" => read_only = false,
            _ => return Err(bad()),
        }
    }
    Ok(DriveConfig {
        id: id.ok_or_else(bad)?,
        path: path.ok_or_else(bad)?,
        read_only,
    })
}

/// Parse a `--console stdout|off|file:PATH` value.
pub fn parse_console_flag(s: &str) -> Result<Console, ConfigError> {
    match s {
        "stdout" => Ok(Console::Stdout),
        "off" => Ok(Console::Off),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(Console::File(PathBuf::from(p))),
            _ => Err(ConfigError::ConsoleFlag(s.to_owned())),
        },
    }
}

/// Parse a `--vsock cid=CID,path=PATH` value.
pub fn parse_vsock_flag(s: &str) -> Result<VsockConfig, ConfigError> {
    let bad = || ConfigError::VsockFlag(s.to_owned());
    let (mut cid, mut path) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", v)) if cid.is_none() => cid = Some(v.parse().map_err(|_| bad())?),
            Some(("path", v)) if path.is_none() && !v.is_empty() => path = Some(PathBuf::from(v)),
            _ => return Err(bad()),
        }
    }
    Ok(VsockConfig {
        guest_cid: cid.ok_or_else(bad)?,
        uds_path: path.ok_or_else(bad)?,
    })
}

/// Parse a `--fs tag=TAG,socket=PATH[,queue_size=N]` value.
pub fn parse_fs_flag(s: &str) -> Result<FsConfig, ConfigError> {
    let bad = || ConfigError::FsFlag(s.to_owned());
    let (mut tag, mut socket, mut queue_size) = (None, None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tag", v)) if tag.is_none() => tag = Some(v.to_owned()),
            Some(("socket", v)) if socket.is_none() && !v.is_empty() => {
                socket = Some(PathBuf::from(v))
            }
            Some(("queue_size", v)) if queue_size.is_none() => {
                queue_size = Some(v.parse().map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        }
    }
    Ok(FsConfig {
        tag: tag.ok_or_else(bad)?,
        socket: socket.ok_or_else(bad)?,
        queue_size,
    })
}

/// Parse a `--net id=ID,tap=NAME|fd=N[,mac=MAC][,mtu=N]` value (rate
/// limits are set in the configuration file).
pub fn parse_net_flag(s: &str) -> Result<NetConfig, ConfigError> {
    let bad = || ConfigError::NetFlag(s.to_owned());
    let (mut id, mut tap, mut mac, mut mtu) = (None, None, None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if id.is_none() => id = Some(v.to_owned()),
            Some(("tap", v)) if tap.is_none() && !v.is_empty() => {
                tap = Some(TapConfig::Name(v.to_owned()))
            }
            Some(("fd", v)) if tap.is_none() => {
                tap = Some(TapConfig::Fd(v.parse().map_err(|_| bad())?))
            }
            Some(("mac", v)) if mac.is_none() => mac = Some(v.parse().map_err(|_| bad())?),
            Some(("mtu", v)) if mtu.is_none() => mtu = Some(v.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    let mut net = NetConfig::new(id.ok_or_else(bad)?, tap.ok_or_else(bad)?);
    net.mac = mac;
    net.mtu = mtu.unwrap_or(DEFAULT_MTU);
    Ok(net)
}

/// A repeatable flag's values replace the file's list when given.
fn or_list<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

/// Merge a config file (if any) with flags; flags win.
pub fn merge(file: Option<VmConfig>, flags: FlagConfig) -> Result<VmConfig, ConfigError> {
    let file = file.unwrap_or_default();
    let kernel = match flags.kernel {
        Some(k) => k,
        None if file.kernel.as_os_str().is_empty() => return Err(ConfigError::NoKernel),
        None => file.kernel,
    };
    Ok(VmConfig {
        kernel,
        initrd: or_list(flags.initrd, file.initrd),
        cmdline: flags.cmdline.unwrap_or(file.cmdline),
        vcpus: flags.vcpus.unwrap_or(file.vcpus),
        memory_mib: flags.memory_mib.unwrap_or(file.memory_mib),
        drives: or_list(flags.drives, file.drives),
        console: flags.console.unwrap_or(file.console),
        console_max_bytes: file.console_max_bytes,
        log_file: file.log_file,
        log_max_bytes: file.log_max_bytes,
        status_file: flags.status_file.or(file.status_file),
        rng: !flags.no_rng && file.rng,
        vsock: flags.vsock.or(file.vsock),
        fs: or_list(flags.fs, file.fs),
        net: or_list(flags.net, file.net),
        seccomp: !flags.no_seccomp && file.seccomp,
        control_socket: file.control_socket,
        restore: file.restore,
        artifacts: file.artifacts,
    })
}

/// What the VMM derives from and checks in a [`VmConfig`] (the type is
/// `mvm-vmm-api`'s; the MMIO layout and the checks are the VMM's).
pub trait VmConfigExt {
    /// (MMIO base, IRQ) of each virtio device, in slot order: drives as
    /// configured, then rng, then vsock, then net devices and the virtio-fs
    /// shares as configured.
    fn virtio_slots(&self) -> Vec<(u64, u32)>;
    /// The full kernel command line this configuration boots with.
    fn kernel_cmdline(&self) -> Result<String, CmdlineError>;
    /// Check everything that can be checked before creating the VM.
    /// Returns the kernel's PVH entry point.
    fn validate(&self, host: &HostLimits) -> Result<u64, ConfigError>;
}

impl VmConfigExt for VmConfig {
    fn virtio_slots(&self) -> Vec<(u64, u32)> {
        (0..self.virtio_device_count())
            .map(layout::virtio_slot)
            .collect()
    }

    fn kernel_cmdline(&self) -> Result<String, CmdlineError> {
        cmdline::build(&self.virtio_slots(), &self.cmdline)
    }

    fn validate(&self, host: &HostLimits) -> Result<u64, ConfigError> {
        // (The snapshot files' contents are checked when they are read.)
        let entry = check_kernel(&self.kernel)?;
        for path in &self.initrd {
            let meta = std::fs::metadata(path)
                .and_then(|m| File::open(path).map(|_| m))
                .map_err(|source| ConfigError::Initrd {
                    path: path.clone(),
                    source,
                })?;
            if !meta.is_file() {
                return Err(ConfigError::InitrdNotFile(path.clone()));
            }
        }
        let (max, why) = match host.kvm_max_vcpus {
            Some(k) if k < MAX_SUPPORTED_CPUS => (k, " (KVM_CAP_MAX_VCPUS on this host)"),
            _ => (MAX_SUPPORTED_CPUS, ""),
        };
        if self.vcpus == 0 || self.vcpus > max {
            return Err(ConfigError::Vcpus {
                got: self.vcpus,
                max,
                why,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if let Some(host_mib) = host.mem_total_mib {
            if self.memory_mib > host_mib {
                return Err(ConfigError::MemoryTooLarge {
                    got: self.memory_mib,
                    host: host_mib,
                });
            }
        }
        // Far beyond any host, and it would overflow the byte count.
        if self.memory_mib > (1 << 24) {
            return Err(ConfigError::MemoryTooLarge {
                got: self.memory_mib,
                host: host.mem_total_mib.unwrap_or(1 << 24),
            });
        }
        check_drives(self)?;
        check_nets(self)?;
        check_snapshot_files(self)?;
        if self.virtio_device_count() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(self.virtio_device_count()));
        }
        self.kernel_cmdline()?;
        if let Console::File(p) = &self.console {
            check_parent("console file", p)?;
        }
        if let Some(p) = &self.log_file {
            check_parent("log file", p)?;
        }
        for (what, cap) in [
            ("console_max_bytes", self.console_max_bytes),
            ("log_max_bytes", self.log_max_bytes),
        ] {
            if cap.is_some_and(|c| c < MIN_FILE_CAP) {
                return Err(ConfigError::FileCap {
                    what,
                    got: cap.unwrap_or(0),
                });
            }
        }
        if let Some(p) = &self.status_file {
            check_parent("status file", p)?;
        }
        if let Some(v) = &self.vsock {
            check_vsock(v)?;
        }
        check_fs(&self.fs)?;
        Ok(entry)
    }
}

fn check_drives(cfg: &VmConfig) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for d in &cfg.drives {
        let id_ok = !d.id.is_empty()
            && d.id.len() <= MAX_DRIVE_ID_LEN
            && d.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(ConfigError::DriveId(d.id.clone()));
        }
        if !seen.insert(d.id.as_str()) {
            return Err(ConfigError::DuplicateDrive(d.id.clone()));
        }
        let drive_err = |source| ConfigError::Drive {
            id: d.id.clone(),
            path: d.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&d.path).map_err(drive_err)?;
        use std::os::unix::fs::FileTypeExt;
        if !(meta.is_file() || meta.file_type().is_block_device()) {
            return Err(ConfigError::DriveNotFile {
                id: d.id.clone(),
                path: d.path.clone(),
            });
        }
        OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(drive_err)?;
    }
    Ok(())
}

/// Net devices: count, ids, TAPs, MACs, MTUs and rate limits. (Whether
/// the TAP can be opened is found when the device is built.)
fn check_nets(cfg: &VmConfig) -> Result<(), ConfigError> {
    if cfg.net.len() > MAX_NET_DEVICES {
        return Err(ConfigError::TooManyNets(cfg.net.len()));
    }
    let mut ids = std::collections::HashSet::new();
    let mut taps = std::collections::HashSet::new();
    for n in &cfg.net {
        let id = || n.id.clone();
        let id_ok = !n.id.is_empty()
            && n.id.len() <= MAX_NET_ID_LEN
            && n.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(ConfigError::NetId(id()));
        }
        if !ids.insert(n.id.as_str()) {
            return Err(ConfigError::DuplicateNet(id()));
        }
        let tap = match &n.tap {
            TapConfig::Name(name) => {
                if !mvm_virtio::net::tap::valid_tap_name(name) {
                    return Err(ConfigError::TapName {
                        id: id(),
                        name: name.clone(),
                    });
                }
                format!("{name:?}")
            }
            TapConfig::Fd(fd) => {
                if *fd < 3 {
                    return Err(ConfigError::TapFd { id: id(), fd: *fd });
                }
                format!("descriptor {fd}")
            }
        };
        if !taps.insert(tap.clone()) {
            return Err(ConfigError::DuplicateTap { id: id(), tap });
        }
        if let Some(mac) = n.mac {
            if mac.is_multicast() {
                return Err(ConfigError::MacMulticast { id: id(), mac });
            }
            if mac.0 == [0; 6] {
                return Err(ConfigError::MacZero { id: id(), mac });
            }
        }
        if !(MIN_MTU..=MAX_MTU).contains(&n.mtu) {
            return Err(ConfigError::Mtu {
                id: id(),
                mtu: n.mtu,
            });
        }
        for (which, limit) in [("rx", &n.rx_rate_limit), ("tx", &n.tx_rate_limit)] {
            let buckets = limit.iter().flat_map(|l| [l.bandwidth, l.ops]).flatten();
            for b in buckets {
                if b.size == 0 || b.refill_time_ms == 0 {
                    return Err(ConfigError::RateLimit { id: id(), which });
                }
            }
        }
    }
    Ok(())
}

/// Check the kernel is a readable ELF vmlinux with a PVH entry point.
pub fn check_kernel(path: &Path) -> Result<u64, ConfigError> {
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(std::io::Error::other("not a regular file")));
    }
    let mut f = File::open(path).map_err(unreadable)?;
    pvh::find_pvh_entry(&mut f).map_err(|source| ConfigError::KernelImage {
        path: path.to_owned(),
        source,
    })
}

fn check_vsock(v: &VsockConfig) -> Result<(), ConfigError> {
    if !(3..=u64::from(u32::MAX) - 1).contains(&v.guest_cid) {
        return Err(ConfigError::VsockCid(v.guest_cid));
    }
    let len = v.uds_path.as_os_str().len();
    if len > MAX_VSOCK_PATH_LEN {
        return Err(ConfigError::VsockPathTooLong {
            path: v.uds_path.clone(),
            len,
        });
    }
    check_parent("vsock socket", &v.uds_path)?;
    // A stale socket is replaced when the VMM starts; anything else is not
    // ours to delete.
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(&v.uds_path) {
        if !meta.file_type().is_socket() {
            return Err(ConfigError::VsockPathNotSocket(v.uds_path.clone()));
        }
    }
    Ok(())
}

/// Tags valid and unique, queue sizes valid, each socket an existing
/// socket (the backend listens before the VMM starts: the VMM connects
/// while it builds the device, so a missing backend fails here, clearly,
/// instead of as a guest that cannot mount).
fn check_fs(shares: &[FsConfig]) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    let mut seen = std::collections::HashSet::new();
    for f in shares {
        if !mvm_protocol::launch::is_valid_fs_tag(&f.tag) {
            return Err(ConfigError::FsTag(f.tag.clone()));
        }
        if !seen.insert(f.tag.as_str()) {
            return Err(ConfigError::DuplicateFsTag(f.tag.clone()));
        }
        let size = f.queue_size();
        if !(2..=32768).contains(&size) || !size.is_power_of_two() {
            return Err(ConfigError::FsQueueSize {
                tag: f.tag.clone(),
                size,
            });
        }
        let len = f.socket.as_os_str().len();
        if len > MAX_FS_SOCKET_LEN {
            return Err(ConfigError::FsSocketTooLong {
                tag: f.tag.clone(),
                path: f.socket.clone(),
                len,
            });
        }
        let meta = std::fs::metadata(&f.socket).map_err(|source| ConfigError::FsSocket {
            tag: f.tag.clone(),
            path: f.socket.clone(),
            source,
        })?;
        if !meta.file_type().is_socket() {
            return Err(ConfigError::FsNotSocket {
                tag: f.tag.clone(),
                path: f.socket.clone(),
            });
        }
    }
    Ok(())
}

fn check_parent(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::NoParentDir {
            what,
            path: path.to_owned(),
        })
    }
}

/// The control socket fits a socket address in a directory that exists;
/// the snapshot to restore is two regular files.
fn check_snapshot_files(cfg: &VmConfig) -> Result<(), ConfigError> {
    if let Some(p) = &cfg.control_socket {
        let len = p.as_os_str().len();
        if len > MAX_FS_SOCKET_LEN {
            return Err(ConfigError::ControlSocketTooLong {
                path: p.clone(),
                len,
            });
        }
        check_parent("control socket", p)?;
    }
    if let Some(r) = &cfg.restore {
        for (what, path) in [("state", &r.state), ("memory", &r.memory)] {
            let bad = |detail: String| ConfigError::RestoreFile {
                what,
                path: path.clone(),
                detail,
            };
            let m = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
            if !m.is_file() {
                return Err(bad("not a regular file".into()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::pvh::tests::pvh_elf;
    use std::io::Write;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let f = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            f.file("vmlinux", &pvh_elf());
            f.file("init.cpio", b"070701");
            f.file("root.ext4", &[0u8; 4096]);
            f
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn file(&self, name: &str, data: &[u8]) -> PathBuf {
            let p = self.path(name);
            File::create(&p).unwrap().write_all(data).unwrap();
            p
        }
        fn json(&self, body: &str) -> Result<VmConfig, ConfigError> {
            let p = self.file("vm.json", body.as_bytes());
            merge(Some(load(&p)?), FlagConfig::default())
        }
        fn base(&self) -> VmConfig {
            merge(
                None,
                FlagConfig {
                    kernel: Some(self.path("vmlinux")),
                    ..Default::default()
                },
            )
            .unwrap()
        }
    }

    const HOST: HostLimits = HostLimits {
        mem_total_mib: Some(1024),
        kvm_max_vcpus: Some(255),
    };

    fn err(c: &VmConfig) -> String {
        c.validate(&HOST).unwrap_err().to_string()
    }

    #[test]
    fn full_file_parses_with_defaults_and_flags_override() {
        let fx = Fixture::new();
        let body = format!(
            r#"{{"kernel": "{k}", "initrd": ["{i}"], "cmdline": "foo=1", "vcpus": 2,
                "memory_mib": 256,
                "drives": [{{"id": "rootfs", "path": "{d}", "read_only": true}}],
                "console": {{"file": "{c}"}}, "status_file": "{s}", "rng": false}}"#,
            k = fx.path("vmlinux").display(),
            i = fx.path("init.cpio").display(),
            d = fx.path("root.ext4").display(),
            c = fx.path("console.log").display(),
            s = fx.path("status.json").display(),
        );
        let file = VmConfig::from_json(body.as_bytes()).unwrap();
        let c = merge(Some(file.clone()), FlagConfig::default()).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.console, Console::File(fx.path("console.log")));
        assert!(!c.rng);
        assert!(c.drives[0].read_only);
        assert_eq!(c.validate(&HOST).unwrap(), 0x0100_0abc);

        let flags = FlagConfig {
            vcpus: Some(4),
            console: Some(Console::Off),
            drives: vec![parse_drive_flag(&format!(
                "id=scratch,path={}",
                fx.path("root.ext4").display()
            ))
            .unwrap()],
            ..Default::default()
        };
        let c = merge(Some(file), flags).unwrap();
        assert_eq!(
            (c.vcpus, c.memory_mib, c.console.clone()),
            (4, 256, Console::Off)
        );
        assert_eq!(c.drives.len(), 1);
        assert_eq!(c.drives[0].id, "scratch");
        assert!(!c.drives[0].read_only);

        let minimal = fx
            .json(&format!(
                r#"{{"kernel": "{}"}}"#,
                fx.path("vmlinux").display()
            ))
            .unwrap();
        assert_eq!(minimal, fx.base());
        assert_eq!(
            (minimal.vcpus, minimal.memory_mib, minimal.rng),
            (1, 128, true)
        );
        assert_eq!(minimal.console, Console::Stdout);
    }

    #[test]
    fn json_errors_are_reported() {
        let fx = Fixture::new();
        let e = fx
            .json(r#"{"kernel": "/k", "memory": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e = fx
            .json(r#"{"kernel": "/k", "console": "tty"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid"), "{e}");
        let e = fx.json(r#"{"kernel": "/k", "console": {"file": "/x", "mode": 1}}"#);
        assert!(e.is_err());
        let e = fx
            .json(r#"{"kernel": "/k", "vcpus": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.json"), "{e}");
        let e = fx.json(r#"{"vcpus": 1}"#).unwrap_err().to_string();
        assert!(e.contains("--kernel"), "{e}");
        let e = load(&fx.path("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn console_forms() {
        assert_eq!(parse_console_flag("stdout").unwrap(), Console::Stdout);
        assert_eq!(parse_console_flag("off").unwrap(), Console::Off);
        assert_eq!(
            parse_console_flag("file:/a b").unwrap(),
            Console::File("/a b".into())
        );
        assert!(parse_console_flag("file:").is_err());
        assert!(parse_console_flag("tty").is_err());
        let json = serde_json::to_string(&Console::File("/x".into())).unwrap();
        assert_eq!(json, r#"{"file":"/x"}"#);
        assert_eq!(
            serde_json::from_str::<Console>(r#""off""#).unwrap(),
            Console::Off
        );
    }

    #[test]
    fn drive_flags() {
        let d = parse_drive_flag("id=rootfs,path=/x/r.ext4,ro").unwrap();
        assert_eq!(
            d,
            DriveConfig {
                id: "rootfs".into(),
                path: "/x/r.ext4".into(),
                read_only: true
            }
        );
        assert!(!parse_drive_flag("path=/x,id=a").unwrap().read_only);
        for bad in [
            "",
            "id=a",
            "path=/x",
            "id=a,path=/x,bogus",
            "id=a,id=b,path=/x",
            "id=a,path=",
        ] {
            assert!(parse_drive_flag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kernel_problems_name_the_build_script() {
        let fx = Fixture::new();
        let mut c = fx.base();
        c.kernel = fx.path("nope");
        let e = err(&c);
        assert!(
            e.contains("nope") && e.contains("resources/kernel/build.sh"),
            "{e}"
        );
        c.kernel = fx.file("bz", &{
            let mut v = vec![0u8; 0x300];
            v[0x202..0x206].copy_from_slice(b"HdrS");
            v
        });
        let e = err(&c);
        assert!(e.contains("bzImage") && e.contains("build.sh"), "{e}");
        c.kernel = fx.file("nopvh", &crate::arch::pvh::tests::fake_elf(&[]));
        assert!(err(&c).contains("PVH"));
        c.kernel = fx.dir.path().to_owned();
        assert!(err(&c).contains("not a regular file"));
    }

    #[test]
    fn limits() {
        let fx = Fixture::new();
        let mut c = fx.base();
        c.vcpus = 0;
        assert!(
            err(&c).contains("vcpus is 0: it must be between 1 and 32"),
            "{}",
            err(&c)
        );
        c.vcpus = 33;
        assert!(err(&c).contains("vcpus is 33"));
        c.vcpus = 8;
        let small_kvm = HostLimits {
            kvm_max_vcpus: Some(4),
            ..HOST
        };
        let e = c.validate(&small_kvm).unwrap_err().to_string();
        assert!(
            e.contains("between 1 and 4") && e.contains("KVM_CAP_MAX_VCPUS"),
            "{e}"
        );
        c.vcpus = 32;
        c.validate(&HOST).unwrap();

        c.memory_mib = 31;
        assert!(err(&c).contains("31 MiB"));
        c.memory_mib = 2048;
        assert!(
            err(&c).contains("2048 MiB but this host has only 1024 MiB"),
            "{}",
            err(&c)
        );
        c.memory_mib = u64::MAX;
        assert!(c.validate(&HostLimits::default()).is_err());
        c.memory_mib = 32;
        c.validate(&HOST).unwrap();
    }

    #[test]
    fn drive_problems() {
        let fx = Fixture::new();
        let mut c = fx.base();
        let drive = |id: &str, path: PathBuf| DriveConfig {
            id: id.into(),
            path,
            read_only: true,
        };
        c.drives = vec![
            drive("rootfs", fx.path("root.ext4")),
            drive("rootfs", fx.path("root.ext4")),
        ];
        assert!(err(&c).contains("used twice"));
        c.drives = vec![drive(&"x".repeat(21), fx.path("root.ext4"))];
        assert!(err(&c).contains("1 to 20 bytes"));
        c.drives = vec![drive("a b", fx.path("root.ext4"))];
        assert!(err(&c).contains("invalid"));
        c.drives = vec![drive("", fx.path("root.ext4"))];
        assert!(err(&c).contains("invalid"));
        c.drives = vec![drive("rootfs", fx.path("gone.ext4"))];
        let e = err(&c);
        assert!(e.contains("gone.ext4") && e.contains("rootfs"), "{e}");
        c.drives = vec![drive("rootfs", fx.dir.path().to_owned())];
        assert!(err(&c).contains("not a regular file"));
        c.drives = (0..MAX_VIRTIO_DEVICES)
            .map(|i| drive(&format!("d{i}"), fx.path("root.ext4")))
            .collect();
        assert!(err(&c).contains("virtio devices requested"), "{}", err(&c));
        c.rng = false;
        c.validate(&HOST).unwrap();
    }

    #[test]
    fn initrd_cmdline_and_output_paths() {
        let fx = Fixture::new();
        let mut c = fx.base();
        c.initrd = vec![fx.path("init.cpio"), fx.path("spec.cpio")];
        let e = err(&c);
        assert!(e.contains("initrd") && e.contains("spec.cpio"), "{e}");
        c.initrd = vec![fx.path("init.cpio")];
        c.cmdline = "x".repeat(3000);
        let e = err(&c);
        assert!(e.contains("would be") && e.contains("limit is 2047"), "{e}");
        c.cmdline = "init=/bin/sh".into();
        assert!(c
            .kernel_cmdline()
            .unwrap()
            .contains("virtio_mmio.device=4K@0xd0000000:5 init=/bin/sh"));
        c.status_file = Some("/nonexistent-dir/status.json".into());
        assert!(err(&c).contains("does not exist"));
        c.status_file = Some("status.json".into());
        c.console = Console::File("/nonexistent-dir/c.log".into());
        assert!(err(&c).contains("console file"));
    }

    #[test]
    fn vsock_forms_and_checks() {
        let v = parse_vsock_flag("cid=3,path=/run/x/v.sock").unwrap();
        assert_eq!(
            v,
            VsockConfig {
                guest_cid: 3,
                uds_path: "/run/x/v.sock".into()
            }
        );
        for bad in [
            "",
            "cid=3",
            "path=/x",
            "cid=x,path=/x",
            "cid=3,path=/x,ro",
            "cid=3,cid=4,path=/x",
        ] {
            assert!(parse_vsock_flag(bad).is_err(), "{bad:?}");
        }
        let fx = Fixture::new();
        let parsed = fx
            .json(&format!(
                r#"{{"kernel": "{}", "vsock": {{"guest_cid": 7, "uds_path": "{}"}}}}"#,
                fx.path("vmlinux").display(),
                fx.path("v.sock").display()
            ))
            .unwrap();
        assert_eq!(parsed.vsock.as_ref().unwrap().guest_cid, 7);
        assert_eq!(parsed.virtio_device_count(), 2, "rng and vsock");
        parsed.validate(&HOST).unwrap();
        assert!(fx
            .json(r#"{"kernel": "/k", "vsock": {"guest_cid": 3, "uds_path": "/x", "port": 1}}"#)
            .is_err());

        let mut c = fx.base();
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            c.vsock = Some(VsockConfig {
                guest_cid: cid,
                uds_path: fx.path("v.sock"),
            });
            assert!(err(&c).contains("guest_cid"), "{cid}: {}", err(&c));
        }
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: PathBuf::from(format!("/tmp/{}", "x".repeat(100))),
        });
        assert!(err(&c).contains("shorter path"), "{}", err(&c));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/nonexistent-dir/v.sock".into(),
        });
        assert!(err(&c).contains("does not exist"), "{}", err(&c));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: fx.path("root.ext4"),
        });
        assert!(err(&c).contains("not a socket"), "{}", err(&c));
        // The slot after rng.
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: fx.path("v.sock"),
        });
        assert!(c
            .kernel_cmdline()
            .unwrap()
            .contains("virtio_mmio.device=4K@0xd0001000:6"));
    }

    #[test]
    fn fs_forms_and_checks() {
        let f = parse_fs_flag("tag=data,socket=/run/x/fs.sock").unwrap();
        assert_eq!(f, FsConfig::new("data", "/run/x/fs.sock"));
        let f = parse_fs_flag("socket=/s,tag=t,queue_size=256").unwrap();
        assert_eq!(f.queue_size, Some(256));
        for bad in [
            "",
            "tag=t",
            "socket=/s",
            "tag=t,socket=",
            "tag=t,socket=/s,ro",
            "tag=t,tag=u,socket=/s",
            "tag=t,socket=/s,queue_size=x",
            "tag=t,socket=/s,queue_size=70000",
        ] {
            assert!(parse_fs_flag(bad).is_err(), "{bad:?}");
        }

        let fx = Fixture::new();
        let sock = fx.path("fs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut c = fx.base();
        c.fs = vec![FsConfig::new("data", &sock)];
        c.validate(&HOST).unwrap();
        assert_eq!(c.virtio_device_count(), 2, "rng and the share");
        assert!(c
            .kernel_cmdline()
            .unwrap()
            .contains("virtio_mmio.device=4K@0xd0001000:6"));
        let parsed = fx
            .json(&format!(
                r#"{{"kernel": "{}", "fs": [{{"tag": "data", "socket": "{}", "queue_size": 128}}]}}"#,
                fx.path("vmlinux").display(),
                sock.display()
            ))
            .unwrap();
        assert_eq!(parsed.fs[0].queue_size, Some(128));
        parsed.validate(&HOST).unwrap();

        let check = |fs: Vec<FsConfig>| {
            let mut c = fx.base();
            c.fs = fs;
            err(&c)
        };
        for tag in ["", "a b", "a/b", &"x".repeat(37)] {
            let e = check(vec![FsConfig::new(tag, &sock)]);
            assert!(e.contains("tag") && e.contains("invalid"), "{tag:?}: {e}");
        }
        let e = check(vec![FsConfig::new("a", &sock), FsConfig::new("a", &sock)]);
        assert!(e.contains("used twice"), "{e}");
        for size in [0, 1, 48, 65535] {
            let e = check(vec![FsConfig {
                queue_size: Some(size),
                ..FsConfig::new("a", &sock)
            }]);
            assert!(e.contains("queue_size"), "{size}: {e}");
        }
        let e = check(vec![FsConfig::new("a", fx.path("none.sock"))]);
        assert!(
            e.contains("none.sock") && e.contains("start the backend"),
            "{e}"
        );
        let e = check(vec![FsConfig::new("a", fx.path("root.ext4"))]);
        assert!(e.contains("not a socket"), "{e}");
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(110)));
        let e = check(vec![FsConfig::new("a", long)]);
        assert!(e.contains("shorter path"), "{e}");
        // After vsock in slot order.
        let mut c = fx.base();
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: fx.path("v.sock"),
        });
        c.fs = vec![FsConfig::new("a", &sock)];
        assert!(c
            .kernel_cmdline()
            .unwrap()
            .contains("virtio_mmio.device=4K@0xd0002000:7"));
    }

    #[test]
    fn net_forms_and_checks() {
        let n = parse_net_flag("id=eth0,tap=mvmtap0,mac=02:00:00:00:00:07,mtu=9000").unwrap();
        assert_eq!(n.tap, TapConfig::Name("mvmtap0".into()));
        assert_eq!(n.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
        assert_eq!(n.mtu, 9000);
        let n = parse_net_flag("fd=5,id=eth1").unwrap();
        assert_eq!((n.tap, n.mac, n.mtu), (TapConfig::Fd(5), None, DEFAULT_MTU));
        for bad in [
            "",
            "id=a",
            "tap=t",
            "id=a,tap=t,fd=3",
            "id=a,tap=",
            "id=a,fd=x",
            "id=a,tap=t,mac=01:02",
            "id=a,tap=t,mtu=70000",
            "id=a,tap=t,queues=2",
        ] {
            assert!(parse_net_flag(bad).is_err(), "{bad:?}");
        }

        let fx = Fixture::new();
        let mut c = fx.base();
        let net = |id: &str, tap: &str| NetConfig::new(id, TapConfig::Name(tap.into()));
        c.net = vec![net("eth0", "tap0"), net("eth1", "tap1")];
        c.validate(&HOST).unwrap();
        // Net devices come after rng: rng keeps slot 0.
        let cmd = c.kernel_cmdline().unwrap();
        assert!(cmd.contains("0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7"), "{cmd}");

        let cases: Vec<(Vec<NetConfig>, &str)> = vec![
            (vec![net("eth0", "t0"), net("eth0", "t1")], "used twice"),
            (vec![net("a b", "t0")], "invalid"),
            (vec![net("", "t0")], "invalid"),
            (vec![net("eth0", "tap/0")], "TAP name"),
            (vec![net("eth0", &"t".repeat(16))], "IFNAMSIZ"),
            (
                vec![net("eth0", "t0"), net("eth1", "t0")],
                "another net device",
            ),
            (vec![NetConfig::new("eth0", TapConfig::Fd(2))], "3 or more"),
            (
                vec![
                    NetConfig::new("eth0", TapConfig::Fd(7)),
                    NetConfig::new("eth1", TapConfig::Fd(7)),
                ],
                "another net device",
            ),
            (
                (0..=MAX_NET_DEVICES)
                    .map(|i| net(&format!("e{i}"), &format!("t{i}")))
                    .collect(),
                "at most 8",
            ),
        ];
        for (nets, want) in cases {
            c.net = nets;
            let e = err(&c);
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut n = net("eth0", "t0");
        n.mac = Some(MacAddr([1, 0, 0x5e, 0, 0, 1]));
        c.net = vec![n.clone()];
        assert!(err(&c).contains("multicast"), "{}", err(&c));
        n.mac = Some(MacAddr([0; 6]));
        c.net = vec![n.clone()];
        assert!(err(&c).contains("all zeros"), "{}", err(&c));
        n.mac = None;
        for mtu in [0, 67] {
            n.mtu = mtu;
            c.net = vec![n.clone()];
            assert!(err(&c).contains("MTU"), "{}", err(&c));
        }
        n.mtu = 68;
        n.tx_rate_limit = Some(RateLimit {
            bandwidth: None,
            ops: Some(TokenBucket {
                size: 10,
                one_time_burst: 0,
                refill_time_ms: 0,
            }),
        });
        c.net = vec![n];
        assert!(err(&c).contains("tx rate limit"), "{}", err(&c));

        // Through a file, with the flag replacing the file's list.
        let parsed = fx
            .json(&format!(
                r#"{{"kernel": "{}", "net": [{{"id": "eth0", "tap": {{"name": "tap0"}}, "mac": "02:00:00:00:00:01"}}]}}"#,
                fx.path("vmlinux").display()
            ))
            .unwrap();
        assert_eq!(parsed.net.len(), 1);
        parsed.validate(&HOST).unwrap();
        let merged = merge(
            Some(parsed),
            FlagConfig {
                net: vec![net("x", "t9"), net("y", "t8")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(merged.net.len(), 2);
    }

    #[test]
    fn seccomp_is_on_unless_the_file_or_the_flag_says_off() {
        let fx = Fixture::new();
        assert!(fx.base().seccomp);
        let k = fx.path("vmlinux");
        let off = fx
            .json(&format!(
                r#"{{"kernel": "{}", "seccomp": false}}"#,
                k.display()
            ))
            .unwrap();
        assert!(!off.seccomp);
        let file = fx
            .json(&format!(r#"{{"kernel": "{}"}}"#, k.display()))
            .unwrap();
        let flagged = merge(
            Some(file),
            FlagConfig {
                no_seccomp: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!flagged.seccomp);
        assert!(fx
            .json(&format!(
                r#"{{"kernel": "{}", "seccomp": "no"}}"#,
                k.display()
            ))
            .is_err());
    }

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            parse_mem_total_mib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24000)
        );
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }
}
