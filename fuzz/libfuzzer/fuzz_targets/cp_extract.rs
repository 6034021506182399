//! libFuzzer entry of the `cp_extract` target; its body and oracle are
//! `mvm_fuzz::targets::cp_extract`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::cp_extract(data));
