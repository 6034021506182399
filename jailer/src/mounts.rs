//! The jail's filesystem: mount points made on disk under the jail
//! directory, then (in the child's own mount namespace) the binds and the
//! `pivot_root` into it.
//!
//! The jail directory is the sandbox's `jail/`, owned by root and emptied
//! at every start; the host sees only its empty mount points, because every
//! mount is made in the child's private mount namespace and goes away with
//! it. The root itself is read-only in the jail: the VMM writes only in
//! the directories and files the plan binds writable.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::plan::{Bind, BindKind};

/// Why the jail's filesystem could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("jail: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("jail: cannot {op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.into(),
        source,
    }
}

fn sys_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError::Sys {
        op,
        path: path.into(),
        source,
    }
}

/// Empty `root` and make a mount point in it for every bind: directories
/// for directories, empty files for files (mode 0755 / 0444, root's).
pub fn prepare_root(root: &Path, binds: &[Bind]) -> Result<(), MountError> {
    match fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(root).map_err(io_err("empty", root))?,
        Ok(_) => fs::remove_file(root).map_err(io_err("remove", root))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", root)(e)),
    }
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    dirs.create(root).map_err(io_err("create", root))?;
    for b in binds {
        let t = b.target(root);
        match b.kind {
            BindKind::RwDir => dirs.create(&t).map_err(io_err("create", &t))?,
            // Made in a tmpfs over the jail's /dev (enter_jail).
            BindKind::Device => {
                if let Some(p) = t.parent() {
                    dirs.create(p).map_err(io_err("create", p))?;
                }
            }
            _ => {
                if let Some(p) = t.parent() {
                    dirs.create(p).map_err(io_err("create", p))?;
                }
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o444)
                    .open(&t)
                    .map_err(io_err("create", &t))?;
            }
        }
    }
    Ok(())
}

/// Give the VMM's uid what it writes: each writable directory and the
/// entries in it (its previous console and log, the share backends'
/// sockets), each writable file (symbolic links are changed, never
/// followed); and read access to what it reads.
pub fn chown_writable(
    binds: &[Bind],
    sandbox: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), MountError> {
    let own =
        |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_err("chown", p));
    for b in binds {
        match b.kind {
            BindKind::RwDir => {
                own(&b.path)?;
                let rd = fs::read_dir(&b.path).map_err(io_err("list", &b.path))?;
                for e in rd.flatten() {
                    own(&e.path())?;
                }
            }
            BindKind::RwFile => own(&b.path)?,
            // The sandbox's own files (launch spec, vm.json) become the
            // VMM's (bound read-only, so it still cannot change them);
            // shared ones (kernel, init archive, image disks) readable.
            BindKind::RoFile if b.path.starts_with(sandbox) => own(&b.path)?,
            BindKind::RoFile => readable(&b.path)?,
            BindKind::Device => {}
        }
    }
    Ok(())
}

/// Make a shared file the VMM only reads readable by anyone, if it is
/// not: mvmd writes its files with umask 077 (the init archive, disks),
/// but they lie in root-only directories (the state root is 0700), so on
/// the host this opens them to nobody new; in a jail only the files bound
/// there are reachable.
fn readable(path: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    let m = fs::metadata(path).map_err(io_err("inspect", path))?;
    let mode = m.permissions().mode();
    if mode & 0o004 != 0 || path.starts_with("/proc") {
        return Ok(());
    }
    let new = mode | 0o444;
    fs::set_permissions(path, fs::Permissions::from_mode(new)).map_err(io_err("chmod", path))
}

/// In a new mount namespace: bind the plan under `root`, make its device
/// nodes, `pivot_root` into it, drop the old root, make the jail's root
/// read-only.
///
/// Devices are not bound: the host's `/dev/kvm` is often `0600 root` (no
/// udev rule giving it to a `kvm` group), so, as Firecracker's jailer does,
/// the jail gets its own node (same device number) owned by the VMM's uid,
/// in a small tmpfs over the jail's `/dev` that only this mount namespace
/// sees.
pub fn enter_jail(root: &Path, binds: &[Bind], uid: u32, gid: u32) -> Result<(), MountError> {
    let none: Option<&str> = None;
    // Nothing done here may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys_err("make private", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    mount(Some(root), root, none, MsFlags::MS_BIND, none).map_err(sys_err("bind", root))?;
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    let mut dev_dirs: Vec<PathBuf> = Vec::new();
    for b in binds {
        let t = b.target(root);
        if b.kind == BindKind::Device {
            let dir = t.parent().unwrap_or(root).to_path_buf();
            if !dev_dirs.contains(&dir) {
                mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("size=64k,mode=755"),
                )
                .map_err(sys_err("mount a tmpfs on", &dir))?;
                dev_dirs.push(dir);
            }
            make_node(&b.path, &t, uid, gid)?;
            continue;
        }
        mount(Some(&b.path), &t, none, MsFlags::MS_BIND, none).map_err(sys_err("bind", &b.path))?;
        let flags = match b.kind {
            BindKind::RwDir | BindKind::RwFile => base | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            // The VMM binary and its libraries are executed from here.
            BindKind::RoFile => base | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
            BindKind::Device => unreachable!("devices are nodes, not binds"),
        };
        mount(none, &t, none, flags, none).map_err(sys_err("restrict", &b.path))?;
    }
    nix::unistd::chdir(root).map_err(sys_err("enter", root))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one
    // and is unmounted at once (pivot_root(2), "NOTES").
    nix::unistd::pivot_root(".", ".").map_err(sys_err("pivot_root into", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys_err("detach the old root from", root))?;
    nix::unistd::chdir("/").map_err(sys_err("enter", Path::new("/")))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(sys_err("make read-only", root))?;
    Ok(())
}

/// A node at `target` for the host's device `host`, owned by `uid`/`gid`
/// and usable by them alone.
fn make_node(host: &Path, target: &Path, uid: u32, gid: u32) -> Result<(), MountError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(host).map_err(io_err("inspect", host))?;
    if !m.file_type().is_char_device() {
        return Err(MountError::Io {
            op: "use",
            path: host.into(),
            source: io::Error::other("not a character device"),
        });
    }
    nix::sys::stat::mknod(
        target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        m.rdev(),
    )
    .map_err(sys_err("mknod", target))?;
    std::os::unix::fs::chown(target, Some(uid), Some(gid)).map_err(io_err("chown", target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_holds_mount_points_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("jail");
        fs::create_dir_all(root.join("stale")).unwrap();
        let binds = vec![
            Bind {
                kind: BindKind::RwDir,
                path: "/run/mvm/vsock/a".into(),
            },
            Bind {
                kind: BindKind::RoFile,
                path: "/usr/local/bin/mvm-vmm".into(),
            },
        ];
        prepare_root(&root, &binds).unwrap();
        assert!(!root.join("stale").exists(), "emptied at every start");
        assert!(root.join("run/mvm/vsock/a").is_dir());
        let f = fs::metadata(root.join("usr/local/bin/mvm-vmm")).unwrap();
        assert!(f.is_file() && f.len() == 0);
        // A symlink planted where the jail goes is replaced, not followed.
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        fs::remove_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, &root).unwrap();
        prepare_root(&root, &binds).unwrap();
        assert!(outside.join("keep").exists());
        assert!(fs::symlink_metadata(&root).unwrap().is_dir());
    }
}
