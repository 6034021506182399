//! Routing exit statuses from the reaper to the sessions that wait for them.
//!
//! PID 1 reaps every process (`waitpid(-1)` in the reaper); a session that
//! started a process must still learn how it ended. The session registers
//! the pid while holding the router's lock across `fork`, so the reaper
//! (which takes the same lock to deliver) cannot reap the child before it
//! is registered: no status is ever lost to that race. Delivery is a write
//! of the raw wait status into a pipe, so a session can `poll` the exit
//! together with the process's output.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::process::{Command, SpawnError};
use crate::sys::cvt;

/// Pids being waited for, and where their status goes.
#[derive(Debug, Default)]
pub struct Router {
    waiting: Mutex<HashMap<libc::pid_t, OwnedFd>>,
}

/// Receives one process's exit status.
#[derive(Debug)]
pub struct ExitReceiver {
    rd: OwnedFd,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start `command` and register its pid before anyone can reap it.
    pub fn spawn(&self, command: &Command) -> Result<(libc::pid_t, ExitReceiver), SpawnError> {
        let (rd, wr) = pipe().map_err(SpawnError::Pipe)?;
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let pid = command.spawn()?;
        waiting.insert(pid, wr);
        Ok((pid, ExitReceiver { rd }))
    }

    /// Hand `status` to whoever waits for `pid`; returns whether anyone did.
    /// Called by the reaper for every pid other than the main workload's.
    pub fn deliver(&self, pid: libc::pid_t, status: libc::c_int) -> bool {
        let wr = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        let Some(wr) = wr else {
            return false;
        };
        let bytes = status.to_ne_bytes();
        // SAFETY: writing 4 bytes from a local array to our pipe; a pipe
        // buffer always has room for them (nothing else writes to it). A
        // receiver that went away makes this EPIPE, which is fine.
        unsafe { libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        true
    }

    /// How many processes are waited for (tests, diagnostics).
    pub fn pending(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl ExitReceiver {
    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    /// The status, once it has been delivered (does not block).
    /// `Ok(None)`: not yet. `Err`: it never will be (the router let go of
    /// the pid without a status, e.g. at shutdown).
    pub fn try_recv(&self) -> Result<Option<libc::c_int>, Lost> {
        let mut pfd = libc::pollfd {
            fd: self.rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
            return Ok(None);
        }
        let mut b = [0u8; 4];
        // SAFETY: reading at most 4 bytes into a local array.
        let n = unsafe { libc::read(self.rd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        match n {
            4 => Ok(Some(i32::from_ne_bytes(b))),
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(None),
            _ => Err(Lost),
        }
    }

    /// Block until the status arrives.
    pub fn recv(&self) -> Result<libc::c_int, Lost> {
        loop {
            let mut pfd = libc::pollfd {
                fd: self.rd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, -1) };
            if let Some(s) = self.try_recv()? {
                return Ok(s);
            }
        }
    }
}

/// The exit status of a process will never arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the exit status of the process was lost")]
pub struct Lost;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 just returned these two descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
