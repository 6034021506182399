//! How a run ended, from the VMM's status file
//! ([`StatusReport`](mvm_vmm_api::StatusReport), the type the VMM writes)
//! and what the caller had asked for ([`Intent`]). The mapping to
//! Docker's exit codes lives here, in one place.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use mvm_vmm_api::status::{GuestState, StatusReport, WorkloadReport};
use serde::{Deserialize, Serialize};

use crate::process::VmmEnd;
use crate::state::ExitReason;

/// What the caller asked of the running sandbox before its run ended; it
/// decides how an end is reported (a workload killed by SIGTERM after a
/// stop was stopped, not crashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub enum Intent {
    /// Nothing: the workload ended on its own (or something else ended it).
    #[default]
    None,
    /// A stop: `signal` to the workload, `timeout_secs` to end, then a kill.
    Stop {
        /// The stop signal.
        signal: i32,
        /// Seconds before the kill.
        timeout_secs: u64,
    },
    /// A kill with `signal` (SIGKILL ends the microVM).
    Kill {
        /// The signal.
        signal: i32,
    },
}

impl Intent {
    fn is_stop(&self) -> bool {
        matches!(self, Intent::Stop { .. })
    }
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Docker's exit code.
    pub exit_code: i32,
    /// Why it ended.
    pub reason: ExitReason,
    /// Message for abnormal ends.
    pub error: Option<String>,
    /// The guest's OOM killer ended the workload.
    pub oom_killed: bool,
    /// Boot time reported by the VMM.
    pub boot_time_us: Option<u64>,
}

/// Exit code reported when nothing better is known (Docker uses 255 for a
/// container whose end it could not observe).
pub const UNKNOWN_EXIT: i32 = 255;
const SIGKILL: i32 = libc::SIGKILL;
const SIGTERM: i32 = libc::SIGTERM;

/// Map a status report (or its absence) and the caller's intent to an
/// [`ExitInfo`]. `oom` says whether the console shows the guest's OOM
/// killer at work.
pub fn exit_info(status: Option<&StatusReport>, intent: Intent, oom: bool) -> ExitInfo {
    let mut info = ExitInfo {
        exit_code: UNKNOWN_EXIT,
        reason: ExitReason::VmmDied,
        error: None,
        oom_killed: false,
        boot_time_us: status.and_then(|s| s.boot_time_us),
    };
    let Some(st) = status else {
        match intent {
            Intent::Kill { signal } => {
                info.exit_code = 128 + signal;
                info.reason = ExitReason::Killed;
            }
            // The VMM's SIGTERM reached it before it could record anything
            // (e.g. still setting up), or the grace ran out.
            Intent::Stop { .. } => {
                info.exit_code = 128 + SIGTERM;
                info.reason = ExitReason::Stopped;
            }
            Intent::None => {
                info.error = Some(
                    "the VMM process ended without writing its status file (killed from outside, e.g. SIGKILL or the OOM killer of the host); see vmm.log".into(),
                );
            }
        }
        return info;
    };
    let message = Some(st.message.clone()).filter(|m| !m.is_empty());
    match st.guest {
        GuestState::PoweredOff => {
            match &st.workload {
                Some(WorkloadReport::InitError {
                    init_error,
                    exit_code,
                }) => {
                    info.exit_code = *exit_code;
                    info.reason = ExitReason::StartFailed;
                    info.error = Some(format!("the workload could not be started: {init_error}"));
                }
                Some(WorkloadReport::Exited { exit_code }) => {
                    info.exit_code = *exit_code;
                    info.reason = ExitReason::Exited;
                }
                Some(WorkloadReport::Signaled { signal }) => {
                    info.exit_code = 128 + signal;
                    info.reason = ExitReason::Exited;
                    if *signal == SIGKILL && oom {
                        info.reason = ExitReason::OomKilled;
                        info.oom_killed = true;
                        info.error = Some("the guest ran out of memory and its OOM killer ended the workload; give the sandbox more memory (--memory)".into());
                    }
                }
                None => {
                    info.reason = ExitReason::GuestCrashed;
                    info.error = Some(
                        "the guest powered off without reporting the workload's status".into(),
                    );
                }
            }
            if intent.is_stop() && info.reason == ExitReason::Exited {
                info.reason = ExitReason::Stopped;
            }
        }
        GuestState::Crashed => {
            info.reason = ExitReason::GuestCrashed;
            // The VMM's message is a whole sentence ("the guest crashed:
            // ..."); it is the error as it stands.
            info.error = Some(
                message
                    .unwrap_or_else(|| "the guest crashed; no detail: see the console log".into()),
            );
        }
        GuestState::Error => {
            info.exit_code = 125;
            info.reason = ExitReason::VmmError;
            // As above: "VMM error: ..." from the VMM itself.
            info.error =
                Some(message.unwrap_or_else(|| "the VMM failed; no detail: see vmm.log".into()));
        }
        // The guest lives on in its checkpoint; nothing failed.
        GuestState::Checkpointed => {
            info.exit_code = 0;
            info.reason = ExitReason::Checkpointed;
        }
        GuestState::Stopped => match intent {
            Intent::Kill { signal } => {
                info.exit_code = 128 + signal;
                info.reason = ExitReason::Killed;
            }
            Intent::Stop { .. } => {
                info.exit_code = 128 + SIGTERM;
                info.reason = ExitReason::Stopped;
            }
            Intent::None => {
                info.exit_code = 128 + SIGTERM;
                info.reason = ExitReason::Killed;
                info.error = Some("the VMM was stopped by a signal from outside mvmd".into());
            }
        },
    }
    if let Intent::Kill { signal } = intent {
        if info.reason != ExitReason::OomKilled {
            info.reason = ExitReason::Killed;
            info.exit_code = 128 + signal;
        }
    }
    info
}

/// Why a VMM killed by `SIGSYS` ended: its seccomp filter
/// (`SECCOMP_RET_KILL_PROCESS`) caught a system call outside its allowlist.
pub const SECCOMP_KILLED: &str = "the VMM was killed by its seccomp filter (SIGSYS): a bug in mvm-vmm or a missing allowlist entry; see vmm.log, and the host's kernel log (dmesg: the audit record type=1326 with sig=31 names the system call)";

/// Corrects `info` with how the VMM process ended, when that is known
/// ([`VmmEnd`] from reaping it):
///
/// - a VMM killed by `SIGSYS` wrote no status (or wrote it and died
///   after), and whatever else happened the run failed because of the
///   VMM's filter, which must be said as such;
/// - a VMM killed by another signal from outside (`kill -9`, the host's
///   OOM killer), with no status and no kill asked for, ends its run with
///   128+N: the sandbox's process *is* the VMM, so this is what runc (or
///   a shell) reports for a container whose init that signal killed,
///   where the status file alone could only say "unknown" (255).
///
/// Any other end leaves `info` as the status file made it.
pub fn with_end(mut info: ExitInfo, end: Option<VmmEnd>) -> ExitInfo {
    match end {
        Some(VmmEnd::Signaled(libc::SIGSYS)) => {
            info.exit_code = 128 + libc::SIGSYS;
            info.reason = ExitReason::VmmDied;
            info.oom_killed = false;
            info.error = Some(SECCOMP_KILLED.into());
        }
        // No status file and no intent: `exit_info`'s "unknown".
        Some(VmmEnd::Signaled(sig))
            if info.reason == ExitReason::VmmDied && info.exit_code == UNKNOWN_EXIT =>
        {
            info.exit_code = 128 + sig;
            info.error = Some(killed_from_outside(sig));
        }
        _ => {}
    }
    info
}

/// Why a VMM killed by signal `sig` from outside ended its run.
fn killed_from_outside(sig: i32) -> String {
    let name = mvm_protocol::agent::signal::name(sig).unwrap_or("a signal without a name");
    format!(
        "the VMM process was killed by signal {sig} ({name}) from outside, before it wrote its status file (kill from a user or a tool, or the host's OOM killer); see vmm.log"
    )
}

/// Whether the tail of the console shows the guest kernel's OOM killer.
/// The console is opened as the VMM's files are ([`crate::paths::read_vm_file`]):
/// one that is a link or not a regular file is not read (and says so in
/// the log).
pub fn console_shows_oom(console: &Path) -> bool {
    let mut f = match crate::paths::read_vm_file(console) {
        Ok(Some(f)) => f,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!("{e}");
            return false;
        }
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    // The guest-wide OOM killer logs "Out of memory: Killed process", the
    // workload cgroup's (memory.max, the shim's container limit) "Memory
    // cgroup out of memory: Killed process"; both at KERN_ERR, which a
    // quiet console still shows.
    text.contains("Out of memory: Killed process")
        || text.contains("Memory cgroup out of memory: Killed process")
        || text.contains("oom-kill:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn st(json: &str) -> StatusReport {
        serde_json::from_str(json).unwrap()
    }

    const STOP: Intent = Intent::Stop {
        signal: SIGTERM,
        timeout_secs: 10,
    };
    const KILL: Intent = Intent::Kill { signal: SIGKILL };

    #[test]
    fn workload_exit_codes() {
        let s = st(r#"{"guest":"powered_off","workload":{"exit_code":3},"boot_time_us":5}"#);
        let i = exit_info(Some(&s), Intent::None, false);
        assert_eq!((i.exit_code, i.reason), (3, ExitReason::Exited));
        assert_eq!(i.boot_time_us, Some(5));
        let s = st(r#"{"guest":"powered_off","workload":{"signal":9}}"#);
        let i = exit_info(Some(&s), Intent::None, false);
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::Exited));
        let i = exit_info(Some(&s), Intent::None, true);
        assert_eq!(
            (i.exit_code, i.reason, i.oom_killed),
            (137, ExitReason::OomKilled, true)
        );
        let s = st(
            r#"{"guest":"powered_off","workload":{"init_error":"the executable was not found","exit_code":127}}"#,
        );
        let i = exit_info(Some(&s), Intent::None, false);
        assert_eq!((i.exit_code, i.reason), (127, ExitReason::StartFailed));
        assert!(i.error.unwrap().contains("not found"));
    }

    #[test]
    fn stop_and_kill() {
        let s = st(r#"{"guest":"powered_off","workload":{"signal":15}}"#);
        let i = exit_info(Some(&s), STOP, false);
        assert_eq!((i.exit_code, i.reason), (143, ExitReason::Stopped));
        let s = st(r#"{"guest":"stopped","workload":null}"#);
        assert_eq!(exit_info(Some(&s), STOP, false).exit_code, 143);
        let i = exit_info(Some(&s), KILL, false);
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::Killed));
        let i = exit_info(None, KILL, false);
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::Killed));
        // A kill carries its signal: without a guest agent SIGINT ends the
        // microVM and is reported as the workload's end by SIGINT.
        let int = Intent::Kill {
            signal: libc::SIGINT,
        };
        assert_eq!(exit_info(None, int, false).exit_code, 130);
        assert_eq!(exit_info(Some(&s), int, false).exit_code, 130);
    }

    #[test]
    fn intents_are_stored_with_their_signal() {
        for i in [Intent::None, STOP, KILL] {
            let j = serde_json::to_string(&i).unwrap();
            assert_eq!(serde_json::from_str::<Intent>(&j).unwrap(), i, "{j}");
        }
        assert_eq!(
            serde_json::to_value(STOP).unwrap(),
            serde_json::json!({"intent": "stop", "signal": 15, "timeout_secs": 10})
        );
    }

    #[test]
    fn vmm_deaths_and_failures() {
        let i = exit_info(None, Intent::None, false);
        assert_eq!((i.exit_code, i.reason), (UNKNOWN_EXIT, ExitReason::VmmDied));
        assert!(i.error.unwrap().contains("status file"));
        let s = st(r#"{"guest":"crashed","message":"the guest crashed: Kernel panic"}"#);
        let i = exit_info(Some(&s), Intent::None, false);
        assert_eq!(i.reason, ExitReason::GuestCrashed);
        assert_eq!(i.error.unwrap(), "the guest crashed: Kernel panic");
        let s = st(r#"{"guest":"crashed"}"#);
        let i = exit_info(Some(&s), Intent::None, false);
        assert!(i.error.unwrap().starts_with("the guest crashed"));
        let s = st(r#"{"guest":"error","message":"VMM error: KVM is PVM"}"#);
        let i = exit_info(Some(&s), Intent::None, false);
        assert_eq!((i.exit_code, i.reason), (125, ExitReason::VmmError));
        assert_eq!(i.error.unwrap(), "VMM error: KVM is PVM");
    }

    #[test]
    fn a_vmm_killed_by_sigsys_is_a_seccomp_kill_whatever_else_is_known() {
        let ok = st(r#"{"guest":"powered_off","workload":{"exit_code":0}}"#);
        for (status, intent) in [(None, Intent::None), (Some(&ok), STOP), (None, KILL)] {
            let i = with_end(
                exit_info(status, intent, false),
                Some(VmmEnd::Signaled(libc::SIGSYS)),
            );
            assert_eq!((i.exit_code, i.reason), (159, ExitReason::VmmDied));
            assert_eq!(i.error.as_deref(), Some(SECCOMP_KILLED));
        }
        // Other ends, or none known, change nothing.
        for end in [
            None,
            Some(VmmEnd::Exited(0)),
            Some(VmmEnd::Signaled(libc::SIGKILL)),
        ] {
            let plain = exit_info(Some(&ok), Intent::None, false);
            assert_eq!(with_end(plain.clone(), end), plain);
        }
    }

    #[test]
    fn a_vmm_killed_from_outside_ends_its_run_with_the_signal() {
        let unknown = exit_info(None, Intent::None, false);
        let i = with_end(unknown.clone(), Some(VmmEnd::Signaled(libc::SIGKILL)));
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::VmmDied));
        let e = i.error.unwrap();
        assert!(
            e.contains("signal 9 (SIGKILL)") && e.contains("status file"),
            "{e}"
        );
        let i = with_end(unknown.clone(), Some(VmmEnd::Signaled(libc::SIGTERM)));
        assert_eq!(i.exit_code, 143);
        // Not reaped here (no end known), or it exited: still unknown.
        for end in [None, Some(VmmEnd::Exited(1))] {
            assert_eq!(with_end(unknown.clone(), end), unknown);
        }
        // A kill that was asked for, or a status file, says more.
        let asked = exit_info(
            None,
            Intent::Kill {
                signal: libc::SIGINT,
            },
            false,
        );
        assert_eq!(
            with_end(asked.clone(), Some(VmmEnd::Signaled(libc::SIGKILL))),
            asked
        );
        let s = st(r#"{"guest":"powered_off","workload":{"exit_code":3}}"#);
        let plain = exit_info(Some(&s), Intent::None, false);
        assert_eq!(
            with_end(plain.clone(), Some(VmmEnd::Signaled(libc::SIGKILL))),
            plain
        );
    }

    #[test]
    fn oom_detection_reads_the_console_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        fs::write(
            &p,
            format!(
                "{}\n[ 1.0] Out of memory: Killed process 42 (x)\n",
                "x".repeat(100_000)
            ),
        )
        .unwrap();
        assert!(console_shows_oom(&p));
        // The workload cgroup's limit (the shim's memory.max).
        fs::write(
            &p,
            "[ 2.0] Memory cgroup out of memory: Killed process 7 (hog) total-vm:9kB\n",
        )
        .unwrap();
        assert!(console_shows_oom(&p));
        fs::write(&p, "all fine\n").unwrap();
        assert!(!console_shows_oom(&p));
        assert!(!console_shows_oom(&d.path().join("missing")));
    }
}
