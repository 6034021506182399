//! The launch spec: what guest init runs, and on which disks.
//!
//! The host writes it as JSON to [`SPEC_PATH`] inside a small per-sandbox
//! initramfs archive that the VMM loads after the shared archive holding
//! init itself (the kernel unpacks concatenated archives in order). Init
//! reads it before mounting anything.

use serde::{Deserialize, Serialize};

mod network;
pub use network::*;

/// Where the spec sits in the initramfs (and so in the guest's early root).
pub const SPEC_PATH: &str = "mvm/launch.json";
/// Version of the spec format; init refuses other versions.
pub const SPEC_VERSION: u32 = 1;
/// virtio-blk serial (`VIRTIO_BLK_T_GET_ID`) of the image disk by default.
pub const ROOTFS_DRIVE_ID: &str = "rootfs";
/// virtio-blk serial of the writable scratch disk by default.
pub const SCRATCH_DRIVE_ID: &str = "scratch";
/// The longest serial virtio-blk can carry.
pub const MAX_DRIVE_ID_LEN: usize = 20;
/// The longest virtio-fs tag: the device's configuration space holds 36
/// bytes (virtio 1.2, 5.11.4).
pub const MAX_FS_TAG_LEN: usize = 36;

/// The kernel's limit for a hostname (`__NEW_UTS_LEN`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Whether `name` can be the guest's hostname: 1 to [`MAX_HOSTNAME_LEN`]
/// bytes without `/`, whitespace or control characters. Init writes it
/// into /etc/hosts and /etc/hostname, so a newline would inject a line.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && !name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control())
}

/// Whether `tag` can name a virtio-fs share: 1 to [`MAX_FS_TAG_LEN`] bytes
/// of `[A-Za-z0-9_.-]`. Stricter than the device (any UTF-8 without NUL)
/// because the tag is also `mount(2)`'s source string in the guest and a
/// file name part on the host: no spaces, commas or slashes to misparse.
/// One rule for the VMM's configuration and the launch spec.
pub fn is_valid_fs_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_FS_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Everything init needs to start the workload, or, with [`Self::warm`],
/// the instruction to wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// Must equal [`SPEC_VERSION`].
    pub version: u32,
    /// A warm boot (docs/snapshots.md, "Warm starts"): init does only what
    /// does not depend on the sandbox (API filesystems, the reaper, the
    /// agent's port), reports `WarmReady` and waits for the real spec in
    /// the agent's `launch` request. A warm spec has nothing else: no
    /// process, root, mounts, network or hostname ([`Self::warm`]). Not
    /// written when false, so cold specs stay readable by older inits; an
    /// older init refuses a warm spec (an unknown field) at boot.
    #[serde(default, skip_serializing_if = "is_default")]
    pub warm: bool,
    /// The guest's hostname ([`is_valid_hostname`]); init leaves the
    /// kernel default when absent (then not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The root filesystem. Absent (and not written) only in a warm spec.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rootfs: Rootfs,
    /// The workload. Absent (and not written) only in a warm spec.
    #[serde(default, skip_serializing_if = "is_default")]
    pub process: Process,
    /// virtio-fs shares init mounts in the workload's root before the
    /// workload starts. Not written when empty, so a spec without shares
    /// stays readable by an init that predates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// tmpfs filesystems init mounts in the workload's root (`--tmpfs`,
    /// `--mount type=tmpfs`). Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
    /// ext4 disks (block volumes) init mounts in the workload's root,
    /// found by their virtio-blk serial as the root disks are. Not written
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_mounts: Vec<BlockMount>,
    /// Single files placed over their targets ([`FileMount`]). Not
    /// written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// Network configuration init applies before the workload. `None`
    /// (not written): the guest has only `lo`, and init leaves
    /// /etc/resolv.conf as the image has it. `Some` with no interfaces is
    /// `--network none`: only `lo`, but init still owns /etc/hosts and
    /// /etc/resolv.conf as Docker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The host's `CLOCK_REALTIME` when it made the spec, in nanoseconds
    /// since the Unix epoch: init sets the guest's realtime clock to it
    /// (`clock_settime`) before anything else, so a guest restored from a
    /// template never shows the template's date. Not written when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_ns: Option<u64>,
    /// [`ENTROPY_LEN`] bytes from the host's `getrandom`, as lower-case hex:
    /// init adds them to the kernel's pool (`RNDADDENTROPY`) and forces a
    /// reseed (`RNDRESEEDCRNG`) before the workload starts, so guests
    /// restored from one template do not share their CRNG state. Not
    /// written when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
}

/// How many bytes of host entropy a spec carries ([`LaunchSpec::entropy`]).
pub const ENTROPY_LEN: usize = 64;

/// The earliest realtime a spec may set: 2020-01-01T00:00:00Z. Anything
/// before is a host with a broken clock (or a hostile spec), and would
/// make TLS and make(1) in the workload misbehave in confusing ways.
pub const MIN_REALTIME_NS: u64 = 1_577_836_800 * 1_000_000_000;

/// A virtio-fs share mounted in the guest: `mount -t virtiofs TAG TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The share's virtio-fs tag (the VMM's `fs[].tag`); see
    /// [`is_valid_fs_tag`].
    pub tag: String,
    /// Where it appears in the workload's root: absolute, no `..`; created
    /// (with its parents) when missing.
    pub target: String,
    /// Mounted read-only (`MS_RDONLY`); the host backend refuses writes too.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
    /// Docker's copy-up (directory volumes): when the share holds nothing
    /// yet, init first copies what the image has at `target` into it,
    /// owners and modes included, as for a block volume
    /// ([`BlockMount::copy_up`]). Never for bind mounts.
    #[serde(default, skip_serializing_if = "is_default")]
    pub copy_up: bool,
}

/// A tmpfs mounted in the guest: `mount -t tmpfs tmpfs TARGET`.
///
/// Docker's `--tmpfs` and `--mount type=tmpfs` default to `noexec`,
/// `nosuid` and `nodev`; the host writes the flags it wants, init applies
/// exactly those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    /// Where it appears in the workload's root: absolute, no `..`; created
    /// (with its parents) when missing.
    pub target: String,
    /// Size limit in bytes (`size=`); `None` is the kernel's default (half
    /// the guest's memory). At least [`MIN_TMPFS_SIZE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Permission bits of its root (`mode=`, at most `0o7777`); `None`
    /// is tmpfs' default (1777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `MS_RDONLY`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
    /// `MS_NOEXEC`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub noexec: bool,
    /// `MS_NOSUID`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub nosuid: bool,
    /// `MS_NODEV`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub nodev: bool,
}

/// The smallest tmpfs size a spec may ask for: a page. `size=0` would
/// mean "unlimited" to the kernel, which a size limit must never become.
pub const MIN_TMPFS_SIZE: u64 = 4096;

/// An ext4 disk (a block volume) mounted in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMount {
    /// The disk's virtio-blk serial (the VMM's `drives[].id`): 1 to
    /// [`MAX_DRIVE_ID_LEN`] bytes, unique among the spec's drives.
    pub drive: String,
    /// Where it appears in the workload's root: absolute, no `..`; created
    /// (with its parents) when missing.
    pub target: String,
    /// Mounted read-only (`MS_RDONLY`); the host attaches the disk
    /// read-only too.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
    /// Docker's copy-up: when the disk holds nothing yet (an empty root
    /// but for `lost+found`), init first copies what the image has at
    /// `target` into it, owners and modes included. The host cannot look
    /// inside a disk a guest has written, so the guest decides.
    #[serde(default, skip_serializing_if = "is_default")]
    pub copy_up: bool,
}

/// A single file bound over `target` in the guest, as an OCI bind mount
/// of a file is (containerd's CRI plugin binds a pod's `/etc/hosts`,
/// `/etc/hostname` and `/etc/resolv.conf`, and the kubelet a container's
/// `/dev/termination-log`). virtio-fs shares directories, so a file's
/// content travels in the spec instead: copied at start (a change on the
/// host afterwards is not seen), held in guest memory, and bind-mounted
/// over the target (created empty when missing) without touching the
/// file below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// Where it appears in the workload's root: absolute, no `..`.
    pub target: String,
    /// The content, base64 (standard alphabet, padded).
    pub content: String,
    /// Mounted read-only (`MS_RDONLY`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// At most this many [`FileMount`]s in a spec.
pub const MAX_FILES: usize = 64;
/// At most this many bytes of [`FileMount`] content in a spec, decoded,
/// all files together: the spec is read whole into guest memory.
pub const MAX_FILES_BYTES: usize = 1 << 20;

impl FileMount {
    /// A file of `content` at `target`.
    pub fn new(target: impl Into<String>, content: &[u8], read_only: bool) -> Self {
        use base64::Engine as _;
        Self {
            target: target.into(),
            content: base64::engine::general_purpose::STANDARD.encode(content),
            read_only,
        }
    }

    /// The decoded content.
    pub fn bytes(&self) -> Result<Vec<u8>, SpecError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.content)
            .map_err(|e| SpecError::File {
                target: self.target.clone(),
                why: format!("its content is not base64: {e}"),
            })
    }
}

/// How the root filesystem is assembled. The default (nothing) is only
/// valid in a warm spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// Serial of the read-only ext4 image disk (the overlay's lower layer).
    /// Empty (and then not written) for a [`Self::share`] root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_drive: String,
    /// Serial of the writable ext4 scratch disk holding the overlay's upper
    /// and work directories. `None`: the upper layer is a tmpfs, so writes
    /// cost guest memory and vanish at power-off.
    #[serde(default)]
    pub scratch_drive: Option<String>,
    /// The host will read the changes the workload made to the root
    /// filesystem (the agent's `changes` op: the overlay's upper directory
    /// as an OCI layer tar). After the workload exits, init then ends the
    /// processes left behind, makes the changes durable and keeps the
    /// guest up, serving the agent, until the host sends `shutdown` (or no
    /// host has been connected for [`EXPORT_IDLE_SECS`]), instead of
    /// powering off at once. Needs `process.output: "agent"`, so the host
    /// learns of the exit. Not written when false, so older inits read
    /// specs that do not use it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub export_changes: bool,
    /// The virtio-fs tag of a host directory that is the root itself,
    /// mounted read-write, instead of the image and scratch disks: the
    /// containerd shim's root, a snapshotter's prepared directory, which
    /// the guest writes to directly as runc's containers do. Needs an
    /// empty `image_drive`, no `scratch_drive` and no `export_changes`.
    /// Not written when absent, so older inits read specs that do not use
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Docker's `--read-only`: init remounts the workload's root read-only
    /// once its own files (mount points, /etc/hostname, /etc/hosts) are in
    /// place, just before the workload starts; writes then succeed only on
    /// the spec's mounts, tmpfs and the API filesystems. Not written when
    /// false.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// How long a guest launched with `rootfs.export_changes` waits, after
/// its workload exited, for a host that never connects before it powers
/// off anyway.
pub const EXPORT_IDLE_SECS: u64 = 60;

/// The workload process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// argv; `args[0]` is looked up in `PATH` from `env` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, as in an OCI image config.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; created if missing, as Docker does.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Docker's `--user` syntax: `uid`, `uid:gid`, `name`, `name:group`;
    /// names are resolved against the image's /etc/passwd and /etc/group.
    /// Empty means root.
    #[serde(default)]
    pub user: String,
    /// Where stdout and stderr go. Fields below left at their defaults are
    /// not written, so a spec that does not use them stays readable by an
    /// init that predates them.
    #[serde(default, skip_serializing_if = "is_default")]
    pub output: Output,
    /// Run on a pseudo-terminal (needs `output: agent`): one output stream,
    /// line discipline, job control, as `docker run -t`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub terminal: bool,
    /// Keep stdin open for an attached host (needs `output: agent`), as
    /// `docker run -i`; otherwise stdin is /dev/null.
    #[serde(default, skip_serializing_if = "is_default")]
    pub stdin: bool,
    /// Initial terminal size; 0 leaves the kernel default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rows: u16,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cols: u16,
    /// The workload cgroup's `memory.max` in bytes; `None` (not written):
    /// the guest's memory is the only limit. The containerd shim sets it to
    /// a container's memory limit and gives the guest headroom above it,
    /// so that going over the limit is an OOM kill of the workload, as
    /// under runc, instead of a whole guest thrashing at its own size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
}

impl Default for Process {
    /// No command (only valid in a warm spec), the root directory.
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            cwd: default_cwd(),
            user: String::new(),
            output: Output::Console,
            terminal: false,
            stdin: false,
            rows: 0,
            cols: 0,
            memory_max: None,
        }
    }
}

/// The smallest workload memory limit a spec may ask for: below it the
/// workload cannot even exec (runc refuses limits under 6 MiB too).
pub const MIN_MEMORY_MAX: u64 = 6 << 20;

/// Where the workload's stdout and stderr go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The serial console, interleaved with init's and the kernel's lines.
    #[default]
    Console,
    /// Pipes (or the terminal) read by the guest agent, buffered until a
    /// host attaches over vsock (`attach`). Init keeps the guest up after
    /// the workload exits until an attached host has read everything, or
    /// until no host has been attached for a while.
    Agent,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_cwd() -> String {
    "/".to_string()
}

/// Why a spec is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("launch spec is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("launch spec version {found} is not supported (expected {SPEC_VERSION})")]
    Version { found: u32 },
    #[error("launch spec has no command to run (process.args is empty)")]
    NoArgs,
    #[error("launch spec names a drive id {0:?}: it must be 1 to {MAX_DRIVE_ID_LEN} bytes")]
    DriveId(String),
    #[error("launch spec contains a NUL byte in {0}")]
    Nul(&'static str),
    #[error("launch spec environment entry {0:?} is not KEY=VALUE")]
    Env(String),
    #[error("launch spec working directory {0:?} is not absolute")]
    Cwd(String),
    #[error("launch spec process.memory_max {0} is below the smallest workload limit, {MIN_MEMORY_MAX} bytes (6 MiB)")]
    MemoryMax(u64),
    #[error("launch spec sets {0} but process.output is \"console\": a terminal, an open stdin or exported changes need \"output\": \"agent\"")]
    NeedsAgent(&'static str),
    #[error("launch spec mount tag {0:?} is invalid: it must be 1 to {MAX_FS_TAG_LEN} bytes of letters, digits, '-', '_' or '.'")]
    MountTag(String),
    #[error("launch spec mount target {target:?} (tag {tag:?}) {why}")]
    MountTarget {
        tag: String,
        target: String,
        why: &'static str,
    },
    #[error("launch spec mounts tag {0:?} twice; each share is mounted once")]
    DuplicateMountTag(String),
    #[error("launch spec rootfs.share is set together with {0}: a share root uses no disks")]
    ShareRootWithDisk(&'static str),
    #[error("launch spec hostname {0:?} is invalid: it must be 1 to {MAX_HOSTNAME_LEN} bytes without '/', whitespace or control characters")]
    Hostname(String),
    #[error("launch spec network.interfaces[{index}].name {name:?} is invalid: it must be 1 to {MAX_INTERFACE_NAME_LEN} bytes of letters, digits, '-', '_' or '.', and not \"lo\"")]
    InterfaceName { index: usize, name: String },
    #[error("launch spec names interface {0:?} twice; each interface name is used once")]
    DuplicateInterface(String),
    #[error("launch spec interface {interface:?} has MAC {mac:?}: it must be a unicast address written as six lower-case hex bytes separated by ':' (like 02:42:ac:11:00:02)")]
    Mac { interface: String, mac: String },
    #[error("launch spec gives MAC {mac} to two interfaces, {first:?} and {second:?}; each virtio-net device has its own")]
    DuplicateMac {
        mac: String,
        first: String,
        second: String,
    },
    #[error("launch spec {field} {value} is invalid: {why}")]
    Address {
        field: String,
        value: String,
        why: &'static str,
    },
    #[error("launch spec gives address {address} twice (interfaces {first:?} and {second:?})")]
    DuplicateAddress {
        address: std::net::IpAddr,
        first: String,
        second: String,
    },
    #[error("launch spec interface {interface:?} has MTU {mtu}: it must be {min} to {MAX_MTU}{}", if *min == MIN_IPV6_MTU { " (the interface has an IPv6 address, and IPv6 needs at least 1280)" } else { "" })]
    Mtu {
        interface: String,
        mtu: u32,
        min: u32,
    },
    #[error("launch spec network.routes[{index}] uses interface {interface:?}, which is not one of network.interfaces")]
    RouteInterface { index: usize, interface: String },
    #[error("launch spec {field} {value:?} is invalid: {why}")]
    NetworkText {
        field: String,
        value: String,
        why: &'static str,
    },
    #[error("launch spec has {count} {what}; at most {max} are allowed")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("launch spec tmpfs on {target:?}: {why}")]
    Tmpfs { target: String, why: String },
    #[error("launch spec block mount of drive {drive:?}: {why}")]
    BlockMount { drive: String, why: String },
    #[error("launch spec file on {target:?}: {why}")]
    File { target: String, why: String },
    #[error("launch spec is warm but sets {0}: a warm spec has nothing of the sandbox (it comes in the agent's launch request)")]
    WarmWith(&'static str),
    #[error("launch spec realtime_ns {0} is before 2020-01-01 (the host's clock is wrong)")]
    Realtime(u64),
    #[error("launch spec entropy must be {ENTROPY_LEN} bytes as {hex_digits} lower-case hex digits, not {0} characters that are not", hex_digits = ENTROPY_LEN * 2)]
    Entropy(usize),
}

impl LaunchSpec {
    /// A spec for `args` on the default drive ids, with no scratch disk.
    pub fn new(args: Vec<String>) -> Self {
        Self {
            version: SPEC_VERSION,
            hostname: None,
            rootfs: Rootfs {
                image_drive: ROOTFS_DRIVE_ID.into(),
                scratch_drive: None,
                export_changes: false,
                share: None,
                read_only: false,
            },
            process: Process {
                args,
                ..Process::default()
            },
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            block_mounts: Vec::new(),
            files: Vec::new(),
            network: None,
            warm: false,
            realtime_ns: None,
            entropy: None,
        }
    }

    /// A warm spec: `{"version":1,"warm":true}` and nothing else.
    pub fn warm() -> Self {
        Self {
            version: SPEC_VERSION,
            warm: true,
            hostname: None,
            rootfs: Rootfs::default(),
            process: Process::default(),
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            block_mounts: Vec::new(),
            files: Vec::new(),
            network: None,
            realtime_ns: None,
            entropy: None,
        }
    }

    /// The bytes of [`Self::entropy`], if the spec carries them (it is
    /// validated: exactly [`ENTROPY_LEN`] bytes of hex).
    pub fn entropy_bytes(&self) -> Option<Vec<u8>> {
        decode_hex(self.entropy.as_deref()?).filter(|b| b.len() == ENTROPY_LEN)
    }

    /// Set [`Self::entropy`] from raw bytes.
    pub fn set_entropy(&mut self, bytes: &[u8; ENTROPY_LEN]) {
        self.entropy = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }

    /// A warm spec's own checks: nothing but the version.
    fn validate_warm(&self) -> Result<(), SpecError> {
        let fields: [(&'static str, bool); 10] = [
            ("process", self.process != Process::default()),
            ("rootfs", self.rootfs != Rootfs::default()),
            ("hostname", self.hostname.is_some()),
            ("mounts", !self.mounts.is_empty()),
            ("tmpfs", !self.tmpfs.is_empty()),
            ("block_mounts", !self.block_mounts.is_empty()),
            ("files", !self.files.is_empty()),
            ("network", self.network.is_some()),
            ("realtime_ns", self.realtime_ns.is_some()),
            ("entropy", self.entropy.is_some()),
        ];
        match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(SpecError::WarmWith(field)),
            None => Ok(()),
        }
    }

    /// Parse and validate a spec; used by init on what the host wrote.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let spec: Self = serde_json::from_slice(bytes)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Serialise a spec after validating it.
    pub fn to_json(&self) -> Result<Vec<u8>, SpecError> {
        self.validate()?;
        Ok(serde_json::to_vec(self)?)
    }

    /// Check what JSON alone cannot: the things that would make init fail
    /// late or behave surprisingly.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::Version {
                found: self.version,
            });
        }
        if self.warm {
            return self.validate_warm();
        }
        if let Some(ns) = self.realtime_ns {
            if ns < MIN_REALTIME_NS {
                return Err(SpecError::Realtime(ns));
            }
        }
        if let Some(hex) = &self.entropy {
            if hex.len() != ENTROPY_LEN * 2 || self.entropy_bytes().is_none() {
                return Err(SpecError::Entropy(hex.len()));
            }
        }
        if self.process.args.is_empty() {
            return Err(SpecError::NoArgs);
        }
        if let Some(tag) = &self.rootfs.share {
            if !is_valid_fs_tag(tag) {
                return Err(SpecError::MountTag(tag.clone()));
            }
            if self.mounts.iter().any(|m| &m.tag == tag) {
                return Err(SpecError::DuplicateMountTag(tag.clone()));
            }
            if !self.rootfs.image_drive.is_empty() {
                return Err(SpecError::ShareRootWithDisk("rootfs.image_drive"));
            }
            if self.rootfs.scratch_drive.is_some() {
                return Err(SpecError::ShareRootWithDisk("rootfs.scratch_drive"));
            }
            if self.rootfs.export_changes {
                return Err(SpecError::ShareRootWithDisk("rootfs.export_changes"));
            }
        }
        let image = (self.rootfs.share.is_none()).then_some(&self.rootfs.image_drive);
        let ids = image.into_iter().chain(&self.rootfs.scratch_drive);
        for id in ids {
            if id.is_empty() || id.len() > MAX_DRIVE_ID_LEN {
                return Err(SpecError::DriveId(id.clone()));
            }
        }
        let has_nul = |v: &[String]| v.iter().any(|s| s.contains('\0'));
        if has_nul(&self.process.args) {
            return Err(SpecError::Nul("process.args"));
        }
        if has_nul(&self.process.env) {
            return Err(SpecError::Nul("process.env"));
        }
        if let Some(bad) = self
            .process
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(SpecError::Env(bad.clone()));
        }
        if !self.process.cwd.starts_with('/') {
            return Err(SpecError::Cwd(self.process.cwd.clone()));
        }
        if self.process.cwd.contains('\0') {
            return Err(SpecError::Nul("process.cwd"));
        }
        if self.process.user.contains('\0') {
            return Err(SpecError::Nul("process.user"));
        }
        if let Some(m) = self.process.memory_max {
            if m < MIN_MEMORY_MAX {
                return Err(SpecError::MemoryMax(m));
            }
        }
        if let Some(h) = &self.hostname {
            if !is_valid_hostname(h) {
                return Err(SpecError::Hostname(h.clone()));
            }
        }
        if self.process.output == Output::Console {
            if self.process.terminal {
                return Err(SpecError::NeedsAgent("process.terminal"));
            }
            if self.process.stdin {
                return Err(SpecError::NeedsAgent("process.stdin"));
            }
            if self.rootfs.export_changes {
                return Err(SpecError::NeedsAgent("rootfs.export_changes"));
            }
        }
        self.validate_mounts()?;
        if let Some(n) = &self.network {
            n.validate()?;
        }
        Ok(())
    }

    fn validate_mounts(&self) -> Result<(), SpecError> {
        let mut tags = std::collections::HashSet::new();
        // Every kind of mount shares one namespace of mount points.
        let mut targets = std::collections::HashSet::new();
        for m in &self.mounts {
            if !is_valid_fs_tag(&m.tag) {
                return Err(SpecError::MountTag(m.tag.clone()));
            }
            if !tags.insert(m.tag.as_str()) {
                return Err(SpecError::DuplicateMountTag(m.tag.clone()));
            }
            check_target(&m.target, &mut targets).map_err(|why| SpecError::MountTarget {
                tag: m.tag.clone(),
                target: m.target.clone(),
                why,
            })?;
        }
        for t in &self.tmpfs {
            let bad = |why: String| SpecError::Tmpfs {
                target: t.target.clone(),
                why,
            };
            check_target(&t.target, &mut targets).map_err(|w| bad(w.to_string()))?;
            if let Some(size) = t.size_bytes {
                if size < MIN_TMPFS_SIZE {
                    return Err(bad(format!(
                        "size {size} is below the minimum of {MIN_TMPFS_SIZE} bytes"
                    )));
                }
            }
            if let Some(mode) = t.mode {
                if mode > 0o7777 {
                    return Err(bad(format!(
                        "mode {mode:o} has bits beyond 7777 (permissions, setuid, setgid, sticky)"
                    )));
                }
            }
        }
        let mut drives: std::collections::HashSet<&str> =
            std::iter::once(self.rootfs.image_drive.as_str())
                .chain(self.rootfs.scratch_drive.as_deref())
                .collect();
        for b in &self.block_mounts {
            let bad = |why: &str| SpecError::BlockMount {
                drive: b.drive.clone(),
                why: why.to_string(),
            };
            if b.drive.is_empty()
                || b.drive.len() > MAX_DRIVE_ID_LEN
                || !b
                    .drive
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            {
                return Err(bad(
                    "the drive id must be 1 to 20 bytes of letters, digits, '-', '_' or '.'",
                ));
            }
            if !drives.insert(b.drive.as_str()) {
                return Err(bad(
                    "the drive is the root disk, the scratch disk or another mount's",
                ));
            }
            check_target(&b.target, &mut targets).map_err(|why| SpecError::BlockMount {
                drive: b.drive.clone(),
                why: format!("target {:?} {why}", b.target),
            })?;
        }
        if self.files.len() > MAX_FILES {
            return Err(SpecError::TooMany {
                what: "files",
                count: self.files.len(),
                max: MAX_FILES,
            });
        }
        let mut total = 0usize;
        for f in &self.files {
            let bad = |why: String| SpecError::File {
                target: f.target.clone(),
                why,
            };
            check_target(&f.target, &mut targets).map_err(|w| bad(w.to_string()))?;
            // Bounded before decoding: base64 is 4 bytes per 3.
            if f.content.len() > MAX_FILES_BYTES / 3 * 4 + 4 {
                return Err(bad(format!("its content is over {MAX_FILES_BYTES} bytes")));
            }
            total += f.bytes()?.len();
            if total > MAX_FILES_BYTES {
                return Err(bad(format!(
                    "the files' content is over {MAX_FILES_BYTES} bytes in all"
                )));
            }
        }
        Ok(())
    }
}

/// Lower-case hex to bytes; `None` for anything else (odd length,
/// upper case, other characters).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Check a mount point: absolute, no NUL, no `..`, not `/`, and not one
/// already in `seen` (compared normalised).
fn check_target(
    target: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(), &'static str> {
    if !target.starts_with('/') {
        return Err("is not absolute");
    }
    if target.contains('\0') {
        return Err("contains a NUL byte");
    }
    if target.split('/').any(|c| c == "..") {
        return Err("contains a '..' component");
    }
    let normal = normalize_target(target);
    if normal == "/" {
        return Err("is the root directory");
    }
    if !seen.insert(normal) {
        return Err("is used by another mount");
    }
    Ok(())
}

/// `target` without empty and `.` components, as the guest resolves it
/// (`/a//b/./` is `/a/b`), for comparing mount points.
pub fn normalize_target(target: &str) -> String {
    let parts: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_awkward_content() {
        let mut spec = LaunchSpec::new(vec![
            "sh".into(),
            "-c".into(),
            "echo 'a b' \"$X\"\n;".into(),
        ]);
        spec.process.env = vec![
            "X=ünïcode = ok".into(),
            format!("BIG={}", "x".repeat(100_000)),
        ];
        spec.rootfs.scratch_drive = Some(SCRATCH_DRIVE_ID.into());
        let json = spec.to_json().unwrap();
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), spec);
    }

    #[test]
    fn a_warm_spec_is_nothing_but_warm_and_a_cold_one_needs_its_process() {
        let warm = LaunchSpec::warm();
        let json = warm.to_json().unwrap();
        assert_eq!(json, br#"{"version":1,"warm":true}"#);
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), warm);
        // Each field of the sandbox, set in a warm spec, is refused by name.
        let with = |f: &dyn Fn(&mut LaunchSpec)| {
            let mut s = LaunchSpec::warm();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        type Set<'a> = &'a dyn Fn(&mut LaunchSpec);
        let cases: [(&str, Set); 9] = [
            ("process", &|s| s.process.args = vec!["sh".into()]),
            ("rootfs", &|s| s.rootfs.image_drive = "rootfs".into()),
            ("hostname", &|s| s.hostname = Some("h".into())),
            ("mounts", &|s| {
                s.mounts.push(Mount {
                    tag: "t".into(),
                    target: "/t".into(),
                    read_only: false,
                    copy_up: false,
                })
            }),
            ("tmpfs", &|s| s.tmpfs.push(TmpfsMount::default())),
            ("block_mounts", &|s| {
                s.block_mounts.push(BlockMount {
                    drive: "v".into(),
                    target: "/v".into(),
                    read_only: false,
                    copy_up: false,
                })
            }),
            ("network", &|s| s.network = Some(Network::default())),
            ("realtime_ns", &|s| s.realtime_ns = Some(MIN_REALTIME_NS)),
            ("entropy", &|s| s.set_entropy(&[1; ENTROPY_LEN])),
        ];
        for (field, f) in cases {
            let e = with(f);
            assert!(
                e.contains(&format!("warm but sets {field}")),
                "{field}: {e}"
            );
        }
        let hostile = br#"{"version":1,"warm":true,"process":{"args":["sh"]}}"#;
        assert!(matches!(
            LaunchSpec::from_json(hostile),
            Err(SpecError::WarmWith("process"))
        ));
        // A cold spec without a process, or without a root, names what is
        // missing.
        let e = LaunchSpec::from_json(br#"{"version":1,"rootfs":{"image_drive":"r"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("process.args"), "{e}");
        let e = LaunchSpec::from_json(br#"{"version":1,"process":{"args":["a"]}}"#).unwrap_err();
        assert!(matches!(e, SpecError::DriveId(_)), "{e}");
        // `warm: false` written out by someone is a cold spec.
        let s = LaunchSpec::from_json(
            br#"{"version":1,"warm":false,"rootfs":{"image_drive":"r"},"process":{"args":["a"]}}"#,
        )
        .unwrap();
        assert!(!s.warm);
        // Cold specs do not change on the wire: no warm, clock or entropy.
        let text = String::from_utf8(LaunchSpec::new(vec!["a".into()]).to_json().unwrap()).unwrap();
        for field in ["warm", "realtime_ns", "entropy"] {
            assert!(!text.contains(field), "{text}");
        }
    }

    #[test]
    fn clock_and_entropy_are_validated() {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        s.realtime_ns = Some(MIN_REALTIME_NS - 1);
        assert!(matches!(s.validate(), Err(SpecError::Realtime(_))));
        s.realtime_ns = Some(0);
        assert!(matches!(s.validate(), Err(SpecError::Realtime(0))));
        s.realtime_ns = Some(u64::MAX);
        s.validate().unwrap();
        let bytes: [u8; ENTROPY_LEN] = std::array::from_fn(|i| i as u8 * 3);
        s.set_entropy(&bytes);
        s.validate().unwrap();
        assert_eq!(s.entropy_bytes().unwrap(), bytes);
        let json = s.to_json().unwrap();
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);
        let good = s.entropy.clone().unwrap();
        for bad in [
            String::new(),
            "00".into(),
            good[..good.len() - 2].to_string(),
            format!("{good}00"),
            good.to_uppercase(),
            format!("{}zz", &good[..good.len() - 2]),
            format!("{}\0\0", &good[..good.len() - 2]),
            format!("{}é", &good[..good.len() - 2]),
        ] {
            s.entropy = Some(bad.clone());
            assert!(
                matches!(s.validate(), Err(SpecError::Entropy(_))),
                "{bad:?}"
            );
            assert_eq!(s.entropy_bytes(), None, "{bad:?}");
        }
        let e = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"entropy":[1,2]}"#;
        assert!(matches!(LaunchSpec::from_json(e), Err(SpecError::Json(_))));
        let e = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"realtime_ns":-1}"#;
        assert!(matches!(LaunchSpec::from_json(e), Err(SpecError::Json(_))));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            LaunchSpec::from_json(b"{"),
            Err(SpecError::Json(_))
        ));
        let mut s = LaunchSpec::new(vec![]);
        assert!(matches!(s.validate(), Err(SpecError::NoArgs)));
        s.process.args = vec!["a\0b".into()];
        assert!(matches!(s.validate(), Err(SpecError::Nul(_))));
        s.process.args = vec!["true".into()];
        s.process.env = vec!["NOEQUALS".into()];
        assert!(matches!(s.validate(), Err(SpecError::Env(_))));
        s.process.env.clear();
        s.process.cwd = "relative".into();
        assert!(matches!(s.validate(), Err(SpecError::Cwd(_))));
        s.process.cwd = "/".into();
        s.process.memory_max = Some(MIN_MEMORY_MAX - 1);
        assert!(matches!(s.validate(), Err(SpecError::MemoryMax(_))));
        s.process.memory_max = Some(MIN_MEMORY_MAX);
        assert!(s.validate().is_ok());
        s.process.memory_max = None;
        s.rootfs.image_drive = "x".repeat(21);
        assert!(matches!(s.validate(), Err(SpecError::DriveId(_))));
        s.rootfs.image_drive = "rootfs".into();
        s.version = 7;
        assert!(matches!(s.validate(), Err(SpecError::Version { found: 7 })));
        let unknown =
            br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"extra":1}"#;
        assert!(LaunchSpec::from_json(unknown).is_err());
        s.version = SPEC_VERSION;
        s.process.terminal = true;
        assert!(matches!(
            s.validate(),
            Err(SpecError::NeedsAgent("process.terminal"))
        ));
        s.process.terminal = false;
        s.process.stdin = true;
        assert!(matches!(
            s.validate(),
            Err(SpecError::NeedsAgent("process.stdin"))
        ));
        s.process.stdin = false;
        s.rootfs.export_changes = true;
        assert!(matches!(
            s.validate(),
            Err(SpecError::NeedsAgent("rootfs.export_changes"))
        ));
        s.process.output = Output::Agent;
        s.process.terminal = true;
        s.validate().unwrap();
    }

    #[test]
    fn agent_fields_default_and_stay_off_the_wire() {
        let spec = LaunchSpec::new(vec!["true".into()]);
        let json = String::from_utf8(spec.to_json().unwrap()).unwrap();
        for field in ["output", "terminal", "stdin", "rows", "cols"] {
            assert!(!json.contains(field), "{json}");
        }
        let with = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"],"output":"agent","terminal":true,"stdin":true,"rows":30,"cols":100}}"#;
        let p = LaunchSpec::from_json(with).unwrap().process;
        assert_eq!(
            (p.output, p.terminal, p.stdin, p.rows, p.cols),
            (Output::Agent, true, true, 30, 100)
        );
        let bad = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"],"output":"file"}}"#;
        assert!(LaunchSpec::from_json(bad).is_err());
    }

    #[test]
    fn mounts_are_validated_and_stay_off_the_wire_when_empty() {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        let json = String::from_utf8(s.to_json().unwrap()).unwrap();
        assert!(!json.contains("mounts"), "{json}");
        s.mounts = vec![
            Mount {
                tag: "data".into(),
                target: "/var/lib/data".into(),
                read_only: false,
                copy_up: false,
            },
            Mount {
                tag: "conf.ro".into(),
                target: "/etc/app".into(),
                read_only: true,
                copy_up: false,
            },
        ];
        let json = s.to_json().unwrap();
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);
        let text = String::from_utf8(json).unwrap();
        assert!(
            text.contains(r#"{"tag":"data","target":"/var/lib/data"}"#),
            "read_only false is not written: {text}"
        );

        let mount = |tag: &str, target: &str| Mount {
            tag: tag.into(),
            target: target.into(),
            read_only: false,
            copy_up: false,
        };
        let check = |mounts: Vec<Mount>| {
            let mut s = LaunchSpec::new(vec!["true".into()]);
            s.mounts = mounts;
            s.validate()
        };
        for tag in ["", "a b", "a/b", "a,b", &"x".repeat(37)] {
            assert!(
                matches!(check(vec![mount(tag, "/x")]), Err(SpecError::MountTag(_))),
                "{tag:?}"
            );
        }
        check(vec![mount(&"x".repeat(36), "/x")]).unwrap();
        for target in ["relative", "/a/../b", "/..", "/", "//", "/./", "/a\0"] {
            let e = check(vec![mount("t", target)]).unwrap_err();
            assert!(matches!(e, SpecError::MountTarget { .. }), "{target:?}");
            assert!(e.to_string().contains("tag \"t\""), "{e}");
        }
        assert!(matches!(
            check(vec![mount("a", "/x"), mount("a", "/y")]),
            Err(SpecError::DuplicateMountTag(_))
        ));
        let e = check(vec![mount("a", "/x/y"), mount("b", "/x//y/.")]).unwrap_err();
        assert!(e.to_string().contains("another mount"), "{e}");
        check(vec![mount("a", "/x"), mount("b", "/x/y")]).unwrap();
        assert_eq!(normalize_target("/a//b/./c/"), "/a/b/c");
        let unknown = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"mounts":[{"tag":"t","target":"/t","cache":"x"}]}"#;
        assert!(LaunchSpec::from_json(unknown).is_err());
    }

    #[test]
    fn a_share_root_replaces_the_disks_and_older_specs_stay_valid() {
        let older = br#"{"version":1,"rootfs":{"image_drive":"rootfs","scratch_drive":"scratch"},"process":{"args":["a"]}}"#;
        let spec = LaunchSpec::from_json(older).unwrap();
        assert_eq!(spec.rootfs.share, None);
        assert!(!String::from_utf8(spec.to_json().unwrap())
            .unwrap()
            .contains("share"));

        let mut s = LaunchSpec::new(vec!["a".into()]);
        s.rootfs.image_drive.clear();
        s.rootfs.share = Some("root".into());
        let json = s.to_json().unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("image_drive"));
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);

        let mut bad = s.clone();
        bad.rootfs.image_drive = "rootfs".into();
        assert!(matches!(
            bad.validate(),
            Err(SpecError::ShareRootWithDisk("rootfs.image_drive"))
        ));
        let mut bad = s.clone();
        bad.rootfs.scratch_drive = Some("scratch".into());
        assert!(matches!(
            bad.validate(),
            Err(SpecError::ShareRootWithDisk(_))
        ));
        let mut bad = s.clone();
        bad.rootfs.share = Some("a b".into());
        assert!(matches!(bad.validate(), Err(SpecError::MountTag(_))));
        let mut bad = s.clone();
        bad.mounts.push(Mount {
            tag: "root".into(),
            target: "/x".into(),
            read_only: false,
            copy_up: false,
        });
        assert!(matches!(
            bad.validate(),
            Err(SpecError::DuplicateMountTag(_))
        ));
        // Neither a disk nor a share: no root at all.
        let mut bad = s;
        bad.rootfs.share = None;
        assert!(matches!(bad.validate(), Err(SpecError::DriveId(_))));
    }

    #[test]
    fn files_round_trip_stay_off_the_wire_when_empty_and_hostile_ones_are_refused() {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        let json = String::from_utf8(s.to_json().unwrap()).unwrap();
        assert!(!json.contains("files"), "{json}");
        let content = b"nameserver 10.0.0.1\n\0\xff binary too";
        s.files = vec![FileMount::new("/etc/resolv.conf", content, true)];
        s.validate().unwrap();
        let back = LaunchSpec::from_json(&s.to_json().unwrap()).unwrap();
        assert_eq!(back.files[0].bytes().unwrap(), content);
        assert!(back.files[0].read_only);

        let refused = |files: Vec<FileMount>, needle: &str| {
            let mut bad = s.clone();
            bad.files = files;
            let e = bad.validate().expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
        };
        let file = |t: &str| FileMount::new(t, b"x", false);
        refused(vec![file("etc/hosts")], "not absolute");
        refused(vec![file("/etc/../hosts")], "'..'");
        refused(vec![file("/")], "root directory");
        refused(
            vec![file("/etc/hosts"), file("/etc//hosts")],
            "another mount",
        );
        let mut not_b64 = file("/a");
        not_b64.content = "not base64!".into();
        refused(vec![not_b64], "not base64");
        let big = vec![0u8; MAX_FILES_BYTES / 2 + 1];
        refused(
            vec![
                FileMount::new("/a", &big, false),
                FileMount::new("/b", &big, false),
            ],
            "in all",
        );
        let mut huge = file("/a");
        huge.content = "A".repeat(MAX_FILES_BYTES * 2);
        refused(vec![huge], "over");
        let many = (0..=MAX_FILES).map(|i| file(&format!("/f{i}"))).collect();
        refused(many, "at most");
        // A file and a tmpfs on one target.
        let mut both = s.clone();
        both.tmpfs = vec![TmpfsMount {
            target: "/etc/resolv.conf".into(),
            ..Default::default()
        }];
        assert!(both.validate().is_err());
    }

    #[test]
    fn tmpfs_block_mounts_and_read_only_root_stay_off_the_wire_and_are_validated() {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        let json = String::from_utf8(s.to_json().unwrap()).unwrap();
        for field in ["tmpfs", "block_mounts", "read_only"] {
            assert!(!json.contains(field), "{json}");
        }
        // A spec from before these fields is read as having none.
        let old = br#"{"version":1,"rootfs":{"image_drive":"r","scratch_drive":"s"},"process":{"args":["a"]}}"#;
        let o = LaunchSpec::from_json(old).unwrap();
        assert!(o.tmpfs.is_empty() && o.block_mounts.is_empty() && !o.rootfs.read_only);

        s.rootfs.read_only = true;
        s.tmpfs = vec![TmpfsMount {
            target: "/run".into(),
            size_bytes: Some(1 << 20),
            mode: Some(0o1777),
            noexec: true,
            nosuid: true,
            nodev: true,
            ..Default::default()
        }];
        s.block_mounts = vec![BlockMount {
            drive: "vol0".into(),
            target: "/var/lib/db".into(),
            read_only: false,
            copy_up: true,
        }];
        let json = s.to_json().unwrap();
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(r#""read_only":true"#), "{text}");
        assert!(
            text.contains(r#"{"drive":"vol0","target":"/var/lib/db","copy_up":true}"#),
            "{text}"
        );

        let check = |f: &dyn Fn(&mut LaunchSpec)| {
            let mut s = LaunchSpec::new(vec!["true".into()]);
            s.rootfs.scratch_drive = Some(SCRATCH_DRIVE_ID.into());
            f(&mut s);
            s.validate()
        };
        let tmpfs = |t: &str| TmpfsMount {
            target: t.into(),
            ..Default::default()
        };
        let block = |d: &str, t: &str| BlockMount {
            drive: d.into(),
            target: t.into(),
            read_only: false,
            copy_up: false,
        };
        for target in ["rel", "/a/../b", "/", "//.", "/x\0"] {
            let e = check(&|s| s.tmpfs = vec![tmpfs(target)]).unwrap_err();
            assert!(matches!(e, SpecError::Tmpfs { .. }), "{target:?}: {e}");
            let e = check(&|s| s.block_mounts = vec![block("v", target)]).unwrap_err();
            assert!(matches!(e, SpecError::BlockMount { .. }), "{target:?}: {e}");
        }
        // Sizes a limit could not mean, modes beyond the permission bits.
        for size in [0, 1, 4095] {
            let e = check(&|s| {
                s.tmpfs = vec![TmpfsMount {
                    size_bytes: Some(size),
                    ..tmpfs("/t")
                }]
            })
            .unwrap_err();
            assert!(e.to_string().contains("minimum"), "{e}");
        }
        let e = check(&|s| {
            s.tmpfs = vec![TmpfsMount {
                mode: Some(0o10000),
                ..tmpfs("/t")
            }]
        })
        .unwrap_err();
        assert!(e.to_string().contains("7777"), "{e}");
        // One namespace of mount points across kinds.
        let e = check(&|s| {
            s.tmpfs = vec![tmpfs("/data")];
            s.block_mounts = vec![block("v", "/data/")];
        })
        .unwrap_err();
        assert!(e.to_string().contains("another mount"), "{e}");
        let e = check(&|s| {
            s.mounts = vec![Mount {
                tag: "t".into(),
                target: "/x".into(),
                read_only: false,
                copy_up: false,
            }];
            s.tmpfs = vec![tmpfs("/x/.")];
        })
        .unwrap_err();
        assert!(e.to_string().contains("another mount"), "{e}");
        // Drive ids: valid, and never a root disk's or another mount's.
        for drive in ["", "a b", "a/b", &"x".repeat(21), "rootfs", "scratch"] {
            let e = check(&|s| s.block_mounts = vec![block(drive, "/v")]).unwrap_err();
            assert!(matches!(e, SpecError::BlockMount { .. }), "{drive:?}: {e}");
        }
        let e = check(&|s| s.block_mounts = vec![block("v", "/a"), block("v", "/b")]).unwrap_err();
        assert!(e.to_string().contains("another mount"), "{e}");
        check(&|s| {
            s.tmpfs = vec![tmpfs("/a")];
            s.block_mounts = vec![block("v", "/a/b"), block("w", "/c")];
        })
        .unwrap();
        let unknown = br#"{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"tmpfs":[{"target":"/t","uid":0}]}"#;
        assert!(LaunchSpec::from_json(unknown).is_err());
    }
}
