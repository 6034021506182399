//! The 8250 UART console (COM1 at 0x3f8, IRQ 4).
//!
//! Register emulation is vm-superio's `Serial`; this module supplies where
//! the bytes go and how the interrupt is raised. Output goes to stdout, a
//! file, or nowhere, and the last lines are always kept in memory so a
//! crash report can quote the kernel's last words even when the console
//! is off. Guest input is not wired yet; `Serial::enqueue_raw_bytes` is
//! where stdin would go.

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice};

/// How many console lines are kept for crash messages.
pub const TAIL_LINES: usize = 64;
/// A line longer than this is emitted without waiting for its newline.
const MAX_LINE: usize = 4096;

/// Raises the UART's interrupt by signalling an EventFd registered as an
/// irqfd, so KVM injects IRQ 4 without a trip through the VMM.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console output goes.
pub enum ConsoleSink {
    Stdout,
    /// A file, rotated at its cap (`crate::logfile`).
    File(crate::logfile::RotatingFile),
    Off,
}

/// The last lines the guest printed (carriage returns dropped, invalid
/// UTF-8 replaced), plus the line being written.
#[derive(Default)]
pub struct ConsoleTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl ConsoleTail {
    fn push_byte(&mut self, b: u8) {
        match b {
            b'\n' => {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                if self.lines.len() == TAIL_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line);
            }
            b'\r' => {}
            _ if self.partial.len() < MAX_LINE => self.partial.push(b),
            _ => {}
        }
    }

    /// The kept lines, oldest first, including an unfinished last line.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            v.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        v
    }
}

/// The UART's output: buffered by line (so a file gets whole lines, and a
/// SIGKILLed VMM loses at most the current line), written through byte by
/// byte when stdout is a terminal so prompts show up.
pub struct ConsoleWriter {
    sink: ConsoleSink,
    pending: Vec<u8>,
    unbuffered: bool,
    tail: Arc<Mutex<ConsoleTail>>,
}

impl ConsoleWriter {
    pub fn new(sink: ConsoleSink) -> Self {
        let unbuffered = matches!(sink, ConsoleSink::Stdout) && io::stdout().is_terminal();
        Self {
            sink,
            pending: Vec::with_capacity(256),
            unbuffered,
            tail: Arc::default(),
        }
    }

    /// A handle on the line ring buffer, readable after the VM stopped.
    pub fn tail(&self) -> Arc<Mutex<ConsoleTail>> {
        self.tail.clone()
    }

    /// Write out whatever is pending. An output error (closed stdout, full
    /// disk) must not stop the guest: the console is turned off instead.
    pub fn emit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let res = match &mut self.sink {
            ConsoleSink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.pending).and_then(|_| out.flush())
            }
            ConsoleSink::File(f) => f.write_all(&self.pending),
            ConsoleSink::Off => Ok(()),
        };
        self.pending.clear();
        if let Err(e) = res {
            tracing::warn!("console output failed ({e}); discarding further console output");
            self.sink = ConsoleSink::Off;
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut tail = lock(&self.tail);
            for &b in buf {
                tail.push_byte(b);
            }
        }
        if matches!(self.sink, ConsoleSink::Off) {
            return Ok(buf.len());
        }
        self.pending.extend_from_slice(buf);
        if self.unbuffered || buf.contains(&b'\n') || self.pending.len() >= MAX_LINE {
            self.emit();
        }
        Ok(buf.len())
    }

    /// vm-superio flushes after every byte; line buffering happens in
    /// `write`, and `emit` is the real flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

/// The COM1 device on the port I/O bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
}

/// The UART's registers and input FIFO, for snapshots (vm-superio's
/// `SerialState` has no serde of its own).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A UART in a snapshot's state (an input FIFO longer than the
    /// UART's is refused).
    pub fn from_snapshot(
        irq: EventFd,
        out: ConsoleWriter,
        s: &SerialSnapshot,
    ) -> Result<Self, String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let serial = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| format!("the serial port's state is unusable: {e:?}"))?;
        Ok(Self { serial })
    }

    /// The UART's state.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Write out a pending partial line (at exit).
    pub fn flush_output(&mut self) {
        self.serial.writer_mut().emit();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) if off < 8 => data[0] = self.serial.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if off < 8 {
                if let Err(e) = self.serial.write(off, *value) {
                    tracing::debug!("serial write failed: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tail_keeps_the_last_lines_and_the_partial_one() {
        let mut w = ConsoleWriter::new(ConsoleSink::Off);
        let tail = w.tail();
        for i in 0..100 {
            write!(w, "line {i}\r\n").unwrap();
        }
        write!(w, "Kernel panic - not syncing").unwrap();
        let lines = tail.lock().unwrap().lines();
        assert_eq!(lines.len(), TAIL_LINES + 1);
        assert_eq!(lines[0], "line 36");
        assert_eq!(lines[TAIL_LINES - 1], "line 99");
        assert_eq!(lines[TAIL_LINES], "Kernel panic - not syncing");
    }

    #[test]
    fn file_sink_gets_whole_lines_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let file = crate::logfile::RotatingFile::open(&path, None).unwrap();
        let mut dev = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ConsoleWriter::new(ConsoleSink::File(file)),
        );
        for b in b"hello\nwor" {
            dev.write(0, &[*b]);
        }
        let read = || {
            let mut s = String::new();
            std::fs::File::open(&path)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(read(), "hello\n", "a finished line is on disk at once");
        dev.flush_output();
        assert_eq!(read(), "hello\nwor");
    }

    #[test]
    fn transmit_raises_the_interrupt_and_odd_accesses_are_ignored() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            evt.try_clone().unwrap(),
            ConsoleWriter::new(ConsoleSink::Off),
        );
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        assert!(evt.read().unwrap() >= 1);
        let mut iir = [0u8; 1];
        dev.read(2, &mut iir); // reading IIR acknowledges the THR interrupt
        assert_eq!(iir[0] & 0x0f, 0x02);
        dev.write(0, b"x");
        assert_eq!(evt.read().unwrap(), 1);
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
        dev.write(9, &[1]);
        let mut one = [0u8; 1];
        dev.read(u64::MAX, &mut one);
        dev.read(5, &mut one); // LSR: transmitter empty
        assert_ne!(one[0] & 0x20, 0);
    }
}
