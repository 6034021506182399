//! The status port: guest init to VMM events, one 32-bit `out` each.
//!
//! Init writes a 32-bit value to [`STATUS_PORT`] (it needs `ioperm`, which PID
//! 1 has). The top byte is the event kind, the low 24 bits its argument. The
//! VMM decodes it with [`GuestEvent::decode`]; unknown values are ignored, as
//! is every other width or port offset, because the guest is not trusted.

/// Base of the status port. Chosen clear of the legacy PC ports the guest
/// kernel probes (PIC 0x20/0xa0, PIT 0x40, i8042 0x60/0x64, CMOS 0x70,
/// serial 0x2f8/0x3f8, PCI 0xcf8).
pub const STATUS_PORT: u16 = 0x5e0;
/// Width of the port region the VMM claims.
pub const STATUS_PORT_LEN: u16 = 4;

const KIND_BOOT: u32 = 0x01;
const KIND_EXITED: u32 = 0x02;
const KIND_SIGNALED: u32 = 0x03;
const KIND_INIT_ERROR: u32 = 0x04;
const KIND_POWER_OFF: u32 = 0x05;
const KIND_WARM_READY: u32 = 0x06;
const ARG_MASK: u32 = 0x00ff_ffff;

/// An event reported by guest init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// Init is running (the boot timer stops here).
    BootComplete,
    /// The workload exited with this status (0..=255).
    Exited(u8),
    /// The workload was killed by this signal number.
    Signaled(u8),
    /// Init could not start the workload; the code is an [`InitError`].
    InitError(InitError),
    /// Init is done: every filesystem is synced and the scratch disk
    /// frozen, attached output handed to the kernel. Init then reboots the
    /// guest; the VMM stops it if it has not reset within a few seconds
    /// (the reboot path adds nothing the host needs). A reset that is not
    /// preceded by this event is a crash (kernel panic, triple fault).
    PowerOff,
    /// A warm boot is ready (docs/snapshots.md, "Warm starts"): init has
    /// done everything that does not depend on the sandbox, listens on the
    /// agent's port and waits for the `launch` request. VMMs that predate
    /// it ignore the value, as they ignore any unknown one.
    WarmReady,
}

/// Why init failed before or while starting the workload. Stable numbers:
/// the host maps them to messages and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum InitError {
    /// Anything not listed below; details are on the console.
    Other = 1,
    /// The launch spec was missing or malformed.
    BadSpec = 2,
    /// A drive named in the spec was not found or could not be mounted.
    Mount = 3,
    /// The executable was not found (Docker's 127).
    NotFound = 4,
    /// The executable could not be run (Docker's 126).
    NotExecutable = 5,
    /// The user, group or working directory could not be applied.
    User = 6,
    /// The launch spec's network could not be applied (a NIC missing, an
    /// address or route the kernel refused, /etc files not writable).
    Network = 7,
}

impl InitError {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Other,
            2 => Self::BadSpec,
            3 => Self::Mount,
            4 => Self::NotFound,
            5 => Self::NotExecutable,
            6 => Self::User,
            7 => Self::Network,
            _ => return None,
        })
    }

    /// The exit code Docker reports for this kind of failure.
    pub fn docker_exit_code(self) -> i32 {
        match self {
            Self::NotFound => 127,
            Self::NotExecutable => 126,
            _ => 125,
        }
    }

    /// A short description for logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Other => "init failed",
            Self::BadSpec => "the launch spec is missing or malformed",
            Self::Mount => "a root disk could not be found or mounted",
            Self::NotFound => "the executable was not found",
            Self::NotExecutable => "the executable could not be run",
            Self::User => "the user, group or working directory could not be applied",
            Self::Network => "the guest's network could not be configured",
        }
    }
}

impl GuestEvent {
    /// The 32-bit value init writes to the port.
    pub fn encode(self) -> u32 {
        let (kind, arg) = match self {
            Self::BootComplete => (KIND_BOOT, 0),
            Self::Exited(c) => (KIND_EXITED, u32::from(c)),
            Self::Signaled(s) => (KIND_SIGNALED, u32::from(s)),
            Self::InitError(e) => (KIND_INIT_ERROR, e as u32),
            Self::PowerOff => (KIND_POWER_OFF, 0),
            Self::WarmReady => (KIND_WARM_READY, 0),
        };
        (kind << 24) | (arg & ARG_MASK)
    }

    /// Decode a value written by the guest; `None` for anything unknown.
    pub fn decode(v: u32) -> Option<Self> {
        let arg = v & ARG_MASK;
        let small = u8::try_from(arg).ok();
        match v >> 24 {
            KIND_BOOT if arg == 0 => Some(Self::BootComplete),
            KIND_EXITED => small.map(Self::Exited),
            KIND_SIGNALED => small.map(Self::Signaled),
            KIND_INIT_ERROR => InitError::from_u32(arg).map(Self::InitError),
            KIND_POWER_OFF if arg == 0 => Some(Self::PowerOff),
            KIND_WARM_READY if arg == 0 => Some(Self::WarmReady),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let all = [
            GuestEvent::BootComplete,
            GuestEvent::Exited(0),
            GuestEvent::Exited(255),
            GuestEvent::Signaled(9),
            GuestEvent::InitError(InitError::NotFound),
            GuestEvent::InitError(InitError::Network),
            GuestEvent::PowerOff,
            GuestEvent::WarmReady,
        ];
        for e in all {
            assert_eq!(GuestEvent::decode(e.encode()), Some(e));
        }
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(GuestEvent::decode(0), None);
        assert_eq!(GuestEvent::decode(0xff00_0000), None);
        assert_eq!(GuestEvent::decode((KIND_EXITED << 24) | 256), None);
        assert_eq!(GuestEvent::decode((KIND_INIT_ERROR << 24) | 99), None);
        assert_eq!(GuestEvent::decode((KIND_BOOT << 24) | 1), None);
        assert_eq!(GuestEvent::decode((KIND_WARM_READY << 24) | 1), None);
        assert_eq!(GuestEvent::decode(0x0700_0000), None);
    }
}
