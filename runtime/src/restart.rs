//! Restart policies and Docker's back-off.
//!
//! Docker waits 100 ms before the first restart and doubles the delay each
//! time, up to a cap; a run that lasted long enough resets the delay, so a
//! service that crashes once a day is not punished for yesterday's crash.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Docker's restart policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart on a non-zero exit, at most `maximum_retry_count` times (0: no limit).
    OnFailure {
        /// Limit on restarts; 0 means none.
        #[serde(default)]
        maximum_retry_count: u32,
    },
    /// Always restart, also after a daemon restart.
    Always,
    /// Like `always`, except after the user stopped it.
    UnlessStopped,
}

/// First delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// Whether a sandbox that just exited should be restarted.
///
/// `restarts` counts restarts the policy already made since the last
/// manual start; `manually_stopped` is true after `stop`/`kill` by a user.
pub fn should_restart(
    policy: &RestartPolicy,
    exit_code: i32,
    restarts: u32,
    manually_stopped: bool,
) -> bool {
    if manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure {
            maximum_retry_count,
        } => exit_code != 0 && (*maximum_retry_count == 0 || restarts < *maximum_retry_count),
    }
}

/// Whether a sandbox that was not running when mvmd started should be
/// started again (Docker restarts `always` containers on daemon start even
/// after a manual stop, `unless-stopped` ones only if not stopped by hand).
pub fn restart_on_daemon_start(policy: &RestartPolicy, manually_stopped: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !manually_stopped,
        _ => false,
    }
}

/// The delay before the next restart, given the previous delay (`None`
/// for the first restart) and how long the last run lasted.
pub fn next_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        _ if ran_for >= RESET_AFTER => INITIAL_DELAY,
        None => INITIAL_DELAY,
        Some(d) => (d * 2).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let of = |n| RestartPolicy::OnFailure {
            maximum_retry_count: n,
        };
        assert!(!should_restart(&RestartPolicy::No, 1, 0, false));
        assert!(should_restart(&RestartPolicy::Always, 0, 100, false));
        assert!(!should_restart(&RestartPolicy::Always, 0, 0, true));
        assert!(should_restart(&RestartPolicy::UnlessStopped, 0, 0, false));
        assert!(!should_restart(&of(0), 0, 0, false));
        assert!(should_restart(&of(0), 1, 1000, false));
        assert!(should_restart(&of(2), 137, 1, false));
        assert!(!should_restart(&of(2), 137, 2, false));
        assert!(restart_on_daemon_start(&RestartPolicy::Always, true));
        assert!(!restart_on_daemon_start(
            &RestartPolicy::UnlessStopped,
            true
        ));
        assert!(restart_on_daemon_start(
            &RestartPolicy::UnlessStopped,
            false
        ));
        assert!(!restart_on_daemon_start(&of(0), false));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let short = Duration::from_millis(50);
        let mut d = next_delay(None, short);
        assert_eq!(d, INITIAL_DELAY);
        let mut seen = vec![d];
        for _ in 0..12 {
            d = next_delay(Some(d), short);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[2], Duration::from_millis(400));
        assert_eq!(*seen.last().unwrap(), MAX_DELAY);
        assert_eq!(next_delay(Some(MAX_DELAY), RESET_AFTER), INITIAL_DELAY);
    }
}
