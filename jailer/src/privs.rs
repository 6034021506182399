//! Privileges and descriptors: the VMM keeps stdio and its TAPs, runs as
//! the sandbox's uid/gid with no capability in any set, and can never gain
//! one back (`PR_SET_NO_NEW_PRIVS`).
//!
//! Capabilities are dropped with `prctl`/`capset` directly rather than
//! through the `caps` crate: it is five calls, all in this file, and the
//! jailer keeps its dependencies few.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::unistd::{Gid, Uid};

/// The first descriptor handed to the VMM after stdio (its TAPs).
pub const FIRST_PASSED_FD: RawFd = 3;
/// Descriptors the jailer keeps for itself in the child sit at or above
/// this, clear of the ones it hands over.
pub const HIGH_FD: RawFd = 64;

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    #[error("jail: {op}: {source}")]
    Sys { op: &'static str, source: io::Error },
}

fn last(op: &'static str) -> PrivsError {
    PrivsError::Sys {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A close-on-exec copy of `fd` at `min` or above.
pub fn dup_high(fd: &OwnedFd, min: RawFd) -> nix::Result<OwnedFd> {
    let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Point stdin and stdout at `/dev/null`.
pub fn null_stdio() -> Result<(), PrivsError> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| PrivsError::Sys {
            op: "opening /dev/null",
            source,
        })?;
    for fd in [0, 1] {
        // SAFETY: dup2 between descriptors of this process.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(last("dup2 /dev/null"));
        }
    }
    Ok(())
}

/// Put `fds` at 3, 4, ... (inherited by the VMM) and mark every other
/// descriptor above stdio close-on-exec.
pub fn arrange_fds(fds: &[RawFd]) -> Result<(), PrivsError> {
    // Out of the way first, so a descriptor already at 3.. is not
    // overwritten before it is moved.
    let mut high = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor this process holds.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD + 16 + i as RawFd) };
        if n < 0 {
            return Err(last("moving a TAP descriptor"));
        }
        high.push(n);
    }
    for (i, &fd) in high.iter().enumerate() {
        // SAFETY: dup2 between descriptors of this process; the target is
        // left without FD_CLOEXEC, so the VMM inherits it.
        if unsafe { libc::dup2(fd, FIRST_PASSED_FD + i as RawFd) } < 0 {
            return Err(last("passing a TAP descriptor"));
        }
    }
    let first = (FIRST_PASSED_FD + fds.len() as RawFd) as libc::c_uint;
    // SAFETY: close_range only changes flags of this process's descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(last("close_range"));
    }
    Ok(())
}

/// Become `uid`/`gid` with no supplementary group, no capability in any
/// set and no way to gain one.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), PrivsError> {
    nix::unistd::setgroups(&[]).map_err(|e| PrivsError::Sys {
        op: "setgroups",
        source: e.into(),
    })?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| PrivsError::Sys {
        op: "setresgid",
        source: e.into(),
    })?;
    // The bounding set needs CAP_SETPCAP, so it goes while we are root.
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(last("dropping the capability bounding set"));
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(last("clearing the ambient capabilities"));
    }
    // Without SECBIT_KEEP_CAPS, leaving uid 0 clears the permitted and
    // effective sets.
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| PrivsError::Sys {
        op: "setresuid",
        source: e.into(),
    })?;
    // The inheritable set survives setuid: empty it (and say so for the
    // others too).
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, both valid
    // for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(last("capset"));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(last("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
