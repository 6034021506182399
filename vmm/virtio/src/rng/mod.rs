//! virtio-rng (entropy device): fills the guest's buffers from the host's
//! `getrandom(2)`, so the guest kernel's CRNG is seeded at boot instead of
//! waiting for entropy in a device-less VM.
//!
//! - [`device`]: the `Rng` device and request handling.
//! - [`event_handler`]: the `event_manager` subscriber.

pub mod device;
pub mod event_handler;

pub use device::{Rng, RngError};

/// Most bytes returned per request, whatever the buffers' size: bounds the
/// work (and host entropy) one guest request can take.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
