//! The host side of a virtio-net device: a TAP interface opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every read and write carries a
//! virtio-net header in front of the Ethernet frame and the host kernel
//! does checksums and segmentation (TSO) on the guest's behalf.
//!
//! The TAP is opened by name (created if it does not exist and the VMM
//! may, attached if it exists) or handed over as an inherited descriptor,
//! for a caller that set it up with privileges the VMM does not have.
//! Either way it is non-blocking: the event loop reads it when epoll says
//! so and never waits on it.
//!
//! Hand-written on `libc` (the ioctl numbers and flags are libc's):
//! `vmm-sys-util` has no TAP helper any more, and the few calls needed do
//! not justify a dependency such as Cloud Hypervisor's `net_util`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::bitmap::Bitmap;
use vm_memory::VolatileSlice;

use super::VNET_HDR_LEN;

/// Most buffers one `readv` fills (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;

/// The TUN device every TAP is opened through.
const TUN_PATH: &str = "/dev/net/tun";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit `IFNAMSIZ` or is not a usable name.
    #[error("TAP name {0:?} is invalid: it must be 1 to {MAX_TAP_NAME_LEN} bytes without '/', whitespace or NUL")]
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_PATH}: {0}; the VMM needs the tun module and access to the device")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to TAP {name:?} (TUNSETIFF): {source}; it must be a TAP with IFF_NO_PI and IFF_VNET_HDR (e.g. `ip tuntap add {name} mode tap vnet_hdr`) owned by this user, or the VMM needs CAP_NET_ADMIN to create it")]
    SetIff {
        /// The TAP name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The handed-over descriptor is not open.
    #[error("TAP descriptor {fd} is not open in the VMM: {source}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The handed-over descriptor is not a TAP with the flags we need.
    #[error(
        "descriptor {fd} is not a TAP opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ({detail})"
    )]
    NotATap {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong.
        detail: String,
    },
    /// Another TAP ioctl or fcntl failed.
    #[error("TAP {name:?}: {what} failed: {source}")]
    Ioctl {
        /// The TAP name.
        name: String,
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as the TUN ioctls use it: the name, then the flags in
/// the union (40 bytes on 64-bit Linux).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut r = Self {
            name: [0; 16],
            // The flags are 16-bit in the ABI; ours all fit.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The flags a TAP of ours has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Whether `name` can be an interface name.
pub fn valid_tap_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TAP_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// An open TAP (or, in tests, any datagram descriptor).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// False for the socket pairs unit tests use: offload ioctls are
    /// skipped, reads and writes are the same.
    is_tap: bool,
}

impl Tap {
    /// Opens (or creates) the TAP `name`.
    pub fn open_named(name: &str) -> Result<Self, TapError> {
        if !valid_tap_name(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(name, TAP_FLAGS);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
        // (same size and layout) and lives across the call; the fd is open.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: req.name(),
            is_tap: true,
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Takes over an inherited TAP descriptor. It must be open, not owned
    /// by anything else in this process, and a TAP with our flags.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::BadFd {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one.
        let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::NotATap {
                fd,
                detail: format!("TUNGETIFF: {}", io::Error::last_os_error()),
            });
        }
        let flags = libc::c_int::from(req.flags);
        if flags & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::NotATap {
                fd,
                detail: format!("its flags are {flags:#x}"),
            });
        }
        // SAFETY: the caller handed this descriptor to the VMM, which owns
        // it from now on; nothing else in the process uses it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let tap = Self {
            file: File::from(owned),
            name: req.name(),
            is_tap: true,
        };
        tap.set_fd_flags()?;
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Wraps a datagram descriptor that is not a TAP: one end of a socket
    /// pair keeps frame boundaries like a TAP, so the unit tests and the
    /// fuzz harness (`fuzz/`, a workspace member whose replay runs in every
    /// `make test`) drive the real device code without a network. It
    /// grants nothing the caller does not already hold (its own
    /// descriptor); the VMM never calls it, so it is not a feature flag,
    /// which would build the workspace's device crate twice.
    #[doc(hidden)]
    pub fn from_datagram_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let tap = Self {
            file: File::from(fd),
            name: "datagram".into(),
            is_tap: false,
        };
        tap.set_fd_flags()?;
        Ok(tap)
    }

    fn ioctl_err(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Non-blocking and close-on-exec, whatever the descriptor came with.
    fn set_fd_flags(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with valid arguments.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(self.ioctl_err("setting O_NONBLOCK"));
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(self.ioctl_err("setting FD_CLOEXEC"));
        }
        Ok(())
    }

    /// virtio 1.x always has the 12-byte header (`num_buffers` included);
    /// the TAP's default is the legacy 10.
    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(self.ioctl_err("TUNSETVNETHDRSZ"));
        }
        Ok(())
    }

    /// Tells the kernel which offloads the guest accepts on receive
    /// (`TUN_F_*`): frames the TAP hands us may then carry partial
    /// checksums or be up to 64 KiB segments. 0 turns them all off.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name the kernel gave (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (virtio-net header first) into `buf`. A frame
    /// longer than `buf` is cut short by the kernel: callers give one byte
    /// more than the longest frame they accept to notice.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: reading at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
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

    /// Reads one frame straight into guest memory: the slices are filled in
    /// order (the kernel's `readv`), at most [`MAX_IOVECS`] of them.
    pub fn read_frame_into(&self, slices: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let slices = &slices[..slices.len().min(MAX_IOVECS)];
        // The guards keep the pointers valid for the call.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .zip(slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast::<libc::c_void>(),
                iov_len: s.len(),
            })
            .collect();
        loop {
            // SAFETY: each iovec points to `len` bytes of mapped guest
            // memory, valid for writes while `guards` lives (invariant of
            // VolatileSlice); the count matches the array. Concurrent guest
            // access to the same bytes is a guest bug and cannot violate
            // host memory safety.
            let n = unsafe {
                libc::readv(
                    self.file.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as libc::c_int,
                )
            };
            if n >= 0 {
                let mut left = n as usize;
                for s in slices {
                    let w = left.min(s.len());
                    s.bitmap().mark_dirty(0, w);
                    left -= w;
                }
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame from guest memory (`writev`): `header` first if
    /// given (the device's own virtio-net header in place of the guest's),
    /// then the slices, at most [`MAX_IOVECS`] pieces in all.
    pub fn write_frame_from(
        &self,
        header: Option<&[u8]>,
        slices: &[VolatileSlice<'_>],
    ) -> io::Result<usize> {
        let room = MAX_IOVECS - usize::from(header.is_some());
        let slices = &slices[..slices.len().min(room)];
        // The guards keep the pointers valid for the call.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(slices.len() + 1);
        if let Some(h) = header {
            iovecs.push(libc::iovec {
                iov_base: h.as_ptr().cast_mut().cast::<libc::c_void>(),
                iov_len: h.len(),
            });
        }
        iovecs.extend(guards.iter().zip(slices).map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast::<libc::c_void>(),
            iov_len: s.len(),
        }));
        loop {
            // SAFETY: each iovec points to `len` readable bytes (`header`,
            // or mapped guest memory while `guards` lives); the kernel only
            // reads them; the count matches the array.
            let n = unsafe {
                libc::writev(
                    self.file.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len() as libc::c_int,
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
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_tap_name("tap0"));
        assert!(valid_tap_name(&"x".repeat(15)));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "a\0", &"x".repeat(16)] {
            assert!(!valid_tap_name(bad), "{bad:?}");
            assert!(matches!(Tap::open_named(bad), Err(TapError::BadName(_))));
        }
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = IfReq::new("tap7", TAP_FLAGS);
        assert_eq!(r.name(), "tap7");
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let f = File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        let e = Tap::from_fd(fd).unwrap_err();
        assert!(matches!(e, TapError::NotATap { .. }), "{e}");
        // Not taken over: still ours to close.
        // SAFETY: fd is open and owned by this test.
        unsafe { libc::close(fd) };
        let e = Tap::from_fd(1 << 20).unwrap_err();
        assert!(matches!(e, TapError::BadFd { .. }), "{e}");
    }
}
