//! The device side of a virtio-mmio interrupt line.
//!
//! A virtio-mmio device has one interrupt: the guest reads InterruptStatus to
//! learn why it fired and acknowledges bits through InterruptACK. The VMM
//! registers [`Interrupt::evt`] as a KVM irqfd, so raising the line is one
//! `write(2)` from whichever thread processes the queue, with no VMM exit.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{INTERRUPT_STATUS_CONFIG_CHANGED, INTERRUPT_STATUS_USED_RING};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The interrupt EventFd could not be created.
    #[error("cannot create the interrupt EventFd: {0}")]
    Create(#[source] io::Error),
    /// The interrupt EventFd could not be written.
    #[error("cannot write the interrupt EventFd: {0}")]
    Trigger(#[source] io::Error),
}

/// InterruptStatus register plus the irqfd that raises the line.
#[derive(Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl Interrupt {
    /// Creates an interrupt with a fresh non-blocking EventFd and a cleared
    /// status register.
    pub fn new() -> Result<Self, InterruptError> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            evt: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::Create)?,
        })
    }

    /// The EventFd to register as irqfd.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// The shared InterruptStatus register.
    pub fn status(&self) -> Arc<AtomicU32> {
        self.status.clone()
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) -> Result<(), InterruptError> {
        self.signal(INTERRUPT_STATUS_USED_RING)
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) -> Result<(), InterruptError> {
        self.signal(INTERRUPT_STATUS_CONFIG_CHANGED)
    }

    fn signal(&self, bit: u32) -> Result<(), InterruptError> {
        // The status bit must be visible before the guest takes the interrupt
        // and reads InterruptStatus.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1).map_err(InterruptError::Trigger)
    }

    /// Clears the status register (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_queue_sets_bit_and_writes_eventfd() {
        let irq = Interrupt::new().unwrap();
        assert!(irq.evt().read().is_err(), "fresh EventFd must be empty");
        irq.signal_used_queue().unwrap();
        assert_eq!(
            irq.status().load(Ordering::SeqCst),
            INTERRUPT_STATUS_USED_RING
        );
        assert_eq!(irq.evt().read().unwrap(), 1);
        irq.signal_config_change().unwrap();
        assert_eq!(
            irq.status().load(Ordering::SeqCst),
            INTERRUPT_STATUS_USED_RING | INTERRUPT_STATUS_CONFIG_CHANGED
        );
        irq.reset();
        assert_eq!(irq.status().load(Ordering::SeqCst), 0);
    }
}
