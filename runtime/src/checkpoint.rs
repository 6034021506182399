//! Checkpoints of running sandboxes (Docker's `checkpoint create/ls/rm`
//! and `start --checkpoint`), made of a VMM snapshot and the scratch disk
//! as it was at that instant.
//!
//! `<sandbox dir>/checkpoints/<name>/` holds `state` and `memory` (what
//! the VMM wrote: `mvm_vmm_api::control`), `scratch.ext4` (a reflink or
//! sparse copy of the scratch disk, taken while the guest was paused, so
//! the filesystem matches the page cache in the memory file) and
//! `checkpoint.json` (name, time, and the identity of the kernel, init
//! and VMM it was made with).
//!
//! Making one: the VMM is asked over its control socket to pause its
//! vCPUs and write its state into its own `vm/` directory (the only place
//! a jailed VMM can write); the runtime then moves those files into the
//! checkpoint (after checking they are regular files: the VMM's uid owns
//! `vm/`), copies the scratch disk, and either resumes the guest
//! (`--leave-running`) or lets the VMM end (`checkpointed`). The
//! directory appears under its name only once complete.
//!
//! Restoring one: its identity must match this runtime's kernel, init and
//! VMM (a guest's memory is only meaningful to the kernel that wrote it),
//! its state file must pass the envelope's checks (`mvm_vmm_api::snapshot`)
//! and its memory file must be the guest's size; the scratch disk is then
//! put back and the VMM started with `VmConfig::restore`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mvm_vmm_api::control::{self, After, Request, Response};
use mvm_vmm_api::Artifacts as Identity;
use serde::{Deserialize, Serialize};

use crate::paths::SandboxPaths;

/// The directory of a sandbox's checkpoints.
pub const DIR: &str = "checkpoints";
/// The metadata file in a checkpoint.
pub const META: &str = "checkpoint.json";
/// How long a VMM may take to write a snapshot (guest memory is written
/// whole, its zero pages skipped; slow under emulation).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest checkpoint name (Docker has none; ours is a file name).
pub const MAX_NAME_LEN: usize = 64;

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "invalid checkpoint name {0:?}: use 1 to {MAX_NAME_LEN} of [a-zA-Z0-9_.-], starting with a \
         letter or digit"
    )]
    Name(String),
    #[error("checkpoint {0} already exists")]
    Exists(String),
    #[error("no such checkpoint: {0}")]
    NotFound(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the VMM's snapshot failed: {0}")]
    Vmm(String),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("the VMM left {0} as something other than a regular file; refused")]
    NotAFile(PathBuf),
    #[error("copying the scratch disk {from} to {to} failed: {detail}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        detail: String,
    },
    #[error("checkpoint {name} is unusable: {detail}")]
    Unusable { name: String, detail: String },
    #[error(
        "checkpoint {name} was made with another {what} ({theirs}); this mvm runs {ours}. A \
         guest's memory only makes sense to the kernel, init and VMM that made it: boot the \
         sandbox afresh (start without --checkpoint) or use the binaries it was made with"
    )]
    OtherBinaries {
        name: String,
        what: &'static str,
        theirs: String,
        ours: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { op, path, source }
}

/// What `checkpoint.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its name.
    pub name: String,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// The kernel, init and VMM it was made with (SHA-256 of each).
    pub artifacts: Identity,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// How long the guest was paused while the VMM wrote it, microseconds.
    pub paused_us: u64,
    /// Bytes of guest memory in it (zero pages are holes).
    pub memory_bytes: u64,
}

/// Check a checkpoint name (Docker's container-name alphabet: it becomes a
/// directory name).
pub fn check_name(name: &str) -> Result<(), CheckpointError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::Name(name.to_string()))
    }
}

/// A sandbox's checkpoints directory.
pub fn dir(paths: &SandboxPaths) -> PathBuf {
    paths.dir.join(DIR)
}

/// The directory of checkpoint `name` (checked).
pub fn path(paths: &SandboxPaths, name: &str) -> Result<PathBuf, CheckpointError> {
    check_name(name)?;
    Ok(dir(paths).join(name))
}

/// The VMM's control socket of a sandbox.
pub fn control_socket(paths: &SandboxPaths) -> PathBuf {
    paths.sockets.join("ctl.sock")
}

/// The checkpoints of a sandbox, oldest first. Unreadable entries (a
/// checkpoint being made) are left out.
pub fn list(paths: &SandboxPaths) -> Result<Vec<CheckpointInfo>, CheckpointError> {
    let d = dir(paths);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", &d)(e)),
    };
    let mut out: Vec<CheckpointInfo> = rd
        .flatten()
        .filter(|e| check_name(&e.file_name().to_string_lossy()).is_ok())
        .filter_map(|e| read_info(&e.path()).ok())
        .collect();
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

fn read_info(dir: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let p = dir.join(META);
    let bytes = fs::read(&p).map_err(io_err("reading", &p))?;
    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Unusable {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        detail: format!("{META}: {e}"),
    })
}

/// Remove checkpoint `name`.
pub fn remove(paths: &SandboxPaths, name: &str) -> Result<(), CheckpointError> {
    let p = path(paths, name)?;
    match fs::remove_dir_all(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(CheckpointError::NotFound(name.to_string()))
        }
        Err(e) => Err(io_err("removing", &p)(e)),
    }
}

/// What [`create`] needs besides the sandbox's files.
#[derive(Debug, Clone)]
pub struct CreateSpec<'a> {
    /// The checkpoint's name.
    pub name: &'a str,
    /// Keep the sandbox running after it (Docker's `--leave-running`);
    /// else the VMM ends once it is written.
    pub leave_running: bool,
    /// The identity of the binaries the sandbox runs.
    pub artifacts: &'a Identity,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// The group the sandbox's VMM runs as (jailed), which must read the
    /// checkpoint's files to restore it; `None`: unjailed (root).
    pub vmm_gid: Option<u32>,
}

/// Make checkpoint `spec.name` of the running sandbox at `paths`.
pub fn create(
    paths: &SandboxPaths,
    spec: &CreateSpec<'_>,
) -> Result<CheckpointInfo, CheckpointError> {
    let final_dir = path(paths, spec.name)?;
    if final_dir.exists() {
        return Err(CheckpointError::Exists(spec.name.to_string()));
    }
    let root = dir(paths);
    fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o711))
        .map_err(io_err("setting the mode of", &root))?;
    let staging = root.join(format!(".new-{}", spec.name));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(io_err("creating", &staging))?;
    let r = make(paths, spec, &staging, &final_dir);
    if r.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    r
}

fn make(
    paths: &SandboxPaths,
    spec: &CreateSpec<'_>,
    staging: &Path,
    final_dir: &Path,
) -> Result<CheckpointInfo, CheckpointError> {
    // The VMM writes where it may: its own vm/ directory. Names that
    // cannot collide with its console, log or status files.
    let vm_state = paths
        .vm_dir
        .join(format!(".checkpoint-{}.state", spec.name));
    let vm_memory = paths
        .vm_dir
        .join(format!(".checkpoint-{}.memory", spec.name));
    for p in [&vm_state, &vm_memory] {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", p)(e)),
        }
    }
    let after = if spec.leave_running {
        After::Pause
    } else {
        After::Exit
    };
    let socket = control_socket(paths);
    let req = Request::Snapshot {
        state: vm_state.clone(),
        memory: vm_memory.clone(),
        after,
    };
    let (paused_us, memory_bytes) = match control::call(&socket, &req, SNAPSHOT_TIMEOUT)? {
        Response::Snapshot {
            paused_us,
            memory_written,
        } => (paused_us, memory_written),
        Response::Error { message } => return Err(CheckpointError::Vmm(message)),
        Response::Resumed | Response::WarmReady => {
            return Err(CheckpointError::Vmm("the VMM answered out of turn".into()))
        }
    };
    // The guest is paused (or its VMM ending) from here: the scratch disk
    // holds still while it is copied.
    let r = (|| {
        adopt(&vm_state, &staging.join("state"), spec.vmm_gid)?;
        adopt(&vm_memory, &staging.join("memory"), spec.vmm_gid)?;
        copy_disk(&paths.scratch, &staging.join("scratch.ext4"))
    })();
    if spec.leave_running {
        // Whatever happened, the guest runs on.
        match control::call(&socket, &Request::Resume, SNAPSHOT_TIMEOUT) {
            Ok(Response::Resumed) => {}
            Ok(other) => tracing::warn!("resuming after a checkpoint: {other:?}"),
            Err(e) => tracing::warn!("resuming after a checkpoint: {e}"),
        }
    }
    r?;
    let info = CheckpointInfo {
        name: spec.name.to_string(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        artifacts: spec.artifacts.clone(),
        memory_mib: spec.memory_mib,
        paused_us,
        memory_bytes,
    };
    let meta = staging.join(META);
    let json = serde_json::to_vec_pretty(&info).map_err(|e| CheckpointError::Io {
        op: "encoding",
        path: meta.clone(),
        source: io::Error::other(e),
    })?;
    mvm_vmm_api::write_atomic(&meta, &json).map_err(io_err("writing", &meta))?;
    fs::rename(staging, final_dir).map_err(io_err("renaming", staging))?;
    Ok(info)
}

/// Move a file the VMM wrote into the checkpoint, refusing anything but a
/// regular file with one link (the VMM owns the directory it was in and
/// could have left a link to a host file), and give it to root, readable
/// by the sandbox's VMM group only (guest memory holds its secrets).
fn adopt(from: &Path, to: &Path, gid: Option<u32>) -> Result<(), CheckpointError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .map_err(|_| CheckpointError::NotAFile(from.to_path_buf()))?;
    let m = f.metadata().map_err(io_err("reading", from))?;
    if !m.file_type().is_file() || m.nlink() != 1 {
        return Err(CheckpointError::NotAFile(from.to_path_buf()));
    }
    fs::rename(from, to).map_err(io_err("moving", from))?;
    // The name now lives in a directory only root writes: check it is
    // still the file that was opened (not swapped between the two calls).
    let moved = fs::symlink_metadata(to).map_err(io_err("reading", to))?;
    if moved.ino() != m.ino() || moved.dev() != m.dev() {
        let _ = fs::remove_file(to);
        return Err(CheckpointError::NotAFile(from.to_path_buf()));
    }
    std::os::unix::fs::fchown(&f, Some(0), gid).map_err(io_err("changing the owner of", to))?;
    f.set_permissions(fs::Permissions::from_mode(if gid.is_some() {
        0o640
    } else {
        0o600
    }))
    .map_err(io_err("setting the mode of", to))?;
    Ok(())
}

/// Copy a disk image sparsely, as a reflink where the filesystem can
/// (XFS, Btrfs: instant and shared until written), through `cp`, which
/// does both.
pub fn copy_disk(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let tmp = to.with_extension("copying");
    let out = std::process::Command::new("cp")
        .arg("--reflink=auto")
        .arg("--sparse=always")
        .arg("--")
        .arg(from)
        .arg(&tmp)
        .output()
        .map_err(|e| CheckpointError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            detail: format!("running cp: {e}"),
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(CheckpointError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, to).map_err(io_err("renaming", &tmp))
}

/// Check checkpoint `name` before a restore: its identity against `ours`,
/// its state file's envelope, its memory file's size against the guest's.
/// Returns its directory.
pub fn check(
    paths: &SandboxPaths,
    name: &str,
    ours: &Identity,
    memory_mib: u64,
) -> Result<PathBuf, CheckpointError> {
    let d = path(paths, name)?;
    if !d.is_dir() {
        return Err(CheckpointError::NotFound(name.to_string()));
    }
    let info = read_info(&d)?;
    let unusable = |detail: String| CheckpointError::Unusable {
        name: name.to_string(),
        detail,
    };
    for (what, theirs, ours) in [
        ("guest kernel", &info.artifacts.kernel, &ours.kernel),
        ("guest init", &info.artifacts.init, &ours.init),
        ("VMM (mvm-vmm)", &info.artifacts.vmm, &ours.vmm),
    ] {
        if theirs != ours {
            return Err(CheckpointError::OtherBinaries {
                name: name.to_string(),
                what,
                theirs: short(theirs),
                ours: short(ours),
            });
        }
    }
    mvm_vmm_api::snapshot::read(&d.join("state")).map_err(|e| unusable(e.to_string()))?;
    let memory = d.join("memory");
    let size = fs::metadata(&memory)
        .map_err(|e| unusable(format!("{}: {e}", memory.display())))?
        .len();
    let want = memory_mib << 20;
    if size != want {
        return Err(unusable(format!(
            "its memory file is {size} bytes; the sandbox's guest memory is {want} (truncated?)"
        )));
    }
    if !d.join("scratch.ext4").is_file() {
        return Err(unusable("its scratch disk copy is missing".into()));
    }
    Ok(d)
}

/// A hash as users see it (`sha256:` and 12 digits).
fn short(h: &str) -> String {
    format!("sha256:{}", &h[..h.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> SandboxPaths {
        crate::paths::Layout::new(root.join("root"), root.join("run")).sandbox("abc")
    }

    fn ids(k: &str) -> Identity {
        Identity {
            kernel: k.into(),
            init: "i".repeat(64),
            vmm: "v".repeat(64),
        }
    }

    /// A checkpoint directory as `create` leaves it.
    fn fake(p: &SandboxPaths, name: &str, state: &[u8], memory_len: u64) {
        let d = dir(p).join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("state"), state).unwrap();
        fs::File::create(d.join("memory"))
            .unwrap()
            .set_len(memory_len)
            .unwrap();
        fs::write(d.join("scratch.ext4"), b"disk").unwrap();
        let info = CheckpointInfo {
            name: name.into(),
            created: 1,
            artifacts: ids(&"k".repeat(64)),
            memory_mib: 1,
            paused_us: 5,
            memory_bytes: 4096,
        };
        fs::write(d.join(META), serde_json::to_vec(&info).unwrap()).unwrap();
    }

    #[test]
    fn names_are_file_names_without_surprises() {
        for ok in ["c1", "before-upgrade", "a.b_c", "0"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_good_checkpoint_passes_and_is_listed() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        fake(&p, "c1", &mvm_vmm_api::snapshot::seal(b"state"), 1 << 20);
        check(&p, "c1", &ids(&"k".repeat(64)), 1).unwrap();
        let l = list(&p).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "c1");
        remove(&p, "c1").unwrap();
        assert!(matches!(
            remove(&p, "c1"),
            Err(CheckpointError::NotFound(_))
        ));
        assert!(list(&p).unwrap().is_empty());
    }

    #[test]
    fn another_kernel_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        fake(&p, "c1", &mvm_vmm_api::snapshot::seal(b"state"), 1 << 20);
        let err = check(&p, "c1", &ids(&"z".repeat(64)), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another guest kernel"), "{err}");
        assert!(
            err.contains("sha256:kkkkkkkkkkkk") && err.contains("sha256:zzzzzzzzzzzz"),
            "{err}"
        );
    }

    #[test]
    fn another_init_or_vmm_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        fake(&p, "c1", &mvm_vmm_api::snapshot::seal(b"state"), 1 << 20);
        let mut ours = ids(&"k".repeat(64));
        ours.init = "j".repeat(64);
        let err = check(&p, "c1", &ours, 1).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::OtherBinaries {
                    what: "guest init",
                    ..
                }
            ),
            "{err}"
        );
        let err = err.to_string();
        assert!(
            err.contains("sha256:iiiiiiiiiiii") && err.contains("sha256:jjjjjjjjjjjj"),
            "{err}"
        );
        assert!(err.contains("start without --checkpoint"), "{err}");
        let mut ours = ids(&"k".repeat(64));
        ours.vmm = "w".repeat(64);
        let err = check(&p, "c1", &ours, 1).unwrap_err().to_string();
        assert!(
            err.contains("another VMM (mvm-vmm)") && err.contains("sha256:wwwwwwwwwwww"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_with_missing_or_garbled_parts_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let k = ids(&"k".repeat(64));
        let sealed = mvm_vmm_api::snapshot::seal(b"state");
        let unusable = |name: &str, want: &str| {
            let err = check(&p, name, &k, 1).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Unusable { .. }),
                "{name}: {err}"
            );
            let err = err.to_string();
            assert!(
                err.contains(&format!("checkpoint {name} is unusable")) && err.contains(want),
                "{name}: {want:?} not in {err:?}"
            );
        };
        fake(&p, "meta", &sealed, 1 << 20);
        fs::write(dir(&p).join("meta").join(META), b"{\"name\": 1").unwrap();
        unusable("meta", META);
        fake(&p, "nostate", &sealed, 1 << 20);
        fs::remove_file(dir(&p).join("nostate/state")).unwrap();
        unusable("nostate", "reading snapshot state");
        fake(&p, "empty", b"", 1 << 20);
        unusable("empty", "truncated");
        fake(
            &p,
            "foreign",
            b"{\"kernel\": \"vmlinux\", \"init\": 1}",
            1 << 20,
        );
        unusable("foreign", "not a mvm snapshot state file");
        let mut v2 = sealed.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        fake(&p, "v2", &v2, 1 << 20);
        unusable("v2", "format version 2");
        fake(&p, "nomem", &sealed, 1 << 20);
        fs::remove_file(dir(&p).join("nomem/memory")).unwrap();
        unusable("nomem", "memory");
        fake(&p, "bigmem", &sealed, 2 << 20);
        unusable("bigmem", "memory file is 2097152 bytes");
        fake(&p, "nodisk", &sealed, 1 << 20);
        fs::remove_file(dir(&p).join("nodisk/scratch.ext4")).unwrap();
        unusable("nodisk", "scratch disk copy is missing");
        // A checkpoint being made (no metadata yet) is not listed.
        let names: Vec<String> = list(&p).unwrap().into_iter().map(|i| i.name).collect();
        assert!(!names.contains(&"meta".to_string()), "{names:?}");
    }

    #[test]
    fn corrupt_or_truncated_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        let k = ids(&"k".repeat(64));
        let mut sealed = mvm_vmm_api::snapshot::seal(b"state");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        fake(&p, "corrupt", &sealed, 1 << 20);
        let err = check(&p, "corrupt", &k, 1).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        let sealed = mvm_vmm_api::snapshot::seal(b"state");
        fake(&p, "cut", &sealed[..sealed.len() - 2], 1 << 20);
        let err = check(&p, "cut", &k, 1).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        fake(&p, "short-memory", &sealed, 4096);
        let err = check(&p, "short-memory", &k, 1).unwrap_err().to_string();
        assert!(err.contains("memory file is 4096 bytes"), "{err}");
        assert!(matches!(
            check(&p, "none", &k, 1),
            Err(CheckpointError::NotFound(_))
        ));
    }

    #[test]
    fn adopt_refuses_links() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("secret");
        fs::write(&target, b"host file").unwrap();
        let link = t.path().join("state");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = adopt(&link, &t.path().join("moved"), None).unwrap_err();
        assert!(matches!(err, CheckpointError::NotAFile(_)), "{err}");
        let hard = t.path().join("hard");
        fs::hard_link(&target, &hard).unwrap();
        assert!(adopt(&hard, &t.path().join("moved"), None).is_err());
        let plain = t.path().join("plain");
        fs::write(&plain, b"ok").unwrap();
        adopt(&plain, &t.path().join("moved"), None).unwrap();
        assert_eq!(fs::read(t.path().join("moved")).unwrap(), b"ok");
    }

    #[test]
    fn disks_are_copied_sparse() {
        let t = tempfile::tempdir().unwrap();
        let from = t.path().join("a.ext4");
        let f = fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data", 1 << 20).unwrap();
        let to = t.path().join("b.ext4");
        copy_disk(&from, &to).unwrap();
        let m = fs::metadata(&to).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            m.blocks()
        );
        let mut buf = [0u8; 4];
        fs::File::open(&to)
            .unwrap()
            .read_exact_at(&mut buf, 1 << 20)
            .unwrap();
        assert_eq!(&buf, b"data");
    }
}
