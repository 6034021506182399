//! Address buses: the port I/O bus and the MMIO bus that vCPU exits are
//! dispatched on.
//!
//! Devices claim non-overlapping ranges when the VM is built; after that the
//! bus is read-only and shared by all vCPU threads, each device behind its
//! own mutex. An access nobody claimed is harmless: reads see all-ones (what
//! a floating ISA/PCI bus returns), writes vanish. The guest decides the
//! addresses, so nothing here may panic on them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range the
/// device was inserted with; `data.len()` is the access width (1, 2, 4 or
/// 8 bytes, chosen by the guest).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever built it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other: u64,
        other_len: u64,
    },
    #[error("bus range at {base:#x} has length zero or wraps around")]
    BadRange { base: u64 },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A bus: non-overlapping address ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base })?;
        let overlap = |(&b, e): (&u64, &Entry)| {
            (b < end && base < b + e.len).then_some(BusError::Overlap {
                base,
                len,
                other: b,
                other_len: e.len,
            })
        };
        // Only the nearest ranges on either side can overlap.
        if let Some(err) = self.ranges.range(..end).next_back().and_then(overlap) {
            return Err(err);
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering the whole access `[addr, addr + size)`, and the
    /// offset of `addr` in its range.
    fn lookup(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((&entry.device, offset))
    }

    /// Dispatch a read. Returns false (and fills `data` with all-ones) when
    /// no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device even if another vCPU thread panicked while holding it:
/// device state stays usable and the VMM can still report and exit.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offsets() {
        let mut bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(probe.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn overlaps_and_bad_ranges_are_rejected() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Probe::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        for (base, len) in [
            (0x100, 1),
            (0xf8, 0x9),
            (0x10f, 4),
            (0x0, 0x1000),
            (0x104, 2),
        ] {
            assert!(
                matches!(bus.insert(d(), base, len), Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x}"
            );
        }
        // Touching ranges are fine.
        bus.insert(d(), 0xf0, 0x10).unwrap();
        bus.insert(d(), 0x110, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0x200, 0),
            Err(BusError::BadRange { base: 0x200 })
        );
        assert_eq!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::BadRange { base: u64::MAX })
        );
    }

    #[test]
    fn unmapped_and_straddling_accesses_are_harmless() {
        let mut bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x1000, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x2000, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.read(0xffe, &mut b), "starts before the device");
        assert!(!bus.read(0x100e, &mut b), "runs past the end");
        assert!(!bus.write(0x100e, &[1, 2, 3, 4]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert!(!bus.read(u64::MAX - 1, &mut b));
        assert!(probe.lock().unwrap().writes.is_empty());
    }
}
