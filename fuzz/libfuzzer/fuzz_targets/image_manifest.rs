//! libFuzzer entry of the `image_manifest` target; its body and oracle are
//! `mvm_fuzz::targets::image_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::image_manifest(data));
