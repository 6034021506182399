//! What a virtio-net device moved and what it dropped, and why.
//!
//! Plain counters owned by the device (it is always used under its lock):
//! the VMM logs them when the VM ends, tests assert on them. Every drop of
//! guest input or of a host frame has its own counter, so a guest that
//! misbehaves is visible without log lines per frame.

/// Counters of one device since it was created (resets do not clear them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (virtio-net headers not counted).
    pub rx_bytes: u64,
    /// Guest receive buffers used for those frames (more than one per
    /// frame with mergeable buffers).
    pub rx_buffers: u64,
    /// Frames from the TAP too long for every buffer the guest offers.
    pub rx_oversized: u64,
    /// Frames from the TAP shorter than a header and an Ethernet header.
    pub rx_runts: u64,
    /// Receive chains refused (read-only descriptors, outside guest
    /// memory, cut short); each is returned with length 0.
    pub rx_bad_chains: u64,
    /// TAP read errors other than "nothing to read".
    pub rx_tap_errors: u64,
    /// Times receive waited for the rate limiter.
    pub rx_throttled: u64,
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Bytes sent to the TAP (virtio-net headers not counted).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (device-writable descriptors,
    /// outside guest memory, cut short, shorter than the headers).
    pub tx_malformed: u64,
    /// Transmit chains dropped as longer than the longest frame.
    pub tx_oversized: u64,
    /// TAP write errors (the kernel refused the frame or its header).
    pub tx_tap_errors: u64,
    /// Times transmit waited for the rate limiter.
    pub tx_throttled: u64,
}

impl NetMetrics {
    /// Every drop and error added up (for a one-line summary).
    pub fn dropped(&self) -> u64 {
        self.rx_oversized
            + self.rx_runts
            + self.rx_bad_chains
            + self.rx_tap_errors
            + self.tx_malformed
            + self.tx_oversized
            + self.tx_tap_errors
    }
}

impl std::fmt::Display for NetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rx {} frames / {} bytes, tx {} frames / {} bytes; dropped: rx oversized {}, runts {}, bad chains {}, tap errors {}; tx malformed {}, oversized {}, tap errors {}; throttled rx {} tx {}",
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.rx_oversized,
            self.rx_runts,
            self.rx_bad_chains,
            self.rx_tap_errors,
            self.tx_malformed,
            self.tx_oversized,
            self.tx_tap_errors,
            self.rx_throttled,
            self.tx_throttled
        )
    }
}
