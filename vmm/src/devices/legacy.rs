//! Legacy PC ports Linux pokes during boot that we do not emulate.
//!
//! Unclaimed ports already read as all-ones, but a few need a specific
//! answer: the CMOS/RTC (0x70/0x71) must not report "update in progress"
//! forever (0xff has that bit set), and the POST/delay port 0x80 is written
//! so often that claiming it keeps it off the slow "unhandled" path.

use super::bus::BusDevice;

/// Ignores writes; answers every read with a fixed byte.
pub struct Quiet {
    read_value: u8,
}

impl Quiet {
    pub const fn new(read_value: u8) -> Self {
        Self { read_value }
    }
}

impl BusDevice for Quiet {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.read_value);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// (base, length, read value) of the quiet ranges.
pub const QUIET_PORTS: &[(u16, u16, u8)] = &[
    (0x70, 2, 0x00),  // CMOS index/data: all registers zero, no UIP
    (0x80, 1, 0x00),  // POST code / I/O delay
    (0x87, 1, 0x00),  // DMA page register (old delay port)
    (0xed, 1, 0x00),  // alternative I/O delay port
    (0xcf8, 8, 0xff), // PCI config mechanism 1: no PCI bus
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixed_value() {
        let mut q = Quiet::new(0);
        let mut b = [0xffu8; 2];
        q.read(1, &mut b);
        assert_eq!(b, [0, 0]);
        q.write(0, &[1, 2, 3]);
    }
}
