//! libFuzzer entry of the `launch_spec` target; its body and oracle are
//! `mvm_fuzz::targets::launch_spec_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::launch_spec_json(data));
