//! virtio transports. Only MMIO: the guest has no PCI (see
//! docs/architecture.md), and MMIO keeps the VMM small.

pub mod mmio;

pub use mmio::{MmioTransport, MMIO_MAGIC_VALUE, MMIO_VENDOR_ID, MMIO_VERSION};
