//! Image references (`registry:port/path/name:tag@sha256:...`): from CLI
//! flags, API requests, Dockerfile FROM lines and registries. A reference
//! that parses prints as itself and parses again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_images::Reference;

fuzz_target!(|s: &str| {
    if let Ok(r) = Reference::parse(s) {
        let printed = r.to_string();
        let again = Reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, r, "{s:?} printed as {printed:?}");
        let _ = Reference::parse(&r.familiar());
        let _ = r.index_key();
    }
});
