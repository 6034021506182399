//! Turning how the VM stopped into the process's exit status, a status
//! file and log lines.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | the guest powered off cleanly (init announced it) |
//! | 1 | VMM error |
//! | 2 | the guest crashed (panic, triple fault, reset without notice) |
//! | 128+N | the VMM was stopped by signal N (SIGTERM: 143, SIGINT: 130) |

use mvm_vmm_api::status::GuestState;
pub use mvm_vmm_api::status::{
    StatusReport, WorkloadReport, EXIT_GUEST_CRASH, EXIT_OK, EXIT_VMM_ERROR,
};

use crate::builder::RunResult;
use crate::devices::status_port::{GuestStatus, Workload};
use crate::exit::StopReason;

/// How many trailing console lines a crash message quotes when no panic
/// line is found.
const CRASH_CONTEXT_LINES: usize = 5;

/// The status file's form of what init reported (the type is
/// `mvm-vmm-api`'s; the status port's decoding is the VMM's).
fn workload_report(w: Workload) -> WorkloadReport {
    match w {
        Workload::Exited(c) => WorkloadReport::Exited {
            exit_code: c.into(),
        },
        Workload::Signaled(s) => WorkloadReport::Signaled { signal: s.into() },
        Workload::InitError(e) => WorkloadReport::InitError {
            init_error: e.describe().to_owned(),
            exit_code: e.docker_exit_code(),
        },
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
    let workload = g.workload.map(workload_report);
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
        (EXIT_GUEST_CRASH, GuestState::Crashed, message)
    };
    let powered_off = || {
        (
            EXIT_OK,
            GuestState::PoweredOff,
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
        StopReason::VmmError(what) => (EXIT_VMM_ERROR, GuestState::Error, format!("VMM error: {what}")),
        StopReason::Checkpointed => (
            EXIT_OK,
            GuestState::Checkpointed,
            "the VM was snapshotted and ended as asked; the guest lives on in its snapshot".into(),
        ),
        StopReason::Signal(n) => (
            128 + n,
            GuestState::Stopped,
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
            warm_ready: false,
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
            warm_ready: false,
        };
        let fault = || StopReason::TripleFault("vCPU 0 triple-faulted".into());
        let tail = ["mvm-init: powering off", "reboot: Restarting system"];
        let o = decide(&run(fault(), g.clone(), &tail));
        assert_eq!(
            (o.exit_code, o.report.guest),
            (EXIT_OK, GuestState::PoweredOff)
        );
        assert!(o.report.message.contains("exited with code 0"));
        let g = GuestStatus {
            power_off: false,
            ..g
        };
        let o = decide(&run(fault(), g, &tail));
        assert_eq!(
            (o.exit_code, o.report.guest),
            (EXIT_GUEST_CRASH, GuestState::Crashed)
        );
        assert!(
            o.report.message.contains("triple-faulted"),
            "{}",
            o.report.message
        );
        assert!(o.report.message.contains("Restarting system"));
    }

    #[test]
    fn workload_forms() {
        let j = |w| serde_json::to_value(workload_report(w)).unwrap();
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
        assert_eq!(o.report.guest, GuestState::Crashed);
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
        assert_eq!((o.exit_code, o.report.guest), (1, GuestState::Error));
        let o = decide(&run(
            StopReason::Signal(libc::SIGTERM),
            GuestStatus::default(),
            &[],
        ));
        assert_eq!((o.exit_code, o.report.guest), (143, GuestState::Stopped));
        assert!(o.report.message.contains("SIGTERM"));
    }
}
