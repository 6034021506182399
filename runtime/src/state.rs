//! The lifecycle state machine: which operation is allowed in which
//! state, and how a state changes. Pure, so the rules are tested here and
//! the daemon only persists the results.
//!
//! ```text
//! created --start--> running --exit--> exited --start--> running
//!                       |                 |--policy--> restarting --start--> running
//!                       '--stop/kill------'
//! any state but running --remove--> removing --> (gone)
//! ```

use serde::{Deserialize, Serialize};

use crate::exit::ExitInfo;

/// Lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, never started (or prepared for a start).
    Created,
    /// The microVM is running.
    Running,
    /// Waiting for the restart back-off to expire.
    Restarting,
    /// The microVM has ended.
    Exited,
    /// Being removed.
    Removing,
}

/// Why a sandbox is not running any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The workload exited on its own.
    Exited,
    /// Stopped (stop signal, then power-off or kill after the timeout).
    Stopped,
    /// Killed.
    Killed,
    /// The guest's OOM killer ended the workload.
    OomKilled,
    /// The guest kernel panicked or the guest crashed.
    GuestCrashed,
    /// The VMM process died without reporting (e.g. SIGKILLed).
    VmmDied,
    /// The workload could not be started (not found, not executable, bad user).
    StartFailed,
    /// The microVM could not be started (the error says why).
    VmmError,
    /// A checkpoint was made and the sandbox stopped with it (`checkpoint
    /// create` without `--leave-running`); `start --checkpoint` resumes it.
    Checkpointed,
}

/// The state of a sandbox's runs: the record a caller stores next to the
/// [`SandboxSpec`](crate::SandboxSpec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Lifecycle state.
    pub status: Status,
    /// PID of the `mvm-vmm` process while running.
    pub pid: Option<u32>,
    /// Exit code of the last run (Docker's: 128+N for signal N, 125-127
    /// for start failures).
    pub exit_code: Option<i32>,
    /// Why the last run ended.
    pub reason: Option<ExitReason>,
    /// A message for failures.
    pub error: Option<String>,
    /// RFC 3339 time of the last start.
    pub started_at: Option<String>,
    /// RFC 3339 time the last run ended.
    pub finished_at: Option<String>,
    /// The guest's OOM killer ended the last run's workload.
    pub oom_killed: bool,
    /// Restarts made by the restart policy since the last manual start.
    pub restart_count: u32,
    /// The running microVM is frozen (`pause`): its VMM's processes are
    /// stopped by the cgroup freezer until `unpause`.
    #[serde(default)]
    pub paused: bool,
}

impl State {
    /// True while the microVM runs.
    pub fn running(&self) -> bool {
        self.status == Status::Running
    }
}

/// Operations that depend on the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start (also a restart's second half).
    Start,
    /// Stop or kill.
    Stop,
    /// Remove without force.
    Remove,
}

/// Whether `op` is allowed in `status`; the error says why not and what
/// to do.
pub fn check(status: Status, op: Op) -> Result<(), String> {
    use Status::*;
    match (op, status) {
        (Op::Start, Created | Exited | Restarting) => Ok(()),
        (Op::Start, Running) => Err("the sandbox is already running".into()),
        (Op::Stop, Running | Restarting) => Ok(()),
        (Op::Stop, Created | Exited) => Err("the sandbox is not running".into()),
        (Op::Remove, Created | Exited) => Ok(()),
        (Op::Remove, Running | Restarting) => {
            Err("the sandbox is running: stop it first or remove it with force".into())
        }
        (_, Removing) => Err("the sandbox is being removed".into()),
    }
}

/// A fresh state for a created sandbox.
pub fn created() -> State {
    State {
        status: Status::Created,
        pid: None,
        exit_code: None,
        reason: None,
        error: None,
        started_at: None,
        finished_at: None,
        oom_killed: false,
        restart_count: 0,
        paused: false,
    }
}

/// `state` after a successful start at `now` by VMM `pid`.
pub fn started(state: &State, pid: i32, now: &str) -> State {
    State {
        status: Status::Running,
        pid: u32::try_from(pid).ok(),
        exit_code: None,
        reason: None,
        error: None,
        started_at: Some(now.to_string()),
        finished_at: None,
        oom_killed: false,
        restart_count: state.restart_count,
        paused: false,
    }
}

/// `state` after the run ended as `info` says, at `now`.
pub fn exited(state: &State, info: &ExitInfo, now: &str) -> State {
    State {
        status: Status::Exited,
        pid: None,
        exit_code: Some(info.exit_code),
        reason: Some(info.reason),
        error: info.error.clone(),
        started_at: state.started_at.clone(),
        finished_at: Some(now.to_string()),
        oom_killed: info.oom_killed,
        restart_count: state.restart_count,
        paused: false,
    }
}

/// `state` after a start failed before the VMM ran.
pub fn start_failed(state: &State, message: &str, now: &str) -> State {
    State {
        status: if state.status == Status::Created && state.started_at.is_none() {
            Status::Created
        } else {
            Status::Exited
        },
        pid: None,
        exit_code: Some(125),
        reason: Some(ExitReason::VmmError),
        error: Some(message.to_string()),
        started_at: state.started_at.clone(),
        finished_at: Some(now.to_string()),
        oom_killed: false,
        restart_count: state.restart_count,
        paused: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(check(Status::Created, Op::Start).is_ok());
        assert!(check(Status::Running, Op::Start).is_err());
        assert!(check(Status::Exited, Op::Start).is_ok());
        assert!(check(Status::Exited, Op::Stop).is_err());
        assert!(check(Status::Running, Op::Remove)
            .unwrap_err()
            .contains("force"));
        assert!(check(Status::Removing, Op::Start).is_err());
        let s = created();
        let r = started(&s, 42, "t1");
        assert_eq!(
            (r.status, r.running(), r.pid),
            (Status::Running, true, Some(42))
        );
        let info = ExitInfo {
            exit_code: 3,
            reason: ExitReason::Exited,
            error: None,
            oom_killed: false,
            boot_time_us: None,
        };
        let e = exited(&r, &info, "t2");
        assert_eq!(
            (e.status, e.exit_code, e.started_at.as_deref()),
            (Status::Exited, Some(3), Some("t1"))
        );
        let f = start_failed(&s, "boom", "t3");
        assert_eq!(f.status, Status::Created);
        let f = start_failed(&e, "boom", "t3");
        assert_eq!((f.status, f.exit_code), (Status::Exited, Some(125)));
    }
}
