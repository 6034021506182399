//! Host directories shared into a sandbox over virtio-fs, each served by
//! its own `virtiofsd` process, started before the VMM and gone with it.
//!
//! # The backend and its sandbox
//!
//! `virtiofsd` is the virtio-fs project's Rust daemon (installed by
//! `resources/virtiofsd/build.sh`, next to `mvm-vmm` by `make install`).
//! It runs with:
//!
//! - `--sandbox namespace`: its own mount, PID and network namespaces,
//!   its root pivoted to the shared directory, so nothing else of the host
//!   is reachable from it, whatever a guest asks;
//! - `--seccomp kill`: its own syscall allow-list;
//! - `--modcaps`: only the capabilities the share needs
//!   ([`RW_MODCAPS`], [`RO_MODCAPS`]). Of virtiofsd's default set, a
//!   writable share loses `mknod` (a device node in a host directory
//!   would be a door to host devices) and `setfcap` (xattrs are off, so
//!   it is never needed, and a guest must never give a host file
//!   capabilities); a read-only share keeps `dac_override` alone (to
//!   read whatever the guest may read, whoever owns it on the host):
//!   ownership, mode and credential changes are all write-side;
//! - `--inode-file-handles=never`: inodes are kept as `O_PATH`
//!   descriptors, not file handles, so the backend does not hold
//!   `dac_read_search` (virtiofsd 1.14's default, `prefer`, adds it):
//!   with it, `open_by_handle_at` opens any inode of the shared
//!   directory's filesystem, outside the directory too (the "shocker"
//!   escape), should a guest ever take the backend over;
//! - `--readonly` for a read-only share: the backend refuses writes, not
//!   just the guest's mount flag;
//! - `--cache` [`CACHE_MODE`], chosen by measurement (`docs/benchmarks.md`).
//!
//! # Lifetime
//!
//! The runtime binds the listening socket itself and hands it over
//! (`--fd`), so the socket exists before the VMM starts (the VMM connects
//! while it builds the device) without waiting for the daemon. A
//! `virtiofsd` serves one connection and exits when it closes, so it ends
//! with its VMM whichever way the VMM ends (SIGKILL included). What is
//! left to clean is a backend whose VMM never connected: [`Backends`]
//! kills its processes when dropped (transient sandboxes), and
//! [`Backends::record`] / [`stop_recorded`] let a daemon that keeps
//! sandboxes across its own restarts kill them from the sandbox's
//! directory once the VMM has ended ([`crate::Runtime::after_exit`]).
//! Each backend runs in its own session (as the VMM does), so a signal
//! to the daemon's process group never reaches it; the namespace sandbox
//! forks once, and its child dies with its parent (`PR_SET_PDEATHSIG`),
//! so stopping the process the runtime started stops the backend.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::launch::Share;
use crate::paths::SandboxPaths;
use crate::process::VmmProcess;

/// Environment variable naming the `virtiofsd` binary.
pub const VIRTIOFSD_ENV: &str = "MVM_VIRTIOFSD";
/// virtiofsd's cache policy for every share. `auto` (close-to-open
/// consistency, a one-second attribute and entry timeout) measured best
/// overall; see `docs/benchmarks.md` for the figures of all three.
pub const CACHE_MODE: &str = "auto";
/// Name of the record of a sandbox's backends, in its directory.
pub const RECORD_FILE: &str = "virtiofsd.json";
/// How long a backend gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A host directory to share into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostShare {
    /// The virtio-fs tag (`mvm_protocol::launch::is_valid_fs_tag`),
    /// unique per sandbox.
    pub tag: String,
    /// The host directory (absolute).
    pub source: PathBuf,
    /// Where the guest sees it (absolute, no `..`).
    pub target: String,
    /// Neither the guest nor the backend may write.
    pub read_only: bool,
}

/// Why a share's backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("no virtiofsd found (looked at {looked}); run `make deps` (resources/virtiofsd/build.sh) or `make install`, or set {VIRTIOFSD_ENV}")]
    NoVirtiofsd { looked: String },
    #[error("share {tag:?}: tag is invalid: it must be 1 to 36 bytes of letters, digits, '-', '_' or '.'")]
    Tag { tag: String },
    #[error("share tag {0:?} is used twice; each share needs its own tag")]
    DuplicateTag(String),
    #[error("share {tag:?}: the source {} must be an absolute path to a directory", path.display())]
    Source { tag: String, path: PathBuf },
    #[error("share {tag:?}: cannot create the socket {}: {source}", path.display())]
    Socket {
        tag: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("share {tag:?}: cannot open the backend's log {}: {source}", path.display())]
    Log {
        tag: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("share {tag:?}: cannot start {}: {source}", bin.display())]
    Spawn {
        tag: String,
        bin: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Record { path: PathBuf, source: io::Error },
}

/// Find `virtiofsd`: `explicit`, then `MVM_VIRTIOFSD`, then
/// `$PREFIX/lib/mvm/virtiofsd` (the prefix being the parent of the
/// directory holding this program), `/usr/local/lib/mvm/virtiofsd`, then
/// the build cache of `resources/virtiofsd/build.sh`, newest first.
pub fn locate_virtiofsd(explicit: Option<&Path>) -> Result<PathBuf, ShareError> {
    let from_env = std::env::var_os(VIRTIOFSD_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(p) = explicit.map(Path::to_path_buf).or(from_env) {
        // An explicit choice is never silently replaced by a default.
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ShareError::NoVirtiofsd {
                looked: p.display().to_string(),
            })
        };
    }
    let mut candidates = Vec::new();
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(prefix.join("lib/mvm/virtiofsd"));
    }
    candidates.push(PathBuf::from("/usr/local/lib/mvm/virtiofsd"));
    let cache = std::env::var_os("MVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mvm"));
    if let Ok(rd) = fs::read_dir(cache.join("virtiofsd")) {
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .map(|e| e.path().join("bin/virtiofsd"))
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        candidates.extend(found.into_iter().map(|f| f.1));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ShareError::NoVirtiofsd {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// One running backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// The share's tag.
    pub tag: String,
    /// Its `virtiofsd` (the session leader of the backend's processes).
    pub process: VmmProcess,
    /// The vhost-user socket the VMM connects to.
    pub socket: PathBuf,
}

/// The backends of one boot. Dropping it stops them (a VMM that is still
/// connected loses its shares: drop it after the VMM has ended).
#[derive(Debug, Default)]
pub struct Backends {
    records: Vec<BackendRecord>,
}

/// The socket of share number `index` of sandbox `paths`: in the run dir
/// next to the vsock sockets (short: Unix socket paths are limited).
pub fn socket_path(paths: &SandboxPaths, index: usize) -> PathBuf {
    paths.sockets.join(format!("fs{index}.sock"))
}

/// The log of share number `index`, in the sandbox's directory.
pub fn log_path(paths: &SandboxPaths, index: usize) -> PathBuf {
    paths.dir.join(format!("virtiofsd-{index}.log"))
}

impl Backends {
    /// Start one `virtiofsd` (binary `bin`) per share of `shares` for the
    /// boot whose files are `paths`; returns them and what the launch files
    /// need ([`crate::launch::add_shares`]). On failure nothing is left.
    pub fn start(
        bin: &Path,
        paths: &SandboxPaths,
        shares: &[HostShare],
    ) -> Result<(Self, Vec<Share>), ShareError> {
        Self::start_tied(bin, paths, shares, false)
    }

    /// [`Self::start`], the backends killed by the kernel when the calling
    /// thread ends if `die_with_parent` (see
    /// [`crate::process::SpawnSpec::die_with_parent`]): a backend whose
    /// VMM never connected would otherwise wait forever.
    pub fn start_tied(
        bin: &Path,
        paths: &SandboxPaths,
        shares: &[HostShare],
        die_with_parent: bool,
    ) -> Result<(Self, Vec<Share>), ShareError> {
        validate(shares)?;
        let mut backends = Self::default();
        let mut launch = Vec::new();
        for (index, share) in shares.iter().enumerate() {
            let socket = socket_path(paths, index);
            let process = spawn(
                bin,
                share,
                &socket,
                &log_path(paths, index),
                die_with_parent,
            )?;
            backends.records.push(BackendRecord {
                tag: share.tag.clone(),
                process,
                socket: socket.clone(),
            });
            launch.push(Share {
                tag: share.tag.clone(),
                socket,
                target: share.target.clone(),
                read_only: share.read_only,
            });
        }
        Ok((backends, launch))
    }

    /// The running backends.
    pub fn records(&self) -> &[BackendRecord] {
        &self.records
    }

    /// Write the records to the sandbox's directory, for [`stop_recorded`]
    /// (by a later process) once the VMM has ended.
    pub fn record(&self, paths: &SandboxPaths) -> Result<(), ShareError> {
        let path = paths.dir.join(RECORD_FILE);
        let json = serde_json::to_vec(&self.records).unwrap_or_default();
        mvm_vmm_api::write_atomic(&path, &json)
            .map_err(|source| ShareError::Record { path, source })
    }

    /// Hand the backends over to the record: dropping `self` no longer
    /// stops them ([`stop_recorded`] does).
    pub fn detach(mut self) {
        self.records.clear();
    }

    /// Stop every backend and remove its socket.
    pub fn stop(&mut self) {
        stop_all(&std::mem::take(&mut self.records));
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stop the backends recorded in the sandbox's directory (if any are
/// left) and remove their sockets and the record.
pub fn stop_recorded(paths: &SandboxPaths) {
    let path = paths.dir.join(RECORD_FILE);
    let Ok(bytes) = fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<Vec<BackendRecord>>(&bytes) {
        Ok(records) => stop_all(&records),
        Err(e) => tracing::warn!("{}: {e}; not stopping its backends", path.display()),
    }
    let _ = fs::remove_file(&path);
}

fn stop_all(records: &[BackendRecord]) {
    for r in records {
        stop(&r.process);
    }
    for r in records {
        let _ = fs::remove_file(&r.socket);
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`], through a pidfd checked
/// against the recorded start time (a reused pid is never signalled).
/// Only the leader is signalled: the sandbox's child gets its parent's
/// death signal.
///
/// That child (`--sandbox namespace` forks one) is reparented to this
/// process if its parent ends first, since the runtime is the child
/// subreaper of its jailed VMMs ([`crate::process::become_subreaper`]):
/// it is looked up before the stop and reaped after, or it would stay a
/// zombie of mvmd.
fn stop(p: &VmmProcess) {
    let Ok(Some(fd)) = p.pidfd() else {
        crate::process::reap(p.pid);
        return;
    };
    let children = children_of(p.pid);
    let _ = fd.signal(libc::SIGTERM);
    let t0 = Instant::now();
    while p.is_alive() && t0.elapsed() < STOP_GRACE {
        crate::process::reap(p.pid);
        std::thread::sleep(Duration::from_millis(10));
    }
    if p.is_alive() {
        let _ = fd.signal(libc::SIGKILL);
        let _ = fd.wait_blocking(STOP_GRACE);
    }
    crate::process::reap(p.pid);
    for child in children {
        // Its parent's death signal ends it; wait on that, then reap it
        // if it became ours (harmless if its parent reaped it).
        if let Ok(Some(cfd)) = child.pidfd() {
            if !matches!(cfd.wait_blocking(STOP_GRACE), Ok(true)) {
                let _ = child.signal(libc::SIGKILL);
                if let Ok(Some(cfd)) = child.pidfd() {
                    let _ = cfd.wait_blocking(STOP_GRACE);
                }
            }
        }
        crate::process::reap(child.pid);
    }
}

/// The children of `pid` (`/proc/PID/task/PID/children`), with their
/// start times; none if the kernel does not list them.
fn children_of(pid: i32) -> Vec<VmmProcess> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .filter_map(|c| {
            crate::process::start_time(c).map(|start_time| VmmProcess { pid: c, start_time })
        })
        .collect()
}

fn validate(shares: &[HostShare]) -> Result<(), ShareError> {
    let mut tags = std::collections::HashSet::new();
    for s in shares {
        if !mvm_protocol::launch::is_valid_fs_tag(&s.tag) {
            return Err(ShareError::Tag { tag: s.tag.clone() });
        }
        if !tags.insert(s.tag.as_str()) {
            return Err(ShareError::DuplicateTag(s.tag.clone()));
        }
        if !s.source.is_absolute() || !s.source.is_dir() {
            return Err(ShareError::Source {
                tag: s.tag.clone(),
                path: s.source.clone(),
            });
        }
    }
    Ok(())
}

/// The fd number the listening socket has in the backend.
const LISTEN_FD: i32 = 3;

/// virtiofsd's `--modcaps` for a writable share: its default set
/// (chown, dac_override, fowner, fsetid, setgid, setuid, mknod, setfcap)
/// less `mknod` and `setfcap` (see the module doc).
pub const RW_MODCAPS: &str = "-mknod:-setfcap";
/// virtiofsd's `--modcaps` for a read-only share: everything but
/// `dac_override`. The credential switch (setuid, setgid) happens only
/// for creations, and chown, fowner, fsetid serve attribute changes and
/// writes, all of which the read-only backend refuses.
pub const RO_MODCAPS: &str = "-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap";

/// The arguments of a backend for `share`, listening on fd [`LISTEN_FD`].
pub fn virtiofsd_args(share: &HostShare) -> Vec<String> {
    let mut args = vec![
        format!("--fd={LISTEN_FD}"),
        format!("--shared-dir={}", share.source.display()),
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        format!(
            "--modcaps={}",
            if share.read_only {
                RO_MODCAPS
            } else {
                RW_MODCAPS
            }
        ),
        "--inode-file-handles=never".into(),
        format!("--cache={CACHE_MODE}"),
        "--log-level=warn".into(),
    ];
    if share.read_only {
        args.push("--readonly".into());
    }
    args
}

fn spawn(
    bin: &Path,
    share: &HostShare,
    socket: &Path,
    log: &Path,
    die_with_parent: bool,
) -> Result<VmmProcess, ShareError> {
    let sock_err = |source| ShareError::Socket {
        tag: share.tag.clone(),
        path: socket.to_owned(),
        source,
    };
    // A socket left by an earlier run of this sandbox is ours to replace.
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(sock_err)?;
    }
    let listener = UnixListener::bind(socket).map_err(sock_err)?;
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| ShareError::Log {
            tag: share.tag.clone(),
            path: log.to_owned(),
            source,
        })?;
    let fd = listener.as_raw_fd();
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(bin);
    cmd.args(virtiofsd_args(share))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setsid, prctl, getppid, dup2,
    // fcntl) on values
    // prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if die_with_parent {
                crate::process::die_with_parent(parent)?;
            }
            // dup2 clears close-on-exec on the copy; when the listener is
            // already fd 3, clear it directly.
            let r = if fd == LISTEN_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, LISTEN_FD)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| {
        let _ = fs::remove_file(socket);
        ShareError::Spawn {
            tag: share.tag.clone(),
            bin: bin.to_owned(),
            source,
        }
    })?;
    // The backend holds the listening socket now; ours closes.
    drop(listener);
    let pid = child.id() as i32;
    drop(child);
    Ok(VmmProcess {
        pid,
        start_time: crate::process::start_time(pid).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests;
