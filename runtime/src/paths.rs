//! Where things live on the host.
//!
//! Two roots, as Docker has `/var/lib/docker` and `/run/docker`: the state
//! root (`MVM_ROOT`, default `/var/lib/mvm`) keeps what must survive a
//! reboot of mvmd (database, images, disks, logs); the run dir
//! (`MVM_RUN_DIR`, default `/run/mvm`) keeps sockets, which are only
//! meaningful while their processes live.

use std::path::{Path, PathBuf};

/// Environment variable overriding the state root.
pub const ROOT_ENV: &str = "MVM_ROOT";
/// Environment variable overriding the run dir.
pub const RUN_DIR_ENV: &str = "MVM_RUN_DIR";
/// Default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/mvm";
/// Default run dir.
pub const DEFAULT_RUN_DIR: &str = "/run/mvm";

/// The host layout of one mvm installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// State root.
    pub root: PathBuf,
    /// Runtime dir (sockets).
    pub run_dir: PathBuf,
}

impl Layout {
    /// A layout with explicit roots.
    pub fn new(root: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            run_dir: run_dir.into(),
        }
    }

    /// The layout from `MVM_ROOT` / `MVM_RUN_DIR`, or the defaults.
    pub fn from_env() -> Self {
        let get = |k: &str, d: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(d))
        };
        Self::new(
            get(ROOT_ENV, DEFAULT_ROOT),
            get(RUN_DIR_ENV, DEFAULT_RUN_DIR),
        )
    }

    /// The daemon's database.
    pub fn db(&self) -> PathBuf {
        self.root.join("mvmd.db")
    }

    /// The lock file that keeps a second daemon from using the same root.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("mvmd.lock")
    }

    /// The image store (`mvm_images::Store`).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Cached shared initramfs archives (`<sha256 of init>.cpio`).
    pub fn init_cache(&self) -> PathBuf {
        self.root.join("init")
    }

    /// Parent of every sandbox's directory.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Parent of the transient sandboxes' directories (builds' RUN
    /// steps); not sandboxes of a caller's database, so kept apart from
    /// [`Self::sandboxes`] where a daemon looks for orphans.
    pub fn transients(&self) -> PathBuf {
        self.root.join("transient")
    }

    /// Parent of the directory volumes (`crate::volume::VolumeDirs`).
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// The default API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("mvmd.sock")
    }

    /// Parent of the VMMs' vsock sockets.
    pub fn vsock_dir(&self) -> PathBuf {
        self.run_dir.join("vsock")
    }

    /// The files of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> SandboxPaths {
        self.paths_in(self.sandboxes().join(id), id)
    }

    /// The files of transient sandbox `id`.
    pub fn transient(&self, id: &str) -> SandboxPaths {
        self.paths_in(self.transients().join(id), id)
    }

    fn paths_in(&self, dir: PathBuf, id: &str) -> SandboxPaths {
        let vm_dir = dir.join("vm");
        // Unix socket paths are limited to 107 bytes: keep these short and
        // out of the (possibly deep) state root.
        let sockets = self.vsock_dir().join(&id[..id.len().min(32)]);
        SandboxPaths {
            scratch: dir.join("scratch.ext4"),
            spec_cpio: dir.join("spec.cpio"),
            vm_config: dir.join("vm.json"),
            status: vm_dir.join("status.json"),
            console: vm_dir.join("console.log"),
            vmm_log: vm_dir.join("vmm.log"),
            logs: dir.join("logs"),
            jail: dir.join("jail"),
            vsock: sockets.join("v.sock"),
            sockets,
            vm_dir,
            dir,
        }
    }
}

/// The per-sandbox files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    /// `<root>/sandboxes/<id>`.
    pub dir: PathBuf,
    /// Writable ext4 scratch disk (sparse).
    pub scratch: PathBuf,
    /// Per-sandbox initramfs with the launch spec.
    pub spec_cpio: PathBuf,
    /// The VMM configuration.
    pub vm_config: PathBuf,
    /// The VMM's status file.
    pub status: PathBuf,
    /// The serial console.
    pub console: PathBuf,
    /// The VMM's own log (stderr).
    pub vmm_log: PathBuf,
    /// Workload logs (`json.log`, rotated as `json.log.1` ...).
    pub logs: PathBuf,
    /// The VMM's vsock Unix socket.
    pub vsock: PathBuf,
    /// The directory of the VMM's sockets (vsock, virtio-fs backends):
    /// `<run dir>/vsock/<id>`, the VMM's to write, one per sandbox so a
    /// VMM sees no other sandbox's sockets.
    pub sockets: PathBuf,
    /// The directory of the files the VMM writes (console, log, status):
    /// `<dir>/vm`, owned by the VMM's uid when it is jailed. Nothing the
    /// host acts on lives there, and the host opens what it reads there
    /// with [`read_vm_file`] / [`append_vm_file`] only.
    pub vm_dir: PathBuf,
    /// The VMM's jail (its root when jailed): mount points only.
    pub jail: PathBuf,
}

impl SandboxPaths {
    /// The VMM's vsock socket as host code must reach it (the guest
    /// agent, every caller of the runtime: mvmd, the builder, the
    /// containerd shim): see [`open_vmm_socket`].
    pub fn agent_socket(&self) -> mvm_protocol::agent::client::VsockSocket {
        mvm_protocol::agent::client::VsockSocket::opened_by(self.vsock.clone(), open_vmm_socket)
    }

    /// The current workload log file.
    pub fn json_log(&self) -> PathBuf {
        self.logs.join("json.log")
    }

    /// Every path as a map for `SandboxInfo::paths`.
    pub fn as_map(&self) -> std::collections::BTreeMap<String, String> {
        let s = |p: &Path| p.display().to_string();
        [
            ("dir", s(&self.dir)),
            ("scratch", s(&self.scratch)),
            ("console", s(&self.console)),
            ("log", s(&self.json_log())),
            ("vmm_log", s(&self.vmm_log)),
            ("status", s(&self.status)),
            ("vm_config", s(&self.vm_config)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The previous part of a file the VMM rotates at its cap.
pub use mvm_vmm_api::config::previous_part;

/// How the host opens the files of a sandbox's `vm/` directory (console,
/// VMM log, status, and their rotated parts): that directory belongs to
/// the VMM's unprivileged uid, so a compromised VMM may leave a symlink
/// there (`console.log -> /etc/shadow`), a FIFO or a directory where a
/// file is expected. These resolve the name beneath the directory without
/// following any link and accept regular files only; every host-side
/// reader and writer of `vm/` goes through them.
pub use mvm_unpack::beneath::{
    append_file as append_vm_file, read_file as read_vm_file, BeneathError as VmFileError,
};

/// Opens a connection to a VMM's vsock socket `v.sock` in its socket
/// directory, which belongs to the VMM's unprivileged uid.
///
/// A compromised VMM could replace `v.sock` with a symbolic link to any
/// other Unix socket of the host (mvmd's API socket, containerd's), and a
/// host that connected by path would send that socket its `CONNECT` line
/// and then agent requests meant for the guest, as root. So the name is
/// resolved beneath the directory without following any link and must be
/// a socket, and the connection is made through the descriptor of what
/// was checked ([`mvm_unpack::beneath::connect_socket`]): a link is
/// refused (`PermissionDenied`, which the agent client does not retry).
///
/// Why this and not the other two ways to close it: having mvmd bind the
/// listening socket and hand the VMM its descriptor would change the
/// VMM's configuration contract, the jailer's descriptor list and the
/// muxer's handling of a stale socket, for every caller of the VMM;
/// keeping the socket in a directory only mvmd writes, bind-mounted into
/// the jail, does not work by itself, since the VMM must create its socket
/// there (so the directory must be its to write, and links are back). The
/// check here needs neither, and covers every host caller at once,
/// jailed or not (unjailed, the VMM is root and no boundary is crossed).
/// Hard links are out of the VMM's reach: its jail shows it no other
/// socket of the host, and `link(2)` does not cross mounts.
pub fn open_vmm_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    mvm_unpack::beneath::connect_socket(path).map_err(std::io::Error::from)
}
