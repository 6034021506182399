//! virtio over MMIO, register layout version 2 (virtio 1.2, section 4.2.2).
//!
//! The transport is the guest's only handle on a device before it is active,
//! so it owns the driver-facing state machine: feature negotiation, queue
//! configuration and the Status register. Every access comes from a vCPU
//! exit and is guest-controlled: wrong widths, unaligned or unknown offsets
//! and out-of-order status transitions are ignored (reads return 0) with a
//! throttled warning, never a panic.
//!
//! Status transitions accepted, one bit at a time, as the spec orders them:
//! `0 -> ACKNOWLEDGE -> +DRIVER -> +FEATURES_OK -> +DRIVER_OK`; `FAILED` from
//! anywhere; writing 0 resets. `FEATURES_OK` is refused (the bit stays
//! clear, which is how the driver learns) if the driver acked a feature the
//! device did not offer or did not ack `VIRTIO_F_VERSION_1`. At `DRIVER_OK`
//! every ready queue must lie in guest memory; otherwise, or if the device
//! refuses to activate, `DEVICE_NEEDS_RESET` is set instead.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use serde::{Deserialize, Serialize};

use crate::common::LogThrottle;
use crate::{
    VirtioDevice, MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Register layout version: 2 is virtio 1.x ("modern"); 1 was legacy.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver; Linux ignores it.
pub const MMIO_VENDOR_ID: u32 = 0;

// Register offsets (virtio 1.2, table 4.1).
const REG_MAGIC_VALUE: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and the device may run.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}
use status::*;

/// The MMIO register file of one virtio device.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt_status: Arc<AtomicU32>,
    queues: Vec<Queue>,
    device_status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    /// The driver wrote a non-zero value to a feature word past bit 63.
    driver_features_beyond_64: bool,
    queue_select: u32,
    config_generation: u32,
    throttle: LogThrottle,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_status", &self.device_status)
            .field("queue_select", &self.queue_select)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Locks a device, recovering from poisoning: the device state is plain
/// data and a panic elsewhere must not turn every later MMIO exit into one.
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MmioTransport {
    /// Creates the register file of `device`. `mem` is handed to the device
    /// when the driver sets `DRIVER_OK`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let (queues, interrupt_status) = {
            let dev = lock(&device);
            (
                Self::fresh_queues(dev.queue_max_sizes()),
                dev.interrupt_status(),
            )
        };
        Self {
            mem,
            device,
            interrupt_status,
            queues,
            device_status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_select: 0,
            config_generation: 0,
            throttle: LogThrottle::default(),
        }
    }

    fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
        max_sizes
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                Queue::new(max).unwrap_or_else(|e| {
                    // A device bug, not a guest one: the queue then reports
                    // QueueNumMax 0, which tells the driver it is absent.
                    warn!("virtio-mmio: queue {i} has unusable maximum size {max}: {e}");
                    Queue::default()
                })
            })
            .collect()
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The Status register as the driver sees it.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// Whether the device is active (driver set `DRIVER_OK` and activation
    /// succeeded, no reset since).
    pub fn is_activated(&self) -> bool {
        lock(&self.device).is_activated()
    }

    fn warn_bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if self.throttle.should_log() {
            warn!(
                "virtio-mmio: ignored {what} of {len} bytes at offset {offset:#x} (status {:#x}; occurrence {})",
                self.device_status,
                self.throttle.count()
            );
        }
    }

    fn has_status(&self, set: u32, clear: u32) -> bool {
        self.device_status & set == set && self.device_status & clear == 0
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has_status(FEATURES_OK, DRIVER_OK | FAILED | DEVICE_NEEDS_RESET)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Handles a guest load of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if (CONFIG_SPACE_OFFSET..MMIO_WINDOW_SIZE).contains(&offset) {
            let fits = offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MMIO_WINDOW_SIZE);
            if !matches!(data.len(), 1 | 2 | 4 | 8) || !fits {
                self.warn_bad_access("config read", offset, data.len());
            } else if self.has_status(DRIVER, FAILED) {
                lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                self.warn_bad_access("config read before DRIVER", offset, data.len());
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.warn_bad_access("register read", offset, data.len());
            return;
        }
        let value = match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => lock(&self.device).device_type(),
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            REG_STATUS => self.device_status,
            // All ones length: this device has no shared memory regions.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                self.warn_bad_access("read of unknown or write-only register", offset, 4);
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest store of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if (CONFIG_SPACE_OFFSET..MMIO_WINDOW_SIZE).contains(&offset) {
            let fits = offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MMIO_WINDOW_SIZE);
            if !matches!(data.len(), 1 | 2 | 4 | 8) || !fits {
                self.warn_bad_access("config write", offset, data.len());
            } else if self.has_status(DRIVER, FAILED) {
                lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                self.warn_bad_access("config write before DRIVER", offset, data.len());
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.warn_bad_access("register write", offset, data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            self.warn_bad_access("register write", offset, data.len());
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => self.write_status(value),
            // There are no shared memory regions to select; every SHMLen
            // read answers "none" whatever the selection.
            REG_SHM_SEL => {}
            _ => self.warn_bad_access("write to unknown or read-only register", offset, 4),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has_status(
            ACKNOWLEDGE | DRIVER,
            FEATURES_OK | FAILED | DEVICE_NEEDS_RESET,
        ) {
            self.warn_bad_access(
                "DriverFeatures write outside feature negotiation",
                REG_DRIVER_FEATURES,
                4,
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => self.driver_features_beyond_64 |= value != 0,
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            self.warn_bad_access("queue register write outside queue setup", offset, 4);
            return;
        }
        let index = self.queue_select as usize;
        let Some(queue) = self.queues.get_mut(index) else {
            self.warn_bad_access(
                "queue register write for a queue that does not exist",
                offset,
                4,
            );
            return;
        };
        if offset == REG_QUEUE_READY {
            queue.set_ready(value == 1);
            return;
        }
        if queue.ready() {
            // virtio 1.2, 4.2.2.2: the driver must not change a live queue.
            self.warn_bad_access("queue register write while the queue is ready", offset, 4);
            return;
        }
        match offset {
            // Invalid sizes (0, > max, not a power of two) are refused by
            // virtio-queue, which keeps the previous one.
            REG_QUEUE_NUM => queue.set_size(value.try_into().unwrap_or(0)),
            REG_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            REG_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            REG_QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            REG_QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            REG_QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            REG_QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    /// A QueueNotify that reached the VMM (no ioeventfd registered, or
    /// before registration): forward it to the queue EventFd so the event
    /// loop handles it the same way.
    fn notify(&mut self, value: u32) {
        let device = lock(&self.device);
        if !device.is_activated() {
            drop(device);
            self.warn_bad_access("QueueNotify before DRIVER_OK", REG_QUEUE_NOTIFY, 4);
            return;
        }
        match device.queue_events().get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => {
                drop(device);
                self.warn_bad_access(
                    "QueueNotify for a queue that does not exist",
                    REG_QUEUE_NOTIFY,
                    4,
                );
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.device_status;
        if value & FAILED != 0 {
            // The driver gave up; keep everything else as it is.
            self.device_status |= FAILED;
            return;
        }
        if value & current != current {
            self.warn_status(
                value,
                "the driver may not clear status bits except by writing 0",
            );
            return;
        }
        let new_bits = value & !current;
        match (current, new_bits) {
            (_, 0) => {}
            (0, ACKNOWLEDGE) => self.device_status = ACKNOWLEDGE,
            (ACKNOWLEDGE, DRIVER) => self.device_status |= DRIVER,
            (s, FEATURES_OK) if s == ACKNOWLEDGE | DRIVER => self.negotiate_features(),
            (s, DRIVER_OK) if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => self.activate(),
            _ => self.warn_status(value, "out-of-order status transition"),
        }
    }

    /// A warning caused by the guest, through the transport's throttle (it
    /// survives device resets, so a driver looping through resets cannot
    /// flood the log either).
    fn warn_guest(&mut self, message: std::fmt::Arguments<'_>) {
        if self.throttle.should_log() {
            warn!(
                "virtio-mmio: {message} (occurrence {}; later ones are logged sparsely)",
                self.throttle.count()
            );
        }
    }

    fn warn_status(&mut self, value: u32, why: &str) {
        if self.throttle.should_log() {
            warn!(
                "virtio-mmio: ignored Status write {value:#x} over {:#x}: {why}",
                self.device_status
            );
        }
    }

    fn negotiate_features(&mut self) {
        let mut device = lock(&self.device);
        let offered = device.avail_features();
        let acked = self.driver_features;
        let unoffered = acked & !offered;
        if unoffered != 0 || self.driver_features_beyond_64 {
            drop(device);
            let beyond = self.driver_features_beyond_64;
            self.warn_guest(format_args!(
                "refusing FEATURES_OK: the driver acked features {unoffered:#x} \
                 (beyond bit 63: {beyond}) that the device does not offer ({offered:#x})"
            ));
            return;
        }
        if acked & (1 << VIRTIO_F_VERSION_1) == 0 {
            drop(device);
            self.warn_guest(format_args!(
                "refusing FEATURES_OK: the driver did not ack VIRTIO_F_VERSION_1 \
                 (legacy drivers are not supported)"
            ));
            return;
        }
        device.set_acked_features(acked);
        self.device_status |= FEATURES_OK;
    }

    fn activate(&mut self) {
        let unfit = self
            .queues
            .iter()
            .enumerate()
            .find(|(_, q)| q.ready() && !q.is_valid(&self.mem))
            .map(|(i, q)| (i, q.size(), q.desc_table(), q.avail_ring(), q.used_ring()));
        if let Some((i, size, desc, avail, used)) = unfit {
            self.warn_guest(format_args!(
                "refusing DRIVER_OK: queue {i} (size {size}, desc {desc:#x}, avail {avail:#x}, \
                 used {used:#x}) does not fit in guest memory"
            ));
            self.device_status |= DEVICE_NEEDS_RESET;
            return;
        }
        let mut device = lock(&self.device);
        let event_idx = device.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match Queue::try_from(q.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(event_idx);
                    queues.push(copy);
                }
                Err(e) => {
                    drop(device);
                    self.warn_guest(format_args!(
                        "refusing DRIVER_OK: queue {i} is inconsistent: {e}"
                    ));
                    self.device_status |= DEVICE_NEEDS_RESET;
                    return;
                }
            }
        }
        match device.activate(self.mem.clone(), queues) {
            Ok(()) => {
                self.device_status |= DRIVER_OK;
                debug!("virtio-mmio: device type {} active", device.device_type());
            }
            Err(e) => {
                let kind = device.device_type();
                drop(device);
                self.warn_guest(format_args!("device type {kind} failed to activate: {e}"));
                self.device_status |= DEVICE_NEEDS_RESET;
            }
        }
    }

    /// Device reset (Status written 0): everything back to power-on state.
    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        self.queues = Self::fresh_queues(device.queue_max_sizes());
        drop(device);
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.device_status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_select = 0;
    }
}

/// One queue as a snapshot keeps it: what the driver configured, and
/// where the device stands in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// The transport's registers and its device's queues and features, for a
/// snapshot ([`MmioTransport::save`], [`MmioTransport::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub device_status: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub driver_features_beyond_64: bool,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
}

/// Why a transport's snapshot state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot has a device of type {found} where this VM has type {expected}")]
    DeviceType { expected: u32, found: u32 },
    #[error("the snapshot's device of type {kind} has {found} queues; the device has {expected}")]
    QueueCount {
        kind: u32,
        expected: usize,
        found: usize,
    },
    #[error("queue {index} of device type {kind}: {detail}")]
    Queue {
        kind: u32,
        index: usize,
        detail: String,
    },
    #[error("device type {kind}: the driver's features {features:#x} are not all offered ({offered:#x})")]
    Features {
        kind: u32,
        features: u64,
        offered: u64,
    },
    #[error("device type {kind} did not activate: {detail}")]
    Activate { kind: u32, detail: String },
}

impl MmioTransport {
    /// Snapshot the transport and its device's queues (vCPUs paused).
    pub fn save(&self) -> MmioState {
        let device = lock(&self.device);
        let positions = device.queue_positions();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (next_avail, next_used) = positions
                    .as_ref()
                    .and_then(|p| p.get(i).copied())
                    .unwrap_or((q.next_avail(), q.next_used()));
                QueueSnapshot {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail,
                    next_used,
                }
            })
            .collect();
        MmioState {
            device_type: device.device_type(),
            device_status: self.device_status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            driver_features_beyond_64: self.driver_features_beyond_64,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            queues,
        }
    }

    /// Put a fresh transport (and its fresh device) in the state `s`,
    /// activating the device if the driver had. Everything in `s` is
    /// checked as the register writes that led to it would have been:
    /// queues must fit guest memory and features must be offered.
    pub fn restore(&mut self, s: &MmioState) -> Result<(), RestoreError> {
        let mut device = lock(&self.device);
        let kind = device.device_type();
        if s.device_type != kind {
            return Err(RestoreError::DeviceType {
                expected: kind,
                found: s.device_type,
            });
        }
        let max_sizes = device.queue_max_sizes().to_vec();
        if s.queues.len() != max_sizes.len() {
            return Err(RestoreError::QueueCount {
                kind,
                expected: max_sizes.len(),
                found: s.queues.len(),
            });
        }
        let offered = device.avail_features();
        if s.driver_features & !offered != 0 {
            return Err(RestoreError::Features {
                kind,
                features: s.driver_features,
                offered,
            });
        }
        let queue_err = |index: usize, detail: String| RestoreError::Queue {
            kind,
            index,
            detail,
        };
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (i, (qs, &max)) in s.queues.iter().zip(&max_sizes).enumerate() {
            let mut q = Queue::new(max).map_err(|e| queue_err(i, e.to_string()))?;
            if qs.size > max {
                return Err(queue_err(
                    i,
                    format!("size {} above the maximum {max}", qs.size),
                ));
            }
            // The `try_` setters: the plain ones ignore a bad value and
            // keep the default, which would restore a queue other than
            // the guest's without a word.
            q.try_set_size(qs.size)
                .map_err(|e| queue_err(i, format!("size {}: {e}", qs.size)))?;
            for (what, addr, set) in [
                (
                    "descriptor table",
                    qs.desc_table,
                    Queue::try_set_desc_table_address as fn(&mut Queue, _) -> _,
                ),
                (
                    "available ring",
                    qs.avail_ring,
                    Queue::try_set_avail_ring_address,
                ),
                ("used ring", qs.used_ring, Queue::try_set_used_ring_address),
            ] {
                set(&mut q, GuestAddress(addr))
                    .map_err(|e| queue_err(i, format!("{what} at {addr:#x}: {e}")))?;
            }
            q.set_next_avail(qs.next_avail);
            q.set_next_used(qs.next_used);
            q.set_ready(qs.ready);
            if qs.ready && !q.is_valid(&self.mem) {
                return Err(queue_err(
                    i,
                    format!(
                        "size {}, desc {:#x}, avail {:#x}, used {:#x} do not fit guest memory",
                        qs.size, qs.desc_table, qs.avail_ring, qs.used_ring
                    ),
                ));
            }
            queues.push(q);
        }
        if s.device_status & DRIVER_OK != 0 {
            device.set_acked_features(s.driver_features);
            let event_idx = s.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            let mut active = Vec::with_capacity(queues.len());
            for (i, q) in queues.iter().enumerate() {
                let mut copy =
                    Queue::try_from(q.state()).map_err(|e| queue_err(i, e.to_string()))?;
                copy.set_event_idx(event_idx);
                active.push(copy);
            }
            device
                .activate(self.mem.clone(), active)
                .map_err(|e| RestoreError::Activate {
                    kind,
                    detail: e.to_string(),
                })?;
        } else if s.device_status & FEATURES_OK != 0 {
            device.set_acked_features(s.driver_features);
        }
        drop(device);
        self.queues = queues;
        self.device_status = s.device_status;
        self.device_features_select = s.device_features_select;
        self.driver_features_select = s.driver_features_select;
        self.driver_features = s.driver_features;
        self.driver_features_beyond_64 = s.driver_features_beyond_64;
        self.queue_select = s.queue_select;
        self.config_generation = s.config_generation;
        self.interrupt_status
            .store(s.interrupt_status, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
