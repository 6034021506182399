//! The hardened unpacker on image layers (whiteouts, hard links, symlinks,
//! xattrs, PAX headers): whatever the archive says, nothing outside the
//! destination is created, changed or removed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::fence::Fence;
use mvm_unpack::{unpack, Options, Stats};

fuzz_target!(|data: &[u8]| {
    let sb = Fence::new();
    let _ = unpack(data, &sb.dest(), &Options::layer(), &mut Stats::default());
    sb.check();
});
