//! Host directories shared into the guest over virtio-fs: the launch
//! spec's `mounts`, mounted in the workload's root after the switch into
//! it (and after /proc, /sys, /dev, /tmp, so a share at /tmp hides the
//! tmpfs as a Docker volume would) and before the workload starts.
//!
//! Each share is `mount -t virtiofs TAG TARGET`, read-only with
//! `MS_RDONLY` when the spec says so (the host's backend refuses writes
//! to a read-only share as well, so this is not the only guard). Missing
//! targets are created, with their parents, in the overlay root. Shares
//! are mounted parents first (fewest path components first), so a share
//! inside another share's target lands on top of it, not underneath.

use std::io;
use std::path::{Path, PathBuf};

use mvm_protocol::launch::{normalize_target, Mount};

/// Why a share could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot create {target}, the mount point of share {tag:?}: {source}")]
    MountPoint {
        tag: String,
        target: PathBuf,
        source: io::Error,
    },
    #[error("cannot mount share {tag:?} (virtiofs) on {target}: {source}{hint}")]
    Mount {
        tag: String,
        target: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
}

/// The order to mount `mounts` in: parents before children.
pub fn mount_order(mounts: &[Mount]) -> Vec<&Mount> {
    let mut order: Vec<&Mount> = mounts.iter().collect();
    // Stable: equal depths keep the spec's order.
    order.sort_by_key(|m| normalize_target(&m.target).matches('/').count());
    order
}

/// Where `target` is under `root`.
fn under(root: &Path, target: &str) -> PathBuf {
    root.join(normalize_target(target).trim_start_matches('/'))
}

/// What to tell the operator for a failed virtiofs mount.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        // The kernel's virtio_fs: "tag <X> not found".
        Some(libc::EINVAL) | Some(libc::ENOENT) => {
            "; is there a virtio-fs device with this tag (the VMM's fs[] entries)?"
        }
        Some(libc::ENODEV) => "; the guest kernel has no virtiofs support (CONFIG_VIRTIO_FS)",
        Some(libc::ENOTDIR) => "; the target exists and is not a directory",
        _ => "",
    }
}

/// Mount every share of `mounts` in the root at `root` (`/` in the guest).
pub fn mount_all(root: &Path, mounts: &[Mount]) -> Result<(), ShareError> {
    for m in mount_order(mounts) {
        let target = under(root, &m.target);
        crate::mounts::mount_point(&target, 0o755).map_err(|e| {
            let source = match e {
                crate::mounts::MountError::MountPoint { source, .. } => source,
                crate::mounts::MountError::Mount { source, .. } => source,
            };
            ShareError::MountPoint {
                tag: m.tag.clone(),
                target: target.clone(),
                source,
            }
        })?;
        let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
        crate::sys::mount(&m.tag, &target, "virtiofs", flags, "").map_err(|source| {
            ShareError::Mount {
                tag: m.tag.clone(),
                target: target.clone(),
                hint: hint(&source),
                source,
            }
        })?;
        crate::info!(
            "share {:?} mounted on {}{}",
            m.tag,
            m.target,
            if m.read_only { " (read-only)" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(tag: &str, target: &str) -> Mount {
        Mount {
            tag: tag.into(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn parents_are_mounted_first() {
        let mounts = [
            m("c", "/a/b/c"),
            m("a", "/a"),
            m("x", "/x"),
            m("b", "//a/b/"),
        ];
        let tags: Vec<&str> = mount_order(&mounts)
            .iter()
            .map(|m| m.tag.as_str())
            .collect();
        assert_eq!(tags, ["a", "x", "b", "c"]);
        assert_eq!(
            under(Path::new("/root"), "/a//b/./c"),
            Path::new("/root/a/b/c")
        );
    }

    #[test]
    fn a_failed_mount_names_tag_and_target_and_leaves_the_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        // No virtio-fs device with this tag on the test machine (and no
        // privilege to mount, when not root): the mount fails either way.
        let e = mount_all(dir.path(), &[m("no-such-share", "/data/in")]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("\"no-such-share\"") && text.contains("data/in"),
            "{text}"
        );
        assert!(dir.path().join("data/in").is_dir(), "mount point created");

        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = mount_all(dir.path(), &[m("t", "/file/sub")]).unwrap_err();
        assert!(matches!(e, ShareError::MountPoint { .. }), "{e}");
        assert!(e.to_string().contains("\"t\""), "{e}");
    }
}
