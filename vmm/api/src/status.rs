//! How a VM ended: the VMM's process exit code and the status file it
//! writes (atomically) just before it exits.
//!
//! | exit code | [`GuestState`] | meaning |
//! | --- | --- | --- |
//! | [`EXIT_OK`] (0) | `powered_off` | init announced a power-off, then the guest reset |
//! | [`EXIT_VMM_ERROR`] (1) | `error` | bad configuration, KVM unusable, device or I/O failure |
//! | [`EXIT_GUEST_CRASH`] (2) | `crashed` | a reset without init's notice (panic), a triple fault |
//! | 128+N | `stopped` | the VMM got signal N; the guest was killed |
//! | [`EXIT_OK`] (0) | `checkpointed` | a snapshot was taken and the VMM ended as asked (`control::Request::Snapshot` without `resume`) |
//!
//! A VMM that dies without writing the file was killed from outside.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The guest powered off cleanly.
pub const EXIT_OK: i32 = 0;
/// The VMM failed.
pub const EXIT_VMM_ERROR: i32 = 1;
/// The guest crashed.
pub const EXIT_GUEST_CRASH: i32 = 2;

/// Largest status file a reader accepts (a real one is under 2 KiB; the
/// crash message quotes at most a dozen console lines).
pub const MAX_STATUS_BYTES: u64 = 1 << 20;

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Init announced the power-off, then the guest reset.
    PoweredOff,
    /// Kernel panic, reset without notice, triple fault.
    Crashed,
    /// The VMM failed (including an invalid configuration).
    Error,
    /// The VMM was stopped by a signal and killed the guest.
    Stopped,
    /// The VM was snapshotted and the VMM ended as asked: the guest is
    /// neither dead nor running, it lives on in its snapshot.
    Checkpointed,
}

impl GuestState {
    /// The JSON name (`powered_off`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoweredOff => "powered_off",
            Self::Crashed => "crashed",
            Self::Error => "error",
            Self::Stopped => "stopped",
            Self::Checkpointed => "checkpointed",
        }
    }
}

/// What guest init reported about the workload. The JSON forms are
/// `{"exit_code": N}`, `{"signal": N}` and `{"init_error": "...",
/// "exit_code": 125|126|127}` (Docker's codes for "cannot start").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkloadReport {
    /// Init could not start the workload. Listed first: untagged
    /// deserialisation tries variants in order, and this one's fields
    /// include `exit_code`.
    InitError {
        /// Init's description.
        init_error: String,
        /// Docker's code (125, 126 or 127).
        exit_code: i32,
    },
    /// The workload exited.
    Exited {
        /// Its exit status.
        exit_code: i32,
    },
    /// A signal killed the workload.
    Signaled {
        /// The signal.
        signal: i32,
    },
}

/// The status file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// How the guest ended.
    pub guest: GuestState,
    /// The workload's fate, if init reported it.
    #[serde(default)]
    pub workload: Option<WorkloadReport>,
    /// VMM process start to init's boot report.
    #[serde(default)]
    pub boot_time_us: Option<u64>,
    /// A sentence for people: the workload's status, the crash with the
    /// console lines that show it, the VMM's error.
    #[serde(default)]
    pub message: String,
}

impl StatusReport {
    /// A report of a VMM failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            guest: GuestState::Error,
            workload: None,
            boot_time_us: None,
            message: message.into(),
        }
    }

    /// Write the report to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut v = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        v.push(b'\n');
        crate::write_atomic(path, &v)
    }

    /// Read the report at `path`; `None` if there is none or it is not a
    /// status report (a torn or foreign file is as good as none: the VMM
    /// renames a complete file into place, so only something else makes
    /// such a file).
    pub fn read(path: &Path) -> Option<Self> {
        Self::read_from(std::fs::File::open(path).ok()?)
    }

    /// [`Self::read`] from an open file (the host opens the VMM's status
    /// file without following links: `mvm_unpack::beneath`).
    pub fn read_from(f: impl std::io::Read) -> Option<Self> {
        use std::io::Read;
        let mut bytes = Vec::new();
        f.take(MAX_STATUS_BYTES + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > MAX_STATUS_BYTES {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workload_forms_round_trip() {
        for (w, j) in [
            (
                WorkloadReport::Exited { exit_code: 3 },
                json!({"exit_code": 3}),
            ),
            (WorkloadReport::Signaled { signal: 9 }, json!({"signal": 9})),
            (
                WorkloadReport::InitError {
                    init_error: "not found".into(),
                    exit_code: 127,
                },
                json!({"init_error": "not found", "exit_code": 127}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&w).unwrap(), j);
            assert_eq!(serde_json::from_value::<WorkloadReport>(j).unwrap(), w);
        }
    }

    #[test]
    fn file_round_trip_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("status.json");
        assert_eq!(StatusReport::read(&p), None);
        let r = StatusReport {
            guest: GuestState::PoweredOff,
            workload: Some(WorkloadReport::Exited { exit_code: 0 }),
            boot_time_us: Some(412_345),
            message: "the guest powered off".into(),
        };
        r.write(&p).unwrap();
        assert_eq!(StatusReport::read(&p), Some(r));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["guest"], "powered_off");
        std::fs::write(&p, b"{\"guest\": \"powered").unwrap();
        assert_eq!(StatusReport::read(&p), None, "torn");
        std::fs::write(&p, br#"{"guest": "exploded"}"#).unwrap();
        assert_eq!(StatusReport::read(&p), None, "unknown state");
        std::fs::write(&p, br#"{"guest": "error"}"#).unwrap();
        assert_eq!(StatusReport::read(&p), Some(StatusReport::error("")));
        assert!(StatusReport::error("x")
            .write(&d.path().join("no/such/dir/s.json"))
            .is_err());
    }
}
