//! An OCI bundle (`config.json` plus the root containerd's snapshotter
//! prepared) turned into what mvm-runtime boots: the workload, the guest's
//! resources and the host directories to share.
//!
//! `config.json` is hostile input (it comes from whoever asked containerd
//! for the container): it is parsed with the `oci-spec` crate, and every
//! field mvm cannot honour is either refused with an error naming it or,
//! for what containerd adds to every container and the guest provides on
//! its own, ignored by a documented rule ([`IGNORED_MOUNTS`]).

use std::path::{Path, PathBuf};

use mvm_protocol::launch::{FileMount, MAX_FILES_BYTES, MIN_MEMORY_MAX};
use mvm_runtime::spec::{resolve_cpus, resolve_memory, Defaults, ResourceRequest};
use mvm_runtime::{HostResources, HostShare, ProcessSpec, Resources};
use oci_spec::runtime::Spec;

/// Mount destinations containerd (and every OCI runtime spec generator)
/// adds that guest init already provides in the microVM (`/proc`, `/sys`,
/// `/dev` with its `pts`, `shm` and `mqueue`, the cgroup filesystem):
/// ignored rather than refused. containerd's default `/run` tmpfs is
/// ignored too: the guest's `/run` is the root's directory, so what a
/// workload puts there lands in its snapshot instead of memory (other
/// tmpfs mounts are refused until the launch spec carries them).
pub const IGNORED_MOUNTS: &[&str] = &[
    "/run",
    "/proc",
    "/sys",
    "/sys/fs/cgroup",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
];

/// Why a bundle cannot become a microVM.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid OCI runtime spec: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config.json has no process to run (process or process.args is empty)")]
    NoProcess,
    #[error("config.json: {0}")]
    Invalid(String),
    #[error("config.json mount {destination}: type {kind:?} is not supported by the mvm runtime (supported: bind, and the /proc, /sys, /dev mounts the guest provides itself)")]
    UnsupportedMount { destination: String, kind: String },
    #[error("config.json resources: {0}")]
    Resources(String),
    #[error("this is a container of Kubernetes pod sandbox {sandbox:?} ({CRI_CONTAINER_TYPE}=container): the mvm runtime runs a pod as one microVM, booted by its sandbox, and starting a pod's containers inside that microVM is not implemented yet (docs/kubernetes.md, step 3); refused rather than run in a microVM of its own, cut off from its pod's network and volumes")]
    PodContainer { sandbox: String },
    #[error("annotation {CRI_CONTAINER_TYPE}={0:?} is neither \"sandbox\" nor \"container\"")]
    PodType(String),
}

/// The annotation containerd's CRI plugin puts on a pod's containers:
/// `sandbox` (the pod itself) or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The annotation naming the pod's sandbox (on the sandbox, its own id).
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What the bundle is to Kubernetes, from the CRI plugin's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// Not a pod's (`ctr run`, or any client that is not the CRI plugin).
    None,
    /// A pod's sandbox: its microVM is the pod's (docs/kubernetes.md,
    /// step 2). The sandbox's own process (the `pause` image's) is the
    /// microVM's first workload, so the sandbox task lives, is killed and
    /// ends exactly as a pause container does.
    Sandbox {
        /// The pod's sandbox id (the containers of the pod name it).
        id: String,
    },
}

/// The bundle's [`PodRole`]; a pod's container is refused until the pod
/// microVM can start it ([`BundleError::PodContainer`]).
fn pod_role(spec: &Spec, id: &str) -> Result<PodRole, BundleError> {
    let annotations = spec.annotations().as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k));
    match get(CRI_CONTAINER_TYPE).map(String::as_str) {
        None => Ok(PodRole::None),
        Some("sandbox") => Ok(PodRole::Sandbox {
            id: get(CRI_SANDBOX_ID)
                .cloned()
                .unwrap_or_else(|| id.to_string()),
        }),
        Some("container") => Err(BundleError::PodContainer {
            sandbox: get(CRI_SANDBOX_ID).cloned().unwrap_or_default(),
        }),
        Some(other) => Err(BundleError::PodType(other.to_string())),
    }
}

/// What the bundle asks for, in mvm-runtime's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The workload.
    pub process: ProcessSpec,
    /// The guest's hostname.
    pub hostname: String,
    /// vCPUs, quota, memory.
    pub resources: Resources,
    /// `bind` mounts of directories, shared over virtio-fs.
    pub shares: Vec<HostShare>,
    /// `bind` mounts of single files, copied into the guest at start.
    pub files: Vec<FileMount>,
    /// A pod's sandbox, or no pod.
    pub pod: PodRole,
    /// Non-fatal remarks (a CPU quota larger than the vCPUs...).
    pub warnings: Vec<String>,
}

/// Parse `config.json` in `bundle`.
pub fn load(bundle: &Path, id: &str, terminal: bool, stdin: bool) -> Result<Bundle, BundleError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec =
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Parse { path, source })?;
    from_spec(&spec, id, terminal, stdin, &HostResources::probe())
}

/// [`load`] of a parsed spec, against `host`.
pub fn from_spec(
    spec: &Spec,
    id: &str,
    terminal: bool,
    stdin: bool,
    host: &HostResources,
) -> Result<Bundle, BundleError> {
    // A pod split into one microVM per container would break the pod's
    // shared network namespace and volumes: its containers are refused
    // until they start inside the sandbox's microVM.
    let pod = pod_role(spec, id)?;
    let p = spec.process().as_ref().ok_or(BundleError::NoProcess)?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(BundleError::NoProcess);
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(BundleError::Invalid(format!(
            "process.cwd {cwd:?} is not absolute"
        )));
    }
    let env = p.env().clone().unwrap_or_default();
    if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        return Err(BundleError::Invalid(format!(
            "process.env entry {bad:?} is not KEY=VALUE"
        )));
    }
    let user = p.user();
    let user = if user.uid() == 0 && user.gid() == 0 {
        String::new()
    } else {
        format!("{}:{}", user.uid(), user.gid())
    };
    if p.terminal().unwrap_or(false) != terminal {
        return Err(BundleError::Invalid(format!(
            "process.terminal is {} but containerd asked for terminal={terminal}",
            p.terminal().unwrap_or(false)
        )));
    }
    let process = ProcessSpec {
        entrypoint: args,
        cmd: Vec::new(),
        env,
        working_dir: cwd,
        user,
        tty: terminal,
        open_stdin: stdin,
    };
    let hostname = spec
        .hostname()
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id.chars().take(12).collect());
    if hostname.contains('\0') || hostname.len() > 64 {
        return Err(BundleError::Invalid(format!(
            "hostname {hostname:?} is not a valid host name (at most 64 bytes)"
        )));
    }
    let mut warnings = Vec::new();
    if let PodRole::Sandbox { id } = &pod {
        if let Some(ns) = network_namespace(spec) {
            warnings.push(format!(
                "pod sandbox {id}: the pod's network namespace {ns} is not joined yet (pod networking is docs/kubernetes.md step 4): the pod microVM has no network"
            ));
        }
    }
    let resources = resources(spec, host, &mut warnings)?;
    let (shares, files) = mounts(spec)?;
    Ok(Bundle {
        process,
        hostname,
        resources,
        shares,
        files,
        pod,
        warnings,
    })
}

/// The path of the network namespace the spec asks to join (the pod's,
/// which the CRI plugin made and ran CNI in), if any.
fn network_namespace(spec: &Spec) -> Option<String> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .as_ref()
        .map(|p| p.display().to_string())
}

/// Guest memory above a container's memory limit: the guest kernel, init
/// and the agent live outside the workload's cgroup, as a runc container's
/// limit leaves the host's own memory out (Kata adds its own base the same
/// way). Measured need under 40 MiB; 64 leaves page cache room.
pub const GUEST_HEADROOM_MIB: u64 = 64;

/// `linux.resources`: the memory limit becomes the workload cgroup's
/// `memory.max` in the guest, and the guest gets [`GUEST_HEADROOM_MIB`]
/// more, so going over the limit OOM-kills the workload as runc would
/// (and containerd gets the OOM event) instead of starving the whole
/// guest; a CPU quota/period becomes a vCPU count and the VMM's cgroup
/// quota (as `mvmd`'s `--cpus`). CPU shares are relative weights between containers that the
/// runtime does not apply to VMMs yet: ignored, with a warning.
fn resources(
    spec: &Spec,
    host: &HostResources,
    warnings: &mut Vec<String>,
) -> Result<Resources, BundleError> {
    let defaults = Defaults::default();
    let r = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mut req = ResourceRequest::default();
    if let Some(limit) = r.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()) {
        // -1 is "unlimited" in the OCI spec.
        if limit > 0 {
            if (limit as u64) < MIN_MEMORY_MAX {
                return Err(BundleError::Resources(format!(
                    "memory.limit {limit} is below the smallest limit the runtime applies, {MIN_MEMORY_MAX} bytes (6 MiB)"
                )));
            }
            let mib = (limit as u64).div_ceil(1 << 20);
            req.memory_mib = Some(mib);
        } else if limit != -1 {
            return Err(BundleError::Resources(format!(
                "memory.limit {limit} is not a positive number of bytes"
            )));
        }
    }
    if let Some(cpu) = r.and_then(|r| r.cpu().as_ref()) {
        if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
            if quota > 0 && period > 0 {
                req.cpus = Some(quota as f64 / period as f64);
            }
        }
        if cpu.shares().is_some_and(|s| s > 0) {
            warnings.push("cpu.shares is ignored by the mvm runtime".into());
        }
    }
    let guest_mib = req
        .memory_mib
        .map_or(defaults.memory_mib, |m| m + GUEST_HEADROOM_MIB);
    let memory_mib =
        resolve_memory(guest_mib, host).map_err(|e| BundleError::Resources(e.to_string()))?;
    let (vcpus, cpu_quota) = resolve_cpus(&req, &defaults, host, warnings)
        .map_err(|e| BundleError::Resources(e.to_string()))?;
    Ok(Resources {
        vcpus,
        cpu_quota,
        memory_mib,
        scratch_mib: 0,
        workload_memory_mib: req.memory_mib,
    })
}

/// `mounts`: binds of directories become virtio-fs shares (read-only
/// with `ro`), binds of regular files are copied into the guest at start
/// ([`FileMount`]: containerd's CRI plugin binds a pod's
/// `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`); the mounts the
/// guest provides are ignored ([`IGNORED_MOUNTS`]); anything else is
/// refused.
fn mounts(spec: &Spec) -> Result<(Vec<HostShare>, Vec<FileMount>), BundleError> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut file_bytes = 0usize;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        let kind = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let is_bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            if IGNORED_MOUNTS.contains(&dest.as_str()) {
                continue;
            }
            return Err(BundleError::UnsupportedMount {
                destination: dest,
                kind,
            });
        }
        let Some(source) = m.source().clone() else {
            return Err(BundleError::Invalid(format!(
                "bind mount {dest} has no source"
            )));
        };
        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
            return Err(BundleError::Invalid(format!(
                "bind mount destination {dest:?} must be absolute without '..'"
            )));
        }
        let read_only = options.iter().any(|o| o == "ro");
        if source.is_absolute() && source.is_file() {
            let content = read_bounded(&source, MAX_FILES_BYTES - file_bytes).map_err(|why| {
                BundleError::Invalid(format!(
                    "bind mount {dest}: the file {}: {why}",
                    source.display()
                ))
            })?;
            file_bytes += content.len();
            files.push(FileMount::new(dest, &content, read_only));
            continue;
        }
        if !source.is_absolute() || !source.is_dir() {
            return Err(BundleError::Invalid(format!(
                "bind mount {dest}: the source {} must be an existing directory or regular file",
                source.display()
            )));
        }
        out.push(HostShare {
            tag: format!("bind{}", out.len()),
            source,
            target: dest,
            read_only,
        });
    }
    Ok((out, files))
}

/// The content of the regular file `path`, refused when it is over
/// `limit` bytes (what is left of [`MAX_FILES_BYTES`], the launch spec's
/// bound on files copied into the guest).
fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut content = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut content)
        .map_err(|e| e.to_string())?;
    if content.len() > limit {
        return Err(format!(
            "files bound into a microVM are copied into it, {MAX_FILES_BYTES} bytes at most in all; share its directory instead"
        ));
    }
    Ok(content)
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

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["echo","hi"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs"},
      "mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/dev","type":"tmpfs","source":"tmpfs"},{"destination":"/dev/pts","type":"devpts","source":"devpts"}],
      "linux":{"resources":{"memory":{"limit":268435456},"cpu":{"quota":150000,"period":100000,"shares":1024}}}}"#;

    #[test]
    fn a_containerd_bundle_maps_to_the_runtime() {
        let b = from_spec(&spec(BASE), "abcdef0123456789", false, true, &host()).unwrap();
        assert_eq!(b.process.argv(), ["echo", "hi"]);
        assert_eq!(b.process.env, ["PATH=/bin"]);
        assert_eq!(b.process.user, "");
        assert!(b.process.open_stdin);
        assert_eq!(b.hostname, "abcdef012345");
        // The container's limit is the workload's; the guest has headroom.
        assert_eq!(b.resources.workload_memory_mib, Some(256));
        assert_eq!(b.resources.memory_mib, 256 + GUEST_HEADROOM_MIB);
        assert_eq!(b.resources.vcpus, 2);
        assert_eq!(b.resources.cpu_quota, Some(1.5));
        assert!(b.shares.is_empty());
        assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    }

    #[test]
    fn memory_limits_below_six_mib_or_negative_are_refused_and_none_is_unlimited() {
        for (limit, why) in [("1048576", "6 MiB"), ("-5", "positive")] {
            let json = BASE.replace("268435456", limit);
            let e = from_spec(&spec(&json), "abcdef0123456789", false, false, &host()).unwrap_err();
            assert!(e.to_string().contains(why), "{limit}: {e}");
        }
        let json = BASE.replace("268435456", "-1");
        let b = from_spec(&spec(&json), "abcdef0123456789", false, false, &host()).unwrap();
        assert_eq!(b.resources.workload_memory_mib, None);
        assert_eq!(b.resources.memory_mib, Defaults::default().memory_mib);
    }

    #[test]
    fn binds_become_shares_and_other_mounts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = BASE.replace(
            r#"{"destination":"/proc""#,
            &format!(
                r#"{{"destination":"/data","type":"bind","source":"{}","options":["rbind","ro"]}},{{"destination":"/proc""#,
                dir.path().display()
            ),
        );
        let b = from_spec(&spec(&json), "x", false, false, &host()).unwrap();
        assert_eq!(b.shares.len(), 1);
        assert_eq!(b.shares[0].target, "/data");
        assert!(b.shares[0].read_only);

        let json = BASE.replace(
            r#"{"destination":"/proc""#,
            r#"{"destination":"/x","type":"nfs","source":"srv:/x"},{"destination":"/proc""#,
        );
        let e = from_spec(&spec(&json), "x", false, false, &host()).unwrap_err();
        assert!(
            e.to_string().contains("/x") && e.to_string().contains("nfs"),
            "{e}"
        );
        let json = BASE.replace(
            r#"{"destination":"/proc""#,
            r#"{"destination":"/f","type":"bind","source":"/nonexistent/x"},{"destination":"/proc""#,
        );
        let e = from_spec(&spec(&json), "x", false, false, &host()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn binds_of_files_are_copied_in_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.0.0.2\n").unwrap();
        let bind = |src: &std::path::Path, dest: &str, opts: &str| {
            BASE.replace(
                r#"{"destination":"/proc""#,
                &format!(
                    r#"{{"destination":"{dest}","type":"bind","source":"{}","options":[{opts}]}},{{"destination":"/proc""#,
                    src.display()
                ),
            )
        };
        let json = bind(&resolv, "/etc/resolv.conf", r#""rbind","ro""#);
        let b = from_spec(&spec(&json), "x", false, false, &host()).unwrap();
        assert!(b.shares.is_empty());
        assert_eq!(b.files.len(), 1);
        assert_eq!(b.files[0].target, "/etc/resolv.conf");
        assert_eq!(b.files[0].bytes().unwrap(), b"nameserver 10.0.0.2\n");
        assert!(b.files[0].read_only);

        // Over the launch spec's bound: refused, naming the file.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILES_BYTES + 1]).unwrap();
        let e = from_spec(
            &spec(&bind(&big, "/big", r#""rbind""#)),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/big") && e.contains("share its directory"),
            "{e}"
        );
    }

    fn with_annotations(annotations: &str) -> Spec {
        spec(&BASE.replace(
            r#""ociVersion":"1.0.2","#,
            &format!(r#""ociVersion":"1.0.2","annotations":{annotations},"#),
        ))
    }

    #[test]
    fn a_pod_sandbox_boots_and_a_pod_container_is_refused() {
        // What containerd's CRI plugin gives a sandbox: the pod's netns.
        let mut sandbox = with_annotations(
            r#"{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}"#,
        );
        let ns = oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::Network)
            .path("/var/run/netns/cni-1")
            .build()
            .unwrap();
        let mut linux = sandbox.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![ns]));
        sandbox.set_linux(Some(linux));
        let b = from_spec(&sandbox, "pod1", false, false, &host()).unwrap();
        assert_eq!(b.pod, PodRole::Sandbox { id: "pod1".into() });
        assert!(
            b.warnings
                .iter()
                .any(|w| w.contains("/var/run/netns/cni-1")),
            "{:?}",
            b.warnings
        );
        // Without the sandbox-id annotation, its own id.
        let b = from_spec(
            &with_annotations(r#"{"io.kubernetes.cri.container-type":"sandbox"}"#),
            "pod2",
            false,
            false,
            &host(),
        )
        .unwrap();
        assert_eq!(b.pod, PodRole::Sandbox { id: "pod2".into() });
        // No annotation: no pod.
        let b = from_spec(&spec(BASE), "x", false, false, &host()).unwrap();
        assert_eq!(b.pod, PodRole::None);

        let e = from_spec(
            &with_annotations(
                r#"{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"}"#,
            ),
            "app",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(
            matches!(e, BundleError::PodContainer { ref sandbox } if sandbox == "pod1"),
            "{e}"
        );
        assert!(e.to_string().contains("step 3"), "{e}");
        let e = from_spec(
            &with_annotations(r#"{"io.kubernetes.cri.container-type":"podling"}"#),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("podling"), "{e}");
    }

    #[test]
    fn hostile_values_are_clear_errors() {
        let e = from_spec(
            &spec(&BASE.replace(r#""args":["echo","hi"],"#, r#""args":[],"#)),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(matches!(e, BundleError::NoProcess));
        let e = from_spec(
            &spec(&BASE.replace("268435456", "1024")),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("6 MiB"), "{e}");
        let e = from_spec(
            &spec(&BASE.replace("268435456", "1099511627776")),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than this host"), "{e}");
        let e = from_spec(&spec(BASE), "x", true, false, &host()).unwrap_err();
        assert!(e.to_string().contains("terminal"), "{e}");
        let e = from_spec(
            &spec(&BASE.replace(r#""PATH=/bin""#, r#""NOEQUALS""#)),
            "x",
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("NOEQUALS"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{not json").unwrap();
        let e = load(dir.path(), "x", false, false).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = load(&dir.path().join("nope"), "x", false, false).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
