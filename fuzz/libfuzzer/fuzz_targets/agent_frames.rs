//! libFuzzer entry of the `agent_frames` target; its body and oracle are
//! `mvm_fuzz::targets::agent_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mvm_fuzz::targets::agent_frames(data));
