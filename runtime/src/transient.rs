//! Transient sandboxes: one-shot microVMs no caller stores (no name, no
//! restarts, no logs), such as the Dockerfile builder's RUN steps.
//!
//! They boot exactly as sandboxes do: the same artifacts ([`Runtime`]'s
//! kernel, init and VMM, so `mvmd --kernel/--init/--vmm` and an installed
//! prefix reach builds too), the same init archive, launch files
//! ([`crate::launch`]), spawning and exit mapping ([`crate::exit`]). The
//! workload's output always goes through the guest agent, which the
//! caller attaches to. With [`TransientSpec::export_changes`] the guest
//! stays up after the workload so the caller can read the root
//! filesystem's changes as an OCI layer tar (the agent's `changes` op):
//! the host never mounts or parses a filesystem the guest wrote.
//!
//! A [`Transient`] owns its VMM and files: dropping it kills a VMM that
//! still runs and removes everything.
//!
//! [`Runtime::start_warm_transient`] boots one warm (docs/snapshots.md,
//! "Warm starts", step 1): the guest gets only a warm spec, and the
//! caller hands it the real one with [`Transient::warm_launch`] once it
//! is ready ([`Transient::wait_warm_ready`]). An opt-in building block;
//! no caller's default path uses it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_protocol::agent::client::{AgentClient, ClientError};
use mvm_protocol::launch::LaunchSpec;

use crate::exit::{ExitInfo, Intent};
use crate::launch::{self, Stdio};
use crate::paths::SandboxPaths;
use crate::process::VmmProcess;
use crate::share::{Backends, HostShare};
use crate::spec::{ProcessSpec, Resources};
use crate::warm::WarmError;
use crate::{cgroup, exit_info_of, io_err, names, BootNet, Runtime, RuntimeError};

/// The root filesystem of a transient sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The read-only ext4 image disk (`mvm_images::Store::root_disk`) under
    /// an overlay whose upper layer is a fresh scratch disk.
    Disk(PathBuf),
    /// A host directory that is the root itself, shared read-write over
    /// virtio-fs (`launch::Rootfs::share`): the containerd shim's root, a
    /// snapshotter's prepared directory. No scratch disk is made.
    Directory(PathBuf),
}

/// The virtio-fs tag of a [`Root::Directory`].
pub const ROOT_SHARE_TAG: &str = "mvm-root";

/// What a transient sandbox runs, on which root.
#[derive(Debug, Clone, PartialEq)]
pub struct TransientSpec {
    /// The root filesystem.
    pub root: Root,
    /// The workload (its `tty` and `open_stdin` are honoured).
    pub process: ProcessSpec,
    /// The guest's hostname.
    pub hostname: String,
    /// vCPUs, memory, quota and the scratch disk's size.
    pub resources: Resources,
    /// Keep the guest up after the workload so its changes can be read
    /// (a [`Root::Disk`] only).
    pub export_changes: bool,
    /// The VMM and share backends die with the calling thread
    /// ([`crate::process::SpawnSpec::die_with_parent`]).
    pub die_with_parent: bool,
    /// NICs on TAPs the caller made, and the guest's configuration of
    /// them ([`launch::add_network`]); the default is `lo` only. The
    /// caller owns the TAPs and removes them after the transient ended
    /// (a build's RUN step gets an endpoint of mvmd's networks).
    pub net: BootNet,
    /// Single files bound over targets in the guest (OCI binds of files;
    /// [`mvm_protocol::launch::FileMount`]).
    pub files: Vec<mvm_protocol::launch::FileMount>,
}

/// A running (or ended) transient sandbox.
#[derive(Debug)]
pub struct Transient {
    id: String,
    paths: SandboxPaths,
    vmm: VmmProcess,
    /// The jailer that stays as the VMM's parent (tied transients,
    /// jailed): it ends as the VMM did, and is reaped by [`Self::wait`].
    keeper: Option<VmmProcess>,
    started: Instant,
    /// Stopped when the transient is dropped, after its VMM (fields drop
    /// after `Drop::drop`).
    backends: Option<Backends>,
    /// Where its VMM's uid goes back.
    uids: Option<crate::jail::UidAllocator>,
    /// How its VMM ended, once [`Self::wait`] reaped it.
    end: std::sync::Mutex<Option<crate::process::VmmEnd>>,
    /// Booted warm: the spec still to hand over (taken by the launch).
    warm: std::sync::Mutex<Option<LaunchSpec>>,
}

impl Runtime {
    /// Boot a transient sandbox: a private directory, a fresh scratch
    /// disk, the launch files and the VMM. On failure nothing is left.
    pub fn start_transient(&self, spec: &TransientSpec) -> Result<Transient, RuntimeError> {
        self.start_transient_with_shares(spec, &[])
    }

    /// [`Self::start_transient`] with host directories shared into the
    /// guest over virtio-fs ([`crate::share`]); their backends are stopped
    /// with the transient.
    pub fn start_transient_with_shares(
        &self,
        spec: &TransientSpec,
        shares: &[HostShare],
    ) -> Result<Transient, RuntimeError> {
        self.boot_transient(spec, shares, false)
    }

    /// [`Self::start_transient`], booted warm: the guest's init gets a
    /// warm spec, reports `WarmReady` and waits; the sandbox's own spec
    /// (checked now) is kept for [`Transient::warm_launch`]. The VMM has
    /// its control socket, through which [`Transient::wait_warm_ready`]
    /// waits for that event.
    pub fn start_warm_transient(&self, spec: &TransientSpec) -> Result<Transient, RuntimeError> {
        self.boot_transient(spec, &[], true)
    }

    fn boot_transient(
        &self,
        spec: &TransientSpec,
        shares: &[HostShare],
        warm: bool,
    ) -> Result<Transient, RuntimeError> {
        let id = names::new_id();
        let paths = self.cfg.layout.transient(&id);
        fs::create_dir_all(self.cfg.layout.transients())
            .map_err(io_err("creating", &self.cfg.layout.transients()))?;
        fs::create_dir(&paths.dir).map_err(io_err("creating", &paths.dir))?;
        let started = Instant::now();
        let r = (|| {
            if let Root::Disk(_) = &spec.root {
                self.store
                    .create_scratch_disk(&paths.scratch, spec.resources.scratch_mib << 20)
                    .map_err(|source| RuntimeError::RootDisk {
                        image: "(transient scratch disk)".into(),
                        source: Box::new(source),
                    })?;
            }
            let stdio = Stdio {
                agent: true,
                size: None,
            };
            let mut l = launch::launch_spec(&spec.process, &spec.hostname, stdio);
            l.rootfs.export_changes = spec.export_changes;
            l.process.memory_max = spec.resources.workload_memory_max();
            l.files = spec.files.clone();
            let init = self.init_archive()?;
            let disk = match &spec.root {
                Root::Disk(d) => d.as_path(),
                Root::Directory(_) => Path::new(""),
            };
            let mut cfg = launch::vm_config(self.boot_files(&init), &paths, disk, &spec.resources);
            self.bound_files(&mut cfg, &paths);
            launch::add_network(&mut l, &mut cfg, &spec.net.nics, spec.net.network.clone())?;
            self.vmm_dirs(&paths)?;
            let mut all = Vec::with_capacity(shares.len() + 1);
            if let Root::Directory(dir) = &spec.root {
                all.push(HostShare {
                    tag: ROOT_SHARE_TAG.into(),
                    source: dir.clone(),
                    // Not mounted by init's share list: see below.
                    target: "/".into(),
                    read_only: false,
                });
            }
            all.extend_from_slice(shares);
            let backends = if all.is_empty() {
                None
            } else {
                let bin = crate::share::locate_virtiofsd(None)?;
                let (backends, mut boot) =
                    Backends::start_tied(&bin, &paths, &all, spec.die_with_parent)?;
                if let Root::Directory(_) = &spec.root {
                    let root = boot.remove(0);
                    launch::set_root_share(&mut l, &mut cfg, &root);
                }
                launch::add_shares(&mut l, &mut cfg, &boot);
                Some(backends)
            };
            let kept = if warm {
                // Checked now, so a spec init would refuse fails the start.
                l.validate().map_err(launch::LaunchError::from)?;
                cfg.control_socket = Some(crate::checkpoint::control_socket(&paths));
                launch::write(&LaunchSpec::warm(), &cfg, &paths)?;
                Some(l)
            } else {
                launch::write(&l, &cfg, &paths)?;
                None
            };
            let mut warnings = Vec::new();
            let spawned = self.launch_vmm(
                &id,
                &paths,
                &spec.resources,
                spec.die_with_parent,
                &mut warnings,
            )?;
            Ok((spawned, backends, kept))
        })();
        match r {
            Ok((spawned, backends, kept)) => Ok(Transient {
                id,
                paths,
                vmm: spawned.vmm,
                keeper: spawned.keeper,
                started,
                backends,
                uids: self.uids().cloned(),
                end: std::sync::Mutex::new(None),
                warm: std::sync::Mutex::new(kept),
            }),
            Err(e) => {
                cgroup::Cgroup::remove(&id);
                let _ = fs::remove_dir_all(&paths.sockets);
                if let Some(u) = self.uids() {
                    u.release(&paths.dir);
                }
                let _ = fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }
}

impl Transient {
    /// Its id (also its cgroup's and vsock socket's name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its files (console, VMM log, status file...).
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }

    /// The VMM's pid.
    pub fn pid(&self) -> i32 {
        self.vmm.pid
    }

    /// Time since the VMM was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the VMM still runs.
    pub fn is_running(&self) -> bool {
        self.vmm.is_alive()
    }

    /// A connection to the guest agent, retried while the guest boots,
    /// for at most `timeout`. If the VMM ends first (the workload could not
    /// be started, the guest crashed), the answer is at once an error; the
    /// caller then reads [`Self::exit_info`].
    pub async fn agent(&self, timeout: Duration) -> Result<AgentClient, ClientError> {
        tokio::select! {
            c = AgentClient::connect(self.paths.agent_socket(), timeout) => c,
            () = self.wait() => Err(ClientError::Closed("the microVM ended before its agent answered")),
        }
    }

    /// A warm transient: wait, for at most `timeout`, until its guest
    /// reports `WarmReady` (the VMM's control socket answers at that
    /// event). A VMM that ends first is an error at once.
    pub async fn wait_warm_ready(&self, timeout: Duration) -> Result<(), WarmError> {
        if self
            .warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(WarmError::NotWarm);
        }
        let socket = crate::checkpoint::control_socket(&self.paths);
        let waiting =
            tokio::task::spawn_blocking(move || crate::warm::wait_ready(&socket, timeout));
        tokio::select! {
            r = waiting => r.unwrap_or(Err(WarmError::EndedBeforeReady)),
            () = self.wait() => Err(WarmError::EndedBeforeReady),
        }
    }

    /// A warm transient whose guest is ready: hand it its spec (with the
    /// host's clock and fresh entropy, [`crate::warm::handover_spec`])
    /// through the agent; it then runs as after a cold boot (attach with
    /// [`Self::agent`], wait with [`Self::wait`]). Only once: the spec is
    /// gone after an accepted launch.
    pub async fn warm_launch(&self, timeout: Duration) -> Result<(), WarmError> {
        let spec = self
            .warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(WarmError::NotWarm)?;
        let spec = crate::warm::handover_spec(&spec)?;
        let mut client = self.agent(timeout).await?;
        crate::warm::launch(&mut client, &spec).await?;
        *self.warm.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Wait until the VMM has ended, and learn how it did: by reaping it
    /// (our child) or its jailer that stays as its parent and ends as it
    /// did ([`crate::process::Spawned::keeper`]). Cancellation-safe: a
    /// later call finishes what a dropped one started.
    pub async fn wait(&self) {
        let mut end = wait_process(&self.vmm, &self.id).await;
        if let Some(keeper) = &self.keeper {
            // The jailer ends right after reaping the VMM.
            let kept = wait_process(keeper, &self.id).await;
            // The VMM's own end when it was ours to reap (its jailer
            // died first and it was reparented here).
            end = end.or(kept);
        }
        if end.is_some() {
            *self.end.lock().unwrap_or_else(|p| p.into_inner()) = end;
        }
    }

    /// How the VMM process ended, once [`Self::wait`] learnt it.
    pub fn end(&self) -> Option<crate::process::VmmEnd> {
        *self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kill the VMM (the guest dies with it).
    pub fn kill(&self) {
        let _ = self.vmm.signal(libc::SIGKILL);
    }

    /// How the run ended (once [`Self::wait`] returned), with `intent`
    /// saying what the caller asked for.
    pub fn exit_info(&self, intent: Intent) -> ExitInfo {
        exit_info_of(&self.paths, intent, self.end())
    }

    /// The last `max` bytes of the VMM's log, for error messages.
    pub fn vmm_log_tail(&self, max: u64) -> String {
        tail(&self.paths.vmm_log, max)
    }
}

/// Wait until `p` has ended; reap it if it is our child. How it ended,
/// if it was reaped here.
async fn wait_process(p: &VmmProcess, id: &str) -> Option<crate::process::VmmEnd> {
    match p.pidfd() {
        Ok(Some(fd)) => match fd.wait().await {
            Ok(end) => return end,
            Err(e) => tracing::debug!(transient = %id, "{e}; polling instead"),
        },
        // Gone and reaped already (a pid no longer ours is never reaped).
        Ok(None) => return None,
        Err(e) => tracing::debug!(transient = %id, "{e}; polling instead"),
    }
    while p.is_alive() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::process::reap(p.pid)
}

pub(crate) fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match crate::paths::read_vm_file(path) {
        Ok(Some(f)) => f,
        Ok(None) => return String::new(),
        Err(e) => return format!("({e})"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

impl Drop for Transient {
    fn drop(&mut self) {
        // A VMM that still runs is killed; it is a single process, gone
        // within moments of SIGKILL (then reaped, being our child).
        if let Ok(Some(fd)) = self.vmm.pidfd() {
            let _ = fd.signal(libc::SIGKILL);
            if !matches!(fd.wait_blocking(Duration::from_secs(5)), Ok(true)) {
                tracing::warn!(transient = %self.id, pid = self.vmm.pid, "the VMM did not end after SIGKILL");
            }
        }
        crate::process::reap(self.vmm.pid);
        if let Some(k) = &self.keeper {
            // It ends right after the VMM it reaps.
            if let Ok(Some(fd)) = k.pidfd() {
                let _ = fd.wait_blocking(Duration::from_secs(5));
            }
            crate::process::reap(k.pid);
        }
        if let Some(b) = &mut self.backends {
            b.stop();
        }
        cgroup::Cgroup::remove(&self.id);
        let _ = fs::remove_dir_all(&self.paths.sockets);
        if let Some(u) = &self.uids {
            u.release(&self.paths.dir);
        }
        if let Err(e) = fs::remove_dir_all(&self.paths.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(transient = %self.id, "removing {}: {e}", self.paths.dir.display());
            }
        }
    }
}
