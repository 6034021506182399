//! virtio-blk: a raw disk image (regular file or block device) as a virtio
//! block device.
//!
//! - [`device`]: the `Block` device (features, config space, queue draining).
//! - [`disk`]: the backing file and positioned I/O straight into guest memory.
//! - [`request`]: parsing a descriptor chain into a request and executing it;
//!   all validation of guest input happens there.
//! - [`event_handler`]: the `event_manager` subscriber.

pub mod device;
pub mod disk;
pub mod event_handler;
pub mod request;

pub use device::{Block, BlockConfig, BlockError};
pub use disk::{DiskError, DiskFile};

/// virtio-blk addresses the disk in 512-byte sectors, whatever the
/// backing file's block size.
pub const SECTOR_SHIFT: u32 = 9;
/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the `VIRTIO_BLK_T_GET_ID` answer (the serial), NUL-padded.
pub const SERIAL_LEN: usize = 20;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
