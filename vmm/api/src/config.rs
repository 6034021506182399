//! The VM configuration: the JSON file `mvm-vmm --config FILE` reads and
//! every caller writes (format: `vmm/README.md`).
//!
//! One type, [`VmConfig`], serialised both ways: the runtime builds it and
//! saves it, the VMM loads it, merges its flags over it and validates the
//! result. Unknown fields are errors on load, so a caller and a VMM that
//! disagree fail at once instead of silently ignoring a setting.
//!
//! Fields a file may leave out take the defaults below. The kernel is the
//! one required setting; it may come from `--kernel` instead, so an empty
//! path here means "not given" and the VMM's validation refuses it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// vCPUs when the file does not say.
pub const DEFAULT_VCPUS: u32 = 1;
/// Guest memory in MiB when the file does not say.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// virtio-blk serials (drive ids) are at most 20 bytes.
pub const MAX_DRIVE_ID_LEN: usize = mvm_protocol::launch::MAX_DRIVE_ID_LEN;
/// Longest vsock socket path: `<uds_path>_4294967295` must fit a Unix
/// socket address (107 bytes and a NUL).
pub const MAX_VSOCK_PATH_LEN: usize = 107 - "_4294967295".len();
/// virtio-fs tags are at most 36 bytes (the device's configuration space).
pub const MAX_FS_TAG_LEN: usize = mvm_protocol::launch::MAX_FS_TAG_LEN;
/// Longest vhost-user socket path (a Unix socket address: 107 bytes and
/// a NUL).
pub const MAX_FS_SOCKET_LEN: usize = 107;
/// Queue size of a virtio-fs device when the file does not say: deep
/// enough for the guest's FUSE requests in flight (Cloud Hypervisor's
/// default too).
pub const DEFAULT_FS_QUEUE_SIZE: u16 = 1024;
/// Largest configuration file accepted (a real one is a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most virtio-net devices in one VM.
pub const MAX_NET_DEVICES: usize = 8;
/// Longest TAP name (`IFNAMSIZ` less the NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Net device ids follow the rules of drive ids, at most this long.
pub const MAX_NET_ID_LEN: usize = 20;
/// MTU reported to the guest when the configuration says nothing.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU (IPv4's minimum; Linux ignores a smaller one).
pub const MIN_MTU: u16 = 68;
/// Largest MTU (a frame must fit a 64 KiB buffer).
pub const MAX_MTU: u16 = 65535;

/// The complete configuration of one microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux with a PVH note. Empty: not given (a flag may give it).
    #[serde(default)]
    pub kernel: PathBuf,
    /// newc archives, loaded back to back as one initrd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrd: Vec<PathBuf>,
    /// Extra kernel arguments, appended to the VMM's defaults.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// virtio-blk disks, in MMIO slot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    /// Where the guest's serial console goes.
    #[serde(default)]
    pub console: Console,
    /// A console file is rotated at this size (`NAME.1` keeps the previous
    /// part), so a guest printing without pause cannot fill the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_max_bytes: Option<u64>,
    /// The VMM's own log (default: stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// The log file is rotated at this size, as the console file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
    /// Where the VMM writes its [`StatusReport`](crate::StatusReport)
    /// when the VM ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_file: Option<PathBuf>,
    /// A virtio-rng device (entropy from the host).
    #[serde(default = "yes")]
    pub rng: bool,
    /// A virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, each served by a vhost-user backend (virtiofsd),
    /// in MMIO slot order after the others (the net devices included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices on host TAPs, in MMIO slot order (the guest's
    /// eth0, eth1, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// Each VMM thread installs the seccomp allowlist of its role before
    /// the guest runs (`mvm-vmm`'s `seccomp` module). `false` only to
    /// debug (`mvm-vmm --no-seccomp`, `mvmd --no-seccomp`). Left out of
    /// the file when on, the default.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub seccomp: bool,
    /// The control socket: the VMM listens there for
    /// [`crate::control::Request`]s (snapshots) while the VM runs. Its
    /// directory is bound writable into the jail, as the vsock socket's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Start from this snapshot instead of booting: the kernel and initrd
    /// are not loaded, the devices are made from this configuration (the
    /// same kinds in the same order as when it was taken) and their state,
    /// the vCPUs' and the guest memory come from the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreConfig>,
    /// What the guest runs, as the caller identifies it (the runtime puts
    /// the SHA-256 of the kernel, init and VMM binaries here). Recorded in
    /// every snapshot and compared on restore: a snapshot made with other
    /// binaries is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
}

/// The snapshot a VM is restored from (both files as written by a
/// [`crate::control::Request::Snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The state file (vCPUs, VM, devices; versioned and checksummed).
    pub state: PathBuf,
    /// The guest memory file, mapped copy-on-write and read lazily.
    pub memory: PathBuf,
}

/// The identity of the binaries a guest runs (see [`VmConfig::artifacts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    /// The guest kernel.
    pub kernel: String,
    /// The guest init.
    pub init: String,
    /// The VMM.
    pub vmm: String,
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for VmConfig {
    fn default() -> Self {
        Self::new(PathBuf::new())
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// The disk's virtio-blk serial, how the guest finds it (1 to
    /// [`MAX_DRIVE_ID_LEN`] bytes of `[A-Za-z0-9_.-]`, unique).
    pub id: String,
    /// A regular file or block device on the host.
    pub path: PathBuf,
    /// The guest may not write.
    #[serde(default)]
    pub read_only: bool,
}

impl DriveConfig {
    /// A drive with id `id` backed by `path`.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            id: id.into(),
            path: path.into(),
            read_only,
        }
    }
}

/// A virtio-vsock device: guest AF_VSOCK streams joined to host Unix
/// sockets (Firecracker's hybrid design, see `mvm_virtio::vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID (3 to 2^32 - 2).
    pub guest_cid: u64,
    /// Host clients connect here; guest connections to host port P go to
    /// `<uds_path>_P`. At most [`MAX_VSOCK_PATH_LEN`] bytes.
    pub uds_path: PathBuf,
}

/// A virtio-fs device: a host directory the guest mounts by `tag`, its
/// requests served by a vhost-user backend listening on `socket`
/// (`mvm_virtio::fs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`): 1 to
    /// [`MAX_FS_TAG_LEN`] bytes of `[A-Za-z0-9_.-]`, unique.
    pub tag: String,
    /// The backend's vhost-user socket; it must exist when the VMM starts.
    /// At most [`MAX_FS_SOCKET_LEN`] bytes.
    pub socket: PathBuf,
    /// Size of each of its queues (a power of two up to 32768);
    /// [`DEFAULT_FS_QUEUE_SIZE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
}

impl FsConfig {
    /// A share `tag` served on `socket`, default queue size.
    pub fn new(tag: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        Self {
            tag: tag.into(),
            socket: socket.into(),
            queue_size: None,
        }
    }

    /// The queue size in effect.
    pub fn queue_size(&self) -> u16 {
        self.queue_size.unwrap_or(DEFAULT_FS_QUEUE_SIZE)
    }
}

/// A virtio-net device: frames between the guest and a host TAP, whose
/// host side (addresses, bridge, rules) is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Names the device in messages and counters (1 to
    /// [`MAX_NET_ID_LEN`] bytes of `[A-Za-z0-9_.-]`, unique).
    pub id: String,
    /// The host side: a TAP by name, or one the caller opened.
    pub tap: TapConfig,
    /// The guest's MAC address (unicast); without one the guest makes up
    /// a random one at every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The MTU the guest is told ([`MIN_MTU`] to [`MAX_MTU`]).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Limits on what the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limit: Option<RateLimit>,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limit: Option<RateLimit>,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl NetConfig {
    /// A device `id` on the TAP named `tap`, default MTU, no MAC, no limits.
    pub fn new(id: impl Into<String>, tap: TapConfig) -> Self {
        Self {
            id: id.into(),
            tap,
            mac: None,
            mtu: DEFAULT_MTU,
            rx_rate_limit: None,
            tx_rate_limit: None,
        }
    }
}

/// Where a net device's TAP comes from: `{"name": "tap0"}` or `{"fd": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TapConfig {
    /// The VMM opens the TAP with this name: an existing one it may use
    /// (`ip tuntap add NAME mode tap vnet_hdr user UID`), or a new one if
    /// it has `CAP_NET_ADMIN`. At most [`MAX_TAP_NAME_LEN`] bytes.
    Name(String),
    /// A descriptor the VMM inherits, already a TAP opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (so the VMM needs no
    /// privilege at all). 3 or more.
    Fd(i32),
}

/// A token-bucket rate limit (Firecracker's): either bucket may be left
/// out. An I/O passes only if every bucket given has room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations (frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// One token bucket: `size` tokens, refilled completely in
/// `refill_time_ms`, plus a one-time burst spent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens when full (not 0).
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to fill (not 0).
    pub refill_time_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A MAC address, written `02:00:00:00:00:01` (hex, colons) in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether the address is multicast (or broadcast): the low bit of the
    /// first byte. No unicast frame would reach such an interface.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "MAC address {s:?} is not six hex bytes separated by ':' (like 02:00:00:00:00:01)"
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "ConsoleRepr", into = "ConsoleRepr")]
pub enum Console {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Nowhere.
    Off,
    /// Appended to a file.
    File(PathBuf),
}

/// The JSON shapes of [`Console`]: `"stdout"`, `"off"`, `{"file": PATH}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ConsoleRepr {
    Name(String),
    File(ConsoleFile),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleFile {
    file: PathBuf,
}

impl TryFrom<ConsoleRepr> for Console {
    type Error = String;
    fn try_from(r: ConsoleRepr) -> Result<Self, String> {
        match r {
            ConsoleRepr::Name(n) if n == "stdout" => Ok(Console::Stdout),
            ConsoleRepr::Name(n) if n == "off" => Ok(Console::Off),
            ConsoleRepr::Name(n) => Err(format!(
                "console {n:?} is not one of \"stdout\", \"off\", {{\"file\": PATH}}"
            )),
            ConsoleRepr::File(f) => Ok(Console::File(f.file)),
        }
    }
}

impl From<Console> for ConsoleRepr {
    fn from(c: Console) -> Self {
        match c {
            Console::Stdout => ConsoleRepr::Name("stdout".into()),
            Console::Off => ConsoleRepr::Name("off".into()),
            Console::File(file) => ConsoleRepr::File(ConsoleFile { file }),
        }
    }
}

/// The previous part of a file the VMM rotates at its cap (the console
/// with `console_max_bytes`, the log with `log_max_bytes`): `NAME.1`.
/// Readers find the newest output in `NAME` and the part before it here.
pub fn previous_part(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Not readable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than any real configuration.
    #[error("config file {path} is {size} bytes; at most {MAX_CONFIG_BYTES} are accepted")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not a configuration.
    #[error("config file {path} is invalid: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde found.
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error("cannot write config file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl VmConfig {
    /// A configuration booting `kernel` with the defaults: one vCPU,
    /// [`DEFAULT_MEMORY_MIB`], entropy, the console on stdout, no disks.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: Vec::new(),
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            drives: Vec::new(),
            console: Console::Stdout,
            console_max_bytes: None,
            log_file: None,
            log_max_bytes: None,
            status_file: None,
            rng: true,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            seccomp: true,
            control_socket: None,
            restore: None,
            artifacts: None,
        }
    }

    /// Parse a configuration (unknown fields are errors).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The configuration as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Paths, strings and numbers only: serialisation cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Read and parse a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        use std::io::Read;
        let read = |source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read)?;
        let size = f.metadata().map_err(read)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigFileError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        Self::from_json(&bytes).map_err(|source| ConfigFileError::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// Write the configuration to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigFileError> {
        crate::write_atomic(path, &self.to_json()).map_err(|source| ConfigFileError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// How many virtio devices this configuration has, in MMIO slot order:
    /// the drives as configured, then rng, then vsock, then the net
    /// devices, then the virtio-fs shares, each as configured. (The newer
    /// kinds come last so that adding one moves none of the older devices
    /// to another address or IRQ.)
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + self.net.len()
            + self.fs.len()
    }

    /// Memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

impl fmt::Display for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Console::Stdout => f.write_str("stdout"),
            Console::Off => f.write_str("off"),
            Console::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: vec!["/i/init.cpio".into(), "/i/spec.cpio".into()],
            cmdline: "mvm.quiet".into(),
            vcpus: 2,
            memory_mib: 256,
            drives: vec![
                DriveConfig::new("rootfs", "/d/root.ext4", true),
                DriveConfig::new("scratch", "/d/scratch.ext4", false),
            ],
            console: Console::File("/d/console.log".into()),
            console_max_bytes: Some(1 << 20),
            log_file: Some("/d/vmm.log".into()),
            log_max_bytes: Some(1 << 20),
            status_file: Some("/d/status.json".into()),
            control_socket: None,
            restore: None,
            artifacts: None,
            rng: false,
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/mvm/vsock/x.sock".into(),
            }),
            fs: vec![FsConfig {
                tag: "data".into(),
                socket: "/run/mvm/virtiofs/x-0.sock".into(),
                queue_size: Some(256),
            }],
            net: vec![
                NetConfig {
                    id: "eth0".into(),
                    tap: TapConfig::Name("mvmtap0".into()),
                    mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                    mtu: 9000,
                    rx_rate_limit: Some(RateLimit {
                        bandwidth: Some(TokenBucket {
                            size: 1 << 20,
                            one_time_burst: 1 << 24,
                            refill_time_ms: 100,
                        }),
                        ops: None,
                    }),
                    tx_rate_limit: Some(RateLimit {
                        bandwidth: None,
                        ops: Some(TokenBucket {
                            size: 1000,
                            one_time_burst: 0,
                            refill_time_ms: 1000,
                        }),
                    }),
                },
                NetConfig::new("eth1", TapConfig::Fd(3)),
            ],
            seccomp: false,
        }
    }

    #[test]
    fn round_trips_through_json_and_a_file() {
        let c = full();
        assert_eq!(VmConfig::from_json(&c.to_json()).unwrap(), c);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.json");
        c.save(&p).unwrap();
        assert_eq!(VmConfig::load(&p).unwrap(), c);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file"
        );
        let minimal = VmConfig::new("/k");
        assert_eq!(VmConfig::from_json(&minimal.to_json()).unwrap(), minimal);
    }

    #[test]
    fn defaults_fill_what_a_file_leaves_out() {
        let c = VmConfig::from_json(br#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        assert_eq!(
            (c.vcpus, c.memory_mib, c.rng, c.seccomp),
            (1, 128, true, true)
        );
        // On is the default and is left out of a file; off is written.
        assert!(!String::from_utf8(c.to_json()).unwrap().contains("seccomp"));
        let off = VmConfig {
            seccomp: false,
            ..c.clone()
        };
        assert!(String::from_utf8(off.to_json())
            .unwrap()
            .contains(r#""seccomp": false"#));
        assert_eq!(c.console, Console::Stdout);
        let c = VmConfig::from_json(b"{}").unwrap();
        assert!(
            c.kernel.as_os_str().is_empty(),
            "no kernel: flags may give it"
        );
    }

    #[test]
    fn unknown_and_malformed_fields_are_errors() {
        for bad in [
            r#"{"kernel": "/k", "memory": 5}"#,
            r#"{"kernel": "/k", "console": "tty"}"#,
            r#"{"kernel": "/k", "console": {"file": "/x", "mode": 1}}"#,
            r#"{"kernel": "/k", "vcpus": -1}"#,
            r#"{"kernel": "/k", "drives": [{"id": "a", "path": "/x", "cache": 1}]}"#,
            r#"{"kernel": "/k", "vsock": {"guest_cid": 3, "uds_path": "/x", "port": 1}}"#,
            r#"{"kernel": "/k", "fs": [{"tag": "a", "socket": "/x", "cache": "auto"}]}"#,
            r#"{"kernel": "/k", "fs": [{"tag": "a"}]}"#,
            r#"{"kernel": "/k", "fs": [{"tag": "a", "socket": "/x", "queue_size": 70000}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "queues": 2}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t", "fd": 3}}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"path": "t"}}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": "t"}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "mac": "02:00:00:00:00"}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "mac": "02:00:00:00:00:0g"}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "mtu": 70000}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "rx_rate_limit": {"bytes": 1}}]}"#,
            r#"{"kernel": "/k", "net": [{"id": "a", "tap": {"name": "t"}, "rx_rate_limit": {"ops": {"size": 1}}}]}"#,
        ] {
            assert!(VmConfig::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        let e = VmConfig::load(&d.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(VmConfig::load(&big)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn console_forms() {
        let json = serde_json::to_string(&Console::File("/x".into())).unwrap();
        assert_eq!(json, r#"{"file":"/x"}"#);
        assert_eq!(
            serde_json::from_str::<Console>(r#""off""#).unwrap(),
            Console::Off
        );
        assert_eq!(Console::File("/a".into()).to_string(), "file:/a");
    }

    #[test]
    fn fs_defaults_and_wire_form() {
        let c = VmConfig::from_json(br#"{"kernel": "/k", "fs": [{"tag": "t", "socket": "/s"}]}"#)
            .unwrap();
        assert_eq!(c.fs, vec![FsConfig::new("t", "/s")]);
        assert_eq!(c.fs[0].queue_size(), DEFAULT_FS_QUEUE_SIZE);
        let json = String::from_utf8(VmConfig::new("/k").to_json()).unwrap();
        assert!(!json.contains("\"fs\""), "no shares, no field: {json}");
        let json = String::from_utf8(c.to_json()).unwrap();
        assert!(!json.contains("queue_size"), "{json}");
    }

    #[test]
    fn net_config_json_forms() {
        let c = VmConfig::from_json(
            br#"{"kernel": "/k", "net": [
                {"id": "eth0", "tap": {"name": "tap0"}, "mac": "02:AB:00:00:00:01"},
                {"id": "eth1", "tap": {"fd": 5}, "mtu": 1400,
                 "tx_rate_limit": {"bandwidth": {"size": 1000, "refill_time_ms": 10}}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(c.net[0].tap, TapConfig::Name("tap0".into()));
        assert_eq!(c.net[0].mac, Some(MacAddr([2, 0xab, 0, 0, 0, 1])));
        assert_eq!(c.net[0].mtu, DEFAULT_MTU);
        assert_eq!(c.net[1].tap, TapConfig::Fd(5));
        let b = c.net[1].tx_rate_limit.unwrap().bandwidth.unwrap();
        assert_eq!((b.size, b.one_time_burst, b.refill_time_ms), (1000, 0, 10));
        let json = String::from_utf8(c.to_json()).unwrap();
        assert!(json.contains(r#""mac": "02:ab:00:00:00:01""#), "{json}");
        assert!(json.contains(r#""fd": 5"#), "{json}");
        assert!(!json.contains("one_time_burst"), "{json}");
        assert!(!VmConfig::new("/k")
            .to_json()
            .windows(5)
            .any(|w| w == b"\"net\""));
        assert!("ff:ff:ff:ff:ff:ff"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        assert!(!"02:00:00:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        for bad in [
            "",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "02-00-00-00-00-01",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_count_follows_slot_order() {
        let c = full();
        assert_eq!(
            c.virtio_device_count(),
            6,
            "two drives, vsock, two net devices and a share, no rng"
        );
        assert_eq!(VmConfig::new("/k").virtio_device_count(), 1, "rng");
    }
}
