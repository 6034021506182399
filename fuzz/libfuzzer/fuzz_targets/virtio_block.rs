//! libFuzzer entry of the `virtio_block` target; its body and oracle are
//! `mvm_fuzz::targets::virtio_block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::virtio_block(data));
