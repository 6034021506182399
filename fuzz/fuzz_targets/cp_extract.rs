//! `mvctl cp SANDBOX:PATH DEST` and volume import: an archive from a guest
//! extracted with the strict options, merged into a directory that holds
//! other files, with and without renaming its top entry. Nothing outside
//! the destination is touched, and no setuid file or device appears.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::fence::Fence;
use mvm_unpack::{sanitize, unpack, Options, Stats};

fuzz_target!(|input: (bool, &[u8])| {
    let (rename, data) = input;
    let sb = Fence::new();
    let mut opts = Options::copy();
    if rename {
        opts.rename_top = Some(b"renamed".to_vec());
    }
    let _ = unpack(data, &sb.dest(), &opts, &mut Stats::default());
    sb.check();
    sb.check_no_setid_or_devices();
    // The re-serialiser (used where an archive is passed on rather than
    // extracted) accepts what it writes.
    if let Ok(clean) = sanitize(data, Vec::new(), &Options::copy(), &mut Stats::default()) {
        let mut clean = clean;
        clean.extend_from_slice(&[0u8; 1024]);
        sanitize(
            &clean[..],
            Vec::new(),
            &Options::copy(),
            &mut Stats::default(),
        )
        .expect("a sanitized archive sanitizes again");
    }
});
