//! PID 1's duties after the workload starts: reap every process that dies
//! (orphans are re-parented to init), forward the termination signals init
//! receives to the workload, notice when the workload itself exits, and at
//! the end stop everything that is left.
//!
//! Signals arrive through a signalfd: SIGCHLD and the forwarded signals are
//! blocked, so they queue instead of being dropped (the kernel discards
//! signals sent to PID 1 that it has no handler for, unless blocked), and
//! init handles them in plain sequential code instead of async handlers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mvm_protocol::status::GuestEvent;

use crate::sys::cvt;

/// Signals init passes on to the workload, as Docker's `docker kill` /
/// `docker stop` would deliver them to the container's main process.
pub const FORWARDED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How long stragglers get after SIGKILL before init stops waiting (a
/// process stuck in uninterruptible sleep never goes away).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Why waiting or signalling failed.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot block signals for the signalfd: {0}")]
    Mask(io::Error),
    #[error("cannot create the signalfd: {0}")]
    Signalfd(io::Error),
    #[error("cannot read the signalfd: {0}")]
    Read(io::Error),
    #[error("refusing to signal every process: this is not PID 1 of its namespace")]
    NotInit,
}

/// The reaper. Create it before starting the workload so no SIGCHLD or
/// forwarded signal is missed.
#[derive(Debug)]
pub struct Reaper {
    sfd: OwnedFd,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and only fail for invalid signal numbers, which these are not.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for sig in FORWARDED_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

impl Reaper {
    /// Block SIGCHLD and [`FORWARDED_SIGNALS`] and open a signalfd for
    /// them. Init is single-threaded, so the thread mask is the process's.
    pub fn new() -> Result<Self, ReaperError> {
        let set = handled_set();
        // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
        let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(ReaperError::Mask(io::Error::from_raw_os_error(ret)));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) })
            .map_err(ReaperError::Signalfd)?;
        // SAFETY: signalfd just returned this descriptor; we own it.
        let sfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { sfd })
    }

    /// Wait until `pid` exits and return its raw wait status, reaping every
    /// other process that dies meanwhile and forwarding signals to `pid`.
    pub fn wait_for(&self, pid: libc::pid_t) -> Result<libc::c_int, ReaperError> {
        self.wait_for_routed(pid, |_, _| {})
    }

    /// [`Self::wait_for`], handing every other status to `on_other` (the
    /// agent routes them to the sessions that started those processes).
    pub fn wait_for_routed(
        &self,
        pid: libc::pid_t,
        mut on_other: impl FnMut(libc::pid_t, libc::c_int),
    ) -> Result<libc::c_int, ReaperError> {
        loop {
            let mut main_status = None;
            self.reap(|p, status| {
                if p == pid {
                    main_status = Some(status);
                } else {
                    on_other(p, status);
                }
            });
            if let Some(status) = main_status {
                return Ok(status);
            }
            match self.next_signal(None)? {
                Some(libc::SIGCHLD) | None => {}
                Some(sig) => {
                    crate::info!(
                        "forwarding {} to the workload",
                        crate::status::signal_name(sig)
                    );
                    if let Err(e) = signal_workload(pid, sig) {
                        crate::warn!(
                            "cannot forward signal {sig} to the workload (pid {pid}): {e}"
                        );
                    }
                }
            }
        }
    }

    /// Keep reaping (statuses to `on_exit`; signals other than SIGCHLD are
    /// dropped, the workload being gone) until `done()` holds; `done` is
    /// checked at least every `tick`.
    pub fn reap_until(
        &self,
        tick: Duration,
        mut on_exit: impl FnMut(libc::pid_t, libc::c_int),
        mut done: impl FnMut() -> bool,
    ) -> Result<(), ReaperError> {
        loop {
            self.reap(&mut on_exit);
            if done() {
                return Ok(());
            }
            self.next_signal(Some(tick))?;
        }
    }

    /// Stop every process left: SIGTERM, up to `grace` for them to exit,
    /// then SIGKILL. Returns whether none is left. Only PID 1 may do this:
    /// `kill(-1)` anywhere else would hit the whole machine.
    pub fn terminate_all(&self, grace: Duration) -> Result<bool, ReaperError> {
        // SAFETY: getpid cannot fail.
        if unsafe { libc::getpid() } != 1 {
            return Err(ReaperError::NotInit);
        }
        for (sig, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, KILL_WAIT)] {
            if !self.reap(|_, _| {}) {
                return Ok(true);
            }
            // ESRCH only means nobody was left to signal.
            let _ = crate::sys::kill(-1, sig);
            let deadline = Instant::now() + wait;
            while self.reap(|_, _| {}) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // Signals other than SIGCHLD are dropped: the workload is gone.
                self.next_signal(Some(left))?;
            }
        }
        Ok(!self.reap(|_, _| {}))
    }

    /// Reap every child that has exited, calling `on_exit(pid, status)` for
    /// each. Returns whether children remain.
    fn reap(&self, mut on_exit: impl FnMut(libc::pid_t, libc::c_int)) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            match pid {
                0 => return true,
                p if p > 0 => on_exit(p, status),
                _ => match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    // ECHILD: nobody left.
                    _ => return false,
                },
            }
        }
    }

    /// The next signal, or `None` when `timeout` expires first.
    fn next_signal(&self, timeout: Option<Duration>) -> Result<Option<libc::c_int>, ReaperError> {
        let fd = self.sfd.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Ok(None),
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {
                return Ok(None)
            }
            -1 => return Err(ReaperError::Read(io::Error::last_os_error())),
            _ => {}
        }
        // SAFETY: signalfd_siginfo is plain data; zero is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n == -1 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => Ok(None),
                _ => Err(ReaperError::Read(e)),
            };
        }
        if n as usize != size {
            return Ok(None);
        }
        Ok(libc::c_int::try_from(info.ssi_signo).ok())
    }
}

/// Send `sig` to the workload. Kept on its own as the single entry point
/// for the host's future signal requests (through the agent).
pub fn signal_workload(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a workload pid"),
        ));
    }
    crate::sys::kill(pid, sig)
}

/// The status event for a raw wait status: `None` for stops and continues,
/// which are not terminations.
pub fn event_for_status(status: libc::c_int) -> Option<GuestEvent> {
    if libc::WIFEXITED(status) {
        Some(GuestEvent::Exited(libc::WEXITSTATUS(status) as u8))
    } else if libc::WIFSIGNALED(status) {
        u8::try_from(libc::WTERMSIG(status))
            .ok()
            .map(GuestEvent::Signaled)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Command;
    use crate::user::ExecUser;

    fn sh(script: &str) -> Command {
        let args = vec!["sh".to_string(), "-c".into(), script.into()];
        let root = ExecUser {
            uid: 0,
            gid: 0,
            sgids: vec![],
            home: "/".into(),
        };
        Command::new(&args, &["PATH=/bin:/usr/bin".into()], "/", root).unwrap()
    }

    /// Run `f` as PID 1 of a new PID namespace (so `kill(-1)` and orphan
    /// re-parenting behave as in the guest and touch nothing else), in a
    /// forked, single-threaded process so the signal mask is the process's.
    fn as_pid1(f: fn() -> Result<(), String>) {
        let mut fds = [0; 2];
        // SAFETY: valid out array for pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only runs `f` and then `_exit`s; glibc keeps
        // malloc usable after fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls in the child; it never returns.
            unsafe {
                libc::close(fds[0]);
                let fail = |msg: &str| -> ! {
                    libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                    libc::_exit(1)
                };
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    fail(&format!(
                        "unshare(CLONE_NEWPID): {}",
                        io::Error::last_os_error()
                    ));
                }
                let inner = libc::fork();
                if inner == 0 {
                    let msg = match std::panic::catch_unwind(f) {
                        Ok(Ok(())) => libc::_exit(0),
                        Ok(Err(e)) => e,
                        Err(_) => "panicked".to_string(),
                    };
                    fail(&msg);
                }
                let mut status = 0;
                libc::waitpid(inner, &mut status, 0);
                libc::_exit(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    2
                });
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut msg = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            msg.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "as PID 1: {}",
            String::from_utf8_lossy(&msg)
        );
    }

    fn check(cond: bool, msg: impl Into<String>) -> Result<(), String> {
        if cond {
            Ok(())
        } else {
            Err(msg.into())
        }
    }

    #[test]
    fn exit_code_orphans_and_cleanup() {
        as_pid1(|| {
            // SAFETY: getpid cannot fail.
            check(unsafe { libc::getpid() } == 1, "not PID 1")?;
            let reaper = Reaper::new().map_err(|e| e.to_string())?;
            let start = Instant::now();
            // An orphan that exits by itself, one that must be killed.
            let pid = sh("(sleep 0.2; exit 5) & sleep 30 & exit 7")
                .spawn()
                .map_err(|e| e.to_string())?;
            let status = reaper.wait_for(pid).map_err(|e| e.to_string())?;
            check(
                event_for_status(status) == Some(GuestEvent::Exited(7)),
                format!("status {status:#x}"),
            )?;
            let clean = reaper
                .terminate_all(Duration::from_millis(100))
                .map_err(|e| e.to_string())?;
            check(clean, "processes left after terminate_all")?;
            // SAFETY: plain waitpid probe.
            let left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            check(left == -1, format!("waitpid says {left}: children remain"))?;
            check(
                start.elapsed() < Duration::from_secs(10),
                "sleep 30 was not killed",
            )
        });
    }

    #[test]
    fn signal_death_is_reported() {
        as_pid1(|| {
            let reaper = Reaper::new().map_err(|e| e.to_string())?;
            let pid = sh("kill -9 $$").spawn().map_err(|e| e.to_string())?;
            let status = reaper.wait_for(pid).map_err(|e| e.to_string())?;
            check(
                event_for_status(status) == Some(GuestEvent::Signaled(9)),
                format!("status {status:#x}"),
            )
        });
    }

    #[test]
    fn signals_to_init_reach_the_workload() {
        as_pid1(|| {
            let reaper = Reaper::new().map_err(|e| e.to_string())?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let ready = dir.path().join("ready");
            let script = format!(
                "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
                ready.display()
            );
            let pid = sh(&script).spawn().map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ready.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Signal init itself, as the kernel or host would.
            crate::sys::kill(1, libc::SIGTERM).map_err(|e| e.to_string())?;
            let status = reaper.wait_for(pid).map_err(|e| e.to_string())?;
            check(
                event_for_status(status) == Some(GuestEvent::Exited(42)),
                format!("status {status:#x}"),
            )
        });
    }

    #[test]
    fn term_ignoring_processes_are_killed() {
        as_pid1(|| {
            let reaper = Reaper::new().map_err(|e| e.to_string())?;
            let pid = sh("(trap '' TERM; sleep 30) & exit 0")
                .spawn()
                .map_err(|e| e.to_string())?;
            reaper.wait_for(pid).map_err(|e| e.to_string())?;
            let start = Instant::now();
            let clean = reaper
                .terminate_all(Duration::from_millis(100))
                .map_err(|e| e.to_string())?;
            check(clean, "processes left")?;
            check(
                start.elapsed() < KILL_WAIT,
                format!("took {:?}", start.elapsed()),
            )
        });
    }

    #[test]
    fn terminate_all_refuses_outside_pid1() {
        let reaper = Reaper::new().unwrap();
        assert!(matches!(
            reaper.terminate_all(Duration::ZERO),
            Err(ReaperError::NotInit)
        ));
    }

    #[test]
    fn signal_workload_refuses_init_and_groups() {
        assert!(signal_workload(1, libc::SIGTERM).is_err());
        assert!(signal_workload(0, libc::SIGTERM).is_err());
        assert!(signal_workload(-1, libc::SIGTERM).is_err());
    }

    /// Wait statuses produced by real processes, not hand-built numbers.
    #[test]
    fn wait_status_encoding() {
        let status_of = |script: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", script])
                .status()
                .unwrap();
            std::os::unix::process::ExitStatusExt::into_raw(out)
        };
        assert_eq!(
            event_for_status(status_of("exit 0")),
            Some(GuestEvent::Exited(0))
        );
        assert_eq!(
            event_for_status(status_of("exit 3")),
            Some(GuestEvent::Exited(3))
        );
        assert_eq!(
            event_for_status(status_of("exit 255")),
            Some(GuestEvent::Exited(255))
        );
        assert_eq!(
            event_for_status(status_of("kill -9 $$")),
            Some(GuestEvent::Signaled(9))
        );
        assert_eq!(
            event_for_status(status_of("kill -SEGV $$")),
            Some(GuestEvent::Signaled(11))
        );
        // A stop is not a termination (0x137f: stopped by SIGSTOP).
        assert_eq!(event_for_status(0x137f), None);
    }
}
