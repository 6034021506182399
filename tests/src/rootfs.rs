//! Root and scratch disks for the tests, made with the real tools
//! (`busybox --list`, `mkfs.ext4 -d`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Debian's static busybox, installed by `make deps`.
pub const BUSYBOX: &str = "/bin/busybox";

/// A read-only busybox root disk shared by every test of this process.
pub fn busybox() -> &'static Path {
    static DISK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DISK.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("mvm-rootfs-")
            .tempdir()
            .unwrap();
        let tree = dir.path().join("tree");
        busybox_tree(&tree).expect("busybox tree");
        let img = dir.path().join("busybox.ext4");
        mkfs_from_dir(&tree, &img, 32).expect("mkfs busybox rootfs");
        (dir, img)
    });
    p
}

/// Lay out a minimal busybox userland in `root`.
pub fn busybox_tree(root: &Path) -> Result<()> {
    let bin = root.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("copy {BUSYBOX}: install Debian's busybox-static (make deps)"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    for d in [
        "etc",
        "tmp",
        "root",
        "home/user",
        "proc",
        "sys",
        "dev",
        "usr/bin",
        "var",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:1500:user\nnogroup:x:65534:\n",
    )?;
    fs::write(root.join("etc/image-marker"), "from the image\n")?;
    Ok(())
}

/// `mkfs.ext4 -d tree` into a new image of `mib` MiB.
pub fn mkfs_from_dir(tree: &Path, img: &Path, mib: u64) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(img)
        .arg(format!("{mib}M"))
        .output()
        .context("run mkfs.ext4 (e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A blank, sparse, writable ext4 scratch disk of `mib` MiB.
pub fn scratch_disk(img: &Path, mib: u64) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(img)
        .arg(format!("{mib}M"))
        .output()
        .context("run mkfs.ext4 (e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
