//! The guest agent's wire format as the host reads it: frame headers and
//! lengths, then the JSON of requests and responses. Everything the agent
//! sends is hostile (the guest may run anything).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_protocol::agent::frame::{decode_json, FrameReader};
use mvm_protocol::agent::message::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new(data);
    for _ in 0..64 {
        match r.read_frame() {
            Ok(Some((_kind, payload))) => {
                // A response is what the host decodes; a request is what the
                // guest decodes (the agent's side of the same contract).
                if let Ok(resp) = decode_json::<Response>(payload) {
                    let again = serde_json::to_vec(&resp).unwrap();
                    let back: Response = decode_json(&again).unwrap();
                    assert_eq!(
                        serde_json::to_value(&back).unwrap(),
                        serde_json::to_value(&resp).unwrap()
                    );
                }
                let _ = decode_json::<Request>(payload);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
