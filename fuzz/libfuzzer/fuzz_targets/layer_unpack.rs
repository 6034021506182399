//! libFuzzer entry of the `layer_unpack` target; its body and oracle are
//! `mvm_fuzz::targets::layer_unpack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::layer_unpack(data));
