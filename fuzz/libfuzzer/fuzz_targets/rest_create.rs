//! libFuzzer entry of the `rest_create` target; its body and oracle are
//! `mvm_fuzz::targets::rest_create`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::rest_create(data));
