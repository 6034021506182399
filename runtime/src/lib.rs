//! The sandbox lifecycle library of mvm, shared by `mvmd` and (later) the
//! containerd shim, so there is one copy of how a sandbox becomes a
//! microVM.
//!
//! A sandbox is a [`spec::SandboxSpec`] (the create request resolved
//! against the image config with Docker's merge rules) that becomes the
//! image's shared read-only root disk, a per-sandbox sparse scratch disk,
//! a launch spec archive and a VMM config ([`Runtime::create`]); a start
//! spawns `mvm-vmm` in its own session ([`Runtime::start`]), so it outlives
//! the daemon; its end is read from the VMM's status file
//! ([`exit::exit_info`]). The state machine and its persistence belong to
//! the caller (mvmd keeps it in SQLite); this crate keeps the pure rules
//! ([`state`], [`restart`]) and the host mechanics.
//!
//! It speaks its own vocabulary ([`SandboxRequest`], [`SandboxSpec`] with
//! its [`ProcessSpec`], [`Resources`] and [`Lifecycle`], [`State`],
//! [`Intent`]): `mvmd` converts its REST types at its HTTP edge and
//! stores these records; the containerd shim will use this library as it
//! is. The Dockerfile builder runs its RUN steps as [`transient`]
//! sandboxes through the same artifact lookup, init archive, launch files,
//! spawning and exit mapping as `run`.
//!
//! ```no_run
//! # fn demo() -> Result<(), mvm_runtime::RuntimeError> {
//! use mvm_runtime::{Runtime, RuntimeConfig, SandboxRequest};
//! let rt = Runtime::new(RuntimeConfig::from_env(Default::default())?)?;
//! let req = SandboxRequest { image: "busybox".into(), ..Default::default() };
//! let id = mvm_runtime::names::new_id();
//! let created = rt.create(&id, "demo", &req)?;
//! let started = rt.start(&created.spec)?;
//! # let _ = started; Ok(()) }
//! ```

pub mod artifacts;
pub mod cgroup;
pub mod checkpoint;
pub mod exit;
pub mod host;
pub mod jail;
pub mod launch;
pub mod logs;
pub mod names;
pub mod paths;
pub mod process;
pub mod restart;
pub mod share;
pub mod spec;
pub mod state;
pub mod transient;
#[cfg(test)]
mod vm_files_tests;
pub mod volume;
pub mod warm;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use mvm_images::{RootDiskError, RootDiskOptions, Store, StoreError};

pub use artifacts::{ArtifactOverrides, Artifacts};
pub use exit::{ExitInfo, Intent};
pub use host::HostResources;
pub use jail::{JailConfig, UidRange};
pub use logs::LogLimits;
pub use paths::{Layout, SandboxPaths};
pub use process::{VmmEnd, VmmProcess};
pub use restart::RestartPolicy;
pub use share::HostShare;
pub use spec::{
    Defaults, Lifecycle, ProcessSpec, ResourceRequest, Resources, SandboxRequest, SandboxSpec,
    SpecError,
};
pub use state::{ExitReason, State, Status};
pub use transient::{Root, Transient, TransientSpec};
pub use volume::{ImportMode, Imported, MountSpec, VolumeDirs, VolumeError, VolumeKind};

/// What kind of failure an error is, for callers that map errors to their
/// own codes (mvmd's HTTP statuses, the shim's ttrpc codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the message says how.
    Invalid,
    /// Something named does not exist (an image).
    NotFound,
    /// The host cannot give what was asked (memory, CPUs, disk space,
    /// missing kernel or VMM).
    Unavailable,
    /// Anything else: I/O, processes.
    Internal,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0}")]
    ImageNotFound(String),
    #[error("image {image}: {source}")]
    Image {
        image: String,
        source: Box<StoreError>,
    },
    #[error("root disk of image {image}: {source}")]
    RootDisk {
        image: String,
        source: Box<RootDiskError>,
    },
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Launch(#[from] launch::LaunchError),
    #[error(transparent)]
    Share(#[from] share::ShareError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
}

impl RuntimeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Spec(e) => e.kind,
            Self::ImageNotFound(_) => ErrorKind::NotFound,
            Self::Image { source, .. } => match &**source {
                StoreError::ImageNotFound(_) => ErrorKind::NotFound,
                StoreError::Reference(_) | StoreError::AmbiguousId(_) => ErrorKind::Invalid,
                StoreError::NoSpace { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Self::RootDisk { source, .. } => match &**source {
                RootDiskError::NoSpace { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Self::Artifact(_) => ErrorKind::Unavailable,
            Self::Jail(jail::JailError::Exhausted { .. } | jail::JailError::NoJailer { .. }) => {
                ErrorKind::Unavailable
            }
            Self::Jail(_) => ErrorKind::Internal,
            Self::Share(share::ShareError::NoVirtiofsd { .. }) => ErrorKind::Unavailable,
            Self::Share(
                share::ShareError::Tag { .. }
                | share::ShareError::DuplicateTag(_)
                | share::ShareError::Source { .. },
            ) => ErrorKind::Invalid,
            Self::Share(_) => ErrorKind::Internal,
            Self::Launch(
                launch::LaunchError::Spec(_)
                | launch::LaunchError::TooManyNics { .. }
                | launch::LaunchError::DuplicateNicMac { .. }
                | launch::LaunchError::NoNic { .. }
                | launch::LaunchError::NicMtu { .. },
            ) => ErrorKind::Invalid,
            Self::Volume(VolumeError::Missing(_)) => ErrorKind::NotFound,
            Self::Checkpoint(checkpoint::CheckpointError::NotFound(_)) => ErrorKind::NotFound,
            Self::Checkpoint(
                checkpoint::CheckpointError::Name(_)
                | checkpoint::CheckpointError::Exists(_)
                | checkpoint::CheckpointError::Unusable { .. }
                | checkpoint::CheckpointError::OtherBinaries { .. }
                | checkpoint::CheckpointError::Vmm(_),
            ) => ErrorKind::Invalid,
            Self::Checkpoint(_) => ErrorKind::Internal,
            Self::Volume(e) if e.is_invalid() => ErrorKind::Invalid,
            Self::Volume(_) => ErrorKind::Internal,
            Self::Io { source, .. } | Self::Launch(launch::LaunchError::Write { source, .. })
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                ErrorKind::Unavailable
            }
            Self::Io { .. } | Self::Process(_) | Self::Launch(_) => ErrorKind::Internal,
        }
    }
}

/// How the run whose files are at `paths` ended; `end`: how its VMM
/// process ended, if it was reaped here.
fn exit_info_of(paths: &SandboxPaths, intent: Intent, end: Option<VmmEnd>) -> ExitInfo {
    // The VMM's uid owns the status file's directory: a status file that
    // is a link (or a FIFO...) is refused, and the run reported failed
    // with the reason, never read through.
    let status = match paths::read_vm_file(&paths.status) {
        Ok(f) => f.and_then(mvm_vmm_api::StatusReport::read_from),
        Err(e) => {
            tracing::warn!("{e}");
            Some(mvm_vmm_api::StatusReport::error(format!(
                "the VMM's status file was refused: {e}"
            )))
        }
    };
    let oom = exit::console_shows_oom(&paths.console);
    exit::with_end(exit::exit_info(status.as_ref(), intent, oom), end)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// Everything the runtime needs to know about the host installation.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// State root and run dir.
    pub layout: Layout,
    /// Kernel, init, VMM.
    pub artifacts: Artifacts,
    /// Defaults for create requests.
    pub defaults: Defaults,
    /// Workload log rotation.
    pub log_limits: LogLimits,
    /// Cap on the serial console log, in bytes (the VMM rotates it:
    /// `console.log.1` keeps the previous part).
    pub console_max: u64,
    /// Cap on the VMM's log, likewise.
    pub vmm_log_max: u64,
    /// `MVM_LOG` for VMMs (None: theirs, `info`).
    pub vmm_log_filter: Option<String>,
    /// How VMMs are jailed; `None` runs them unconfined, as root (mvmd
    /// --no-jail, for debugging only).
    pub jail: Option<JailConfig>,
    /// VMM threads install their seccomp filters (`VmConfig::seccomp`);
    /// `false` only with mvmd --no-seccomp, for debugging.
    pub seccomp: bool,
}

impl RuntimeConfig {
    /// A config from the environment (`MVM_ROOT`, `MVM_RUN_DIR`,
    /// `MVM_KERNEL`, `MVM_INIT`, `MVM_VMM`, `MVM_JAILER`) and the default
    /// locations; VMMs jailed with the default uid range.
    pub fn from_env(overrides: ArtifactOverrides) -> Result<Self, RuntimeError> {
        let artifacts = Artifacts::locate(&overrides)?;
        let jail = JailConfig::locate(&artifacts.vmm, None, UidRange::default())?;
        Ok(Self {
            layout: Layout::from_env(),
            artifacts,
            jail: Some(jail),
            defaults: Defaults::default(),
            log_limits: LogLimits::default(),
            console_max: 10 << 20,
            vmm_log_max: 10 << 20,
            vmm_log_filter: None,
            seccomp: true,
        })
    }
}

/// The result of [`Runtime::create`].
#[derive(Debug, Clone)]
pub struct Created {
    /// The resolved spec, to be stored by the caller.
    pub spec: SandboxSpec,
    /// Non-fatal remarks.
    pub warnings: Vec<String>,
}

/// A boot's network: NICs on host TAPs and the guest's configuration of
/// them. The default (no NIC, no section) leaves the guest with `lo` only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootNet {
    /// The virtio-net devices.
    pub nics: Vec<launch::Nic>,
    /// What guest init configures on them.
    pub network: Option<mvm_protocol::launch::Network>,
}

/// The result of [`Runtime::start`].
#[derive(Debug, Clone)]
pub struct Started {
    /// The VMM process.
    pub process: VmmProcess,
    /// Non-fatal remarks (e.g. a CPU quota that could not be applied).
    pub warnings: Vec<String>,
}

/// The sandbox runtime: host mechanics of create, start, stop, remove.
/// Cheap to share; every method is safe to call from several threads.
#[derive(Debug, Clone)]
pub struct Runtime {
    cfg: RuntimeConfig,
    store: Store,
    /// Hands out the VMMs' uids (jailed only).
    uids: Option<jail::UidAllocator>,
    /// SHA-256 of the kernel, init and VMM, by file identity
    /// ([`Self::identity`]).
    hashes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, (FileKey, String)>>>,
}

/// What identifies a file's contents cheaply: device, inode, size, mtime.
type FileKey = (u64, u64, u64, i64, i64);

impl Runtime {
    /// Open the runtime: the image store and the directories.
    ///
    /// The state root and everything the VMMs use are the owner's alone
    /// (0700: launch specs hold the workloads' environments, logs their
    /// output); the run dir may be traversed (0711) so a socket inside it
    /// can be shared with a group. Modes are set on every start, so an
    /// older, more open installation is closed too.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        for (d, mode) in [
            (cfg.layout.root.clone(), 0o700),
            (cfg.layout.sandboxes(), 0o700),
            (cfg.layout.transients(), 0o700),
            (cfg.layout.run_dir.clone(), 0o711),
            (cfg.layout.vsock_dir(), 0o700),
        ] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode))
                .map_err(io_err("setting the mode of", &d))?;
        }
        let store = Store::open(cfg.layout.images()).map_err(|source| RuntimeError::Image {
            image: "store".into(),
            source: Box::new(source),
        })?;
        let uids = cfg
            .jail
            .as_ref()
            .map(|j| jail::UidAllocator::new(cfg.layout.root.join("jail-uids"), j.uids));
        if cfg.jail.is_some() {
            // Jailed VMMs outlive their jailer: reparented here, they are
            // reaped with their wait status (a seccomp kill is told apart).
            if let Err(e) = process::become_subreaper() {
                tracing::warn!(
                    "cannot become the child subreaper ({e}): a VMM killed by its seccomp filter \
                     will be reported as a VMM that died without a status"
                );
            }
        }
        Ok(Self {
            cfg,
            store,
            uids,
            hashes: Default::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The image store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.cfg.layout
    }

    /// The directories of directory volumes.
    pub fn volumes(&self) -> VolumeDirs {
        VolumeDirs::new(self.cfg.layout.volumes())
    }

    /// The files of sandbox `id`.
    pub fn paths(&self, id: &str) -> SandboxPaths {
        self.cfg.layout.sandbox(id)
    }

    /// A connection to the guest agent of running sandbox `id`, through
    /// its VMM's vsock socket (never through a link planted in its place:
    /// [`paths::open_vmm_socket`]); retried until `timeout` (the guest may
    /// still be booting).
    pub async fn agent(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<mvm_protocol::agent::client::AgentClient, mvm_protocol::agent::client::ClientError>
    {
        mvm_protocol::agent::client::AgentClient::connect(self.paths(id).agent_socket(), timeout)
            .await
    }

    /// Resolve the request against its image and the host, and make the
    /// sandbox's disks. On failure nothing is left behind.
    pub fn create(
        &self,
        id: &str,
        name: &str,
        req: &SandboxRequest,
    ) -> Result<Created, RuntimeError> {
        let rec = self
            .store
            .resolve(&req.image)
            .map_err(|source| match source {
                StoreError::ImageNotFound(_) => RuntimeError::ImageNotFound(format!(
                "no such image: {} (import, load or pull it first; list images with mvctl images)",
                req.image
            )),
                source => RuntimeError::Image {
                    image: req.image.clone(),
                    source: Box::new(source),
                },
            })?;
        let image_config = rec.image_config();
        let host = HostResources::probe();
        let resolved = spec::resolve(req, &image_config, id, &self.cfg.defaults, &host)?;
        let paths = self.paths(id);
        // Volumes are made before the sandbox's directory: one that exists
        // already is kept as it is, so nothing here needs undoing.
        for name in resolved.mounts.iter().filter_map(MountSpec::volume_name) {
            self.volumes().create(name)?;
        }
        fs::create_dir(&paths.dir).map_err(io_err("creating", &paths.dir))?;
        let r = (|| {
            let disk = self
                .store
                .root_disk(&rec, &RootDiskOptions::default())
                .map_err(|source| RuntimeError::RootDisk {
                    image: req.image.clone(),
                    source: Box::new(source),
                })?;
            self.store
                .create_scratch_disk(&paths.scratch, resolved.resources.scratch_mib << 20)
                .map_err(|source| RuntimeError::RootDisk {
                    image: req.image.clone(),
                    source: Box::new(source),
                })?;
            fs::create_dir_all(&paths.logs).map_err(io_err("creating", &paths.logs))?;
            Ok(SandboxSpec {
                id: id.to_string(),
                name: name.to_string(),
                image: req.image.clone(),
                image_id: rec.id.to_string(),
                image_digest: rec.manifest_digest.to_string(),
                root_disk: disk.path,
                process: resolved.process.clone(),
                hostname: resolved.hostname.clone(),
                labels: resolved.labels.clone(),
                resources: resolved.resources,
                lifecycle: resolved.lifecycle.clone(),
                mounts: resolved.mounts.clone(),
                read_only_root: resolved.read_only_root,
            })
        })();
        match r {
            Ok(spec) => Ok(Created {
                spec,
                warnings: resolved.warnings,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }

    /// Start a VMM for `spec`: fresh launch files, the cgroup if a CPU
    /// quota is set, then the process.
    pub fn start(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.start_sized(spec, None)
    }

    /// [`Self::start`] with the terminal size of a `tty` sandbox (rows,
    /// columns), known from the client that will attach.
    pub fn start_sized(
        &self,
        spec: &SandboxSpec,
        size: Option<(u16, u16)>,
    ) -> Result<Started, RuntimeError> {
        self.start_with_shares(spec, size, &[])
    }

    /// [`Self::start_sized`] with host directories shared into the sandbox
    /// over virtio-fs: a sandboxed `virtiofsd` each ([`share`]), started
    /// before the VMM and recorded in the sandbox's directory. They end
    /// with the VMM; [`Self::after_exit`] stops any that are left.
    pub fn start_with_shares(
        &self,
        spec: &SandboxSpec,
        size: Option<(u16, u16)>,
        shares: &[HostShare],
    ) -> Result<Started, RuntimeError> {
        self.start_with(spec, size, shares, &BootNet::default())
    }

    /// [`Self::start_with_shares`] with NICs and the guest's network
    /// configuration ([`launch::add_network`]): the TAPs must exist (mvmd
    /// makes them with mvm-net before it starts the sandbox).
    pub fn start_with(
        &self,
        spec: &SandboxSpec,
        size: Option<(u16, u16)>,
        shares: &[HostShare],
        net: &BootNet,
    ) -> Result<Started, RuntimeError> {
        self.start_inner(spec, size, shares, net, None)
    }

    /// [`Self::start_with`] from checkpoint `name` instead of a boot
    /// ([`checkpoint`]): refused unless it was made with this runtime's
    /// kernel, init and VMM and its files are whole; the scratch disk is
    /// put back as it was when the checkpoint was made.
    pub fn restore_with(
        &self,
        spec: &SandboxSpec,
        shares: &[HostShare],
        net: &BootNet,
        name: &str,
    ) -> Result<Started, RuntimeError> {
        self.start_inner(spec, None, shares, net, Some(name))
    }

    fn start_inner(
        &self,
        spec: &SandboxSpec,
        size: Option<(u16, u16)>,
        shares: &[HostShare],
        net: &BootNet,
        checkpoint: Option<&str>,
    ) -> Result<Started, RuntimeError> {
        let paths = self.paths(&spec.id);
        let identity = self.identity()?;
        let restore = match checkpoint {
            Some(name) => {
                let dir = checkpoint::check(&paths, name, &identity, spec.resources.memory_mib)?;
                Some(dir)
            }
            None => None,
        };
        let mut warnings = Vec::new();
        match fs::remove_file(&paths.status) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &paths.status)(e)),
        }
        share::stop_recorded(&paths);
        self.vmm_dirs(&paths)?;
        if !spec.root_disk.exists() {
            return Err(RuntimeError::Io {
                op: "opening the root disk",
                path: spec.root_disk.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "the image's root disk is gone (image removed with force?); recreate the sandbox",
                ),
            });
        }
        let stdio = launch::Stdio {
            agent: self.cfg.defaults.agent,
            size,
        };
        let mut launch = launch::launch_spec(&spec.process, &spec.hostname, stdio);
        launch.rootfs.read_only = spec.read_only_root;
        launch.process.memory_max = spec.resources.workload_memory_max();
        launch.tmpfs = spec
            .mounts
            .iter()
            .filter_map(|m| match m {
                MountSpec::Tmpfs(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let mut all_shares = self.volumes().shares(&spec.mounts)?;
        all_shares.extend_from_slice(shares);
        let shares = &all_shares[..];
        let init = self.init_archive()?;
        let mut cfg = launch::vm_config(
            self.boot_files(&init),
            &paths,
            &spec.root_disk,
            &spec.resources,
        );
        self.bound_files(&mut cfg, &paths);
        cfg.control_socket = Some(checkpoint::control_socket(&paths));
        cfg.artifacts = Some(identity);
        launch::add_block_mounts(&mut launch, &mut cfg, &self.volumes().blocks(&spec.mounts));
        launch::add_network(&mut launch, &mut cfg, &net.nics, net.network.clone())?;
        if let Some(dir) = &restore {
            // The disk as the guest's page cache last saw it.
            checkpoint::copy_disk(&dir.join("scratch.ext4"), &paths.scratch)?;
            cfg.restore = Some(mvm_vmm_api::RestoreConfig {
                state: dir.join("state"),
                memory: dir.join("memory"),
            });
        }
        // Stopped again if anything below fails (dropped).
        let backends = self.start_shares(&paths, shares, &mut launch, &mut cfg)?;
        volume::mark_copy_up(&spec.mounts, &mut launch.mounts);
        launch::write(&launch, &cfg, &paths)?;
        if let Some(b) = &backends {
            b.record(&paths)?;
        }
        let process = match self.launch_vmm(&spec.id, &paths, &spec.resources, false, &mut warnings)
        {
            // Untied: the jailer exited once the VMM ran; no keeper.
            Ok(p) => p.vmm,
            Err(e) => {
                drop(backends);
                let _ = fs::remove_file(paths.dir.join(share::RECORD_FILE));
                return Err(e);
            }
        };
        // From here the record owns them: they end with the VMM.
        if let Some(b) = backends {
            b.detach();
        }
        Ok(Started { process, warnings })
    }

    /// Start the backends of `shares` (none: nothing, and no virtiofsd
    /// needed) and add them to the launch files.
    fn start_shares(
        &self,
        paths: &SandboxPaths,
        shares: &[HostShare],
        launch: &mut mvm_protocol::launch::LaunchSpec,
        cfg: &mut mvm_vmm_api::VmConfig,
    ) -> Result<Option<share::Backends>, RuntimeError> {
        if shares.is_empty() {
            return Ok(None);
        }
        let bin = share::locate_virtiofsd(None)?;
        let (backends, boot) = share::Backends::start(&bin, paths, shares)?;
        launch::add_shares(launch, cfg, &boot);
        Ok(Some(backends))
    }

    /// The identity of the kernel, init and VMM this runtime starts (the
    /// SHA-256 of each), recorded in every VMM's configuration and so in
    /// its snapshots. Each file is hashed once per version of it (device,
    /// inode, size, mtime).
    pub fn identity(&self) -> Result<mvm_vmm_api::Artifacts, RuntimeError> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::MetadataExt;
        let hash = |p: &Path| -> Result<String, RuntimeError> {
            let m = fs::metadata(p).map_err(io_err("reading", p))?;
            let key = (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec());
            let mut cache = self
                .hashes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((k, h)) = cache.get(p) {
                if *k == key {
                    return Ok(h.clone());
                }
            }
            let mut f = fs::File::open(p).map_err(io_err("opening", p))?;
            let mut h = Sha256::new();
            io::copy(&mut f, &mut h).map_err(io_err("reading", p))?;
            let h = hex::encode(h.finalize());
            cache.insert(p.to_path_buf(), (key, h.clone()));
            Ok(h)
        };
        let a = &self.cfg.artifacts;
        Ok(mvm_vmm_api::Artifacts {
            kernel: hash(&a.kernel)?,
            init: hash(&a.init)?,
            vmm: hash(&a.vmm)?,
        })
    }

    /// Checkpoint running sandbox `spec` as `name` (`checkpoint`): the
    /// guest pauses while its memory and scratch disk are saved, then runs
    /// on if `leave_running`, else its VMM ends (the sandbox exits).
    pub fn checkpoint_create(
        &self,
        spec: &SandboxSpec,
        name: &str,
        leave_running: bool,
    ) -> Result<checkpoint::CheckpointInfo, RuntimeError> {
        let paths = self.paths(&spec.id);
        let artifacts = self.identity()?;
        let vmm_gid = match &self.uids {
            Some(u) => Some(u.uid_for(&paths.dir)?),
            None => None,
        };
        Ok(checkpoint::create(
            &paths,
            &checkpoint::CreateSpec {
                name,
                leave_running,
                artifacts: &artifacts,
                memory_mib: spec.resources.memory_mib,
                vmm_gid,
            },
        )?)
    }

    /// The checkpoints of sandbox `id`, oldest first.
    pub fn checkpoint_list(
        &self,
        id: &str,
    ) -> Result<Vec<checkpoint::CheckpointInfo>, RuntimeError> {
        Ok(checkpoint::list(&self.paths(id))?)
    }

    /// Remove checkpoint `name` of sandbox `id`.
    pub fn checkpoint_remove(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        Ok(checkpoint::remove(&self.paths(id), name)?)
    }

    /// How the last run of sandbox `id` ended; `end` is what
    /// [`process::PidFd::wait`] returned, if it was called.
    pub fn exit_info(&self, id: &str, intent: Intent, end: Option<VmmEnd>) -> ExitInfo {
        exit_info_of(&self.paths(id), intent, end)
    }

    /// The shared init archive for the configured init binary.
    pub fn init_archive(&self) -> Result<PathBuf, RuntimeError> {
        Ok(self
            .cfg
            .artifacts
            .init_archive(&self.cfg.layout.init_cache())?)
    }

    /// The kernel and `init_archive` as a boot uses them.
    pub fn boot_files<'a>(&'a self, init_archive: &'a Path) -> launch::BootFiles<'a> {
        launch::BootFiles {
            kernel: &self.cfg.artifacts.kernel,
            init_archive,
        }
    }

    /// Clean up after a VMM ended: its cgroup, sockets and share backends.
    pub fn after_exit(&self, id: &str) {
        cgroup::Cgroup::remove(id);
        let paths = self.paths(id);
        let _ = fs::remove_dir_all(&paths.sockets);
        share::stop_recorded(&paths);
    }

    /// Delete everything of sandbox `id` (its VMM must be gone), giving
    /// back its uid.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.after_exit(id);
        let paths = self.paths(id);
        if let Some(u) = &self.uids {
            u.release(&paths.dir);
        }
        match fs::remove_dir_all(&paths.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &paths.dir)(e)),
        }
    }

    /// Ids of the sandbox directories on disk (to find orphans).
    pub fn sandbox_dirs(&self) -> Vec<String> {
        fs::read_dir(self.cfg.layout.sandboxes())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The VMM writes its log to the sandbox's `vmm.log` and rotates it
    /// and the console at their caps while it runs, so a guest printing
    /// (or provoking warnings) without pause cannot fill the disk; its
    /// threads install their seccomp filters unless mvmd --no-seccomp.
    pub(crate) fn bound_files(&self, cfg: &mut mvm_vmm_api::VmConfig, paths: &SandboxPaths) {
        cfg.console_max_bytes = Some(self.cfg.console_max);
        cfg.log_file = Some(paths.vmm_log.clone());
        cfg.log_max_bytes = Some(self.cfg.vmm_log_max);
        cfg.seccomp = self.cfg.seccomp;
    }

    /// Fresh directories for what the VMM writes (console, log, status)
    /// and for its sockets, before any backend or VMM starts; the jailer
    /// gives them to the VMM's uid.
    pub(crate) fn vmm_dirs(&self, paths: &SandboxPaths) -> Result<(), RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = fs::remove_dir_all(&paths.sockets);
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in [&paths.vm_dir, &paths.sockets] {
            b.create(d).map_err(io_err("creating", d))?;
        }
        Ok(())
    }

    /// The cgroup and the process of a VMM whose launch files are written:
    /// jailed, with memory and task limits besides any CPU quota, unless
    /// the runtime runs with no jail. A limit the host cannot enforce is a
    /// warning.
    pub(crate) fn launch_vmm(
        &self,
        id: &str,
        paths: &SandboxPaths,
        res: &Resources,
        die_with_parent: bool,
        warnings: &mut Vec<String>,
    ) -> Result<process::Spawned, RuntimeError> {
        let mut warn = |e: cgroup::CgroupError| {
            tracing::warn!(sandbox = %id, "{e}");
            warnings.push(e.to_string());
        };
        let cpu_only = |warn: &mut dyn FnMut(cgroup::CgroupError)| match res.cpu_quota {
            Some(c) => match cgroup::Cgroup::create(id, c) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    warn(e);
                    None
                }
            },
            None => None,
        };
        let cg = if self.cfg.jail.is_some() {
            match cgroup::Cgroup::create_limited(id, &cgroup::Limits::for_vmm(res)) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    warn(e);
                    cpu_only(&mut warn)
                }
            }
        } else {
            cpu_only(&mut warn)
        };
        let procs = cg.as_ref().map(|c| c.procs());
        let r = self.spawn(paths, procs.as_deref(), die_with_parent);
        if r.is_err() {
            cgroup::Cgroup::remove(id);
        }
        r
    }

    /// Spawn the VMM of a boot whose launch files are written, through the
    /// jailer unless the runtime runs with no jail.
    fn spawn(
        &self,
        paths: &SandboxPaths,
        cgroup_procs: Option<&Path>,
        die_with_parent: bool,
    ) -> Result<process::Spawned, RuntimeError> {
        let jailed = match (&self.cfg.jail, &self.uids) {
            (Some(j), Some(uids)) => {
                let uid = uids.uid_for(&paths.dir)?;
                let spec = mvm_jailer::JailSpec {
                    vmm: self.cfg.artifacts.vmm.clone(),
                    config: paths.vm_config.clone(),
                    root: paths.jail.clone(),
                    uid,
                    gid: uid,
                    ro: j.libraries.clone(),
                    die_with_parent,
                };
                Some((j.jailer.as_path(), spec.to_args()))
            }
            _ => None,
        };
        Ok(process::spawn(&process::SpawnSpec {
            vmm: &self.cfg.artifacts.vmm,
            config: &paths.vm_config,
            log: &paths.vmm_log,
            cgroup_procs,
            log_filter: self.cfg.vmm_log_filter.as_deref(),
            die_with_parent,
            jailer: jailed
                .as_ref()
                .map(|(j, args)| process::Jailer { path: j, args }),
        })?)
    }

    /// The uid allocator, for transients' cleanup.
    pub(crate) fn uids(&self) -> Option<&jail::UidAllocator> {
        self.uids.as_ref()
    }
}
