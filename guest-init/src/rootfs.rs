//! Assembling the workload's root filesystem and switching to it.
//!
//! Layout while in the initramfs:
//!
//! | path | what |
//! | --- | --- |
//! | `/mnt/image` | the image disk, ext4, read-only (shared by every sandbox of the image) |
//! | `/mnt/scratch` | the scratch disk, ext4, read-write; a tmpfs when there is none |
//! | `/mnt/scratch/upper`, `/mnt/scratch/work` | overlayfs upper and work directories |
//! | `/mnt/root` | overlayfs of the two, moved onto `/` by [`switch_root`] |
//!
//! Disks are found by their virtio-blk serial (`/sys/block/vdX/serial`),
//! never by probe order.
//!
//! A spec with `rootfs.share` (the containerd shim's) has no disks: the
//! virtio-fs share with that tag is mounted read-write at `/mnt/root`
//! and becomes `/` as it is, so the workload's writes land in the host
//! directory (the snapshotter's), as a runc container's do.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_protocol::launch::Rootfs;

use crate::mounts::{self, MountError};

/// Where the image disk is mounted.
pub const IMAGE_DIR: &str = "/mnt/image";
/// Where the scratch disk (or its tmpfs stand-in) is mounted.
pub const SCRATCH_DIR: &str = "/mnt/scratch";
/// Where the overlay is assembled before it becomes `/`.
pub const ROOT_DIR: &str = "/mnt/root";
/// How long to wait for a disk to show up. Built-in virtio-blk probes
/// before init starts, so this only matters on a slow or odd boot.
const DISK_WAIT: Duration = Duration::from_secs(2);

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Why the root filesystem could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no disk with serial {serial:?} (disks seen: {seen}); check the drive ids in the launch spec and the VMM's block devices")]
    NoDisk { serial: String, seen: String },
    #[error("more than one disk has serial {serial:?} ({devices}); drive ids must be unique")]
    Ambiguous { serial: String, devices: String },
    #[error("cannot list block devices in {path}: {source}")]
    Sysfs { path: PathBuf, source: io::Error },
    #[error("the {what} disk {device} (serial {serial:?}) could not be mounted: {source}; is it an ext4 filesystem?")]
    Disk {
        what: &'static str,
        device: String,
        serial: String,
        source: MountError,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot mount the root share {tag:?} (virtiofs): {source}; is there a virtio-fs device with this tag (the VMM's fs[] entries)?")]
    ShareRoot { tag: String, source: io::Error },
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot switch to the new root ({step}): {source}")]
    Switch {
        step: &'static str,
        source: io::Error,
    },
}

/// A virtio disk seen in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Its virtio-blk serial (empty if the device has none).
    pub serial: String,
}

/// The virtio disks under `sys_block` (normally `/sys/block`), by name.
pub fn list_disks(sys_block: &Path) -> Result<Vec<Disk>, RootfsError> {
    let err = |source| RootfsError::Sysfs {
        path: sys_block.into(),
        source,
    };
    let mut disks = Vec::new();
    for entry in std::fs::read_dir(sys_block).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        // A device that cannot report a serial has none; not an error.
        let raw = std::fs::read(entry.path().join("serial")).unwrap_or_default();
        let serial = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\n', '\0', ' '])
            .to_string();
        disks.push(Disk { name, serial });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The disk whose serial is exactly `serial`.
pub fn find_disk(disks: &[Disk], serial: &str) -> Result<Option<Disk>, RootfsError> {
    let matches: Vec<&Disk> = disks.iter().filter(|d| d.serial == serial).collect();
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(RootfsError::Ambiguous {
            serial: serial.into(),
            devices: many
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn describe_disks(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| format!("{} {:?}", d.name, d.serial))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wait (briefly) for the disk with `serial` and its /dev node; returns the
/// device path.
pub fn wait_for_disk(serial: &str) -> Result<PathBuf, RootfsError> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let disks = list_disks(Path::new("/sys/block"))?;
        if let Some(disk) = find_disk(&disks, serial)? {
            let dev = Path::new("/dev").join(&disk.name);
            if dev.exists() {
                return Ok(dev);
            }
        }
        if Instant::now() >= deadline {
            return Err(RootfsError::NoDisk {
                serial: serial.into(),
                seen: describe_disks(&disks),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What must outlive the switch: a handle on the scratch filesystem, so
/// shutdown can freeze it (flush its journal) although it is no longer
/// reachable by path from inside the new root.
#[derive(Debug, Default)]
pub struct Assembled {
    /// The scratch disk's root directory; `None` with a tmpfs upper.
    pub scratch: Option<OwnedFd>,
    /// The overlay's upper directory, opened before the switch into the
    /// overlay (after it no path leads there): the workload's changes,
    /// which the agent sends for `rootfs.export_changes`.
    pub upper: Option<OwnedFd>,
}

fn mkdir(path: &Path, mode: u32) -> Result<(), RootfsError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(RootfsError::Prepare {
            path: path.into(),
            source,
        }),
    }
}

/// Mount the disks named in `spec` and the overlay at [`ROOT_DIR`].
pub fn assemble(spec: &Rootfs) -> Result<Assembled, RootfsError> {
    if let Some(tag) = &spec.share {
        return mount_share_root(tag);
    }
    for dir in [IMAGE_DIR, SCRATCH_DIR, ROOT_DIR] {
        mounts::mount_point(Path::new(dir), 0o755)?;
    }

    let image = wait_for_disk(&spec.image_drive)?;
    // `noload`: the image is shared and read-only; never replay its journal.
    mounts::mount(
        &image.to_string_lossy(),
        Path::new(IMAGE_DIR),
        "ext4",
        libc::MS_RDONLY,
        "noload",
    )
    .map_err(|source| RootfsError::Disk {
        what: "image",
        device: image.display().to_string(),
        serial: spec.image_drive.clone(),
        source,
    })?;

    let mut assembled = Assembled::default();
    let scratch = Path::new(SCRATCH_DIR);
    match &spec.scratch_drive {
        Some(serial) => {
            let dev = wait_for_disk(serial)?;
            mounts::mount(&dev.to_string_lossy(), scratch, "ext4", 0, "").map_err(|source| {
                RootfsError::Disk {
                    what: "scratch",
                    device: dev.display().to_string(),
                    serial: serial.clone(),
                    source,
                }
            })?;
            let fd = File::open(scratch).map_err(|source| RootfsError::Prepare {
                path: scratch.into(),
                source,
            })?;
            assembled.scratch = Some(fd.into());
        }
        None => {
            crate::info!("no scratch disk: writes go to guest memory and are lost at power-off");
            mounts::mount(
                "scratch",
                scratch,
                "tmpfs",
                libc::MS_NODEV | libc::MS_NOSUID,
                "mode=0755",
            )?;
        }
    }

    let upper = scratch.join("upper");
    let work = scratch.join("work");
    let fresh = !upper.exists();
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o700)?;
    if fresh {
        // The overlay's `/` takes the upper directory's owner and mode; make
        // them the image's so a fresh scratch disk changes nothing visible.
        copy_owner_and_mode(Path::new(IMAGE_DIR), &upper)?;
    }
    if spec.export_changes {
        let fd = File::open(&upper).map_err(|source| RootfsError::Prepare {
            path: upper.clone(),
            source,
        })?;
        assembled.upper = Some(fd.into());
    }
    let data = format!(
        "lowerdir={IMAGE_DIR},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mounts::mount("overlay", Path::new(ROOT_DIR), "overlay", 0, &data)?;
    Ok(assembled)
}

/// Mount the virtio-fs share `tag` at [`ROOT_DIR`]: the whole root.
fn mount_share_root(tag: &str) -> Result<Assembled, RootfsError> {
    mounts::mount_point(Path::new(ROOT_DIR), 0o755)?;
    crate::sys::mount(tag, Path::new(ROOT_DIR), "virtiofs", 0, "").map_err(|source| {
        RootfsError::ShareRoot {
            tag: tag.into(),
            source,
        }
    })?;
    Ok(Assembled::default())
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), RootfsError> {
    let prep = |source| RootfsError::Prepare {
        path: to.into(),
        source,
    };
    let meta = std::fs::metadata(from).map_err(|source| RootfsError::Prepare {
        path: from.into(),
        source,
    })?;
    crate::sys::lchown(to, meta.uid(), meta.gid()).map_err(prep)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(prep)
}

/// Docker's `--read-only`: make the mount at `root` (the workload's `/`)
/// read-only. Only this mount's flag changes (`MS_BIND | MS_REMOUNT`):
/// the mounts on top of it (volumes, tmpfs, /proc, /dev...) keep theirs.
pub fn make_read_only(root: &Path) -> Result<(), MountError> {
    mounts::mount(
        "none",
        root,
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
        "",
    )
}

/// Make `new_root` the root: unmount the early API filesystems, empty the
/// initramfs (its memory is otherwise lost for good), move `new_root` onto
/// `/`, `chroot` into it. This is busybox's `switch_root`: `pivot_root(2)`
/// refuses to move away from the initramfs, which is not a mount.
pub fn switch_root(new_root: &Path) -> Result<(), RootfsError> {
    let step = |step| move |source| RootfsError::Switch { step, source };
    mounts::unmount_early(Path::new("/"));
    std::env::set_current_dir(new_root).map_err(step("chdir to the new root"))?;
    free_initramfs();
    crate::sys::mount(".", Path::new("/"), "", libc::MS_MOVE, "")
        .map_err(step("move the new root onto /"))?;
    crate::sys::chroot(Path::new(".")).map_err(step("chroot"))?;
    std::env::set_current_dir("/").map_err(step("chdir to /"))?;
    Ok(())
}

/// Delete the initramfs contents, staying on its filesystem (mount points
/// under it, the disks and the new root, are other filesystems and are
/// skipped). Guarded: only as PID 1 and only if `/` is a ramfs or tmpfs,
/// so a mistaken run can never wipe a real disk.
fn free_initramfs() {
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } != 1 {
        return;
    }
    // SAFETY: `statfs` is plain data, filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a valid out pointer.
    if unsafe { libc::statfs(c"/".as_ptr(), &mut st) } != 0 {
        return;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by libc.
    let magic = st.f_type as i64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        crate::warn!("/ is not an initramfs (magic {magic:#x}); not emptying it");
        return;
    }
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_tree_on_dev(Path::new("/"), root.dev());
}

/// Remove everything below `dir` that lives on device `dev`, without
/// following symlinks or crossing into other filesystems. Best effort.
pub fn remove_tree_on_dev(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_dev(&path, dev);
            // Fails for directories holding mount points; they stay.
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(disks: &[(&str, Option<&[u8]>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in disks {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if let Some(s) = serial {
                std::fs::write(d.join("serial"), s).unwrap();
            }
        }
        dir
    }

    #[test]
    fn finds_disks_by_serial_not_order() {
        let sys = fake_sysfs(&[
            ("vdb", Some(b"rootfs")),
            ("vda", Some(b"scratch\n")),
            ("vdc", None),
            ("loop0", Some(b"rootfs")),
            ("vdd", Some(b"padded\0\0\0")),
        ]);
        let disks = list_disks(sys.path()).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["vda", "vdb", "vdc", "vdd"],
            "only virtio disks, sorted"
        );
        assert_eq!(find_disk(&disks, "rootfs").unwrap().unwrap().name, "vdb");
        assert_eq!(find_disk(&disks, "scratch").unwrap().unwrap().name, "vda");
        assert_eq!(find_disk(&disks, "padded").unwrap().unwrap().name, "vdd");
        assert_eq!(
            find_disk(&disks, "root").unwrap(),
            None,
            "no prefix matches"
        );
        assert_eq!(find_disk(&disks, "rootfsx").unwrap(), None);
        assert_eq!(
            describe_disks(&disks),
            r#"vda "scratch", vdb "rootfs", vdc "", vdd "padded""#
        );
    }

    #[test]
    fn duplicate_serials_are_refused() {
        let sys = fake_sysfs(&[("vda", Some(b"x")), ("vdb", Some(b"x"))]);
        let disks = list_disks(sys.path()).unwrap();
        let err = find_disk(&disks, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "more than one disk has serial \"x\" (vda, vdb); drive ids must be unique"
        );
    }

    #[test]
    fn missing_sysfs_is_an_error_naming_it() {
        let err = list_disks(Path::new("/nonexistent/sys/block")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sys/block"), "{err}");
    }

    #[test]
    fn tree_removal_stays_on_its_filesystem_and_skips_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(root.join("top"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let dev = std::fs::metadata(root).unwrap().dev();
        remove_tree_on_dev(root, dev);
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists(), "followed a symlink");
        // A different device id: nothing is touched.
        std::fs::write(root.join("top"), "x").unwrap();
        remove_tree_on_dev(root, dev.wrapping_add(1));
        assert!(root.join("top").exists());
    }
}
