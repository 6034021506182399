//! Bringing up the loopback interface, so `localhost` works without any
//! other network. Bringing `lo` up makes the kernel assign 127.0.0.1/8 and
//! ::1 itself.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::cvt;

/// Set `IFF_UP` on interface `name` (SIOCGIFFLAGS + SIOCSIFFLAGS).
pub fn bring_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket just returned this descriptor; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads and writes a valid `ifreq`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid `ifreq`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Whether interface `name` is up.
pub fn is_up(name: &str) -> io::Result<bool> {
    // SAFETY: socket(2) with constant arguments.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket just returned this descriptor; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads and writes a valid `ifreq`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a fresh network namespace `lo` starts down: bring it up for real
    /// and check the kernel agrees. Runs in a forked child so the test
    /// process keeps its namespace.
    #[test]
    fn loopback_comes_up_in_a_new_netns() {
        // SAFETY: the child makes syscalls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls; never returns.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    libc::_exit(10);
                }
                let code = match (is_up("lo"), bring_up("lo"), is_up("lo")) {
                    (Ok(false), Ok(()), Ok(true)) => 0,
                    (Ok(true), _, _) => 11,
                    (_, Err(_), _) => 12,
                    _ => 13,
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "10: unshare failed, 11: lo already up, 12: bring_up failed, 13: not up after"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(bring_up("").is_err());
        assert!(bring_up("a-name-longer-than-ifnamsiz").is_err());
        assert!(bring_up("nosuchif0").is_err());
    }
}
