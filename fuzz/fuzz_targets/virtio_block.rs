//! virtio-blk: a hostile guest's register accesses, rings, descriptor
//! chains and request headers against a real disk file.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::mmio::{drive, NoHost, Op};
use mvm_virtio::block::{Block, BlockConfig};

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (read_only, ops) = input;
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    file.write_all(&[0x5a; 8192]).unwrap();
    let blk = Block::new(BlockConfig {
        id: "fuzz".into(),
        path: file.path().to_path_buf(),
        read_only,
    })
    .unwrap();
    drive(blk, &mut NoHost, &ops);
});
