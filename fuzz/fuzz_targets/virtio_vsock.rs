//! virtio-vsock: the guest's packets (headers, ops, credit, ports) through
//! the device and its connection muxer, and host clients connecting to the
//! device's Unix socket with arbitrary requests and data.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::mmio::{drive, HostSide, Op};
use mvm_virtio::vsock::{Vsock, VsockConfig};

struct Clients {
    path: PathBuf,
    open: Vec<UnixStream>,
}

impl HostSide for Clients {
    fn host(&mut self, data: &[u8]) {
        // First byte: a new connection (even) or more bytes on the last.
        if data.first().is_some_and(|b| b % 2 == 0) || self.open.is_empty() {
            if self.open.len() >= 8 {
                return;
            }
            let Ok(s) = UnixStream::connect(&self.path) else {
                return;
            };
            let _ = s.set_nonblocking(true);
            self.open.push(s);
        }
        if let Some(s) = self.open.last_mut() {
            let _ = s.write(data.get(1..).unwrap_or_default());
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let vsock = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap();
    drive(
        vsock,
        &mut Clients {
            path,
            open: Vec::new(),
        },
        &ops,
    );
});
