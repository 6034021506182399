//! The virtio-rng device.

use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::common::{throttled_warn, CommonError, LogThrottle, VirtioCommon};
use crate::queue::DrainOutcome;
use crate::{ActivateError, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// EventFd or interrupt creation failed.
    #[error("virtio-rng: {0}")]
    Common(#[from] CommonError),
}

/// Why one request was dropped (used length 0).
#[derive(Debug, thiserror::Error)]
pub enum RngRequestError {
    /// The chain ends with NEXT set (loop, bad index, unreadable descriptor).
    #[error(
        "descriptor chain is cut short (loop, next index out of range or unreadable descriptor)"
    )]
    Truncated,
    /// virtio-rng buffers must all be device-writable.
    #[error("descriptor {0} is device-readable; virtio-rng only takes device-writable buffers")]
    ReadOnlyDescriptor(usize),
    /// A buffer is not in guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The host could not produce random bytes.
    #[error("getrandom failed: {0}")]
    GetRandom(#[source] io::Error),
}

/// The virtio-rng device. It has no configuration space and no features
/// beyond the transport ones.
#[derive(Debug)]
pub struct Rng {
    pub(crate) common: VirtioCommon,
    buffer: Vec<u8>,
    queue_throttle: LogThrottle,
    request_throttle: LogThrottle,
    queue_max_sizes: [u16; 1],
}

impl Rng {
    /// Builds the device.
    pub fn new() -> Result<Self, RngError> {
        let features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX);
        let queue_max_sizes = [QUEUE_SIZE];
        Ok(Self {
            common: VirtioCommon::new(features, &queue_max_sizes)?,
            buffer: Vec::new(),
            queue_throttle: LogThrottle::default(),
            request_throttle: LogThrottle::default(),
            queue_max_sizes,
        })
    }

    /// Processes every available request of queue `index`.
    pub fn process_queue(&mut self, index: usize) -> DrainOutcome {
        let buffer = &mut self.buffer;
        let request_throttle = &mut self.request_throttle;
        self.common
            .drain_queue(index, &mut self.queue_throttle, |chain| {
                match fill_chain(chain, buffer) {
                    Ok(n) => n,
                    Err(e) => {
                        throttled_warn(request_throttle, "virtio-rng: dropped request", &e);
                        0
                    }
                }
            })
    }
}

/// Fills the chain's buffers in order with up to [`MAX_REQUEST_BYTES`]
/// random bytes; returns how many were written. `buffer` is scratch space
/// kept between requests.
pub fn fill_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    buffer: &mut Vec<u8>,
) -> Result<u32, RngRequestError> {
    let mem = chain.memory();
    let mut targets: Vec<Descriptor> = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    for (i, desc) in chain.clone().enumerate() {
        last_has_next = desc.has_next();
        if !desc.is_write_only() {
            return Err(RngRequestError::ReadOnlyDescriptor(i));
        }
        let fits = usize::try_from(desc.len())
            .map(|len| mem.check_range(desc.addr(), len))
            .unwrap_or(false);
        if !fits {
            return Err(RngRequestError::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        if total < MAX_REQUEST_BYTES {
            total = total.saturating_add(desc.len() as usize);
            targets.push(desc);
        }
    }
    if last_has_next {
        return Err(RngRequestError::Truncated);
    }
    let total = total.min(MAX_REQUEST_BYTES);
    buffer.resize(total, 0);
    getrandom(&mut buffer[..total]).map_err(RngRequestError::GetRandom)?;
    let mut written = 0usize;
    for desc in targets {
        if written == total {
            break;
        }
        let n = (desc.len() as usize).min(total - written);
        mem.write_slice(&buffer[written..written + n], desc.addr())
            .map_err(|_| RngRequestError::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        written += n;
    }
    // total <= 64 KiB.
    Ok(written as u32)
}

/// Fills `buf` from the kernel CSPRNG.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, exclusively borrowed buffer of
        // `rest.len()` bytes; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast::<libc::c_void>(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

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

#[cfg(test)]
mod tests;
