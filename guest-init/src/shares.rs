//! The launch spec's mounts in the workload's root: virtio-fs shares
//! (`mounts`: bind mounts and directory volumes), tmpfs (`tmpfs`) and
//! ext4 disks (`block_mounts`: block volumes). They are mounted after the
//! switch into the root (and after /proc, /sys, /dev, /tmp, so one at
//! /tmp hides the tmpfs as a Docker volume would) and before the
//! workload starts.
//!
//! - A share is `mount -t virtiofs TAG TARGET`, read-only with
//!   `MS_RDONLY` when the spec says so (the host's backend refuses writes
//!   to a read-only share as well, so this is not the only guard); with
//!   `copy_up` (a directory volume), an empty share first gets what the
//!   image has at the target, as a block volume does.
//! - A tmpfs gets exactly the flags and options the spec gives (the host
//!   applies Docker's defaults).
//! - A block mount finds its disk by virtio-blk serial, as the root disks
//!   are found, and mounts it as ext4; with `copy_up`, an empty disk
//!   first gets what the image has at the target ([`crate::copyup`]).
//!   Read-only disks are attached read-only by the host too; a journal
//!   left dirty by a crashed writer cannot be replayed on them, so such a
//!   disk is mounted without loading its journal (`noload`) after a plain
//!   read-only mount failed.
//!
//! - A file (`files`: an OCI bind mount of a single file, such as the
//!   `/etc/resolv.conf` containerd's CRI plugin gives a pod) is written
//!   into a small tmpfs of init's own and bind-mounted over its target
//!   (an empty file is created there when missing), read-only when the
//!   spec says so. The tmpfs is then detached from its staging directory:
//!   the bind mounts keep it, and nothing of it is left to see.
//!
//! Missing targets are created, with their parents, in the overlay root.
//! Mounts of every kind are mounted parents first (fewest path components
//! first), so one inside another's target lands on top of it, not
//! underneath.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mvm_protocol::launch::{
    normalize_target, BlockMount, FileMount, LaunchSpec, Mount, TmpfsMount,
};

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot create {target}, the mount point of {what}: {source}")]
    MountPoint {
        what: String,
        target: PathBuf,
        source: io::Error,
    },
    #[error("cannot mount {what} on {target}: {source}{hint}")]
    Mount {
        what: String,
        target: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Disk {
        what: String,
        source: Box<crate::rootfs::RootfsError>,
    },
    #[error("{what}: {why}")]
    File { what: String, why: String },
    #[error("{what}: {source}")]
    CopyUp {
        what: String,
        source: Box<crate::copyup::CopyUpError>,
    },
}

/// One mount of the spec, of any kind.
#[derive(Debug, Clone, Copy)]
pub enum Planned<'a> {
    /// A virtio-fs share.
    Share(&'a Mount),
    /// A tmpfs.
    Tmpfs(&'a TmpfsMount),
    /// An ext4 disk.
    Block(&'a BlockMount),
    /// A single file.
    File(&'a FileMount),
}

impl Planned<'_> {
    /// Where it goes.
    pub fn target(&self) -> &str {
        match self {
            Self::Share(m) => &m.target,
            Self::Tmpfs(t) => &t.target,
            Self::Block(b) => &b.target,
            Self::File(f) => &f.target,
        }
    }

    /// How errors name it.
    pub fn describe(&self) -> String {
        match self {
            Self::Share(m) => format!("share {:?}", m.tag),
            Self::Tmpfs(_) => "a tmpfs".into(),
            Self::Block(b) => format!("the block volume on drive {:?}", b.drive),
            Self::File(f) => format!("the file bound on {}", f.target),
        }
    }
}

/// The order to mount the spec's mounts in: parents before children,
/// every kind together.
pub fn mount_order(spec: &LaunchSpec) -> Vec<Planned<'_>> {
    let mut order: Vec<Planned<'_>> = spec
        .mounts
        .iter()
        .map(Planned::Share)
        .chain(spec.tmpfs.iter().map(Planned::Tmpfs))
        .chain(spec.block_mounts.iter().map(Planned::Block))
        .chain(spec.files.iter().map(Planned::File))
        .collect();
    // Stable: equal depths keep the spec's order.
    order.sort_by_key(|m| normalize_target(m.target()).matches('/').count());
    order
}

/// Where `target` is under `root`.
fn under(root: &Path, target: &str) -> PathBuf {
    root.join(normalize_target(target).trim_start_matches('/'))
}

/// What to tell the operator for a failed virtiofs mount.
fn share_hint(e: &io::Error) -> &'static str {
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

/// The `data` argument of a tmpfs mount.
pub fn tmpfs_data(t: &TmpfsMount) -> String {
    let mut opts = Vec::new();
    if let Some(size) = t.size_bytes {
        opts.push(format!("size={size}"));
    }
    if let Some(mode) = t.mode {
        opts.push(format!("mode={mode:o}"));
    }
    opts.join(",")
}

/// The flags of a tmpfs mount.
pub fn tmpfs_flags(t: &TmpfsMount) -> libc::c_ulong {
    let mut flags = 0;
    for (on, flag) in [
        (t.read_only, libc::MS_RDONLY),
        (t.noexec, libc::MS_NOEXEC),
        (t.nosuid, libc::MS_NOSUID),
        (t.nodev, libc::MS_NODEV),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}

/// Mount every mount of `spec` in the root at `root` (`/` in the guest).
/// The writable block volumes' root directories are returned, open:
/// shutdown freezes them (their journals then hold nothing to replay).
pub fn mount_all(root: &Path, spec: &LaunchSpec) -> Result<Vec<OwnedFd>, ShareError> {
    let mut disks = Vec::new();
    let mut files = None;
    for m in mount_order(spec) {
        let target = under(root, m.target());
        let what = m.describe();
        if let Planned::File(f) = m {
            let stage = match &mut files {
                Some(s) => s,
                None => files.insert(FileStage::new(root)?),
            };
            stage.bind(f, &target, &what)?;
            continue;
        }
        crate::mounts::mount_point(&target, 0o755).map_err(|e| {
            let source = match e {
                crate::mounts::MountError::MountPoint { source, .. } => source,
                crate::mounts::MountError::Mount { source, .. } => source,
            };
            ShareError::MountPoint {
                what: what.clone(),
                target: target.clone(),
                source,
            }
        })?;
        let mount_err = |hint: &'static str| {
            let (what, target) = (what.clone(), target.clone());
            move |source| ShareError::Mount {
                what,
                target,
                source,
                hint,
            }
        };
        match m {
            Planned::Share(s) => {
                let flags = if s.read_only { libc::MS_RDONLY } else { 0 };
                let below = (s.copy_up && !s.read_only)
                    .then(|| open_below(&target, &what))
                    .flatten();
                crate::sys::mount(&s.tag, &target, "virtiofs", flags, "").map_err(|source| {
                    ShareError::Mount {
                        hint: share_hint(&source),
                        what: what.clone(),
                        target: target.clone(),
                        source,
                    }
                })?;
                if let Some(src) = below {
                    copy_up(src, &target, &s.target, &what)?;
                }
                crate::info!(
                    "share {:?} mounted on {}{}",
                    s.tag,
                    s.target,
                    if s.read_only { " (read-only)" } else { "" }
                );
            }
            Planned::Tmpfs(t) => {
                crate::sys::mount("tmpfs", &target, "tmpfs", tmpfs_flags(t), &tmpfs_data(t))
                    .map_err(mount_err(""))?;
                crate::info!("tmpfs mounted on {}", t.target);
            }
            Planned::Block(b) => {
                let fd = mount_block(b, &target, &what)?;
                if !b.read_only {
                    disks.push(fd);
                }
            }
            Planned::File(_) => unreachable!("bound above"),
        }
    }
    if let Some(stage) = files {
        stage.detach();
    }
    Ok(disks)
}

/// The tmpfs the spec's files are written to before each is bound over
/// its target: mounted on a directory in the guest's /dev (a tmpfs of the
/// kernel's, so nothing of the workload's root is touched), detached
/// when every file is bound.
struct FileStage {
    dir: PathBuf,
    next: usize,
}

impl FileStage {
    fn new(root: &Path) -> Result<Self, ShareError> {
        let dir = root.join("dev/.mvm-files");
        let err = |why: String| ShareError::File {
            what: "the files' staging tmpfs".into(),
            why,
        };
        std::fs::create_dir(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        crate::sys::mount(
            "tmpfs",
            &dir,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=700",
        )
        .map_err(|e| err(format!("mounting it on {}: {e}", dir.display())))?;
        Ok(Self { dir, next: 0 })
    }

    /// Write `f`'s content to the stage and bind it over `target`.
    fn bind(&mut self, f: &FileMount, target: &Path, what: &str) -> Result<(), ShareError> {
        let err = |why: String| ShareError::File {
            what: what.to_string(),
            why,
        };
        let content = f.bytes().map_err(|e| err(e.to_string()))?;
        let staged = self.dir.join(self.next.to_string());
        self.next += 1;
        write_file(&staged, &content).map_err(|e| err(format!("writing its content: {e}")))?;
        if let Some(parent) = target.parent() {
            crate::mounts::mount_point(parent, 0o755)
                .map_err(|e| err(format!("creating its directory: {e}")))?;
        }
        // The mount point: an existing file (not a directory), or a new
        // empty one. A symlink there is followed, as runc resolves mount
        // destinations inside the container's root: init runs in that
        // root, so it cannot lead out of the guest (/etc/resolv.conf is a
        // link in many images).
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(target);
        match opened {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => {}
            Ok(_) => return Err(err("the target exists and is not a regular file".into())),
            Err(e) => {
                return Err(err(format!(
                    "creating the mount point {}: {e}",
                    target.display()
                )))
            }
        }
        crate::sys::mount(&staged.to_string_lossy(), target, "", libc::MS_BIND, "")
            .map_err(|e| err(format!("binding it on {}: {e}", target.display())))?;
        if f.read_only {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            crate::sys::mount("", target, "", flags, "")
                .map_err(|e| err(format!("making it read-only: {e}")))?;
        }
        crate::info!(
            "file bound on {} ({} bytes{})",
            f.target,
            content.len(),
            if f.read_only { ", read-only" } else { "" }
        );
        Ok(())
    }

    /// Detach the stage: the files stay, held by their bind mounts.
    fn detach(self) {
        if let Err(e) = crate::sys::umount(&self.dir, libc::MNT_DETACH) {
            crate::warn!("detaching {}: {e}", self.dir.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            crate::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// A new file `path` holding `content`, readable by every user (what a
/// container expects of /etc/resolv.conf and its kin).
fn write_file(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(content)
}

/// What the image has at `target`, opened before a volume is mounted
/// over it, so copy-up can still read it (`None`, with a warning, when it
/// cannot be opened: the volume is then mounted without copy-up).
fn open_below(target: &Path, what: &str) -> Option<File> {
    match File::open(target) {
        Ok(f) => Some(f),
        Err(e) => {
            crate::warn!("{what}: cannot open {} for copy-up: {e}", target.display());
            None
        }
    }
}

/// Docker's copy-up: when the volume just mounted on `target` holds
/// nothing yet (but `lost+found`), copy `src` (the image's directory
/// below it) into it, owners and modes included.
fn copy_up(src: File, target: &Path, shown: &str, what: &str) -> Result<(), ShareError> {
    let copy_err = |source| ShareError::CopyUp {
        what: what.to_string(),
        source: Box::new(source),
    };
    let empty = crate::copyup::is_empty_volume(target).map_err(|source| {
        copy_err(crate::copyup::CopyUpError {
            path: PathBuf::from("."),
            what: "listing the volume",
            source,
        })
    })?;
    if empty {
        let stats = crate::copyup::copy_tree(&src, target).map_err(copy_err)?;
        crate::info!(
            "{what}: copied the image's {shown} ({} entries, {} bytes) into the new volume",
            stats.entries,
            stats.bytes
        );
    }
    Ok(())
}

fn mount_block(b: &BlockMount, target: &Path, what: &str) -> Result<OwnedFd, ShareError> {
    let dev = crate::rootfs::wait_for_disk(&b.drive).map_err(|source| ShareError::Disk {
        what: what.to_string(),
        source: Box::new(source),
    })?;
    let dev = dev.to_string_lossy().into_owned();
    let below = (b.copy_up && !b.read_only)
        .then(|| open_below(target, what))
        .flatten();
    let mount = |flags, data| crate::sys::mount(&dev, target, "ext4", flags, data);
    let mounted = if b.read_only {
        mount(libc::MS_RDONLY, "").or_else(|e| {
            crate::warn!(
                "{what}: read-only mount failed ({e}); mounting without replaying its journal"
            );
            mount(libc::MS_RDONLY, "noload")
        })
    } else {
        mount(0, "")
    };
    mounted.map_err(|source| ShareError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source,
        hint: "; is the disk an ext4 filesystem (a block volume)?",
    })?;
    if let Some(src) = below {
        copy_up(src, target, &b.target, what)?;
    }
    let fd = File::open(target).map_err(|source| ShareError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source,
        hint: "",
    })?;
    crate::info!(
        "{what} mounted on {}{}",
        b.target,
        if b.read_only { " (read-only)" } else { "" }
    );
    Ok(fd.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(tag: &str, target: &str) -> Mount {
        Mount {
            tag: tag.into(),
            target: target.into(),
            read_only: false,
            copy_up: false,
        }
    }

    fn spec(mounts: Vec<Mount>) -> LaunchSpec {
        let mut s = LaunchSpec::new(vec!["true".into()]);
        s.mounts = mounts;
        s
    }

    #[test]
    fn parents_are_mounted_first_across_kinds() {
        let mut s = spec(vec![m("c", "/a/b/c"), m("a", "/a"), m("x", "/x")]);
        s.tmpfs = vec![TmpfsMount {
            target: "//a/b/".into(),
            ..Default::default()
        }];
        s.block_mounts = vec![BlockMount {
            drive: "v".into(),
            target: "/a/b/c/d".into(),
            read_only: false,
            copy_up: false,
        }];
        let targets: Vec<String> = mount_order(&s)
            .iter()
            .map(|m| m.describe() + " " + m.target())
            .collect();
        assert_eq!(
            targets,
            [
                "share \"a\" /a",
                "share \"x\" /x",
                "a tmpfs //a/b/",
                "share \"c\" /a/b/c",
                "the block volume on drive \"v\" /a/b/c/d"
            ]
        );
        assert_eq!(
            under(Path::new("/root"), "/a//b/./c"),
            Path::new("/root/a/b/c")
        );
    }

    #[test]
    fn tmpfs_options_are_exactly_the_specs() {
        let t = TmpfsMount {
            target: "/run".into(),
            size_bytes: Some(65536 * 1024),
            mode: Some(0o1770),
            read_only: false,
            noexec: true,
            nosuid: true,
            nodev: false,
        };
        assert_eq!(tmpfs_data(&t), "size=67108864,mode=1770");
        assert_eq!(tmpfs_flags(&t), libc::MS_NOEXEC | libc::MS_NOSUID);
        let plain = TmpfsMount {
            target: "/t".into(),
            ..Default::default()
        };
        assert_eq!((tmpfs_data(&plain).as_str(), tmpfs_flags(&plain)), ("", 0));
    }

    #[test]
    fn a_failed_mount_names_tag_and_target_and_leaves_the_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        // No virtio-fs device with this tag on the test machine (and no
        // privilege to mount, when not root): the mount fails either way.
        let e = mount_all(dir.path(), &spec(vec![m("no-such-share", "/data/in")])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("\"no-such-share\"") && text.contains("data/in"),
            "{text}"
        );
        assert!(dir.path().join("data/in").is_dir(), "mount point created");

        std::fs::write(dir.path().join("file"), "").unwrap();
        let e = mount_all(dir.path(), &spec(vec![m("t", "/file/sub")])).unwrap_err();
        assert!(matches!(e, ShareError::MountPoint { .. }), "{e}");
        assert!(e.to_string().contains("\"t\""), "{e}");
    }
}
