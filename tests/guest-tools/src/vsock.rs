//! What the static guest test programs share: AF_VSOCK sockets through
//! libc (the guest has nothing else).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The host's CID.
pub const VMADDR_CID_HOST: u32 = 2;

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A socket listening on `port` (any CID).
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let s = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `a` is an initialised sockaddr_vm of `len` bytes.
    check(unsafe { libc::bind(s.as_raw_fd(), (&a as *const libc::sockaddr_vm).cast(), len) })?;
    // SAFETY: listen on our socket.
    check(unsafe { libc::listen(s.as_raw_fd(), 128) })?;
    Ok(s)
}

/// The next connection to `l`.
pub fn accept(l: &OwnedFd) -> io::Result<File> {
    // SAFETY: accept with null address pointers is allowed.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A connection to `port` of `cid`.
pub fn connect(cid: u32, port: u32) -> io::Result<File> {
    let s = socket()?;
    let a = addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `a` is an initialised sockaddr_vm of `len` bytes.
    check(unsafe { libc::connect(s.as_raw_fd(), (&a as *const libc::sockaddr_vm).cast(), len) })?;
    Ok(File::from(s))
}

/// Half-close: the peer reads EOF.
pub fn shutdown_write(f: &File) {
    // SAFETY: shutdown on our socket.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}
