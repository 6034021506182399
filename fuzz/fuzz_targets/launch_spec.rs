//! The launch spec as guest init reads it: JSON plus validation. Init runs
//! as PID 1 with every privilege, so a spec that validates must be one it
//! can apply; this target checks that validation never panics and that a
//! valid spec survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_protocol::launch::LaunchSpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = LaunchSpec::from_json(data) {
        let again = serde_json::to_vec(&spec).unwrap();
        let back = LaunchSpec::from_json(&again).expect("a valid spec stays valid");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
    }
});
