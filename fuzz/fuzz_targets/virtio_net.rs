//! virtio-net: the guest's transmit and receive rings, virtio-net headers
//! and frames, and frames arriving from the host side (a datagram socket
//! pair stands in for the TAP; the device code is the same).
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use mvm_fuzz::mmio::{drive, HostSide, Op};
use mvm_virtio::net::{Net, NetConfig, Tap, TapSource};

struct Peer(UnixDatagram);

impl HostSide for Peer {
    fn host(&mut self, data: &[u8]) {
        // A frame from the host's network; a full socket drops it.
        let _ = self.0.send(data);
    }
}

fuzz_target!(|input: (u16, Vec<Op>)| {
    let (mtu, ops) = input;
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut cfg = NetConfig::new("fuzz", TapSource::Name("unused".into()));
    cfg.mtu = mtu;
    cfg.mac = Some([0x02, 0, 0, 0, 0, 1]);
    let Ok(net) = Net::with_tap(cfg, Tap::from_datagram_fd(OwnedFd::from(ours))) else {
        return;
    };
    drive(net, &mut Peer(theirs), &ops);
});
