//! The HTTP edge: the REST API's types (`mvm-api`) to the runtime's
//! vocabulary (`mvm-runtime`) and back.
//!
//! The two are kept apart on purpose: the API is a public contract with
//! its own compatibility rules (field names users script against), the
//! runtime's records are what mvmd stores and what the containerd shim
//! will use. The conversions are total and field by field, so a change on
//! either side fails to compile here instead of drifting silently.

use mvm_api::logs as api_logs;
use mvm_api::sandbox as api;
use mvm_api::ErrorCode;
use mvm_runtime::logs::{LogRecord, Stream};
use mvm_runtime::{
    ErrorKind, ExitReason, ResourceRequest, RestartPolicy, SandboxRequest, SandboxSpec, State,
    Status,
};

/// A create request in the runtime's terms (the name stays mvmd's).
pub fn sandbox_request(r: &api::CreateRequest) -> SandboxRequest {
    SandboxRequest {
        image: r.image.clone(),
        cmd: r.cmd.clone(),
        entrypoint: r.entrypoint.clone(),
        env: r.env.clone(),
        working_dir: r.working_dir.clone(),
        user: r.user.clone(),
        hostname: r.hostname.clone(),
        labels: r.labels.clone(),
        tty: r.tty,
        open_stdin: r.open_stdin,
        resources: ResourceRequest {
            vcpus: r.vcpus,
            cpus: r.cpus,
            memory_mib: r.memory_mib,
        },
        restart_policy: restart_policy(&r.restart_policy),
        auto_remove: r.auto_remove,
        stop_signal: r.stop_signal.clone(),
        stop_timeout: r.stop_timeout,
    }
}

/// The API's restart policy in the runtime's terms.
pub fn restart_policy(p: &api::RestartPolicy) -> RestartPolicy {
    match p {
        api::RestartPolicy::No => RestartPolicy::No,
        api::RestartPolicy::OnFailure {
            maximum_retry_count,
        } => RestartPolicy::OnFailure {
            maximum_retry_count: *maximum_retry_count,
        },
        api::RestartPolicy::Always => RestartPolicy::Always,
        api::RestartPolicy::UnlessStopped => RestartPolicy::UnlessStopped,
    }
}

/// The runtime's restart policy for the API.
pub fn api_restart_policy(p: &RestartPolicy) -> api::RestartPolicy {
    match p {
        RestartPolicy::No => api::RestartPolicy::No,
        RestartPolicy::OnFailure {
            maximum_retry_count,
        } => api::RestartPolicy::OnFailure {
            maximum_retry_count: *maximum_retry_count,
        },
        RestartPolicy::Always => api::RestartPolicy::Always,
        RestartPolicy::UnlessStopped => api::RestartPolicy::UnlessStopped,
    }
}

/// A lifecycle status for the API.
pub fn status(s: Status) -> api::Status {
    match s {
        Status::Created => api::Status::Created,
        Status::Running => api::Status::Running,
        Status::Restarting => api::Status::Restarting,
        Status::Exited => api::Status::Exited,
        Status::Removing => api::Status::Removing,
    }
}

/// An exit reason for the API.
pub fn exit_reason(r: ExitReason) -> api::ExitReason {
    match r {
        ExitReason::Exited => api::ExitReason::Exited,
        ExitReason::Stopped => api::ExitReason::Stopped,
        ExitReason::Killed => api::ExitReason::Killed,
        ExitReason::OomKilled => api::ExitReason::OomKilled,
        ExitReason::GuestCrashed => api::ExitReason::GuestCrashed,
        ExitReason::VmmDied => api::ExitReason::VmmDied,
        ExitReason::StartFailed => api::ExitReason::StartFailed,
        ExitReason::VmmError => api::ExitReason::VmmError,
    }
}

/// A sandbox's state for the API.
pub fn state(s: &State) -> api::State {
    api::State {
        status: status(s.status),
        running: s.running(),
        pid: s.pid,
        exit_code: s.exit_code,
        reason: s.reason.map(exit_reason),
        error: s.error.clone(),
        started_at: s.started_at.clone(),
        finished_at: s.finished_at.clone(),
        oom_killed: s.oom_killed,
        restart_count: s.restart_count,
    }
}

/// The process half of the API's sandbox view.
pub fn process_config(s: &SandboxSpec) -> api::ProcessConfig {
    let p = &s.process;
    api::ProcessConfig {
        entrypoint: p.entrypoint.clone(),
        cmd: p.cmd.clone(),
        env: p.env.clone(),
        working_dir: p.working_dir.clone(),
        user: p.user.clone(),
        hostname: s.hostname.clone(),
        labels: s.labels.clone(),
        tty: p.tty,
        open_stdin: p.open_stdin,
        stop_signal: s.lifecycle.stop_signal.clone(),
        stop_timeout: s.lifecycle.stop_timeout,
    }
}

/// The resources half of the API's sandbox view.
pub fn host_config(s: &SandboxSpec) -> api::HostConfig {
    api::HostConfig {
        vcpus: s.resources.vcpus,
        cpus: s.resources.cpu_quota,
        memory_mib: s.resources.memory_mib,
        restart_policy: api_restart_policy(&s.lifecycle.restart_policy),
        auto_remove: s.lifecycle.auto_remove,
    }
}

/// A log record for the API's log stream.
pub fn log_record(r: &LogRecord) -> api_logs::LogRecord {
    api_logs::LogRecord {
        log: r.log.clone(),
        stream: match r.stream {
            Stream::Stdout => api_logs::Stream::Stdout,
            Stream::Stderr => api_logs::Stream::Stderr,
        },
        time: r.time.clone(),
    }
}

/// The API code of a runtime error's kind.
pub fn error_code(k: ErrorKind) -> ErrorCode {
    match k {
        ErrorKind::Invalid => ErrorCode::BadRequest,
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::Unavailable => ErrorCode::ResourceUnavailable,
        ErrorKind::Internal => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_round_trip() {
        for p in [
            api::RestartPolicy::No,
            api::RestartPolicy::Always,
            api::RestartPolicy::UnlessStopped,
            api::RestartPolicy::OnFailure {
                maximum_retry_count: 3,
            },
        ] {
            assert_eq!(api_restart_policy(&restart_policy(&p)), p);
        }
    }

    #[test]
    fn a_request_keeps_every_field() {
        let r = api::CreateRequest {
            image: "busybox".into(),
            name: Some("web".into()),
            cmd: Some(vec!["a".into()]),
            entrypoint: Some(vec![]),
            env: vec!["A=1".into()],
            working_dir: Some("/w".into()),
            user: Some("u".into()),
            hostname: Some("h".into()),
            labels: [("k".to_string(), "v".to_string())].into(),
            tty: true,
            open_stdin: true,
            vcpus: Some(2),
            cpus: Some(1.5),
            memory_mib: Some(300),
            restart_policy: api::RestartPolicy::Always,
            auto_remove: false,
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(3),
            // The network fields are mvmd's (`network::SandboxNet`), not
            // the runtime's.
            ..Default::default()
        };
        let s = sandbox_request(&r);
        assert_eq!(s.image, "busybox");
        assert_eq!(s.cmd, r.cmd);
        assert_eq!(s.entrypoint, Some(vec![]));
        assert_eq!((s.tty, s.open_stdin), (true, true));
        assert_eq!(
            (s.resources.vcpus, s.resources.cpus, s.resources.memory_mib),
            (Some(2), Some(1.5), Some(300))
        );
        assert_eq!(s.restart_policy, RestartPolicy::Always);
        assert_eq!(
            (s.stop_signal.as_deref(), s.stop_timeout),
            (Some("SIGINT"), Some(3))
        );
        assert_eq!(s.labels, r.labels);
    }
}
