//! A minimal i8042 keyboard controller: enough for the kernel's probe and,
//! above all, the reset line. With `reboot=k` the guest kernel restarts
//! the machine by writing 0xFE (pulse reset) to the command port, which
//! ends the VM. Modelled on Firecracker's i8042; there is no keyboard.

use std::collections::VecDeque;
use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitSignal, StopReason};

/// The i8042 occupies ports 0x60..0x65 (data at 0x60, command at 0x64).
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u16 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

// Controller configuration byte bits.
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_RESET: u8 = 0xff;

const BUF_MAX: usize = 16;

/// The controller.
pub struct I8042 {
    status: u8,
    ctr: u8,
    outp: u8,
    /// A command waiting for its data byte.
    pending: Option<u8>,
    buf: VecDeque<u8>,
    exit: Arc<ExitSignal>,
}

/// The controller's registers, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    pub status: u8,
    pub ctr: u8,
    pub outp: u8,
    pub pending: Option<u8>,
    pub buf: Vec<u8>,
}

impl I8042 {
    /// The controller's state.
    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            status: self.status,
            ctr: self.ctr,
            outp: self.outp,
            pending: self.pending,
            buf: self.buf.iter().copied().collect(),
        }
    }

    /// Put the controller in a snapshot's state (its buffer cut to the
    /// controller's size).
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.status = s.status;
        self.ctr = s.ctr;
        self.outp = s.outp;
        self.pending = s.pending;
        self.buf = s.buf.iter().copied().take(BUF_MAX).collect();
    }

    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            ctr: CTR_AUX_DISABLED,
            outp: 0,
            pending: None,
            buf: VecDeque::new(),
            exit,
        }
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < BUF_MAX {
            self.buf.push_back(b);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    fn pop(&mut self) -> u8 {
        let b = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        }
        b
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_CMD;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_RESET_CPU => {
                tracing::debug!("guest reset through the i8042");
                self.exit.request(StopReason::Reset);
            }
            _ => tracing::trace!("ignoring i8042 command {cmd:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_CMD;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            _ => {
                // A byte for the keyboard itself: acknowledge it.
                self.push(KBD_ACK);
                if value == KBD_RESET {
                    self.push(KBD_SELF_TEST_OK);
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.pop(),
            (COMMAND_OFFSET, 1) => self.status,
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA_OFFSET, [v]) => self.data(*v),
            (COMMAND_OFFSET, [v]) => self.command(*v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (I8042::new(exit.clone()), exit)
    }

    fn inb(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (mut d, exit) = dev();
        // The kernel waits for the input buffer to be empty first.
        assert_eq!(inb(&mut d, COMMAND_OFFSET) & 0x02, 0);
        d.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn probe_sequence_is_answered() {
        let (mut d, exit) = dev();
        d.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(inb(&mut d, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(inb(&mut d, DATA_OFFSET), 0x55);
        assert_eq!(inb(&mut d, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[0x47]);
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(inb(&mut d, DATA_OFFSET), 0x47);
        d.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(
            (inb(&mut d, DATA_OFFSET), inb(&mut d, DATA_OFFSET)),
            (KBD_ACK, KBD_SELF_TEST_OK)
        );
        assert_eq!(inb(&mut d, DATA_OFFSET), 0, "empty buffer reads 0");
        assert!(!exit.is_requested());
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut d, exit) = dev();
        d.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        d.write(2, &[CMD_RESET_CPU]);
        for _ in 0..100 {
            d.write(DATA_OFFSET, &[0x12]);
        }
        let mut w = [0u8; 4];
        d.read(COMMAND_OFFSET, &mut w);
        assert_eq!(w, [0xff; 4]);
        assert!(!exit.is_requested());
    }
}
