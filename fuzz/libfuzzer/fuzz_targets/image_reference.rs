//! libFuzzer entry of the `image_reference` target; its body and oracle are
//! `mvm_fuzz::targets::image_reference`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::image_reference(data));
