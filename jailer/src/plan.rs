//! What goes into a VMM's jail, derived from its configuration alone.
//!
//! Everything is bind-mounted at the same absolute path it has on the
//! host, so the configuration needs no rewriting and the host side finds
//! the console, log, status and sockets where it always did. Bind mounts
//! rather than Firecracker's hard links: the image disk is shared by every
//! sandbox of an image and lives in the image store (another filesystem
//! than the sandbox directory, possibly), the sockets are made by the VMM
//! at run time, and a bind can be read-only where a hard link cannot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mvm_vmm_api::{Console, VmConfig};

use crate::spec::JailSpec;

/// The KVM device.
pub const KVM: &str = "/dev/kvm";
/// Host files the VMM reads at start (the KVM probe's CPU flags, the
/// memory check), bound read-only; no procfs is mounted in the jail.
pub const HOST_INFO: &[&str] = &["/proc/cpuinfo", "/proc/meminfo"];

/// Why no jail could be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the VMM may not run as root (uid or gid 0): give mvmd a --jail-uid-range above 0")]
    Root,
    #[error("jail: {path} {why}")]
    Path { path: PathBuf, why: &'static str },
}

/// How one path is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BindKind {
    /// A directory the VMM writes (console, log, status; sockets):
    /// bound read-write and owned by the VMM's uid.
    RwDir,
    /// A file the VMM writes (a writable disk), owned by its uid.
    RwFile,
    /// A file it only reads (or executes: the VMM and its libraries).
    RoFile,
    /// A device node (`/dev/kvm`).
    Device,
}

/// One bind mount: `path` on the host at `path` in the jail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bind {
    /// Directories first (they are mount points files may not shadow).
    pub kind: BindKind,
    /// Absolute path, the same in and out of the jail.
    pub path: PathBuf,
}

impl Bind {
    /// Where the mount point is under the jail directory `root`.
    pub fn target(&self, root: &Path) -> PathBuf {
        root.join(self.path.strip_prefix("/").unwrap_or(&self.path))
    }
}

fn abs(p: &Path) -> Result<PathBuf, PlanError> {
    if !p.is_absolute() {
        return Err(PlanError::Path {
            path: p.into(),
            why: "is not absolute (the jail binds absolute paths only)",
        });
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(PlanError::Path {
            path: p.into(),
            why: "contains '..'",
        });
    }
    Ok(p.into())
}

fn parent(p: &Path) -> Result<PathBuf, PlanError> {
    let p = abs(p)?;
    match p.parent() {
        Some(d) if d != Path::new("/") => Ok(d.into()),
        _ => Err(PlanError::Path {
            path: p,
            why: "must be in a directory of its own below / (the VMM writes next to it)",
        }),
    }
}

/// The binds of the VMM that `cfg` and `spec` describe: directories the
/// VMM writes, then files, then `/dev/kvm`. Files inside a writable
/// directory come with it and are not bound again.
pub fn plan(cfg: &VmConfig, spec: &JailSpec) -> Result<Vec<Bind>, PlanError> {
    let mut dirs = BTreeSet::new();
    if let Console::File(p) = &cfg.console {
        dirs.insert(parent(p)?);
    }
    for p in [&cfg.log_file, &cfg.status_file].into_iter().flatten() {
        dirs.insert(parent(p)?);
    }
    if let Some(v) = &cfg.vsock {
        dirs.insert(parent(&v.uds_path)?);
    }
    for f in &cfg.fs {
        dirs.insert(parent(&f.socket)?);
    }
    if let Some(c) = &cfg.control_socket {
        dirs.insert(parent(c)?);
    }
    let root = abs(&spec.root)?;
    for d in &dirs {
        if root.starts_with(d) || d.starts_with(&root) {
            return Err(PlanError::Path {
                path: d.clone(),
                why: "overlaps the jail directory",
            });
        }
    }
    // A directory inside another bound one is already there.
    let dirs: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    let inside = |p: &Path| dirs.iter().any(|d| p.starts_with(d));

    let mut files: BTreeSet<Bind> = BTreeSet::new();
    let mut add = |kind, p: &Path| -> Result<(), PlanError> {
        let path = abs(p)?;
        if !inside(&path) {
            files.insert(Bind { kind, path });
        }
        Ok(())
    };
    add(BindKind::RoFile, &spec.vmm)?;
    add(BindKind::RoFile, &spec.config)?;
    add(BindKind::RoFile, &cfg.kernel)?;
    for i in &cfg.initrd {
        add(BindKind::RoFile, i)?;
    }
    for d in &cfg.drives {
        let kind = if d.read_only {
            BindKind::RoFile
        } else {
            BindKind::RwFile
        };
        add(kind, &d.path)?;
    }
    for r in &spec.ro {
        add(BindKind::RoFile, r)?;
    }
    // A snapshot to restore is only read (its memory is mapped private).
    if let Some(r) = &cfg.restore {
        add(BindKind::RoFile, &r.state)?;
        add(BindKind::RoFile, &r.memory)?;
    }
    for h in HOST_INFO {
        add(BindKind::RoFile, Path::new(h))?;
    }
    // A file both read-only and writable (the same disk twice) is bound
    // writable only.
    let rw: BTreeSet<PathBuf> = files
        .iter()
        .filter(|b| b.kind == BindKind::RwFile)
        .map(|b| b.path.clone())
        .collect();
    let mut out: Vec<Bind> = dirs
        .into_iter()
        .map(|path| Bind {
            kind: BindKind::RwDir,
            path,
        })
        .collect();
    out.extend(
        files
            .into_iter()
            .filter(|b| b.kind != BindKind::RoFile || !rw.contains(&b.path)),
    );
    out.push(Bind {
        kind: BindKind::Device,
        path: KVM.into(),
    });
    // TAPs are opened by the jailer and passed as descriptors: no
    // /dev/net/tun in the jail. The VMM's entropy comes from getrandom(2):
    // no /dev/urandom either.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_vmm_api::{DriveConfig, FsConfig, VsockConfig};

    fn spec() -> JailSpec {
        JailSpec {
            vmm: "/usr/local/bin/mvm-vmm".into(),
            config: "/var/lib/mvm/sandboxes/a/vm.json".into(),
            root: "/var/lib/mvm/sandboxes/a/jail".into(),
            uid: 100_000,
            gid: 100_000,
            ro: vec!["/lib/x86_64-linux-gnu/libc.so.6".into()],
            die_with_parent: false,
        }
    }

    fn sandbox_cfg() -> VmConfig {
        let mut c = VmConfig::new("/usr/local/lib/mvm/vmlinux");
        c.initrd = vec![
            "/var/lib/mvm/init/x.cpio".into(),
            "/var/lib/mvm/sandboxes/a/spec.cpio".into(),
        ];
        c.drives = vec![
            DriveConfig::new("rootfs", "/var/lib/mvm/images/disks/d.ext4", true),
            DriveConfig::new("scratch", "/var/lib/mvm/sandboxes/a/scratch.ext4", false),
        ];
        c.console = Console::File("/var/lib/mvm/sandboxes/a/vm/console.log".into());
        c.log_file = Some("/var/lib/mvm/sandboxes/a/vm/vmm.log".into());
        c.status_file = Some("/var/lib/mvm/sandboxes/a/vm/status.json".into());
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/run/mvm/vsock/a/vsock.sock".into(),
        });
        c.fs = vec![FsConfig::new("src", "/run/mvm/vsock/a/vsock.fs0.sock")];
        c
    }

    #[test]
    fn a_sandbox_jail_holds_its_files_and_nothing_else() {
        let b = plan(&sandbox_cfg(), &spec()).unwrap();
        let of = |k: BindKind| -> Vec<String> {
            b.iter()
                .filter(|x| x.kind == k)
                .map(|x| x.path.display().to_string())
                .collect()
        };
        assert_eq!(
            of(BindKind::RwDir),
            ["/run/mvm/vsock/a", "/var/lib/mvm/sandboxes/a/vm"]
        );
        assert_eq!(
            of(BindKind::RwFile),
            ["/var/lib/mvm/sandboxes/a/scratch.ext4"]
        );
        assert_eq!(
            of(BindKind::RoFile),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/proc/cpuinfo",
                "/proc/meminfo",
                "/usr/local/bin/mvm-vmm",
                "/usr/local/lib/mvm/vmlinux",
                "/var/lib/mvm/images/disks/d.ext4",
                "/var/lib/mvm/init/x.cpio",
                "/var/lib/mvm/sandboxes/a/spec.cpio",
                "/var/lib/mvm/sandboxes/a/vm.json",
            ]
        );
        assert_eq!(of(BindKind::Device), ["/dev/kvm"]);
        // Directories are mounted before the files.
        assert_eq!(b[0].kind, BindKind::RwDir);
        assert_eq!(
            b[0].target(Path::new("/j")),
            PathBuf::from("/j/run/mvm/vsock/a")
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        let mut c = sandbox_cfg();
        c.kernel = "vmlinux".into();
        assert!(plan(&c, &spec()).is_err());
        let mut c = sandbox_cfg();
        c.initrd.push("/var/lib/../../etc/shadow".into());
        assert!(plan(&c, &spec()).is_err());
        let mut c = sandbox_cfg();
        c.status_file = Some("/status.json".into());
        assert!(plan(&c, &spec()).is_err(), "a writable / is refused");
        let mut c = sandbox_cfg();
        c.status_file = Some("/var/lib/mvm/sandboxes/a/jail/x/status.json".into());
        assert!(plan(&c, &spec()).is_err(), "the jail is not writable");
    }

    #[test]
    fn a_disk_given_twice_is_bound_writable_once() {
        let mut c = sandbox_cfg();
        c.drives.push(DriveConfig::new(
            "again",
            "/var/lib/mvm/sandboxes/a/scratch.ext4",
            true,
        ));
        let b = plan(&c, &spec()).unwrap();
        let n = b
            .iter()
            .filter(|x| x.path == Path::new("/var/lib/mvm/sandboxes/a/scratch.ext4"))
            .count();
        assert_eq!(n, 1);
    }
}
