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
    mount_table(root, &SYSTEM)?;
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
