//! The Dockerfile parser and its shell-word expansion (`$VAR`, `${VAR:-x}`,
//! quotes, escapes, heredoc-free lines): a user's or a downloaded
//! Dockerfile is hostile input to mvmd.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mvm_builder::dockerfile::{parse, shell};

fuzz_target!(|text: &str| {
    let _ = parse("Dockerfile", text);
    let mut vars = HashMap::new();
    vars.insert("A".to_string(), "x y".to_string());
    vars.insert("EMPTY".to_string(), String::new());
    for escape in ['\\', '`'] {
        let _ = shell::process_words(text, &vars, escape);
        let _ = shell::process_word(text, &vars, escape);
        let _ = shell::split_raw(text, escape);
    }
});
