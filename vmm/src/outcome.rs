//! Turning how the VM stopped into the process's exit status, a status
//! file and log lines.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | the guest powered off cleanly (init announced it) |
//! | 1 | VMM error |
//! | 2 | the guest crashed (panic, triple fault, reset without notice) |
//! | 128+N | the VMM was stopped by signal N (SIGTERM: 143, SIGINT: 130) |

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::builder::RunResult;
use crate::devices::status_port::{GuestStatus, Workload};
use crate::exit::StopReason;

pub const EXIT_OK: i32 = 0;
pub const EXIT_VMM_ERROR: i32 = 1;
pub const EXIT_GUEST_CRASH: i32 = 2;

/// How many trailing console lines a crash message quotes when no panic
/// line is found.
const CRASH_CONTEXT_LINES: usize = 5;

/// The status file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// `powered_off`, `crashed`, `stopped` (by a signal to the VMM) or
    /// `error` (the VMM failed).
    pub guest: &'static str,
    pub workload: Option<WorkloadReport>,
    pub boot_time_us: Option<u64>,
    pub message: String,
}

/// The workload's fate, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WorkloadReport {
    Exited { exit_code: i32 },
    Signaled { signal: i32 },
    InitError { init_error: String, exit_code: i32 },
}

impl From<Workload> for WorkloadReport {
    fn from(w: Workload) -> Self {
        match w {
            Workload::Exited(c) => Self::Exited {
                exit_code: c.into(),
            },
            Workload::Signaled(s) => Self::Signaled { signal: s.into() },
            Workload::InitError(e) => Self::InitError {
                init_error: e.describe().to_owned(),
                exit_code: e.docker_exit_code(),
            },
        }
    }
}

/// The decision: exit code and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub report: StatusReport,
}

fn signal_name(n: i32) -> String {
    match n {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// The console lines worth quoting after a crash: from the first line
/// mentioning a kernel panic (or oops/BUG) on, else the last few lines.
pub fn crash_excerpt(tail: &[String]) -> Vec<String> {
    let markers = ["Kernel panic", "BUG:", "Oops", "general protection fault"];
    let start = tail
        .iter()
        .position(|l| markers.iter().any(|m| l.contains(m)))
        .unwrap_or_else(|| tail.len().saturating_sub(CRASH_CONTEXT_LINES));
    tail[start..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .take(12)
        .cloned()
        .collect()
}

fn describe_workload(w: Option<Workload>) -> String {
    match w {
        Some(Workload::Exited(c)) => format!("the workload exited with code {c}"),
        Some(Workload::Signaled(s)) => format!("the workload was killed by signal {s}"),
        Some(Workload::InitError(e)) => format!(
            "init could not run the workload: {} (exit code {})",
            e.describe(),
            e.docker_exit_code()
        ),
        None => "no workload status was reported".into(),
    }
}

/// Decide the outcome of a finished run.
pub fn decide(run: &RunResult) -> Outcome {
    let g: &GuestStatus = &run.guest;
    let workload = g.workload.map(WorkloadReport::from);
    let boot_time_us = g.boot_time.map(|d| d.as_micros() as u64);
    let crash = |what: String| {
        let excerpt = crash_excerpt(&run.console_tail);
        let message = if excerpt.is_empty() {
            format!("the guest crashed: {what}")
        } else {
            format!(
                "the guest crashed: {what}; last console lines:\n  {}",
                excerpt.join("\n  ")
            )
        };
        (EXIT_GUEST_CRASH, "crashed", message)
    };
    let powered_off = || {
        (
            EXIT_OK,
            "powered_off",
            format!("the guest powered off; {}", describe_workload(g.workload)),
        )
    };
    let (exit_code, guest, message) = match &run.reason {
        StopReason::PowerOff => powered_off(),
        StopReason::Reset if g.power_off => powered_off(),
        // After init's notice the kernel is on its way to the reset and a
        // triple fault is one (Linux falls back to it; seen under nested
        // emulation in the reboot path): the run ended as announced.
        StopReason::TripleFault(what) if g.power_off => {
            tracing::info!("the guest's reset after its power-off notice was a triple fault: {what}");
            powered_off()
        }
        StopReason::Reset => crash(
            "it reset without init's power-off notice (kernel panic, or a reboot not made by mvm-init)"
                .into(),
        ),
        StopReason::TripleFault(what) => crash(what.clone()),
        StopReason::GuestCrash(what) => crash(what.clone()),
        StopReason::VmmError(what) => (EXIT_VMM_ERROR, "error", format!("VMM error: {what}")),
        StopReason::Signal(n) => (
            128 + n,
            "stopped",
            format!("stopped by {}; the guest was killed", signal_name(*n)),
        ),
    };
    Outcome {
        exit_code,
        report: StatusReport {
            guest,
            workload,
            boot_time_us,
            message,
        },
    }
}

/// Write `report` to `path` atomically: a temporary file in the same
/// directory, then rename, so readers never see half a file.
pub fn write_status_file(path: &Path, report: &StatusReport) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "status".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, report)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_protocol::status::InitError;
    use std::time::Duration;

    fn run(reason: StopReason, guest: GuestStatus, tail: &[&str]) -> RunResult {
        RunResult {
            reason,
            guest,
            console_tail: tail.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn clean_power_off_is_zero_with_the_workload() {
        let g = GuestStatus {
            boot_time: Some(Duration::from_micros(123_456)),
            workload: Some(Workload::Exited(3)),
            power_off: true,
        };
        let o = decide(&run(StopReason::Reset, g, &[]));
        assert_eq!(o.exit_code, 0);
        let json = serde_json::to_value(&o.report).unwrap();
        assert_eq!(json["guest"], "powered_off");
        assert_eq!(json["workload"], serde_json::json!({"exit_code": 3}));
        assert_eq!(json["boot_time_us"], 123_456);
        assert!(o.report.message.contains("exited with code 3"));
    }

    #[test]
    fn triple_fault_is_a_reset_clean_only_after_the_notice() {
        let g = GuestStatus {
            boot_time: None,
            workload: Some(Workload::Exited(0)),
            power_off: true,
        };
        let fault = || StopReason::TripleFault("vCPU 0 triple-faulted".into());
        let tail = ["mvm-init: powering off", "reboot: Restarting system"];
        let o = decide(&run(fault(), g.clone(), &tail));
        assert_eq!((o.exit_code, o.report.guest), (EXIT_OK, "powered_off"));
        assert!(o.report.message.contains("exited with code 0"));
        let g = GuestStatus {
            power_off: false,
            ..g
        };
        let o = decide(&run(fault(), g, &tail));
        assert_eq!((o.exit_code, o.report.guest), (EXIT_GUEST_CRASH, "crashed"));
        assert!(
            o.report.message.contains("triple-faulted"),
            "{}",
            o.report.message
        );
        assert!(o.report.message.contains("Restarting system"));
    }

    #[test]
    fn workload_forms() {
        let j = |w| serde_json::to_value(WorkloadReport::from(w)).unwrap();
        assert_eq!(j(Workload::Signaled(9)), serde_json::json!({"signal": 9}));
        assert_eq!(
            j(Workload::InitError(InitError::NotFound)),
            serde_json::json!({"init_error": InitError::NotFound.describe(), "exit_code": 127})
        );
    }

    #[test]
    fn reset_without_notice_is_a_crash_quoting_the_panic() {
        let tail = [
            "some boot line",
            "sysrq: Trigger a crash",
            "Kernel panic - not syncing: sysrq triggered crash",
            "CPU: 0 PID: 1",
            "",
            "Rebooting in -1 seconds..",
        ];
        let o = decide(&run(StopReason::Reset, GuestStatus::default(), &tail));
        assert_eq!(o.exit_code, EXIT_GUEST_CRASH);
        assert_eq!(o.report.guest, "crashed");
        assert!(
            o.report.message.contains("Kernel panic - not syncing"),
            "{}",
            o.report.message
        );
        assert!(!o.report.message.contains("some boot line"));
        assert!(o.report.message.contains("Rebooting"));
        let json = serde_json::to_value(&o.report).unwrap();
        assert_eq!(json["workload"], serde_json::Value::Null);
        assert_eq!(json["boot_time_us"], serde_json::Value::Null);
    }

    #[test]
    fn other_endings() {
        let lines: Vec<String> = (0..20).map(|i| format!("l{i}")).collect();
        let tail: Vec<&str> = lines.iter().map(String::as_str).collect();
        let o = decide(&run(
            StopReason::TripleFault("vCPU 0 triple-faulted".into()),
            GuestStatus::default(),
            &tail,
        ));
        assert_eq!(o.exit_code, 2);
        assert!(o.report.message.contains("triple-faulted") && o.report.message.contains("l19"));
        assert!(!o.report.message.contains("l14"), "only the last lines");
        let o = decide(&run(
            StopReason::VmmError("KVM_RUN failed".into()),
            GuestStatus::default(),
            &[],
        ));
        assert_eq!((o.exit_code, o.report.guest), (1, "error"));
        let o = decide(&run(
            StopReason::Signal(libc::SIGTERM),
            GuestStatus::default(),
            &[],
        ));
        assert_eq!((o.exit_code, o.report.guest), (143, "stopped"));
        assert!(o.report.message.contains("SIGTERM"));
    }

    #[test]
    fn status_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        std::fs::write(&p, "old").unwrap();
        let o = decide(&run(StopReason::Signal(2), GuestStatus::default(), &[]));
        write_status_file(&p, &o.report).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["guest"], "stopped");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(write_status_file(&dir.path().join("no/such/dir/s.json"), &o.report).is_err());
    }
}
