//! The control messages: JSON objects tagged by `"op"`.
//!
//! Requests go host to agent, responses agent to host. Both enums end in an
//! `Unknown` variant that absorbs any `op` this side does not know: the
//! agent answers an unknown request with `error {code: "unsupported"}` and
//! keeps the connection, and an older host skips responses a newer agent
//! may add. Unknown fields are ignored for the same reason; a *known* op
//! with missing or mistyped fields is a `bad_request`.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::launch::LaunchSpec;

/// Host to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first message of every connection. `request` may carry the
    /// first real request, saving a frame; sending it in the next frame
    /// without waiting for the agent's `hello` is equivalent.
    Hello {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Box<Request>>,
    },
    /// Run a new process; answered by `started` or `error`, then stream
    /// frames, then `exited`.
    Exec(Exec),
    /// Stream the main workload's output (and optionally feed its stdin)
    /// until it ends; answered by `started {pid}` of the main process.
    Attach {
        #[serde(default)]
        stdin: bool,
    },
    /// Send a signal. No target: the process of this connection's exec or
    /// attach session, else the main workload.
    Signal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Target>,
        signal: i32,
    },
    /// Set a terminal's size; targets as for `signal`.
    Resize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Target>,
        rows: u16,
        cols: u16,
    },
    /// Resource usage of the workload cgroup and the guest.
    Stats,
    /// Extract the tar stream that follows (DATA frames, then DATA_EOF)
    /// into the existing directory `path`; answered by `done` or `error`.
    CopyIn { path: String },
    /// A tar stream of `path` (DATA frames, then DATA_EOF), or `error`.
    CopyOut { path: String },
    /// Answered by `pong`: the agent is up.
    Ping,
    /// The workload's processes (`docker top`); answered by `processes`.
    /// Agents that predate it answer `unsupported`.
    Processes,
    /// Stop the main workload: `signal`, up to `timeout_ms` for it to
    /// exit, then SIGKILL; the guest then powers off as usual. Answered by
    /// `done` once the main process has exited.
    Shutdown {
        #[serde(default = "default_stop_signal")]
        signal: i32,
        #[serde(default = "default_stop_timeout_ms")]
        timeout_ms: u64,
    },
    /// The changes the workload made to the root filesystem, as an OCI
    /// layer tar (DATA frames, then DATA_EOF), or `error`. Only for a guest
    /// launched with `rootfs.export_changes` (`unsupported` otherwise): the
    /// agent answers once the workload has exited and init has ended the
    /// processes it left behind, so the stream is the final state.
    /// Deleted files are `.wh.NAME` entries, directories whose lower
    /// content was hidden carry `.wh..wh..opq`, as the OCI image spec
    /// writes them. The host treats the stream as hostile like any other.
    Changes,
    /// The launch spec of a guest booted warm (launch spec `warm`, after
    /// the `WarmReady` status event): init validates it as it validates
    /// /mvm/launch.json, answers `done` and goes on exactly as a cold boot
    /// does after reading that file; or answers `bad_request` (an invalid
    /// spec, a warm one, a spec after the guest was launched) and, while
    /// still warm, keeps waiting. Versioned by the spec's own `version`:
    /// an init that knows `launch` but not the spec's format answers
    /// `bad_request` (unknown fields, another version); one that predates
    /// `launch` answers `unsupported`. Either way at once: a host never
    /// waits on an init that cannot launch.
    Launch { spec: Box<LaunchSpec> },
    /// Any op this version does not know.
    #[serde(other)]
    Unknown,
}

fn default_stop_signal() -> i32 {
    15
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

impl Request {
    /// The `op` name, for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Exec(_) => "exec",
            Self::Attach { .. } => "attach",
            Self::Signal { .. } => "signal",
            Self::Resize { .. } => "resize",
            Self::Stats => "stats",
            Self::CopyIn { .. } => "copy_in",
            Self::CopyOut { .. } => "copy_out",
            Self::Ping => "ping",
            Self::Processes => "processes",
            Self::Shutdown { .. } => "shutdown",
            Self::Changes => "changes",
            Self::Launch { .. } => "launch",
            Self::Unknown => "unknown",
        }
    }
}

/// An `exec` request. Unset fields default to the main workload's (user,
/// working directory); `env` is added to the main workload's environment,
/// as `docker exec -e` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a new pseudo-terminal: one output stream (STDOUT frames).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for STDIN frames; otherwise it is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Initial terminal size (0: leave the kernel default).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// Which process a `signal` or `resize` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The main workload (the launch spec's process).
    Main,
    /// Any process in the guest by pid.
    Pid(i32),
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Main => s.serialize_str("main"),
            Self::Pid(p) => s.serialize_i32(*p),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"main\" or a process id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
                match v {
                    "main" => Ok(Target::Main),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Target, E> {
                i32::try_from(v)
                    .map(Target::Pid)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Target, E> {
                i32::try_from(v)
                    .map(Target::Pid)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Agent to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `hello`: the agent's protocol version.
    Hello { version: u32 },
    /// The process of an `exec` (or the main one, for `attach`) runs.
    Started { pid: i32 },
    /// The process ended; sent after all of its output.
    Exited(Exit),
    /// The request failed; see [`ErrorCode`].
    Error { code: ErrorCode, message: String },
    /// Answer to `ping`.
    Pong,
    /// Answer to `stats`.
    Stats(Stats),
    /// The request succeeded and has nothing to report.
    Done,
    /// Answer to `processes`.
    Processes { processes: Vec<ProcessInfo> },
    /// Any op this version does not know.
    #[serde(other)]
    Unknown,
}

impl Response {
    /// An `error` response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }
}

/// One process of the workload, as `docker top` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// The user's name from the guest's /etc/passwd, else the uid.
    pub user: String,
    /// CPU time used (user + system), milliseconds.
    pub cpu_ms: u64,
    /// The command line (`/proc/PID/cmdline`, arguments joined by spaces),
    /// or `[comm]` when it is empty.
    pub cmd: String,
}

/// How a process ended: exactly one field is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl Exit {
    pub fn code(code: i32) -> Self {
        Self {
            exit_code: Some(code),
            signal: None,
        }
    }

    pub fn signal(signal: i32) -> Self {
        Self {
            exit_code: None,
            signal: Some(signal),
        }
    }

    /// The status a shell (and Docker) reports: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Why a request failed. Unknown codes from a newer agent read as
/// `Unknown`, so the message is never lost to a parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Protocol versions differ; the agent closes the connection.
    Version,
    /// The message is malformed or not allowed here.
    BadRequest,
    /// The op is not known to this agent.
    Unsupported,
    /// This connection is busy with a running exec or attach.
    Busy,
    /// The executable (exec) or path (copy) does not exist. Docker's 127.
    NotFound,
    /// The executable cannot be run. Docker's 126.
    NotExecutable,
    /// The user, group or working directory cannot be applied.
    User,
    /// No such process (signal, resize) or it has no terminal.
    NoSuchProcess,
    /// The main workload's output goes to the console, not the agent.
    NotAttachable,
    /// A newer `attach` took over this one.
    Detached,
    /// A filesystem or system call failed.
    Io,
    /// The agent could not do what it should have been able to.
    Internal,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The exit status Docker reports when `exec` fails with this code.
    pub fn docker_exit_code(self) -> i32 {
        match self {
            Self::NotFound => 127,
            Self::NotExecutable => 126,
            _ => 125,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::BadRequest => "bad_request",
            Self::Unsupported => "unsupported",
            Self::Busy => "busy",
            Self::NotFound => "not_found",
            Self::NotExecutable => "not_executable",
            Self::User => "user",
            Self::NoSuchProcess => "no_such_process",
            Self::NotAttachable => "not_attachable",
            Self::Detached => "detached",
            Self::Io => "io",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource usage. Fields read from the workload cgroup are `None` when
/// the guest has no such cgroup or controller; the others describe the
/// whole guest, which is the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// CPU time of the workload cgroup (`cpu.stat`), microseconds.
    pub cpu_usage_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    /// CPU time of the whole guest (`/proc/stat`, all states, all CPUs),
    /// microseconds: the denominator of Docker's CPU percentage.
    pub system_cpu_usec: u64,
    pub online_cpus: u32,
    /// `memory.current` of the workload cgroup.
    pub memory_usage_bytes: Option<u64>,
    /// `memory.max`, or the guest's total memory when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// File-backed memory (page cache) in the usage (`memory.stat` file).
    pub memory_cache_bytes: Option<u64>,
    /// `pids.current` of the workload cgroup.
    pub pids: Option<u64>,
    /// Bytes read from and written to the guest's virtio disks.
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    /// Bytes received and sent on the guest's interfaces (loopback excluded).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<Request, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn requests_round_trip() {
        let all = vec![
            Request::Hello {
                version: 1,
                request: Some(Box::new(Request::Ping)),
            },
            Request::Hello {
                version: 1,
                request: None,
            },
            Request::Exec(Exec {
                args: vec!["sh".into(), "-c".into(), "echo \"ü\"\n".into()],
                env: vec!["A=b".into()],
                cwd: Some("/tmp".into()),
                user: Some("1000:1000".into()),
                tty: true,
                stdin: true,
                rows: 24,
                cols: 80,
            }),
            Request::Attach { stdin: true },
            Request::Signal {
                target: Some(Target::Main),
                signal: 15,
            },
            Request::Signal {
                target: Some(Target::Pid(42)),
                signal: 9,
            },
            Request::Resize {
                target: None,
                rows: 1,
                cols: 2,
            },
            Request::Stats,
            Request::CopyIn { path: "/a".into() },
            Request::CopyOut { path: "/b".into() },
            Request::Ping,
            Request::Processes,
            Request::Shutdown {
                signal: 15,
                timeout_ms: 100,
            },
        ];
        for r in all {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(req(&json).unwrap(), r, "{json}");
        }
    }

    #[test]
    fn wire_format_is_as_documented() {
        assert_eq!(
            req(r#"{"op":"hello","version":1}"#).unwrap(),
            Request::Hello {
                version: 1,
                request: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Ping).unwrap(),
            r#"{"op":"ping"}"#
        );
        assert_eq!(
            req(r#"{"op":"exec","args":["true"]}"#).unwrap(),
            Request::Exec(Exec {
                args: vec!["true".into()],
                ..Exec::default()
            })
        );
        assert_eq!(
            req(r#"{"op":"shutdown"}"#).unwrap(),
            Request::Shutdown {
                signal: 15,
                timeout_ms: 10_000
            }
        );
        assert_eq!(
            serde_json::to_string(&Response::Exited(Exit::code(3))).unwrap(),
            r#"{"op":"exited","exit_code":3}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Exited(Exit::signal(9))).unwrap(),
            r#"{"op":"exited","signal":9}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error(ErrorCode::NotFound, "x")).unwrap(),
            r#"{"op":"error","code":"not_found","message":"x"}"#
        );
    }

    #[test]
    fn unknown_ops_fields_and_codes_are_tolerated() {
        assert_eq!(
            req(r#"{"op":"teleport","to":"mars"}"#).unwrap(),
            Request::Unknown
        );
        assert_eq!(req(r#"{"op":"ping","extra":[1]}"#).unwrap(), Request::Ping);
        let r: Response =
            serde_json::from_str(r#"{"op":"error","code":"quota","message":"m"}"#).unwrap();
        assert_eq!(r, Response::error(ErrorCode::Unknown, "m"));
        let r: Response = serde_json::from_str(r#"{"op":"progress","pct":5}"#).unwrap();
        assert_eq!(r, Response::Unknown);
    }

    #[test]
    fn malformed_known_ops_are_errors() {
        for bad in [
            r#"{"op":"exec"}"#,
            r#"{"op":"exec","args":"true"}"#,
            r#"{"op":"signal"}"#,
            r#"{"op":"signal","signal":"TERM"}"#,
            r#"{"op":"signal","signal":9,"target":"init"}"#,
            r#"{"op":"signal","signal":9,"target":4294967296}"#,
            r#"{"op":"resize","rows":70000,"cols":1}"#,
            r#"{"op":"hello"}"#,
            r#"{"version":1}"#,
            r#"[]"#,
        ] {
            assert!(req(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn launch_carries_a_whole_spec_and_refuses_a_malformed_one() {
        let mut spec = LaunchSpec::new(vec!["hostname".into()]);
        spec.hostname = Some("warm-1".into());
        spec.realtime_ns = Some(crate::launch::MIN_REALTIME_NS + 1);
        spec.set_entropy(&[7; crate::launch::ENTROPY_LEN]);
        let r = Request::Launch {
            spec: Box::new(spec),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with(r#"{"op":"launch","spec":{"version":1,"#),
            "{json}"
        );
        assert_eq!(req(&json).unwrap(), r);
        assert_eq!(r.op(), "launch");
        // Inside hello, as the client sends a first request.
        let hello = Request::Hello {
            version: 1,
            request: Some(Box::new(r.clone())),
        };
        let json = serde_json::to_string(&hello).unwrap();
        assert_eq!(req(&json).unwrap(), hello);
        for bad in [
            r#"{"op":"launch"}"#,
            r#"{"op":"launch","spec":null}"#,
            r#"{"op":"launch","spec":"{}"}"#,
            r#"{"op":"launch","spec":{"version":1,"rootfs":{"image_drive":"r"}}}"#,
            r#"{"op":"launch","spec":{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"future":1}}"#,
            r#"{"op":"launch","spec":{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":"a"}}}"#,
        ] {
            // A request that parses still has its spec validated by init;
            // these do not even parse (or, for the one without a process,
            // parse into a spec that fails validation).
            match req(bad) {
                Err(_) => {}
                Ok(Request::Launch { spec }) => assert!(spec.validate().is_err(), "{bad}"),
                Ok(other) => panic!("{bad} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn exit_shell_codes() {
        assert_eq!(Exit::code(3).shell_code(), 3);
        assert_eq!(Exit::signal(9).shell_code(), 137);
        assert_eq!(ErrorCode::NotFound.docker_exit_code(), 127);
        assert_eq!(ErrorCode::NotExecutable.docker_exit_code(), 126);
        assert_eq!(ErrorCode::User.docker_exit_code(), 125);
    }
}
