//! Pseudo-terminals for `tty` execs and a terminal main workload.
//!
//! The guest kernel has UNIX98 ptys; /dev/ptmx points into the container's
//! own devpts instance (mounted by init with `newinstance`). Both ends are
//! opened close-on-exec so concurrently spawned processes never inherit
//! each other's terminals (a leaked slave would keep a session's terminal
//! from ever reporting hang-up).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::cvt;

/// Both sides of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Open a new pseudo-terminal pair.
pub fn open() -> io::Result<Pty> {
    // SAFETY: posix_openpt with constant flags.
    let m = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: posix_openpt just returned this descriptor; we own it.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt on the master we own (grantpt is a no-op
    // on devpts, kept for portability of the sequence).
    cvt(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    // TIOCGPTPEER opens the slave through the master's own devpts
    // instance, with no path lookup (immune to what /dev/pts the caller
    // sees); fall back to the name for old kernels.
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    // SAFETY: ioctl on our master with flags as the argument.
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let s = if s >= 0 {
        s
    } else {
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer and its length describe `name`.
        let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: ptsname_r NUL-terminated the name inside the buffer.
        cvt(unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        })?
    };
    // SAFETY: ioctl or open just returned this descriptor; we own it.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    Ok(Pty { master, slave })
}

/// Set the terminal size seen through either side; the kernel sends
/// SIGWINCH to the terminal's foreground process group when it changes.
pub fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer we pass.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// The terminal size (tests, diagnostics).
pub fn size(fd: &impl AsRawFd) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize to the pointer we pass.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_round_trip_and_size() {
        let pty = open().unwrap();
        set_size(&pty.master, 33, 101).unwrap();
        assert_eq!(size(&pty.slave).unwrap(), (33, 101));
        let msg = b"x\n";
        // SAFETY: writing a local buffer to our slave.
        let n = unsafe { libc::write(pty.slave.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        assert_eq!(n, 2);
        let mut buf = [0u8; 16];
        // SAFETY: reading into a local buffer from our master.
        let n = unsafe { libc::read(pty.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        // The line discipline turns \n into \r\n (ONLCR).
        assert_eq!(&buf[..n as usize], b"x\r\n");
        // SAFETY: F_GETFD on our descriptors.
        let flags = unsafe { libc::fcntl(pty.slave.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
