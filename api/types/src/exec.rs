//! Exec sessions, archives and stats: the endpoints served through the
//! guest agent (vsock).

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes/{id}/exec`: describe a process to run in a running
/// sandbox (started by `POST /v1/exec/{exec_id}/start`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCreateRequest {
    /// Program and arguments (looked up in the sandbox's `PATH`).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries added to the sandbox's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; the sandbox's when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user[:group]` (names or ids); the sandbox's when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Run on a pseudo-terminal (one output stream).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for STDIN frames (otherwise /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// Initial terminal size (0: the kernel default).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// `POST /v1/sandboxes/{id}/exec` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCreateResponse {
    /// The exec session id (for `/v1/exec/{exec_id}/...`).
    pub id: String,
}

/// `GET /v1/exec/{exec_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInfo {
    /// The exec session id.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// What was asked for.
    pub config: ExecCreateRequest,
    /// Started and not yet ended.
    pub running: bool,
    /// The process id in the guest, once started.
    pub pid: Option<i32>,
    /// Exit code once ended (128+N when killed by signal N; 125/126/127
    /// when the process could not be started, as Docker).
    pub exit_code: Option<i32>,
}

/// `GET /v1/sandboxes/{id}/stats`: resource usage of the workload, read
/// in the guest (cgroup of the workload and its execs, /proc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// When the figures were read (RFC 3339).
    pub read: String,
    /// CPU time of the workload cgroup, microseconds.
    pub cpu_usage_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    /// CPU time of the whole guest, microseconds (Docker's CPU percentage
    /// denominator).
    pub system_cpu_usec: u64,
    /// vCPUs online in the guest.
    pub online_cpus: u32,
    /// Memory of the workload cgroup, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// Its limit (the guest's memory when unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Page cache in the usage.
    pub memory_cache_bytes: Option<u64>,
    /// Tasks in the workload cgroup.
    pub pids: Option<u64>,
    /// Guest disk I/O, bytes.
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    /// Guest network I/O (loopback excluded), bytes.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// `GET /v1/sandboxes/{id}/top`: Docker's shape, one row of strings per
/// process in the order of `titles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopResponse {
    /// Column names: PID, PPID, USER, TIME, COMMAND.
    #[serde(rename = "Titles")]
    pub titles: Vec<String>,
    /// One row per process.
    #[serde(rename = "Processes")]
    pub processes: Vec<Vec<String>>,
}
