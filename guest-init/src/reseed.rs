//! What makes a guest restored from a shared template its own before the
//! workload starts (docs/snapshots.md, "Warm starts", section 4): the
//! host's realtime clock and fresh entropy, both carried by the launch
//! spec (`realtime_ns`, `entropy`).
//!
//! A snapshot restores kvm-clock to the template's time and the kernel's
//! CRNG to the template's state; two guests made from one template would
//! otherwise show an old date and draw the same random numbers. A cold
//! boot may carry the fields too; they are applied the same way.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use mvm_protocol::launch::{LaunchSpec, ENTROPY_LEN};

use crate::sys::cvt;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (linux/random.h, Linux >= 4.17).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Why the clock or the entropy could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReseedError {
    #[error("cannot set the guest's clock to the host's (clock_settime): {0}")]
    Clock(io::Error),
    #[error("cannot open {0} to add the host's entropy: {1}")]
    Open(&'static str, io::Error),
    #[error("cannot add the host's entropy to the kernel's pool (RNDADDENTROPY): {0}")]
    AddEntropy(io::Error),
    #[error("cannot reseed the kernel's random number generator (RNDRESEEDCRNG): {0}")]
    Reseed(io::Error),
}

/// The pool device; the early /dev (devtmpfs) has it.
const RANDOM_DEV: &str = "/dev/urandom";

/// Apply what `spec` carries: the clock first, then the entropy. Logs
/// one line saying what was done.
pub fn apply(spec: &LaunchSpec) -> Result<(), ReseedError> {
    if let Some(ns) = spec.realtime_ns {
        set_realtime(ns)?;
    }
    if let Some(bytes) = spec.entropy_bytes() {
        add_entropy(Path::new(RANDOM_DEV), &bytes)?;
    }
    if spec.realtime_ns.is_some() || spec.entropy.is_some() {
        crate::info!(
            "applied the host's {}",
            match (spec.realtime_ns.is_some(), spec.entropy.is_some()) {
                (true, true) => "clock and entropy (CRNG reseeded)",
                (true, false) => "clock",
                _ => "entropy (CRNG reseeded)",
            }
        );
    }
    Ok(())
}

/// `clock_settime(CLOCK_REALTIME)` to `ns` since the epoch.
fn set_realtime(ns: u64) -> Result<(), ReseedError> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we pass; no memory of ours
    // is written.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map_err(ReseedError::Clock)?;
    Ok(())
}

/// The kernel's `struct rand_pool_info` with its buffer inline.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; ENTROPY_LEN],
}

/// Mix `bytes` into the input pool, credited as entropy (the host's
/// `getrandom` output is), then make the CRNG reseed from it now rather
/// than at its next scheduled reseed.
fn add_entropy(dev: &Path, bytes: &[u8]) -> Result<(), ReseedError> {
    let f = File::options()
        .write(true)
        .open(dev)
        .map_err(|e| ReseedError::Open(RANDOM_DEV, e))?;
    let mut info = PoolInfo {
        entropy_count: (ENTROPY_LEN * 8) as libc::c_int,
        buf_size: ENTROPY_LEN as libc::c_int,
        buf: [0; ENTROPY_LEN],
    };
    let n = bytes.len().min(ENTROPY_LEN);
    info.buf[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buffer holds
    // buf_size bytes; `info` is that layout and lives across the call.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, &info) })
        .map_err(ReseedError::AddEntropy)?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) }).map_err(ReseedError::Reseed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_has_the_kernels_layout() {
        // Two ints, then the bytes (linux/random.h).
        assert_eq!(std::mem::size_of::<PoolInfo>(), 8 + ENTROPY_LEN);
        assert_eq!(std::mem::offset_of!(PoolInfo, buf), 8);
    }

    #[test]
    fn a_spec_without_the_fields_changes_nothing() {
        let spec = LaunchSpec::new(vec!["true".into()]);
        apply(&spec).unwrap();
    }
}
