//! virtio-fs as a vhost-user frontend: a host directory the guest mounts
//! with `mount -t virtiofs TAG DIR`, its FUSE requests served by a separate
//! backend process (virtiofsd) that reads the queues straight from guest
//! memory.
//!
//! The VMM does almost nothing on the data path, which is the point: the
//! backend is sandboxed away from the VMM (its own mount namespace holding
//! only the shared directory, its own seccomp filter), and a bug in FUSE
//! request handling lands there, not in the process that holds KVM.
//!
//! It lives in this crate with the other virtio devices rather than in the
//! VMM's `devices/`: it is a [`crate::VirtioDevice`] behind the same MMIO
//! transport, and its whole protocol side is unit-tested against a fake
//! backend without KVM. The VMM only gives it the failure hook.
//!
//! - [`backend`]: the vhost-user session with the backend (rust-vmm's
//!   `vhost` crate, frontend side): handshake, memory table (the guest RAM
//!   memfd, passed as file descriptors), vrings, and a watchdog that turns
//!   a backend that stops answering into an error instead of a hang.
//! - [`device`]: the virtio device: features (what the backend offers and
//!   the transport supports), configuration space (tag, one request
//!   queue), activation and reset.
//! - [`event_handler`]: the `event_manager` subscriber: relays the
//!   backend's "used buffers" notifications to the guest interrupt, and
//!   notices when the backend goes away.
//!
//! # Notifications
//!
//! Kicks need no VMM work: the queue EventFds that KVM signals on a
//! `QueueNotify` write (ioeventfds) are handed to the backend as its kick
//! descriptors. Calls take one hop through the VMM: a virtio-mmio driver
//! reads InterruptStatus in its handler and ignores the interrupt unless
//! the used-ring bit is set, and only the VMM can set that bit. So the
//! backend signals a call EventFd the VMM watches, and the VMM sets the
//! bit and raises the irqfd ([`crate::interrupt::Interrupt`]).
//!
//! # Failure
//!
//! A backend is required by the guest (its mounts hang without one), so a
//! backend that closes its socket, answers wrongly or not at all within
//! [`BACKEND_TIMEOUT`] ends the VM through the failure hook the VMM gives
//! the device, with a message naming the tag. Reconnection is not
//! supported. DAX (mapping the host page cache into the guest) is not
//! offered: it needs a shared-memory window the VMM does not have.

pub mod backend;
pub mod device;
pub mod event_handler;

pub use backend::{Backend, BackendError, ThreadHook};
pub use device::{FailureHook, Fs, FsConfig, FsError};

use std::time::Duration;

/// Queue index of the high-priority queue (FUSE interrupts and forgets).
pub const HIPRIO_QUEUE: usize = 0;
/// Request queues the device offers (`num_request_queues`): one. Linux's
/// driver uses one request queue whatever the number offered (6.12).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Queues in all: the high-priority queue and the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Bytes of the tag in the configuration space (NUL-padded).
pub const TAG_LEN: usize = 36;
/// Largest queue size the virtio spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Longest a backend may take to answer one exchange (a handshake, a
/// device start or stop: a handful of messages it answers in
/// microseconds). Past it the socket is shut down and the device fails.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
