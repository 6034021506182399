//! libFuzzer entry of the `mmio_transport` target; its body and oracle are
//! `mvm_fuzz::targets::mmio_transport`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::mmio_transport(data));
