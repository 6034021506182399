//! libFuzzer entry of the `virtio_net` target; its body and oracle are
//! `mvm_fuzz::targets::virtio_net`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::virtio_net(data));
