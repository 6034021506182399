//! virtio 1.x devices over the MMIO transport, for `mvm-vmm`.
//!
//! The crate is separate from the VMM so that every line that touches guest
//! descriptors can be unit-tested against plain guest memory, without KVM
//! (the same split as Cloud Hypervisor's `virtio-devices`).
//!
//! # How the VMM wires a device
//!
//! ```text
//!   let blk = Arc::new(Mutex::new(Block::new(cfg)?));        // or Rng::new()?
//!   // 1. the MMIO bus: guest loads/stores in the 4 KiB window go to the transport
//!   let transport = MmioTransport::new(mem.clone(), blk.clone());
//!   // 2. KVM: one ioeventfd per queue at window_base + NOTIFY_REG_OFFSET with
//!   //    datamatch = queue index, and the interrupt EventFd as an irqfd
//!   for (i, evt) in blk.lock().unwrap().queue_events().iter().enumerate() {
//!       vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET), i as u32)?;
//!   }
//!   vm.register_irqfd(blk.lock().unwrap().interrupt_evt(), gsi)?;
//!   // 3. the event loop: the device is its own event_manager subscriber
//!   event_manager.add_subscriber(blk.clone());   // Arc<Mutex<dyn MutEventSubscriber + Send>>
//!   // 4. the guest learns about it from the kernel command line:
//!   //    virtio_mmio.device=4K@0x<base>:<gsi>
//! ```
//!
//! The device lives behind one `Arc<Mutex<_>>` shared by the transport (vCPU
//! threads, MMIO exits) and the event loop (queue processing), exactly as in
//! Firecracker. The subscriber first watches only an internal *activate*
//! EventFd; when the driver sets `DRIVER_OK` the transport calls
//! [`VirtioDevice::activate`], which signals it, and the event loop then starts
//! watching the queue EventFds. A write to `QueueNotify` that reaches the
//! transport (no ioeventfd registered) is forwarded to the same queue EventFd,
//! so both paths behave identically.
//!
//! # Adding a device
//!
//! Implement [`VirtioDevice`] and `event_manager::MutEventSubscriber`, keep the
//! shared state in a [`common::VirtioCommon`], and drain queues with
//! [`queue::drain_queue`], which already copes with hostile rings and decides
//! when to interrupt the guest.

use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub mod block;
pub mod common;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod queue;
pub mod rate_limiter;
pub mod rng;
pub mod transport;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;
#[cfg(test)]
mod wiring_tests;

pub use transport::MmioTransport;

/// Offset of the `QueueNotify` register in the MMIO window: the VMM registers
/// the queue EventFds as ioeventfds at `window base + NOTIFY_REG_OFFSET`,
/// with the queue index as datamatch.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

/// Size of one device's MMIO window (`virtio_mmio.device=4K@...`).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// virtio device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
/// virtio-blk device ID.
pub const TYPE_BLOCK: u32 = 2;
/// virtio-rng (entropy) device ID.
pub const TYPE_RNG: u32 = 4;
/// virtio-vsock device ID.
pub const TYPE_VSOCK: u32 = 19;
/// virtio-fs device ID.
pub const TYPE_FS: u32 = 26;

/// Feature bit: the device follows virtio 1.x (mandatory for MMIO version 2).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: descriptors may point to indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event`/`avail_event` interrupt suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// InterruptStatus bit 0: the device used a buffer in some queue.
pub const INTERRUPT_STATUS_USED_RING: u32 = 0x1;
/// InterruptStatus bit 1: the configuration space changed.
pub const INTERRUPT_STATUS_CONFIG_CHANGED: u32 = 0x2;

/// Why a device refused to activate. The transport then sets
/// `DEVICE_NEEDS_RESET` in the Status register instead of `DRIVER_OK`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport passed a different number of queues than the device has.
    #[error("the device has {expected} queues but {got} were passed to activate()")]
    QueueCount {
        /// Number of queues the device offers.
        expected: usize,
        /// Number of queues passed in.
        got: usize,
    },
    /// `activate()` was called twice without a reset in between.
    #[error("the device is already active; the driver must reset it before activating it again")]
    AlreadyActive,
    /// The activate EventFd could not be written, so the event loop would
    /// never start watching the queues.
    #[error("cannot signal the device's activate EventFd: {0}")]
    ActivateEvent(#[source] io::Error),
    /// The device's out-of-process backend (vhost-user) refused or failed.
    #[error("{0}")]
    Backend(String),
}

/// A virtio device as seen by a transport.
///
/// The transport owns the register state machine and the queue
/// configuration; the device owns its features, its configuration space, its
/// EventFds and, once active, the queues and the guest memory.
pub trait VirtioDevice: Send {
    /// virtio device ID ([`TYPE_BLOCK`], [`TYPE_RNG`], ...).
    fn device_type(&self) -> u32;

    /// Features the device offers (must include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;

    /// Features the driver acknowledged (set by the transport at `FEATURES_OK`).
    fn acked_features(&self) -> u64;

    /// Records the features the driver acknowledged. The transport only calls
    /// this with a subset of [`VirtioDevice::avail_features`].
    fn set_acked_features(&mut self, features: u64);

    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the device-specific configuration space at `offset` (relative to
    /// the start of the configuration space). Bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space; read-only fields and
    /// bytes past the end are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the queues the driver configured (one per entry
    /// of [`VirtioDevice::queue_max_sizes`], not-ready ones included).
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError>;

    /// Returns the device to its pre-activation state: queues and guest
    /// memory dropped, acked features cleared. EventFds stay the same, so the
    /// ioeventfd/irqfd registrations remain valid across resets.
    fn reset(&mut self);

    /// Whether [`VirtioDevice::activate`] succeeded and no reset followed.
    fn is_activated(&self) -> bool;

    /// One EventFd per queue, signalled when the driver notifies that queue.
    /// The VMM registers them as ioeventfds on the `QueueNotify` register.
    fn queue_events(&self) -> &[EventFd];

    /// The EventFd the device writes to interrupt the guest; the VMM
    /// registers it as an irqfd on the device's GSI.
    fn interrupt_evt(&self) -> &EventFd;

    /// The InterruptStatus register, shared between device (sets bits) and
    /// transport (reads it, clears bits on InterruptACK).
    fn interrupt_status(&self) -> Arc<AtomicU32>;

    /// Where each active queue stands, `(next_avail, next_used)`, for a
    /// snapshot; `None` while the device is not active.
    fn queue_positions(&self) -> Option<Vec<(u16, u16)>>;

    /// Called with the vCPUs paused, before the device's state is read
    /// for a snapshot. A device whose state lives outside the VMM and
    /// cannot be saved refuses (`Err` with the reason); vsock resets its
    /// connections here, as Firecracker does.
    fn prepare_snapshot(&mut self) -> Result<(), String> {
        Ok(())
    }
}
