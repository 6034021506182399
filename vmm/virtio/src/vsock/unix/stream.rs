//! Non-blocking I/O on a host Unix stream, straight from and into guest
//! memory.
//!
//! Writes use `send(MSG_NOSIGNAL)`: a host peer that went away must give
//! `EPIPE` (and a reset for the guest), never a `SIGPIPE` that would kill
//! the VMM. Connecting is non-blocking too: a host listener with a full
//! backlog must not stall the event loop (the guest is refused instead).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::VolatileSlice;

/// A connected, non-blocking host Unix stream.
#[derive(Debug)]
pub struct HostStream {
    inner: UnixStream,
}

impl HostStream {
    /// Wraps `stream`, switching it to non-blocking mode.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self { inner: stream })
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &UnixStream {
        &self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> UnixStream {
        self.inner
    }

    /// Sends bytes without blocking and without SIGPIPE.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        send_raw(self.inner.as_raw_fd(), buf.as_ptr(), buf.len())
    }

    /// Sends from guest memory.
    pub fn send_slice(&self, s: &VolatileSlice<'_>) -> io::Result<usize> {
        let guard = s.ptr_guard();
        send_raw(self.inner.as_raw_fd(), guard.as_ptr(), s.len())
    }

    /// Receives into guest memory; `Ok(0)` is end of stream.
    pub fn recv_slice(&self, s: &VolatileSlice<'_>) -> io::Result<usize> {
        let guard = s.ptr_guard_mut();
        loop {
            // SAFETY: the slice is `s.len()` bytes of mapped guest memory,
            // valid while `guard` lives; the kernel writes at most that many.
            let n = unsafe {
                libc::recv(
                    self.inner.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    s.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Closes one or both directions (errors are ignored: the peer may be
    /// gone already, which is the same outcome).
    pub fn shutdown(&self, how: std::net::Shutdown) {
        let _ = self.inner.shutdown(how);
    }
}

impl AsRawFd for HostStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Write for &HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send_raw(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: `ptr` points to `len` readable bytes (a Rust slice or a
        // guest memory slice kept alive by the caller); send only reads them.
        let n = unsafe {
            libc::send(
                fd,
                ptr.cast::<libc::c_void>(),
                len,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects to the Unix socket at `path` without blocking. A listener whose
/// backlog is full gives `WouldBlock`, which callers treat as a refusal.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes or contains NUL",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un and `len` does not
        // exceed its size (bytes.len() < sun_path.len()).
        let ret = unsafe {
            libc::connect(
                owned.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        if ret == 0 {
            return Ok(UnixStream::from(owned));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn send_to_a_closed_peer_is_epipe_not_sigpipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let s = HostStream::new(a).unwrap();
        let e = s.send(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn nonblocking_connect_reaches_a_listener_and_refuses_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        assert!(connect_nonblocking(&p).is_err(), "nothing listens yet");
        let l = UnixListener::bind(&p).unwrap();
        let c = connect_nonblocking(&p).unwrap();
        let (mut srv, _) = l.accept().unwrap();
        HostStream::new(c).unwrap().send(b"hi").unwrap();
        let mut got = [0u8; 2];
        srv.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
