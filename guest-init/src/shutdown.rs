//! The way out: make the scratch disk durable, tell the host, reboot.
//!
//! The overlay is `/` and cannot be unmounted from inside it, and the
//! scratch disk is only reachable through the handle kept at assembly. So
//! init `sync`s every filesystem and then freezes the scratch filesystem
//! (`FIFREEZE`): for ext4 that flushes the journal into place and marks the
//! filesystem clean, exactly what an unmount would leave. Tools on the host
//! that do not replay journals (`debugfs`) then see every write, and the
//! host may reuse the disk without recovery. Nothing writes after the
//! freeze: every process is gone and the reboot does not sync.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use mvm_protocol::status::GuestEvent;

/// `FIFREEZE` = `_IOWR('X', 119, int)`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;

/// Writable block volumes (their root directories), frozen with the
/// scratch disk at power-off.
static VOLUMES: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Freeze the filesystem behind `fd` at power-off, as the scratch disk's
/// (a writable block volume: its journal is then flushed into place).
pub fn freeze_at_power_off(fd: OwnedFd) {
    VOLUMES.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
}

fn freeze(fd: &OwnedFd, what: &str) {
    // SAFETY: FIFREEZE takes no pointer argument; `fd` is a valid open
    // descriptor on the filesystem to freeze.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FIFREEZE as _, 0) } != 0 {
        crate::warn!(
            "cannot freeze {what} ({}); synced data is safe but its journal may need replaying",
            std::io::Error::last_os_error()
        );
    }
}

/// Flush everything and freeze the scratch filesystem behind `scratch`
/// and the writable block volumes.
pub fn make_durable(scratch: Option<&OwnedFd>) {
    crate::sys::sync();
    for fd in VOLUMES.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        freeze(fd, "a block volume");
    }
    if let Some(fd) = scratch {
        freeze(fd, "the scratch disk");
    }
}

/// Report `event` (the workload's end, if known), make the scratch disk
/// durable, report the power-off intent and reboot (with `reboot=k` the
/// kernel resets through the i8042 and the VMM ends).
pub fn power_off(event: Option<GuestEvent>, scratch: Option<&OwnedFd>) -> ! {
    make_durable(scratch);
    if let Some(event) = event {
        crate::status::report(event);
    }
    crate::status::report(GuestEvent::PowerOff);
    // The console is a tty whose output drains through the UART's
    // interrupts, while the kernel's own reboot message is written to the
    // UART at once: without waiting, that message lands in the middle of
    // our last lines ("mvm-init: workloreboot: Restarting system\nad
    // exited with status 3", seen in guest-init/tests/qemu.rs). Not a tty
    // (ENOTTY) is fine: nothing is buffered then.
    // SAFETY: tcdrain(3) on the console's descriptor; no pointers.
    unsafe { libc::tcdrain(libc::STDERR_FILENO) };
    // SAFETY: reboot(2) with a constant command; as PID 1 we may.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    crate::error!("reboot failed: {}", std::io::Error::last_os_error());
    // PID 1 exiting panics the kernel, which (panic=-1) resets the guest:
    // the host sees a crash, which is what this is.
    // SAFETY: leaving without unwinding.
    unsafe { libc::_exit(1) }
}
