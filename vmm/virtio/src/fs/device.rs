//! The virtio-fs device: what the guest's driver sees (features, the tag
//! in the configuration space, two queues), with the queues handed to the
//! backend at `DRIVER_OK` and taken back at reset.

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use tracing::{debug, error};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Backend, BackendError, ThreadHook};
use super::{BACKEND_TIMEOUT, MAX_QUEUE_SIZE, NUM_QUEUES, NUM_REQUEST_QUEUES, TAG_LEN};
use crate::common::{read_config_bytes, CommonError, VirtioCommon};
use crate::{
    ActivateError, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// Features the device passes on from the backend: the ones the
/// transport and the ring layout support. Everything else a backend
/// offers (notification queues, DAX-related bits, packed rings) is
/// withheld from the guest.
const PASSED_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// Called once when the backend fails (with a message naming the tag):
/// the VMM ends the VM, since the guest's mounts cannot work without it.
pub type FailureHook = Arc<dyn Fn(String) + Send + Sync>;

/// How to build a virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (1 to 36 bytes; the VMM validates it).
    pub tag: String,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Size of each queue.
    pub queue_size: u16,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// EventFds or the interrupt could not be created.
    #[error("virtio-fs {tag:?}: {source}")]
    Common {
        /// The share.
        tag: String,
        /// Why.
        source: CommonError,
    },
    /// The tag does not fit the configuration space.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
    /// The queue size is not a power of two up to 32768.
    #[error("virtio-fs {tag:?}: queue size {size} must be a power of two between 2 and {MAX_QUEUE_SIZE}")]
    QueueSize {
        /// The share.
        tag: String,
        /// The size asked for.
        size: u16,
    },
    /// The backend could not be reached or refused the handshake.
    #[error("virtio-fs {tag:?}, backend at {socket}: {source}")]
    Backend {
        /// The share.
        tag: String,
        /// Its socket.
        socket: PathBuf,
        /// Why.
        source: BackendError,
    },
}

/// A virtio-fs device served by a vhost-user backend.
pub struct Fs {
    pub(crate) common: VirtioCommon,
    pub(crate) backend: Backend,
    /// The backend signals it when it used buffers; the event loop turns
    /// that into the guest interrupt.
    pub(crate) call: EventFd,
    config: [u8; TAG_LEN + 4],
    queue_max_sizes: [u16; NUM_QUEUES],
    tag: String,
    on_failure: FailureHook,
    /// Set once the backend failed: the device is inert from then on.
    pub(crate) failed: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("backend", &self.backend)
            .field("active", &self.common.is_activated())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the backend and builds the device. A backend that is
    /// not there, or not a virtio 1.x vhost-user backend, is an error now,
    /// before the guest runs.
    /// `hook` runs first on the backend's watchdog thread (the VMM
    /// installs its seccomp filter there: [`super::backend`]).
    pub fn new(
        cfg: FsConfig,
        on_failure: FailureHook,
        hook: Option<ThreadHook>,
    ) -> Result<Self, FsError> {
        Self::with_timeout(cfg, on_failure, BACKEND_TIMEOUT, hook)
    }

    /// [`Fs::new`] with another deadline for backend exchanges (tests).
    pub fn with_timeout(
        cfg: FsConfig,
        on_failure: FailureHook,
        timeout: std::time::Duration,
        hook: Option<ThreadHook>,
    ) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(FsError::Tag(cfg.tag));
        }
        if cfg.queue_size < 2
            || cfg.queue_size > MAX_QUEUE_SIZE
            || !cfg.queue_size.is_power_of_two()
        {
            return Err(FsError::QueueSize {
                tag: cfg.tag,
                size: cfg.queue_size,
            });
        }
        let backend =
            Backend::connect(&cfg.socket, NUM_QUEUES, timeout, hook).map_err(|source| {
                FsError::Backend {
                    tag: cfg.tag.clone(),
                    socket: cfg.socket.clone(),
                    source,
                }
            })?;
        let features = backend.features() & PASSED_FEATURES;
        let queue_max_sizes = [cfg.queue_size; NUM_QUEUES];
        let common_err = |source| FsError::Common {
            tag: cfg.tag.clone(),
            source,
        };
        let common = VirtioCommon::new(features, &queue_max_sizes).map_err(common_err)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(|e| common_err(CommonError::EventFd(e)))?;
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; TAG_LEN + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        debug!(
            "virtio-fs {:?}: backend at {} offers features {:#x}; passing {features:#x}",
            cfg.tag,
            cfg.socket.display(),
            backend.features()
        );
        Ok(Self {
            common,
            backend,
            call,
            config,
            queue_max_sizes,
            tag: cfg.tag,
            on_failure,
            failed: false,
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether the backend failed (the failure hook was called).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Records a backend failure once, tells the VMM, and makes the device
    /// inert (notifications are ignored from then on).
    pub(crate) fn fail(&mut self, why: &dyn std::fmt::Display) {
        if self.failed {
            return;
        }
        self.failed = true;
        let msg = format!("virtio-fs share {:?}: {why}", self.tag);
        error!("{msg}");
        (self.on_failure)(msg);
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
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
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for the driver.
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // Checked before the backend is told anything.
        if self.common.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if self.failed {
            return Err(ActivateError::Backend(format!(
                "the backend of virtio-fs share {:?} has failed",
                self.tag
            )));
        }
        let acked = self.common.acked_features();
        let result = self
            .backend
            .start(acked, &mem, &queues, self.common.queue_evts(), &self.call);
        if let Err(e) = result {
            let why = format!("starting the device on the backend: {e}");
            self.fail(&why);
            return Err(ActivateError::Backend(why));
        }
        self.common.activate(mem, queues)
    }

    fn reset(&mut self) {
        if self.common.is_activated() && !self.failed {
            if let Err(e) = self.backend.stop() {
                self.fail(&format_args!("stopping the device on the backend: {e}"));
            }
        }
        self.common.reset();
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn queue_positions(&self) -> Option<Vec<(u16, u16)>> {
        self.common.queue_positions()
    }

    fn prepare_snapshot(&mut self) -> Result<(), String> {
        Err(format!(
            "virtio-fs share {:?} cannot be snapshotted: its state lives in the virtiofsd \
             backend (a sandbox with volumes or bind mounts cannot be checkpointed)",
            self.tag
        ))
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

#[cfg(test)]
mod tests;
