//! The MMIO transport itself (register state machine, feature and queue
//! negotiation, resets), with the simplest device behind it (virtio-rng).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::mmio::{drive, NoHost, Op};
use mvm_virtio::rng::Rng;

fuzz_target!(|ops: Vec<Op>| {
    drive(Rng::new().unwrap(), &mut NoHost, &ops);
});
