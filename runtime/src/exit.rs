//! How a run ended, from the VMM's status file.
//!
//! The VMM writes the file atomically just before it exits (see
//! vmm/README.md); a VMM that died without writing it was killed from
//! outside. The mapping to Docker's exit codes lives here, in one place.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use mvm_api::sandbox::ExitReason;
use serde::Deserialize;

/// The VMM's status file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusFile {
    /// `powered_off`, `crashed`, `error` or `stopped`.
    pub guest: String,
    /// What init reported about the workload.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// VMM start to init's boot report.
    #[serde(default)]
    pub boot_time_us: Option<u64>,
    /// Detail (crash excerpt, VMM error).
    #[serde(default)]
    pub message: Option<String>,
}

/// Init's report about the workload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Workload {
    /// Exit status (or Docker's 125-127 for an init error).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Killing signal.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why init could not start the workload.
    #[serde(default)]
    pub init_error: Option<String>,
}

impl StatusFile {
    /// Read the status file; `None` if it does not exist or is not a
    /// status file (a torn or foreign file is as good as none).
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = fs::read(path).ok()?;
        if bytes.len() > 1 << 20 {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

/// What mvmd asked for before the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intent {
    /// Nothing: the workload ended on its own (or something else ended it).
    #[default]
    None,
    /// `stop`.
    Stop,
    /// `kill` with SIGKILL (the VMM was killed).
    Kill,
}

/// The end of a run, as the API reports it.
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
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Map a status file (or its absence) and mvmd's intent to an [`ExitInfo`].
/// `oom` says whether the console shows the guest's OOM killer at work.
pub fn exit_info(status: Option<&StatusFile>, intent: Intent, oom: bool) -> ExitInfo {
    let mut info = ExitInfo {
        exit_code: UNKNOWN_EXIT,
        reason: ExitReason::VmmDied,
        error: None,
        oom_killed: false,
        boot_time_us: status.and_then(|s| s.boot_time_us),
    };
    let Some(st) = status else {
        if intent == Intent::Kill {
            info.exit_code = 128 + SIGKILL;
            info.reason = ExitReason::Killed;
        } else if intent == Intent::Stop {
            // mvmd's SIGTERM reached the VMM before it could record
            // anything (e.g. still setting up), or the grace ran out.
            info.exit_code = 128 + SIGTERM;
            info.reason = ExitReason::Stopped;
        } else {
            info.error = Some(
                "the VMM process ended without writing its status file (killed from outside, e.g. SIGKILL or the OOM killer of the host); see vmm.log".into(),
            );
        }
        return info;
    };
    match st.guest.as_str() {
        "powered_off" => {
            let w = st.workload.as_ref();
            match (
                w.and_then(|w| w.init_error.as_ref()),
                w.and_then(|w| w.exit_code),
                w.and_then(|w| w.signal),
            ) {
                (Some(err), code, _) => {
                    info.exit_code = code.unwrap_or(125);
                    info.reason = ExitReason::StartFailed;
                    info.error = Some(format!("the workload could not be started: {err}"));
                }
                (None, Some(code), _) => {
                    info.exit_code = code;
                    info.reason = ExitReason::Exited;
                }
                (None, None, Some(sig)) => {
                    info.exit_code = 128 + sig;
                    info.reason = ExitReason::Exited;
                    if sig == SIGKILL && oom {
                        info.reason = ExitReason::OomKilled;
                        info.oom_killed = true;
                        info.error = Some("the guest ran out of memory and its OOM killer ended the workload; give the sandbox more memory (--memory)".into());
                    }
                }
                (None, None, None) => {
                    info.reason = ExitReason::GuestCrashed;
                    info.error = Some(
                        "the guest powered off without reporting the workload's status".into(),
                    );
                }
            }
            if intent == Intent::Stop && info.reason == ExitReason::Exited {
                info.reason = ExitReason::Stopped;
            }
        }
        "crashed" => {
            info.reason = ExitReason::GuestCrashed;
            // The VMM's message is a whole sentence ("the guest crashed:
            // ..."); it is the error as it stands.
            info.error = Some(
                st.message
                    .clone()
                    .unwrap_or_else(|| "the guest crashed; no detail: see the console log".into()),
            );
        }
        "error" => {
            info.exit_code = 125;
            info.reason = ExitReason::VmmError;
            // As above: "VMM error: ..." from the VMM itself.
            info.error = Some(
                st.message
                    .clone()
                    .unwrap_or_else(|| "the VMM failed; no detail: see vmm.log".into()),
            );
        }
        "stopped" => match intent {
            Intent::Kill => {
                info.exit_code = 128 + SIGKILL;
                info.reason = ExitReason::Killed;
            }
            Intent::Stop => {
                info.exit_code = 128 + SIGTERM;
                info.reason = ExitReason::Stopped;
            }
            Intent::None => {
                info.exit_code = 128 + SIGTERM;
                info.reason = ExitReason::Killed;
                info.error = Some("the VMM was stopped by a signal from outside mvmd".into());
            }
        },
        other => {
            info.error = Some(format!("the VMM wrote an unknown outcome {other:?}"));
        }
    }
    if intent == Intent::Kill && info.reason != ExitReason::OomKilled {
        info.reason = ExitReason::Killed;
    }
    info
}

/// Whether the tail of the console shows the guest kernel's OOM killer.
pub fn console_shows_oom(console: &Path) -> bool {
    let Ok(mut f) = fs::File::open(console) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.contains("Out of memory: Killed process") || text.contains("oom-kill:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(json: &str) -> StatusFile {
        serde_json::from_str(json).unwrap()
    }

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
        let i = exit_info(Some(&s), Intent::Stop, false);
        assert_eq!((i.exit_code, i.reason), (143, ExitReason::Stopped));
        let s = st(r#"{"guest":"stopped","workload":null}"#);
        assert_eq!(exit_info(Some(&s), Intent::Stop, false).exit_code, 143);
        let i = exit_info(Some(&s), Intent::Kill, false);
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::Killed));
        let i = exit_info(None, Intent::Kill, false);
        assert_eq!((i.exit_code, i.reason), (137, ExitReason::Killed));
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
        fs::write(&p, "all fine\n").unwrap();
        assert!(!console_shows_oom(&p));
        assert!(!console_shows_oom(&d.path().join("missing")));
    }
}
