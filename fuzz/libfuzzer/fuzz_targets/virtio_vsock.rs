//! libFuzzer entry of the `virtio_vsock` target; its body and oracle are
//! `mvm_fuzz::targets::virtio_vsock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::virtio_vsock(data));
