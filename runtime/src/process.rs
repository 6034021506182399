//! The `mvm-vmm` process: spawned (through `mvm-jailer`, normally) in its
//! own session so it outlives mvmd,
//! identified by pid plus start time so a reused pid is never mistaken for
//! it, and watched through a pidfd, which works for processes that are not
//! our children (after mvmd restarts, the VMMs belong to init).
//!
//! How a VMM ended (its wait status) tells a VMM killed by its seccomp
//! filter (`SIGSYS`) from any other death; a jailed VMM is the jailer's
//! child, and the jailer exits once the VMM runs, so the runtime makes its
//! process a child subreaper ([`become_subreaper`]): orphaned VMMs are
//! then reparented to it and it reaps them with their status.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// Why the VMM could not be spawned or watched.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot start the VMM {vmm}: {source}; check the --vmm path (make build / make install)"
    )]
    Spawn { vmm: PathBuf, source: io::Error },
    #[error("cannot watch VMM process {pid}: {source}")]
    Watch { pid: i32, source: io::Error },
    #[error("cannot jail the VMM: {message}")]
    Jail { message: String },
}

/// How a VMM process ended, when this process could reap it (its child,
/// or an orphan of its jailer; not after an mvmd restart, when init reaps
/// the VMMs started before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmEnd {
    /// It exited with this status.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
}

impl VmmEnd {
    /// Decodes a `waitpid` status.
    pub fn from_wait_status(status: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(Self::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Self::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`): a jailed VMM outlives its jailer, and only
/// its reaper learns how it ended (a pidfd does not say). Descendants that
/// end orphaned are reaped by [`reap`] or stay zombies until this process
/// ends; the runtime's only orphans are VMMs, each reaped once it ends.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with an integer option and value; no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A VMM process, as stored in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcess {
    /// Its pid (also its process group and session id).
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when it
    /// started. A different value means the pid was reused.
    pub start_time: u64,
}

/// A started VMM, and the jailer that stays as its parent when the VMM
/// is tied to its caller ([`SpawnSpec::die_with_parent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The VMM.
    pub vmm: VmmProcess,
    /// The jailer that reaps the VMM and then ends as it did
    /// (`mvm-jailer --die-with-parent`): the caller's child, which the
    /// caller must reap ([`reap`]) to learn how the VMM ended; `None` when
    /// the VMM is the caller's child itself or the jailer already exited.
    pub keeper: Option<VmmProcess>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SpawnSpec<'a> {
    /// The `mvm-vmm` binary.
    pub vmm: &'a Path,
    /// `--config` file.
    pub config: &'a Path,
    /// Where the VMM's stderr (its log) goes; appended.
    pub log: &'a Path,
    /// `cgroup.procs` of the cgroup the VMM must run in, if any.
    pub cgroup_procs: Option<&'a Path>,
    /// `MVM_LOG` for the VMM.
    pub log_filter: Option<&'a str>,
    /// Kill the VMM (SIGKILL, from the kernel) when the thread that
    /// spawned it ends: for a caller that owns its VMM outright, such as
    /// the containerd shim, so a shim killed with SIGKILL leaves no VMM
    /// behind. mvmd's VMMs outlive mvmd and never set it. The kernel ties
    /// the signal to the spawning *thread*: spawn from a thread that lives
    /// as long as the process (the shim's single-threaded runtime).
    /// Jailed, the jailer is tied so and stays as the VMM's parent, tied
    /// to it in turn (`mvm-jailer --die-with-parent`).
    pub die_with_parent: bool,
    /// Run this jailer (which execs the VMM) instead of the VMM.
    pub jailer: Option<Jailer<'a>>,
}

/// The `pre_exec` half of [`SpawnSpec::die_with_parent`]: ask for SIGKILL
/// at the parent's death, then make sure the parent did not die before
/// the request took effect. Only async-signal-safe calls.
///
/// # Safety
/// Call only in a forked child before exec.
pub(crate) unsafe fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number changes only
    // this process's death signal.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// The jailer and its arguments (`mvm_jailer::JailSpec::to_args`).
#[derive(Debug, Clone, Copy)]
pub struct Jailer<'a> {
    /// `mvm-jailer`.
    pub path: &'a Path,
    /// Its arguments.
    pub args: &'a [std::ffi::OsString],
}

/// Start the VMM: a new session (so a signal to mvmd's group or terminal
/// never reaches it, and it survives mvmd), stdin and stdout on
/// /dev/null, stderr to its log, moved into its cgroup before it execs.
///
/// Jailed, the jailer is started that way instead (the VMM inherits its
/// cgroup and stderr); it prints the VMM's pid and exits once the VMM runs
/// (a VMM in its own pid namespace is the jailer's child, not ours), or
/// prints why it could not.
///
/// Every process started here is reaped by pid ([`reap`], [`PidFd::wait`]),
/// never by a `waitpid(-1)` of the caller's: a caller that reaps any child
/// (as the containerd-shim crate's SIGCHLD handler does by default) would
/// take the status that tells a seccomp kill apart.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, ProcessError> {
    // The log lies in the VMM's own directory (its uid's when jailed):
    // never opened through a link a previous run left there, which would
    // have root append the VMM's stderr to any file.
    let log = crate::paths::append_vm_file(spec.log, 0o600).map_err(|e| ProcessError::Open {
        path: spec.log.into(),
        source: e.into(),
    })?;
    let procs: Option<File> =
        match spec.cgroup_procs {
            Some(p) => Some(OpenOptions::new().write(true).open(p).map_err(|source| {
                ProcessError::Open {
                    path: p.into(),
                    source,
                }
            })?),
            None => None,
        };
    let procs_fd: RawFd = procs.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let tie = spec.die_with_parent;
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let mut cmd = match spec.jailer {
        Some(j) => {
            let mut c = Command::new(j.path);
            c.args(j.args).stdout(Stdio::piped());
            c
        }
        None => {
            let mut c = Command::new(spec.vmm);
            c.arg("--config").arg(spec.config).stdout(Stdio::null());
            c
        }
    };
    cmd.stdin(Stdio::null()).stderr(log);
    if let Some(f) = spec.log_filter {
        cmd.env("MVM_LOG", f);
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setsid, prctl, getppid, write) on
    // values prepared
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tie {
                die_with_parent(parent)?;
            }
            if procs_fd >= 0 {
                let zero = b"0";
                if libc::write(procs_fd, zero.as_ptr().cast(), 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    if let Some(j) = spec.jailer {
        let (out, keeper) = if tie {
            jailer_staying(&mut cmd)
        } else {
            cmd.output().map(|o| (o, None))
        }
        .map_err(|source| ProcessError::Spawn {
            vmm: j.path.into(),
            source,
        })?;
        drop(procs);
        let text = String::from_utf8_lossy(&out.stdout);
        return match text.trim().parse::<i32>() {
            Ok(pid) if out.status.success() && pid > 0 => Ok(Spawned {
                vmm: VmmProcess {
                    pid,
                    start_time: start_time(pid).unwrap_or(0),
                },
                keeper,
            }),
            _ => Err(ProcessError::Jail {
                message: match text.trim() {
                    "" => format!(
                        "{} ({}); see {}",
                        j.path.display(),
                        out.status,
                        spec.log.display()
                    ),
                    t => t.to_string(),
                },
            }),
        };
    }
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        vmm: spec.vmm.into(),
        source,
    })?;
    drop(procs);
    let pid = child.id() as i32;
    // The child is reaped by `reap` once its pidfd says it ended;
    // dropping the handle neither kills nor waits.
    drop(child);
    let start_time = start_time(pid).unwrap_or(0);
    Ok(Spawned {
        vmm: VmmProcess { pid, start_time },
        keeper: None,
    })
}

/// Run a jailer started with `--die-with-parent`, which prints the VMM's
/// pid, closes its stdout and stays as the VMM's parent: its output once
/// stdout ends, with the status it would have if it failed before that
/// (it exited, and is reaped here) or success and the jailer (it stays,
/// to be reaped by the caller once the VMM ended: [`Spawned::keeper`]).
fn jailer_staying(cmd: &mut Command) -> io::Result<(std::process::Output, Option<VmmProcess>)> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    let (status, keeper) = match child.try_wait()? {
        // Exited already: a failure, or a VMM that ended at once.
        Some(s) => (s, None),
        None => {
            let pid = child.id() as i32;
            // Dropping the handle neither kills nor waits.
            drop(child);
            let keeper = start_time(pid).map(|start_time| VmmProcess { pid, start_time });
            (std::process::ExitStatus::default(), keeper)
        }
    };
    let out = std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    };
    Ok((out, keeper))
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl VmmProcess {
    /// Whether this process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("X");
        start_time(self.pid) == Some(self.start_time) && state != "Z" && state != "X"
    }

    /// A pidfd for this process, checked against pid reuse; `None` if the
    /// process is gone.
    pub fn pidfd(&self) -> Result<Option<PidFd>, ProcessError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(ProcessError::Watch {
                pid: self.pid,
                source: e,
            });
        }
        // SAFETY: the syscall returned a new file descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // Checked after the pidfd exists: if the start time still matches,
        // the pidfd refers to our process and not to a later one.
        if start_time(self.pid) != Some(self.start_time) {
            return Ok(None);
        }
        Ok(Some(PidFd { fd, pid: self.pid }))
    }

    /// Send `signal` to the VMM (through a pidfd, so a reused pid is never
    /// signalled). The VMM is one process with threads; it spawns nothing.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        match self.pidfd() {
            Ok(Some(fd)) => fd.signal(signal),
            Ok(None) => Ok(()),
            Err(ProcessError::Watch { source, .. }) => Err(source),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

/// A process file descriptor.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Send a signal to the process.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a null siginfo and
        // no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Wait until the process has ended, then reap it if it is our child
    /// (after an mvmd restart it is not, and init reaps it); how it ended,
    /// if it was ours.
    pub async fn wait(self) -> io::Result<Option<VmmEnd>> {
        let pid = self.pid;
        // SAFETY: `self.fd` is an owned, valid pidfd that the AsyncFd owns
        // from here on; nothing else closes or replaces it.
        let afd =
            unsafe { AsyncFd::register_with_interest(self.fd, tokio::io::Interest::READABLE)? };
        let _guard = afd.readable().await?;
        Ok(reap(pid))
    }
}

impl PidFd {
    /// Block until the process has ended or `timeout` passed (for places
    /// that cannot await, such as a destructor); then reap it if it is our
    /// child. Returns whether it ended.
    pub fn wait_blocking(self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: poll on one valid pollfd we own, for at most `ms`.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r > 0 {
                reap(self.pid);
            }
            return Ok(r > 0);
        }
    }
}

/// Reap `pid` if it is a zombie child of ours; harmless otherwise. How
/// it ended, if it was reaped here.
pub fn reap(pid: i32) -> Option<VmmEnd> {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with WNOHANG; ECHILD (not our
    // child) is fine.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid)
        .then(|| VmmEnd::from_wait_status(status))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_tolerates_odd_command_names() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(start_time(i32::MAX).is_none());
    }

    #[tokio::test]
    async fn spawn_watch_and_kill_a_process() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in VMM: a script that sleeps (the real one needs KVM).
        let fake = d.path().join("fake-vmm");
        std::fs::write(&fake, "#!/bin/sh\necho started >&2\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = d.path().join("vmm.log");
        let spec = SpawnSpec {
            vmm: &fake,
            config: Path::new("/nonexistent"),
            log: &log,
            cgroup_procs: None,
            log_filter: None,
            die_with_parent: false,
            jailer: None,
        };
        // A parallel test that forks while our write descriptor to the
        // script is open makes exec fail with ETXTBSY for a moment.
        let mut tries = 0;
        let p = loop {
            match spawn(&spec) {
                Err(ProcessError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap().vmm,
            }
        };
        assert!(p.is_alive());
        // Its own session.
        // SAFETY: getsid on a pid.
        assert_eq!(unsafe { libc::getsid(p.pid) }, p.pid);
        let stale = VmmProcess {
            start_time: p.start_time + 1,
            ..p
        };
        assert!(!stale.is_alive());
        assert!(stale.pidfd().unwrap().is_none());
        let fd = p.pidfd().unwrap().unwrap();
        // Its stderr goes to the log.
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(&log).unwrap().contains("started") {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p.signal(libc::SIGKILL).unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), fd.wait())
            .await
            .unwrap()
            .unwrap();
        // Our child: its end is known.
        assert_eq!(end, Some(VmmEnd::Signaled(libc::SIGKILL)));
        assert!(!p.is_alive());
    }

    #[test]
    fn a_tied_process_dies_with_the_thread_that_spawned_it() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("fake-vmm");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = d.path().join("vmm.log");
        let (fake2, log2) = (fake.clone(), log.clone());
        // Spawned from a thread that then ends, as a shim that dies does.
        let p = std::thread::spawn(move || {
            let spec = SpawnSpec {
                vmm: &fake2,
                config: Path::new("/nonexistent"),
                log: &log2,
                cgroup_procs: None,
                log_filter: None,
                die_with_parent: true,
                jailer: None,
            };
            let mut tries = 0;
            loop {
                match spawn(&spec) {
                    Err(ProcessError::Spawn { source, .. })
                        if source.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 =>
                    {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    r => break r.unwrap().vmm,
                }
            }
        })
        .join()
        .unwrap();
        let Some(fd) = p.pidfd().unwrap() else {
            return; // Already gone and reaped: what we want.
        };
        assert!(
            fd.wait_blocking(std::time::Duration::from_secs(10))
                .unwrap(),
            "the tied process outlived the thread that spawned it"
        );
        // An untied one does not die with its thread.
        let (fake3, log3) = (fake.clone(), log.clone());
        let q = std::thread::spawn(move || {
            spawn(&SpawnSpec {
                vmm: &fake3,
                config: Path::new("/nonexistent"),
                log: &log3,
                cgroup_procs: None,
                log_filter: None,
                die_with_parent: false,
                jailer: None,
            })
        })
        .join()
        .unwrap();
        if let Ok(q) = q.map(|s| s.vmm) {
            assert!(q.is_alive());
            let _ = q.signal(libc::SIGKILL);
            if let Ok(Some(fd)) = q.pidfd() {
                let _ = fd.wait_blocking(std::time::Duration::from_secs(5));
            }
            reap(q.pid);
        }
    }
}
