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
use mvm_api::volume as vol;
use mvm_api::ErrorCode;
use mvm_runtime::logs::{LogRecord, Stream};
use mvm_runtime::{
    ErrorKind, ExitReason, MountSpec, ResourceRequest, RestartPolicy, SandboxRequest, SandboxSpec,
    State, Status,
};

/// A create request in the runtime's terms (the name stays mvmd's); a
/// mount the runtime cannot express is refused with the reason.
pub fn sandbox_request(r: &api::CreateRequest) -> Result<SandboxRequest, String> {
    Ok(SandboxRequest {
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
        mounts: r.mounts.iter().map(mount).collect::<Result<_, _>>()?,
        read_only_root: r.read_only_rootfs,
    })
}

/// One requested mount in the runtime's terms. A volume mount without a
/// source is a new anonymous volume (a random name). The runtime checks
/// paths and names ([`mvm_runtime::volume::validate`]).
pub fn mount(m: &vol::MountRequest) -> Result<MountSpec, String> {
    let tmpfs_only =
        m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() || !m.tmpfs_options.is_empty();
    if tmpfs_only && m.kind != vol::MountType::Tmpfs {
        return Err(format!(
            "mount on {:?}: tmpfs size, mode and options apply to type=tmpfs only",
            m.target
        ));
    }
    Ok(match m.kind {
        vol::MountType::Bind => MountSpec::Bind {
            source: m
                .source
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!(
                        "bind mount on {:?} has no source; give the host directory",
                        m.target
                    )
                })?
                .into(),
            target: m.target.clone(),
            read_only: m.read_only,
        },
        vol::MountType::Volume => {
            let given = m.source.as_deref().filter(|s| !s.is_empty());
            MountSpec::Volume {
                name: given
                    .map(str::to_string)
                    .unwrap_or_else(mvm_runtime::names::new_id),
                target: m.target.clone(),
                read_only: m.read_only,
                anonymous: given.is_none(),
            }
        }
        vol::MountType::Tmpfs => {
            if m.source.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(format!(
                    "tmpfs on {:?} takes no source; drop source=",
                    m.target
                ));
            }
            let mut t = mvm_runtime::volume::default_tmpfs(&m.target);
            t.read_only = m.read_only;
            t.size_bytes = m.tmpfs_size;
            t.mode = m.tmpfs_mode;
            for o in &m.tmpfs_options {
                match o.as_str() {
                    "exec" => t.noexec = false,
                    "noexec" => t.noexec = true,
                    "suid" => t.nosuid = false,
                    "nosuid" => t.nosuid = true,
                    "dev" => t.nodev = false,
                    "nodev" => t.nodev = true,
                    "rw" => t.read_only = false,
                    "ro" => t.read_only = true,
                    other => {
                        return Err(format!(
                            "tmpfs on {:?}: unknown option {other:?}; use size=, mode=, exec, noexec, suid, nosuid, dev, nodev, ro, rw",
                            m.target
                        ))
                    }
                }
            }
            MountSpec::Tmpfs(t)
        }
    })
}

/// A sandbox's mounts as inspect shows them (Docker's `Mounts`).
pub fn mount_points(s: &SandboxSpec, volumes: &mvm_runtime::VolumeDirs) -> Vec<vol::MountPoint> {
    let mode = |ro: bool| if ro { "ro" } else { "rw" }.to_string();
    s.mounts
        .iter()
        .map(|m| match m {
            MountSpec::Bind {
                source,
                target,
                read_only,
            } => vol::MountPoint {
                kind: vol::MountType::Bind,
                name: None,
                source: source.display().to_string(),
                destination: target.clone(),
                driver: None,
                mode: mode(*read_only),
                rw: !read_only,
            },
            MountSpec::Volume {
                name,
                target,
                read_only,
                ..
            } => vol::MountPoint {
                kind: vol::MountType::Volume,
                name: Some(name.clone()),
                source: match volumes.kind(name) {
                    Some(mvm_runtime::VolumeKind::Block) => volumes.block_image(name),
                    _ => volumes.data(name),
                }
                .display()
                .to_string(),
                destination: target.clone(),
                driver: Some(
                    volumes
                        .kind(name)
                        .unwrap_or(mvm_runtime::VolumeKind::Directory)
                        .driver()
                        .into(),
                ),
                mode: mode(*read_only),
                rw: !read_only,
            },
            MountSpec::Tmpfs(t) => {
                let mut opts = vec![mode(t.read_only)];
                for (on, name) in [
                    (t.noexec, "noexec"),
                    (t.nosuid, "nosuid"),
                    (t.nodev, "nodev"),
                ] {
                    if on {
                        opts.push(name.into());
                    }
                }
                if let Some(sz) = t.size_bytes {
                    opts.push(format!("size={sz}"));
                }
                if let Some(m) = t.mode {
                    opts.push(format!("mode={m:o}"));
                }
                vol::MountPoint {
                    kind: vol::MountType::Tmpfs,
                    name: None,
                    source: String::new(),
                    destination: t.target.clone(),
                    driver: None,
                    mode: opts.join(","),
                    rw: !t.read_only,
                }
            }
        })
        .collect()
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
        ExitReason::Checkpointed => api::ExitReason::Checkpointed,
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
        paused: s.paused,
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
        read_only_rootfs: s.read_only_root,
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

/// A checkpoint as the API shows it.
pub fn checkpoint(c: &mvm_runtime::checkpoint::CheckpointInfo) -> mvm_api::checkpoint::Checkpoint {
    let created = chrono::DateTime::<chrono::Utc>::from_timestamp(c.created as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    mvm_api::checkpoint::Checkpoint {
        name: c.name.clone(),
        created,
        memory_mib: c.memory_mib,
        memory_bytes: c.memory_bytes,
        paused_us: c.paused_us,
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
            mounts: vec![],
            read_only_rootfs: true,
            // The network fields are mvmd's (`network::SandboxNet`), not
            // the runtime's.
            ..Default::default()
        };
        let s = sandbox_request(&r).unwrap();
        assert!(s.read_only_root);
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

    #[test]
    fn mount_requests_become_runtime_mounts_or_clear_errors() {
        let req = |kind, source: Option<&str>, target: &str| vol::MountRequest {
            kind,
            source: source.map(Into::into),
            target: target.into(),
            read_only: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            tmpfs_options: vec![],
        };
        use vol::MountType::*;
        let anon = mount(&req(Volume, None, "/d")).unwrap();
        assert!(
            matches!(&anon, MountSpec::Volume { anonymous: true, name, .. } if name.len() == 64)
        );
        let named = mount(&req(Volume, Some("data"), "/d")).unwrap();
        assert!(
            matches!(&named, MountSpec::Volume { anonymous: false, name, .. } if name == "data")
        );
        let e = mount(&req(Bind, None, "/d")).unwrap_err();
        assert!(e.contains("no source"), "{e}");
        let e = mount(&req(Tmpfs, Some("x"), "/d")).unwrap_err();
        assert!(e.contains("no source"), "{e}");
        let e = mount(&vol::MountRequest {
            tmpfs_size: Some(1 << 20),
            ..req(Bind, Some("/x"), "/d")
        })
        .unwrap_err();
        assert!(e.contains("type=tmpfs only"), "{e}");
        let e = mount(&vol::MountRequest {
            tmpfs_options: vec!["exec".into(), "rbind".into()],
            ..req(Tmpfs, None, "/t")
        })
        .unwrap_err();
        assert!(e.contains("\"rbind\""), "{e}");
        let MountSpec::Tmpfs(t) = mount(&vol::MountRequest {
            tmpfs_options: vec!["exec".into()],
            tmpfs_size: Some(1 << 20),
            ..req(Tmpfs, None, "/t")
        })
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.noexec, t.nosuid, t.nodev, t.size_bytes),
            (false, true, true, Some(1 << 20))
        );
    }
}
