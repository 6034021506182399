//! The runtime's vocabulary: what a caller asks for ([`SandboxRequest`]),
//! what a sandbox is once resolved ([`SandboxSpec`]: its [`ProcessSpec`],
//! [`Resources`] and [`Lifecycle`]), and the rules between the two:
//! Docker's merge of a request over the image's config, checked against
//! the host.
//!
//! These types are the runtime's own, not the REST API's: `mvmd` converts
//! its API requests at its HTTP edge, the containerd shim will convert an
//! OCI bundle, the Dockerfile builder makes a request per RUN step. A
//! caller's database stores [`SandboxSpec`] as it is (mvmd keeps it as
//! JSON, with a schema version).
//!
//! Everything here is pure, so every rule has a unit test.

use std::collections::BTreeMap;

use mvm_images::ImageConfig;
use mvm_protocol::agent::signal;
use serde::{Deserialize, Serialize};

use crate::host::HostResources;
use crate::restart::RestartPolicy;
use crate::volume::MountSpec;
use crate::ErrorKind;

/// The smallest guest that boots our kernel and init with room to work.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Memory the host keeps for itself beyond `MemAvailable` checks.
pub const HOST_MEMORY_MARGIN_MIB: u64 = 64;
/// The most vCPUs the VMM supports (its MP table).
pub const MAX_VCPUS: u32 = 32;

/// Defaults for fields a request leaves out (a daemon's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory_mib: u64,
    /// Stop timeout in seconds.
    pub stop_timeout: u64,
    /// Size of the writable scratch disk (sparse: costs only what is written).
    pub scratch_mib: u64,
    /// Whether the guest agent (vsock) is available, which `tty` and
    /// `open_stdin` need.
    pub agent: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 256,
            stop_timeout: 10,
            scratch_mib: 10 * 1024,
            agent: false,
        }
    }
}

/// What a caller asks for. `None` fields take the image's values (or the
/// [`Defaults`]); `Some(vec![])` for `entrypoint` clears the image's, as
/// `docker run --entrypoint ''` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxRequest {
    /// Image reference.
    pub image: String,
    /// Replaces the image's CMD.
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (and overriding) the image's ENV.
    pub env: Vec<String>,
    /// Working directory (absolute); the image's WORKDIR when absent.
    pub working_dir: Option<String>,
    /// `user[:group]`; the image's USER when absent.
    pub user: Option<String>,
    /// Guest hostname; the first 12 characters of the id when absent.
    pub hostname: Option<String>,
    /// Labels added to the image's.
    pub labels: BTreeMap<String, String>,
    /// A terminal for the main process.
    pub tty: bool,
    /// Keep the main process's stdin open for an attacher.
    pub open_stdin: bool,
    /// vCPUs, CPU quota and memory.
    pub resources: ResourceRequest,
    /// What to do when the workload ends.
    pub restart_policy: RestartPolicy,
    /// Remove the sandbox when it ends.
    pub auto_remove: bool,
    /// Signal a stop sends; the image's STOPSIGNAL or SIGTERM when absent.
    pub stop_signal: Option<String>,
    /// Seconds a stop waits before killing.
    pub stop_timeout: Option<u64>,
    /// Bind mounts, volumes and tmpfs (`crate::volume`).
    pub mounts: Vec<MountSpec>,
    /// Docker's `--read-only`: the root filesystem is mounted read-only.
    pub read_only_root: bool,
}

/// The resources a request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceRequest {
    /// vCPUs; `ceil(cpus)` or the default when absent.
    pub vcpus: Option<u32>,
    /// CPU quota in CPUs (`--cpus 1.5`), enforced with a cgroup.
    pub cpus: Option<f64>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u64>,
}

/// The workload, resolved: what guest init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// ENTRYPOINT after overrides.
    pub entrypoint: Vec<String>,
    /// CMD after overrides.
    pub cmd: Vec<String>,
    /// The whole environment.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// `user[:group]` (empty: root).
    pub user: String,
    /// A terminal for the main process.
    pub tty: bool,
    /// Stdin kept open for an attacher.
    pub open_stdin: bool,
}

impl ProcessSpec {
    /// argv: entrypoint then cmd.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// What the microVM gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs.
    pub vcpus: u32,
    /// CPU quota for the VMM in CPUs (None: unlimited).
    pub cpu_quota: Option<f64>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Size of the writable scratch disk in MiB (sparse).
    pub scratch_mib: u64,
    /// The workload's own memory limit in MiB inside the guest (the
    /// workload cgroup's `memory.max`), below `memory_mib`; `None`: the
    /// guest's memory is the limit (mvmd's `--memory`, as sized by
    /// Docker users). The containerd shim sets it: a container's limit is
    /// the workload's, and the guest gets headroom for its kernel and init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_memory_mib: Option<u64>,
}

impl Resources {
    /// [`Self::workload_memory_mib`] in bytes, as the launch spec's
    /// `process.memory_max` carries it (saturating: never a wrapped limit).
    pub fn workload_memory_max(&self) -> Option<u64> {
        self.workload_memory_mib.map(|m| m.saturating_mul(1 << 20))
    }
}

/// How the sandbox is stopped and what happens when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Remove the sandbox when it ends.
    pub auto_remove: bool,
    /// The signal a stop sends (canonical name, e.g. `SIGTERM`).
    pub stop_signal: String,
    /// Seconds a stop waits before killing.
    pub stop_timeout: u64,
}

impl Lifecycle {
    /// The stop signal's number (SIGTERM if the stored name is unknown).
    pub fn stop_signal_number(&self) -> i32 {
        signal::parse(&self.stop_signal).unwrap_or(libc::SIGTERM)
    }
}

/// A sandbox: what it runs and with which resources. The record a caller
/// stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Id (64 hex characters).
    pub id: String,
    /// Name.
    pub name: String,
    /// The image reference as given.
    pub image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// The manifest digest the reference resolved to, so the sandbox keeps
    /// its image even if the name moves.
    pub image_digest: String,
    /// The image's shared root disk.
    pub root_disk: std::path::PathBuf,
    /// The workload.
    pub process: ProcessSpec,
    /// The guest's hostname.
    pub hostname: String,
    /// Labels (the image's plus the request's).
    pub labels: BTreeMap<String, String>,
    /// vCPUs, memory, disk.
    pub resources: Resources,
    /// Stop and restart behaviour.
    pub lifecycle: Lifecycle,
    /// Bind mounts, volumes and tmpfs, restored on every start. Absent in
    /// records from before volumes: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// The root filesystem is read-only (`--read-only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

/// A refused request: what kind of refusal, and a message that says what
/// was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// [`ErrorKind::Invalid`] or [`ErrorKind::Unavailable`].
    pub kind: ErrorKind,
    /// What was wrong and what to do.
    pub message: String,
}

fn bad(message: impl Into<String>) -> SpecError {
    SpecError {
        kind: ErrorKind::Invalid,
        message: message.into(),
    }
}

fn unavailable(message: impl Into<String>) -> SpecError {
    SpecError {
        kind: ErrorKind::Unavailable,
        message: message.into(),
    }
}

/// The resolved parts of a request, before disks exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The workload.
    pub process: ProcessSpec,
    /// Hostname.
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Resources (the scratch size from the defaults).
    pub resources: Resources,
    /// Stop and restart behaviour.
    pub lifecycle: Lifecycle,
    /// The request's mounts, checked, plus an anonymous volume for each
    /// of the image's VOLUMEs no mount covers.
    pub mounts: Vec<MountSpec>,
    /// `--read-only`.
    pub read_only_root: bool,
    /// Non-fatal remarks for the caller.
    pub warnings: Vec<String>,
}

/// Apply Docker's merge rules to `req` over `image` and check the result
/// against `host`. `id` gives the default hostname.
pub fn resolve(
    req: &SandboxRequest,
    image: &ImageConfig,
    id: &str,
    defaults: &Defaults,
    host: &HostResources,
) -> Result<Resolved, SpecError> {
    let mut warnings = Vec::new();
    let (entrypoint, cmd) = merge_command(req, image);
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(bad(format!(
            "no command to run: image {:?} has no ENTRYPOINT or CMD; give a command after the image name",
            req.image
        )));
    }
    if entrypoint.iter().chain(&cmd).any(|a| a.contains('\0')) {
        return Err(bad("the command contains a NUL byte"));
    }
    let env = merge_env(&image.env, &req.env)?;
    let working_dir = match req.working_dir.as_deref() {
        Some(w) => w.to_string(),
        None if !image.working_dir.is_empty() => image.working_dir.clone(),
        None => "/".to_string(),
    };
    if !working_dir.starts_with('/') || working_dir.contains('\0') {
        return Err(bad(format!(
            "working directory {working_dir:?} is not an absolute path"
        )));
    }
    let user = req.user.clone().unwrap_or_else(|| image.user.clone());
    if user.contains('\0') || user.contains(char::is_whitespace) {
        return Err(bad(format!(
            "invalid user {user:?}: use user[:group] or uid[:gid]"
        )));
    }
    let hostname = match &req.hostname {
        Some(h) => {
            validate_hostname(h)?;
            h.clone()
        }
        None => id[..12.min(id.len())].to_string(),
    };
    let mut labels: BTreeMap<String, String> = image.labels.clone();
    labels.extend(req.labels.clone());
    let stop_signal = match req.stop_signal.as_deref() {
        Some(s) => canonical_signal(s)?,
        None if !image.stop_signal.is_empty() => canonical_signal(&image.stop_signal)?,
        None => "SIGTERM".to_string(),
    };
    let stop_timeout = req.stop_timeout.unwrap_or(defaults.stop_timeout);
    if stop_timeout > 24 * 3600 {
        return Err(bad(format!(
            "stop timeout {stop_timeout} s is over a day; give at most 86400"
        )));
    }
    if (req.tty || req.open_stdin) && !defaults.agent {
        return Err(bad(
            "interactive sandboxes (-i / -t) need the guest agent, which this mvmd's VMM does not offer yet; run without -i and -t",
        ));
    }
    if req.auto_remove && req.restart_policy != RestartPolicy::No {
        return Err(bad(
            "auto-remove (--rm) and a restart policy conflict: a removed sandbox cannot be restarted; drop one of them",
        ));
    }

    let mounts = resolve_mounts(&req.mounts, &image.volumes)?;

    let (vcpus, cpus) = resolve_cpus(&req.resources, defaults, host, &mut warnings)?;
    let memory_mib = resolve_memory(
        req.resources.memory_mib.unwrap_or(defaults.memory_mib),
        host,
    )?;

    Ok(Resolved {
        process: ProcessSpec {
            entrypoint,
            cmd,
            env,
            working_dir,
            user,
            tty: req.tty,
            open_stdin: req.open_stdin,
        },
        hostname,
        labels,
        resources: Resources {
            vcpus,
            cpu_quota: cpus,
            memory_mib,
            scratch_mib: defaults.scratch_mib,
            workload_memory_mib: None,
        },
        lifecycle: Lifecycle {
            restart_policy: req.restart_policy.clone(),
            auto_remove: req.auto_remove,
            stop_signal,
            stop_timeout,
        },
        mounts,
        read_only_root: req.read_only_root,
        warnings,
    })
}

/// The request's mounts, checked ([`crate::volume::validate`]), then an
/// anonymous volume (a fresh random name) for each of the image's
/// `VOLUME` paths that no mount covers, as Docker makes them.
pub fn resolve_mounts(
    requested: &[MountSpec],
    image_volumes: &[String],
) -> Result<Vec<MountSpec>, SpecError> {
    let mut mounts = requested.to_vec();
    let taken: std::collections::HashSet<String> = mounts
        .iter()
        .map(|m| mvm_protocol::launch::normalize_target(m.target()))
        .collect();
    for path in image_volumes {
        let normal = mvm_protocol::launch::normalize_target(path);
        if taken.contains(&normal) || normal == "/" || !path.starts_with('/') {
            continue;
        }
        mounts.push(MountSpec::Volume {
            name: crate::names::new_id(),
            target: normal,
            read_only: false,
            anonymous: true,
        });
    }
    crate::volume::validate(&mut mounts).map_err(|e| bad(e.to_string()))?;
    Ok(mounts)
}

/// ENTRYPOINT and CMD after overrides: `--entrypoint` resets the image's
/// CMD unless a command is given too (Docker's rule).
pub fn merge_command(req: &SandboxRequest, image: &ImageConfig) -> (Vec<String>, Vec<String>) {
    match (&req.entrypoint, &req.cmd) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), Vec::new()),
        (None, Some(c)) => (image.entrypoint.clone(), c.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    }
}

/// The image's environment with the request's entries added, a later
/// entry replacing an earlier one with the same key (in place, so the
/// order stays the image's).
pub fn merge_env(image: &[String], extra: &[String]) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = Vec::with_capacity(image.len() + extra.len());
    let key = |e: &str| e.split_once('=').map(|(k, _)| k.to_string());
    for e in extra {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
            _ => return Err(bad(format!("environment entry {e:?} is not KEY=VALUE"))),
        }
    }
    for e in image.iter().chain(extra) {
        let Some(k) = key(e) else { continue };
        if let Some(slot) = out.iter_mut().find(|o| key(o).as_deref() == Some(&k)) {
            *slot = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    Ok(out)
}

fn validate_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-')
        && !h.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid hostname {h:?}: use 1 to 63 letters, digits, '-' and '.'"
        )))
    }
}

/// `TERM`, `15`, `sigterm` -> `SIGTERM`.
pub fn canonical_signal(s: &str) -> Result<String, SpecError> {
    let n = signal::parse(s).ok_or_else(|| {
        bad(format!(
            "invalid stop signal {s:?}: use a name like SIGTERM or a number from 1 to 64"
        ))
    })?;
    Ok(signal::name(n)
        .map(str::to_string)
        .unwrap_or_else(|| n.to_string()))
}

/// vCPUs and CPU quota for `req`, checked against the host (also used by
/// the containerd shim for an OCI bundle's `linux.resources.cpu`).
pub fn resolve_cpus(
    req: &ResourceRequest,
    defaults: &Defaults,
    host: &HostResources,
    warnings: &mut Vec<String>,
) -> Result<(u32, Option<f64>), SpecError> {
    let cpus = match req.cpus {
        None => None,
        Some(c) if !c.is_finite() || c <= 0.0 => {
            return Err(bad(format!(
                "invalid CPU quota {c}: give a positive number of CPUs like 0.5 or 2"
            )))
        }
        Some(c) if c > f64::from(host.cpus) => {
            return Err(unavailable(format!(
                "a quota of {c} CPUs is more than this host has ({}); give at most {}",
                host.cpus, host.cpus
            )))
        }
        Some(c) => Some(c),
    };
    let vcpus = match (req.vcpus, cpus) {
        (Some(0), _) => return Err(bad("vcpus must be at least 1")),
        (Some(v), _) => v,
        (None, Some(c)) => c.ceil() as u32,
        (None, None) => defaults.vcpus,
    };
    if vcpus > host.cpus {
        return Err(unavailable(format!(
            "{vcpus} vCPUs requested but this host has {} CPUs; give at most {}",
            host.cpus, host.cpus
        )));
    }
    if vcpus > MAX_VCPUS {
        return Err(unavailable(format!(
            "{vcpus} vCPUs requested; the VMM supports at most {MAX_VCPUS}"
        )));
    }
    if let Some(c) = cpus {
        if c > f64::from(vcpus) {
            warnings.push(format!(
                "a CPU quota of {c} exceeds the {vcpus} vCPUs; the guest can use at most {vcpus} CPUs"
            ));
        }
    }
    Ok((vcpus, cpus))
}

/// Guest memory of `mib`, checked against the host (also used by the
/// containerd shim for `linux.resources.memory.limit`).
pub fn resolve_memory(mib: u64, host: &HostResources) -> Result<u64, SpecError> {
    if mib < MIN_MEMORY_MIB {
        return Err(bad(format!(
            "memory {mib} MiB is too small: a sandbox needs at least {MIN_MEMORY_MIB} MiB"
        )));
    }
    let limit = host
        .mem_available_mib
        .saturating_sub(HOST_MEMORY_MARGIN_MIB);
    if mib > limit {
        return Err(unavailable(format!(
            "memory {mib} MiB is more than this host can give (MemAvailable {} MiB, total {} MiB, {HOST_MEMORY_MARGIN_MIB} MiB kept for the host); ask for at most {limit} MiB",
            host.mem_available_mib, host.mem_total_mib
        )));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostResources {
        HostResources {
            cpus: 4,
            mem_total_mib: 8192,
            mem_available_mib: 4096,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into(), "args".into()],
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/app".into(),
            user: "nobody".into(),
            labels: [("from".to_string(), "image".to_string())].into(),
            stop_signal: "SIGINT".into(),
            ..Default::default()
        }
    }

    fn req() -> SandboxRequest {
        SandboxRequest {
            image: "busybox".into(),
            ..Default::default()
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn resolve_ok(r: &SandboxRequest) -> Resolved {
        resolve(r, &image(), ID, &Defaults::default(), &host()).unwrap()
    }

    fn resolve_err(r: &SandboxRequest) -> SpecError {
        resolve(r, &image(), ID, &Defaults::default(), &host()).unwrap_err()
    }

    #[test]
    fn image_volumes_become_anonymous_volumes_unless_a_mount_covers_them() {
        let given = vec![MountSpec::Volume {
            name: "data".into(),
            target: "/var/lib/app/".into(),
            read_only: false,
            anonymous: false,
        }];
        let image = ["/var/lib/app".to_string(), "/cache/./".into(), "rel".into()];
        let m = resolve_mounts(&given, &image).unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0], given[0]);
        match &m[1] {
            MountSpec::Volume {
                name,
                target,
                anonymous: true,
                read_only: false,
            } => {
                assert_eq!(target, "/cache");
                assert_eq!(name.len(), 64);
            }
            other => panic!("{other:?}"),
        }
        let two = resolve_mounts(&[], &["/a".into()]).unwrap();
        assert_ne!(two[0].volume_name(), m[1].volume_name(), "fresh names");
        // The request's own mounts are checked.
        let e = resolve_mounts(
            &[MountSpec::Tmpfs(crate::volume::default_tmpfs("run"))],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("absolute"), "{e}");
    }

    #[test]
    fn image_defaults_apply() {
        let r = resolve_ok(&req());
        let p = &r.process;
        assert_eq!(p.entrypoint, ["/entry"]);
        assert_eq!(p.cmd, ["default", "args"]);
        assert_eq!(p.working_dir, "/app");
        assert_eq!(p.user, "nobody");
        assert_eq!(r.hostname, "0123456789ab");
        assert_eq!(r.lifecycle.stop_signal, "SIGINT");
        assert_eq!(r.lifecycle.stop_timeout, 10);
        assert_eq!(r.resources.vcpus, 1);
        assert_eq!(r.resources.memory_mib, 256);
    }

    #[test]
    fn command_merge_follows_docker() {
        let mut r = req();
        r.cmd = Some(vec!["x".into()]);
        let p = resolve_ok(&r).process;
        assert_eq!(
            (p.entrypoint, p.cmd),
            (vec!["/entry".to_string()], vec!["x".to_string()])
        );
        // --entrypoint alone resets CMD.
        let mut r = req();
        r.entrypoint = Some(vec!["/bin/sh".into()]);
        let p = resolve_ok(&r).process;
        assert_eq!((p.entrypoint, p.cmd), (vec!["/bin/sh".to_string()], vec![]));
        // --entrypoint '' clears it; the command then runs alone.
        let mut r = req();
        r.entrypoint = Some(vec![]);
        r.cmd = Some(vec!["echo".into(), "hi".into()]);
        let p = resolve_ok(&r).process;
        assert!(p.entrypoint.is_empty());
        assert_eq!(p.cmd, ["echo", "hi"]);
        // Nothing at all to run.
        let mut r = req();
        r.entrypoint = Some(vec![]);
        let e = resolve_err(&r);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("no command"), "{e}");
    }

    #[test]
    fn env_overrides_by_key_in_place() {
        let env = merge_env(
            &["PATH=/bin".into(), "A=1".into(), "B=2".into()],
            &["B=3".into(), "C=4".into(), "A=".into()],
        )
        .unwrap();
        assert_eq!(env, ["PATH=/bin", "A=", "B=3", "C=4"]);
        assert!(merge_env(&[], &["NOEQUALS".into()]).is_err());
        assert!(merge_env(&[], &["=x".into()]).is_err());
    }

    #[test]
    fn overrides_and_labels() {
        let mut r = req();
        r.working_dir = Some("/tmp".into());
        r.user = Some("1000:1000".into());
        r.hostname = Some("web".into());
        r.labels = [("k".to_string(), "v".to_string())].into();
        r.stop_signal = Some("9".into());
        r.stop_timeout = Some(3);
        let res = resolve_ok(&r);
        let p = &res.process;
        assert_eq!(p.working_dir, "/tmp");
        assert_eq!(p.user, "1000:1000");
        assert_eq!(res.hostname, "web");
        assert_eq!(res.labels.len(), 2);
        assert_eq!(res.lifecycle.stop_signal, "SIGKILL");
        assert_eq!(res.lifecycle.stop_timeout, 3);
        r.working_dir = Some("relative".into());
        assert!(resolve_err(&r).message.contains("absolute"));
        r.working_dir = None;
        r.hostname = Some("bad host".into());
        assert!(resolve_err(&r).message.contains("hostname"));
        r.hostname = None;
        r.stop_signal = Some("SIGNOPE".into());
        assert!(resolve_err(&r).message.contains("stop signal"));
    }

    #[test]
    fn resources_are_checked() {
        let mut r = req();
        r.resources.memory_mib = Some(0);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Invalid);
        r.resources.memory_mib = Some(31);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Invalid);
        r.resources.memory_mib = Some(1 << 30);
        let e = resolve_err(&r);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("MemAvailable"), "{e}");
        r.resources.memory_mib = Some(512);
        assert_eq!(resolve_ok(&r).resources.memory_mib, 512);

        let mut r = req();
        r.resources.cpus = Some(1.5);
        let h = resolve_ok(&r).resources;
        assert_eq!((h.vcpus, h.cpu_quota), (2, Some(1.5)));
        r.resources.vcpus = Some(1);
        let res = resolve_ok(&r);
        assert_eq!(res.resources.vcpus, 1);
        assert_eq!(res.warnings.len(), 1);
        r.resources.cpus = Some(0.0);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Invalid);
        r.resources.cpus = Some(f64::NAN);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Invalid);
        r.resources.cpus = Some(5.0);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Unavailable);
        r.resources.cpus = None;
        r.resources.vcpus = Some(0);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Invalid);
        r.resources.vcpus = Some(5);
        assert_eq!(resolve_err(&r).kind, ErrorKind::Unavailable);
    }

    #[test]
    fn policy_conflicts_and_agent_features() {
        let mut r = req();
        r.auto_remove = true;
        r.restart_policy = RestartPolicy::Always;
        assert!(resolve_err(&r).message.contains("conflict"));
        let mut r = req();
        r.tty = true;
        assert!(resolve_err(&r).message.contains("agent"));
        let d = Defaults {
            agent: true,
            ..Defaults::default()
        };
        assert!(resolve(&r, &image(), ID, &d, &host()).unwrap().process.tty);
    }
}
