//! libFuzzer entry of the `dockerfile` target; its body and oracle are
//! `mvm_fuzz::targets::dockerfile`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::dockerfile(data));
