//! The kernel API filesystems: /proc, /sys and /dev in the initramfs (to
//! find the disks), and the full set a container expects in the new root.
//!
//! The new-root table follows what runc gives a Docker container, minus
//! what only makes sense for a shared kernel: the VM is the isolation
//! boundary, so /proc and /sys are not masked or read-only.

use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Why a mount could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: PathBuf,
        source: io::Error,
    },
    #[error("cannot create mount point {path}: {source}")]
    MountPoint { path: PathBuf, source: io::Error },
}

/// `mount(2)` with an error that names what and where.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), MountError> {
    crate::sys::mount(source, target, fstype, flags, data).map_err(|source| MountError::Mount {
        fstype: if fstype.is_empty() {
            "(move)".into()
        } else {
            fstype.into()
        },
        target: target.into(),
        source,
    })
}

/// Create `path` (and parents) as a mount point if it does not exist.
pub fn mount_point(path: &Path, mode: u32) -> Result<(), MountError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| MountError::MountPoint {
            path: path.into(),
            source,
        })
}

/// One filesystem to mount.
#[derive(Debug, Clone, Copy)]
struct Fs {
    target: &'static str,
    fstype: &'static str,
    source: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
    /// Without it init cannot go on; the others are warnings.
    required: bool,
}

/// What init needs in the initramfs before the switch.
const EARLY: [Fs; 3] = [
    Fs {
        target: "proc",
        fstype: "proc",
        source: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        required: true,
    },
    Fs {
        target: "sys",
        fstype: "sysfs",
        source: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        required: true,
    },
    Fs {
        target: "dev",
        fstype: "devtmpfs",
        source: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
        required: true,
    },
];

/// What the workload gets in its root, in mount order. /tmp is handled
/// separately (see [`mount_system`]).
const SYSTEM: [Fs; 6] = [
    EARLY[0],
    EARLY[1],
    EARLY[2],
    Fs {
        target: "dev/pts",
        fstype: "devpts",
        source: "devpts",
        flags: NOSUID | NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        required: false,
    },
    Fs {
        target: "dev/shm",
        fstype: "tmpfs",
        source: "shm",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        required: false,
    },
    Fs {
        target: "sys/fs/cgroup",
        fstype: "cgroup2",
        source: "cgroup2",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        required: false,
    },
];

const TMP: Fs = Fs {
    target: "tmp",
    fstype: "tmpfs",
    source: "tmpfs",
    flags: NOSUID | NODEV,
    data: "mode=1777",
    required: false,
};

fn mount_table(root: &Path, table: &[Fs]) -> Result<(), MountError> {
    for fs in table {
        let target = root.join(fs.target);
        let result = mount_point(&target, 0o755)
            .and_then(|()| mount(fs.source, &target, fs.fstype, fs.flags, fs.data));
        match result {
            Ok(()) => {}
            Err(e) if fs.required => return Err(e),
            Err(e) => crate::warn!("{e}"),
        }
    }
    Ok(())
}

/// Mount /proc, /sys and /dev in the initramfs rooted at `root`.
pub fn mount_early(root: &Path) -> Result<(), MountError> {
    mount_table(root, &EARLY)
}

/// Undo [`mount_early`] before the switch, so the initramfs can be emptied
/// and the new root gets fresh instances. Failures are harmless (the
/// mounts stay hidden under the new root) and only warned about.
pub fn unmount_early(root: &Path) {
    for fs in EARLY.iter().rev() {
        let target = root.join(fs.target);
        if let Err(e) = crate::sys::umount(&target, libc::MNT_DETACH) {
            crate::warn!("cannot unmount {}: {e}", target.display());
        }
    }
}

/// Mount the API filesystems in the workload's root `root` (`/` in the
/// guest, after the switch) and create the /dev links programs expect.
///
/// /tmp gets a tmpfs as the issue asks, but only if the image's /tmp is
/// empty or missing: Docker mounts nothing there, and hiding files an image
/// ships in /tmp would break it silently. The price of the tmpfs is guest
/// memory instead of scratch disk for temporary files.
pub fn mount_system(root: &Path) -> Result<(), MountError> {
    mount_system_with(root, &SYSTEM)
}

/// [`mount_system`] with the table as a parameter: host tests swap
/// devtmpfs for a tmpfs, because devtmpfs is one instance per kernel and
/// the /dev links would land in the test machine's own /dev.
fn mount_system_with(root: &Path, table: &[Fs]) -> Result<(), MountError> {
    mount_table(root, table)?;
    let tmp = root.join(TMP.target);
    let has_content = std::fs::read_dir(&tmp)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_content {
        crate::info!("/tmp in the image has content: keeping it instead of mounting a tmpfs");
    } else {
        mount_table(root, &[TMP])?;
    }
    dev_links(&root.join("dev"));
    Ok(())
}

/// The links runc creates in /dev; /dev/ptmx points into the private
/// devpts instance so ptys work.
fn dev_links(dev: &Path) {
    let links = [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ];
    for (name, target) in links {
        let path = dev.join(name);
        if name == "ptmx" {
            // devtmpfs has a ptmx node for the initial devpts instance.
            let _ = std::fs::remove_file(&path);
        }
        if let Err(e) = symlink(target, &path) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                crate::warn!("cannot create {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_errors_name_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let e = mount(
            "none",
            &dir.path().join("missing"),
            "no-such-fs-type",
            0,
            "",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("cannot mount no-such-fs-type on "),
            "{text}"
        );
        assert!(text.contains("missing"), "{text}");
    }

    /// [`SYSTEM`] with a tmpfs in place of devtmpfs: devtmpfs is shared
    /// with the test machine's /dev, which the tests must not touch.
    fn host_safe_table() -> Vec<Fs> {
        let mut table = SYSTEM.to_vec();
        table[2] = Fs {
            fstype: "tmpfs",
            source: "tmpfs",
            ..table[2]
        };
        assert_eq!(SYSTEM[2].fstype, "devtmpfs");
        table
    }

    /// The real mounts, on the host kernel, in a private mount namespace of
    /// a forked child (so no mount leaks into the test machine).
    fn in_mount_namespace(root: &Path, check: fn(&Path) -> Result<(), String>) {
        let mut fds = [0; 2];
        // SAFETY: valid out array for pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child runs `check` and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let result = (|| {
                // SAFETY: plain syscalls on constant arguments.
                if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                    return Err(format!("unshare: {}", io::Error::last_os_error()));
                }
                crate::sys::mount(
                    "none",
                    Path::new("/"),
                    "",
                    libc::MS_REC | libc::MS_PRIVATE,
                    "",
                )
                .map_err(|e| format!("make / private: {e}"))?;
                check(root)
            })();
            let msg = result.err().unwrap_or_default();
            // SAFETY: write our message and leave without unwinding.
            unsafe {
                libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                libc::_exit(i32::from(!msg.is_empty()));
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut msg = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            msg.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{}",
            String::from_utf8_lossy(&msg)
        );
    }

    fn mounted(root: &Path) -> Result<Vec<(String, String)>, String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let prefix = root.to_str().unwrap();
        Ok(info
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                let target = f.get(4)?.strip_prefix(prefix)?;
                Some((target.to_string(), f.get(sep + 1)?.to_string()))
            })
            .collect())
    }

    #[test]
    fn system_mounts_in_a_private_namespace() {
        let dir = tempfile::tempdir().unwrap();
        in_mount_namespace(dir.path(), |root| {
            mount_system_with(root, &host_safe_table()).map_err(|e| e.to_string())?;
            let got = mounted(root)?;
            for (target, fstype) in [
                ("/proc", "proc"),
                ("/sys", "sysfs"),
                ("/dev", "tmpfs"),
                ("/dev/pts", "devpts"),
                ("/dev/shm", "tmpfs"),
                ("/sys/fs/cgroup", "cgroup2"),
                ("/tmp", "tmpfs"),
            ] {
                if !got.iter().any(|(t, f)| t == target && f == fstype) {
                    return Err(format!("{fstype} not on {target}: {got:?}"));
                }
            }
            let link = std::fs::read_link(root.join("dev/ptmx")).map_err(|e| e.to_string())?;
            if link != Path::new("pts/ptmx") {
                return Err(format!("/dev/ptmx -> {}", link.display()));
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(root.join("tmp"))
                .map_err(|e| e.to_string())?
                .permissions()
                .mode();
            if mode & 0o7777 != 0o1777 {
                return Err(format!("/tmp mode {mode:o}"));
            }
            Ok(())
        });
    }

    #[test]
    fn image_tmp_with_content_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/shipped"), "x").unwrap();
        in_mount_namespace(dir.path(), |root| {
            mount_system_with(root, &host_safe_table()).map_err(|e| e.to_string())?;
            if mounted(root)?.iter().any(|(t, _)| t == "/tmp") {
                return Err("a tmpfs hides the image's /tmp".into());
            }
            if !root.join("tmp/shipped").exists() {
                return Err("tmp/shipped is gone".into());
            }
            Ok(())
        });
    }

    #[test]
    fn mount_point_creates_parents_and_reports_files_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        mount_point(&dir.path().join("a/b/c"), 0o755).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = mount_point(&dir.path().join("file/sub"), 0o755).unwrap_err();
        assert!(e.to_string().contains("cannot create mount point"), "{e}");
    }
}
