//! The guest kernel command line.
//!
//! Our defaults, then one `virtio_mmio.device=` entry per virtio device
//! (the guest has no PCI or ACPI to discover them), then the user's extra
//! arguments, so a user can override a default (the kernel takes the last
//! value of a repeated parameter).

use crate::arch::layout::{CMDLINE_MAX_SIZE, VIRTIO_MMIO_SIZE};

/// Defaults, and why:
/// - `console=ttyS0`: the 8250 is the console; `8250.nr_uarts=1`: only
///   COM1 exists, skip probing three more UARTs.
/// - `reboot=k`: reboot through the i8042 reset line, which ends the VMM;
///   `panic=-1`: reboot at once on panic, so a crash ends the VMM too.
/// - `pci=off nomodule`: there is no PCI bus and no module to load.
/// - `i8042.noaux i8042.nomux i8042.dumbkbd`: keep a keyboard driver, if
///   built, from probing hardware that does not exist.
/// - `tsc=reliable no_timer_check`: the TSC is stable under KVM; skip the
///   clocksource watchdog and the timer IRQ check (both cost boot time).
/// - `random.trust_cpu=on`: seed the CRNG from RDRAND at once instead of
///   waiting for entropy (virtio-rng adds more later).
/// - `quiet`: fewer console exits; panics are still printed.
/// - `rdinit=/init`: run init from the initramfs.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off \
nomodule i8042.noaux i8042.nomux i8042.dumbkbd tsc=reliable no_timer_check \
random.trust_cpu=on quiet rdinit=/init";

/// The longest command line, excluding the terminating NUL.
pub const MAX_LEN: usize = CMDLINE_MAX_SIZE - 1;

/// Errors building the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error(
        "the kernel command line would be {len} bytes ({defaults} of defaults, {devices} of \
         virtio device entries, {user} of your cmdline); the x86 limit is {MAX_LEN}: shorten \
         cmdline by {excess} bytes",
        excess = len - MAX_LEN
    )]
    TooLong {
        len: usize,
        defaults: usize,
        devices: usize,
        user: usize,
    },
    #[error("cmdline contains {0:?}: only printable ASCII and spaces are allowed")]
    BadChar(char),
}

/// The `virtio_mmio.device=` entry for a device window at `addr` with `irq`.
pub fn virtio_mmio_entry(addr: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{addr:#x}:{irq}",
        VIRTIO_MMIO_SIZE >> 10
    )
}

/// Build the full command line: defaults, device entries, then `user`.
pub fn build(devices: &[(u64, u32)], user: &str) -> Result<String, CmdlineError> {
    if let Some(c) = user.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(CmdlineError::BadChar(c));
    }
    let mut line = String::from(DEFAULT_CMDLINE);
    let defaults = line.len();
    for &(addr, irq) in devices {
        line.push(' ');
        line.push_str(&virtio_mmio_entry(addr, irq));
    }
    let devices_len = line.len() - defaults;
    let user = user.trim();
    if !user.is_empty() {
        line.push(' ');
        line.push_str(user);
    }
    if line.len() > MAX_LEN {
        return Err(CmdlineError::TooLong {
            len: line.len(),
            defaults,
            devices: devices_len,
            user: line.len() - defaults - devices_len,
        });
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_devices_then_user() {
        let l = build(&[(0xd000_0000, 5), (0xd000_1000, 6)], "  init=/bin/sh foo ").unwrap();
        assert!(l.starts_with(DEFAULT_CMDLINE));
        assert!(l.ends_with(
            " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 init=/bin/sh foo"
        ));
        assert_eq!(build(&[], "").unwrap(), DEFAULT_CMDLINE);
    }

    #[test]
    fn length_limit_is_exact() {
        let room = MAX_LEN - DEFAULT_CMDLINE.len() - 1;
        assert_eq!(build(&[], &"x".repeat(room)).unwrap().len(), MAX_LEN);
        let err = build(&[], &"x".repeat(room + 1)).unwrap_err();
        assert_eq!(
            err,
            CmdlineError::TooLong {
                len: MAX_LEN + 1,
                defaults: DEFAULT_CMDLINE.len(),
                devices: 0,
                user: room + 2,
            }
        );
        assert!(
            err.to_string().contains("shorten cmdline by 1 bytes"),
            "{err}"
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(build(&[], "a\0b"), Err(CmdlineError::BadChar('\0')));
        assert_eq!(build(&[], "a\nb"), Err(CmdlineError::BadChar('\n')));
        assert_eq!(build(&[], "é"), Err(CmdlineError::BadChar('é')));
    }
}
