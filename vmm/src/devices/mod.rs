//! Emulated devices: the buses and the legacy devices that live on them.
//! virtio devices come from the `mvm-virtio` crate and are attached to the
//! MMIO bus by the builder.

pub mod bus;
pub mod i8042;
pub mod legacy;
pub mod serial;
pub mod status_port;
