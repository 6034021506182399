//! The virtio-blk device: features, configuration space, and the glue
//! between its queue and [`super::request`].

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use tracing::debug;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{DiskError, DiskFile};
use super::request::process_chain;
use super::{QUEUE_SIZE, SECTOR_SIZE, SERIAL_LEN};
use crate::common::{read_config_bytes, throttled_warn, CommonError, LogThrottle, VirtioCommon};
use crate::queue::DrainOutcome;
use crate::{
    ActivateError, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// Feature: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` in the config space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: the device has a write cache and honours FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Configuration space length exposed: capacity, size_max, seg_max,
/// geometry, blk_size (the fields our features make valid).
const CONFIG_LEN: usize = 24;

/// How to build a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Serial, returned by `VIRTIO_BLK_T_GET_ID` (`/sys/block/vdX/serial`);
    /// init finds disks by it. At most 20 bytes, no NUL.
    pub id: String,
    /// Raw disk image (regular file or block device), size a multiple of 512.
    pub path: PathBuf,
    /// Open `O_RDONLY` and offer `VIRTIO_BLK_F_RO`; writes fail with IOERR.
    pub read_only: bool,
}

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The serial does not fit the 20-byte GET_ID answer.
    #[error("block device id {id:?} is {len} bytes; virtio-blk serials hold at most 20 bytes")]
    IdTooLong {
        /// The id.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The serial would be cut short by the guest at the NUL.
    #[error("block device id {0:?} contains a NUL byte")]
    IdHasNul(String),
    /// The disk image is unusable.
    #[error("block device {id:?}: {source}")]
    Disk {
        /// The device id.
        id: String,
        /// Cause.
        #[source]
        source: DiskError,
    },
    /// EventFd or interrupt creation failed.
    #[error("block device {id:?}: {source}")]
    Common {
        /// The device id.
        id: String,
        /// Cause.
        #[source]
        source: CommonError,
    },
}

/// A virtio-blk device backed by a raw image.
#[derive(Debug)]
pub struct Block {
    id: String,
    serial: [u8; SERIAL_LEN],
    disk: DiskFile,
    config_space: [u8; CONFIG_LEN],
    pub(crate) common: VirtioCommon,
    queue_throttle: LogThrottle,
    request_throttle: LogThrottle,
    queue_max_sizes: [u16; 1],
}

impl Block {
    /// Opens the image and builds the device.
    pub fn new(cfg: BlockConfig) -> Result<Self, BlockError> {
        let id_bytes = cfg.id.as_bytes();
        if id_bytes.len() > SERIAL_LEN {
            return Err(BlockError::IdTooLong {
                len: id_bytes.len(),
                id: cfg.id,
            });
        }
        if id_bytes.contains(&0) {
            return Err(BlockError::IdHasNul(cfg.id));
        }
        let mut serial = [0u8; SERIAL_LEN];
        serial[..id_bytes.len()].copy_from_slice(id_bytes);

        let disk = DiskFile::open(&cfg.path, cfg.read_only).map_err(|source| BlockError::Disk {
            id: cfg.id.clone(),
            source,
        })?;

        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            // A large request then takes one ring slot instead of up to
            // seg_max + 2; virtio-queue walks (and bounds) the tables.
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE);
        if cfg.read_only {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        }
        let queue_max_sizes = [QUEUE_SIZE];
        let common =
            VirtioCommon::new(features, &queue_max_sizes).map_err(|source| BlockError::Common {
                id: cfg.id.clone(),
                source,
            })?;

        let mut config_space = [0u8; CONFIG_LEN];
        config_space[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        // size_max (8..12) stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered.
        // Header and status take two descriptors of each chain.
        config_space[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        // geometry (16..20) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        config_space[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        Ok(Self {
            id: cfg.id,
            serial,
            disk,
            config_space,
            common,
            queue_throttle: LogThrottle::default(),
            request_throttle: LogThrottle::default(),
            queue_max_sizes,
        })
    }

    /// The device id (serial).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Processes every available request of queue `index`.
    pub fn process_queue(&mut self, index: usize) -> DrainOutcome {
        let disk = &self.disk;
        let serial = &self.serial;
        let id = &self.id;
        let request_throttle = &mut self.request_throttle;
        self.common
            .drain_queue(index, &mut self.queue_throttle, |chain| {
                let done = process_chain(chain, disk, serial);
                if let Some(e) = &done.error {
                    let answer = match done.status {
                        Some(s) => format!("answered with status {s}"),
                        None => "dropped, no usable status byte".to_string(),
                    };
                    throttled_warn(
                        request_throttle,
                        &format!("virtio-blk {id}: bad request"),
                        &format_args!("{e} ({answer})"),
                    );
                }
                done.used_len
            })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.set_acked_features(features);
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field we expose is read-only (no CONFIG_WCE).
        debug!(
            "virtio-blk {}: ignored config write of {} bytes at {offset:#x}",
            self.id,
            data.len()
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.common.activate(mem, queues)
    }

    fn reset(&mut self) {
        self.common.reset();
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        self.common.queue_positions()
    }

    fn queue_events(&self) -> &[EventFd] {
        self.common.queue_evts()
    }

    fn interrupt_evt(&self) -> &EventFd {
        self.common.interrupt().evt()
    }

    fn interrupt_status(&self) -> Arc<AtomicU32> {
        self.common.interrupt().status()
    }
}
