//! Sandboxes: create requests, inspect and list views, state, waits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes`: create (but not start) a sandbox.
///
/// `None` fields take the image's defaults; `Some(vec![])` for `entrypoint`
/// clears the image's entrypoint, as `docker run --entrypoint ''` does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Image reference (`busybox`, `localhost:5000/app:1`, `name@sha256:..`).
    pub image: String,
    /// Unique name; generated when absent. `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    #[serde(default)]
    pub name: Option<String>,
    /// Arguments replacing the image's CMD.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (and overriding) the image's ENV.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute); the image's WORKDIR when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user[:group]`, as `docker run -u`; the image's USER when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Guest hostname; the first 12 characters of the id when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Labels added to the image's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Allocate a terminal for the main process (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Keep the main process's stdin open for an attacher (`-i`).
    #[serde(default)]
    pub open_stdin: bool,
    /// Number of vCPUs; the daemon's default (1) when absent.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// CPU quota for the VMM in CPUs (`--cpus 1.5`), enforced with a cgroup
    /// where the host has one; the vCPU count is `ceil(cpus)` unless
    /// `vcpus` is given.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Guest memory in MiB; the daemon's default (256) when absent.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Remove the sandbox when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Signal sent by `stop`; the image's STOPSIGNAL or SIGTERM when absent.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before killing; 10 when absent.
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// Bind mounts, volumes and tmpfs (`-v`, `--mount`, `--tmpfs`).
    #[serde(default)]
    pub mounts: Vec<crate::volume::MountRequest>,
    /// `SANDBOX[:ro|:rw]` (`--volumes-from`, Docker's
    /// `HostConfig.VolumesFrom`): every volume and bind mount of that
    /// sandbox (not its tmpfs) at the same path; read-only with `:ro`,
    /// read-write with `:rw`, else as that sandbox has it. A mount of
    /// `mounts` on the same path wins; two sources mounting different
    /// things on one path are refused.
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// A read-only root filesystem (`--read-only`): writes succeed only
    /// on mounts and tmpfs.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// The network to join (`--network`): `bridge` (the default network)
    /// when absent, `none` for loopback only, or a user network's name or
    /// id.
    #[serde(default)]
    pub network: Option<String>,
    /// More names the sandbox answers to on a user network
    /// (`--network-alias`).
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// The IPv4 address on the network (`--ip`); the lowest free one when
    /// absent.
    #[serde(default)]
    pub ip: Option<String>,
    /// The MAC address (`--mac-address`); derived from the address when
    /// absent.
    #[serde(default)]
    pub mac_address: Option<String>,
    /// DNS servers for the guest (`--dns`), replacing the network's.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Extra `/etc/hosts` entries, `name:ip` (`--add-host`).
    #[serde(default)]
    pub add_host: Vec<String>,
    /// Published ports, `docker run -p` values
    /// (`[ip:][hostPort:]containerPort[/proto]`, ranges allowed).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on an ephemeral host port
    /// (`-P`).
    #[serde(default)]
    pub publish_all: bool,
}

/// `{"id": "..."}` answer to a create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    /// The new sandbox's id (64 hex characters).
    pub id: String,
    /// Non-fatal remarks (e.g. a clamped value).
    #[serde(default)]
    pub warnings: Vec<String>,
}

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

impl RestartPolicy {
    /// Parse Docker's `--restart` syntax: `no`, `on-failure[:N]`, `always`,
    /// `unless-stopped`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let policy = match name {
            "no" | "" => Self::No,
            "always" => Self::Always,
            "unless-stopped" => Self::UnlessStopped,
            "on-failure" => {
                let maximum_retry_count = match arg {
                    None => 0,
                    Some(a) => a
                        .parse()
                        .map_err(|_| format!("invalid restart count {a:?} in {s:?}: expected a number"))?,
                };
                return Ok(Self::OnFailure { maximum_retry_count });
            }
            _ => {
                return Err(format!(
                    "invalid restart policy {s:?}: use no, on-failure[:max-retries], always or unless-stopped"
                ))
            }
        };
        if arg.is_some() {
            return Err(format!(
                "restart policy {name:?} takes no count (only on-failure does)"
            ));
        }
        Ok(policy)
    }
}

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
    /// The workload exited on its own (see `exit_code`).
    Exited,
    /// Stopped by `stop` (signal, then power-off or kill after the timeout).
    Stopped,
    /// Killed by `kill` or by the daemon.
    Killed,
    /// The guest ran out of memory and the kernel's OOM killer ended the workload.
    OomKilled,
    /// The guest kernel panicked or the guest crashed.
    GuestCrashed,
    /// The VMM process died without reporting (e.g. SIGKILLed).
    VmmDied,
    /// The workload could not be started (not found, not executable, bad user).
    StartFailed,
    /// mvmd could not start the microVM (the `error` field says why).
    VmmError,
    /// A checkpoint was made and the sandbox stopped with it; `start
    /// --checkpoint NAME` resumes it from there.
    Checkpointed,
}

/// The state block of [`SandboxInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Lifecycle state.
    pub status: Status,
    /// True while the microVM runs.
    pub running: bool,
    /// PID of the `mvm-vmm` process while running.
    pub pid: Option<u32>,
    /// Exit code (Docker's: 128+N for signal N, 125-127 for start failures).
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub reason: Option<ExitReason>,
    /// A message for failures.
    pub error: Option<String>,
    /// RFC 3339 start time of the last start.
    pub started_at: Option<String>,
    /// RFC 3339 end time of the last run.
    pub finished_at: Option<String>,
    /// True when the guest's OOM killer ended the workload.
    pub oom_killed: bool,
    /// Restarts done by the restart policy since the last manual start.
    pub restart_count: u32,
    /// The running microVM is paused (`pause`; Docker's `State.Paused`).
    #[serde(default)]
    pub paused: bool,
}

/// The resolved process configuration of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// ENTRYPOINT after overrides.
    pub entrypoint: Vec<String>,
    /// CMD after overrides.
    pub cmd: Vec<String>,
    /// Full environment.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// User.
    pub user: String,
    /// Hostname.
    pub hostname: String,
    /// Labels (image's plus the sandbox's).
    pub labels: BTreeMap<String, String>,
    /// Terminal for the main process.
    pub tty: bool,
    /// Stdin kept open.
    pub open_stdin: bool,
    /// Stop signal.
    pub stop_signal: String,
    /// Stop timeout in seconds.
    pub stop_timeout: u64,
}

/// Resources and policies of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostConfig {
    /// vCPUs.
    pub vcpus: u32,
    /// CPU quota (None: unlimited).
    pub cpus: Option<f64>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Remove on exit.
    pub auto_remove: bool,
    /// Read-only root filesystem.
    #[serde(default)]
    pub read_only_rootfs: bool,
}

/// `GET /v1/sandboxes/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// 64 hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image reference as given.
    pub image: String,
    /// The image's id (config digest) at create time.
    pub image_id: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Process configuration.
    pub config: ProcessConfig,
    /// Resources and policies.
    pub host_config: HostConfig,
    /// Current state.
    pub state: State,
    /// Host paths: logs, console, disks (for debugging).
    pub paths: BTreeMap<String, String>,
    /// Bind mounts, volumes and tmpfs.
    #[serde(default)]
    pub mounts: Vec<crate::volume::MountPoint>,
    /// Its network and published ports.
    #[serde(default)]
    pub network_settings: crate::network::NetworkSettings,
}

/// One row of `GET /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSummary {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command line (entrypoint + cmd) joined for display.
    pub command: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Lifecycle state.
    pub status: Status,
    /// Human status like Docker's: `Up 5 seconds`, `Exited (3) 2 minutes ago`.
    pub status_text: String,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Published ports while it runs.
    #[serde(default)]
    pub ports: Vec<crate::network::PortBinding>,
}

/// `POST /v1/sandboxes/{id}/wait` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitResponse {
    /// Exit code of the run waited for.
    pub exit_code: i32,
    /// Set when the sandbox ended abnormally.
    pub error: Option<String>,
}

/// `POST /v1/system/prune` and similar answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResponse {
    /// Ids or references removed.
    pub deleted: Vec<String>,
    /// Bytes freed on disk.
    pub space_reclaimed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_parsing() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("always").unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::parse("unless-stopped").unwrap(),
            RestartPolicy::UnlessStopped
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                maximum_retry_count: 3
            }
        );
        assert_eq!(
            RestartPolicy::parse("on-failure").unwrap(),
            RestartPolicy::OnFailure {
                maximum_retry_count: 0
            }
        );
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        assert!(RestartPolicy::parse("always:3").is_err());
        let json = serde_json::to_string(&RestartPolicy::OnFailure {
            maximum_retry_count: 2,
        })
        .unwrap();
        assert_eq!(json, r#"{"name":"on-failure","maximum_retry_count":2}"#);
    }

    #[test]
    fn create_request_rejects_unknown_fields() {
        assert!(serde_json::from_str::<CreateRequest>(r#"{"image":"x","bogus":1}"#).is_err());
        let r: CreateRequest = serde_json::from_str(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!(r.image, "busybox");
        assert_eq!(r.restart_policy, RestartPolicy::No);
    }
}
