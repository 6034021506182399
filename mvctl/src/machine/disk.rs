//! The machine's persistent disk: a sparse raw ext4 image that L1 mounts at
//! `/var/lib/mvm`, mvmd's state root, so that images and sandboxes survive
//! a restart of the machine (podman machine keeps its VM disk the same way).
//!
//! Made on the host with `mkfs.ext4` on first start: a 32 GiB sparse file
//! costs about 260 MB of real space at first (journal and metadata; mke2fs
//! marks the inode tables of a fresh sparse file as zeroed, so L1 does not
//! spend emulated time initialising them). L1 mounts it with `discard` and
//! QEMU passes discards on, so deleted files give their space back.
//! Checked with `e2fsck -p` before each boot: normally a no-op on a clean
//! file system, it replays the journal after a machine that was killed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Apparent size of a new disk image.
pub const DISK_SIZE: u64 = 32 << 30;
/// The ext4 label (for people inspecting the image).
const LABEL: &str = "mvm-machine";

/// Errors preparing the disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// I/O on the image.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool could not run.
    #[error("cannot run {tool} ({source}); install e2fsprogs (apt-get install e2fsprogs)")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 on {path} failed: {stderr}")]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// Its stderr.
        stderr: String,
    },
    /// e2fsck found what it cannot fix unattended.
    #[error(
        "the machine disk {path} has file system errors that `e2fsck -p` cannot fix (exit {code}): {output}; \
         repair it with `e2fsck -f {path}`, or delete it to start with an empty machine"
    )]
    Fsck {
        /// The image.
        path: PathBuf,
        /// e2fsck's exit code.
        code: i32,
        /// Its output.
        output: String,
    },
}

/// Space used by the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on the host (the sparse file's real size).
    pub allocated: u64,
    /// Apparent size (what L1 sees).
    pub size: u64,
}

/// Create the image unless it exists; returns whether it was created.
/// Built under a temporary name and renamed, so a failed or interrupted
/// mkfs never leaves a half-made disk that a later start would trust.
pub fn ensure(path: &Path) -> Result<bool, DiskError> {
    if path.exists() {
        return Ok(false);
    }
    let io = |what| {
        move |source| DiskError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = path.with_extension("img.tmp");
    let _ = fs::remove_file(&tmp);
    let f = fs::File::create(&tmp).map_err(io("create"))?;
    f.set_len(DISK_SIZE).map_err(io("size"))?;
    drop(f);
    // -m 1: mvmd runs as root, 5 % reserved for root would only hide space.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", LABEL, "-m", "1", "-E", "root_owner=0:0"])
        .arg(&tmp)
        .output()
        .map_err(|source| DiskError::Tool {
            tool: "mkfs.ext4",
            source,
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(DiskError::Mkfs {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, path).map_err(io("rename into"))?;
    Ok(true)
}

/// `e2fsck -p`: fixes what is safe to fix unattended (a journal to
/// replay after a killed machine), refuses the rest.
pub fn check(path: &Path) -> Result<(), DiskError> {
    let out = Command::new("e2fsck")
        .arg("-p")
        .arg(path)
        .output()
        .map_err(|source| DiskError::Tool {
            tool: "e2fsck",
            source,
        })?;
    match out.status.code() {
        // 0: clean; 1: errors corrected; 2: corrected, reboot (not ours).
        Some(0..=2) => Ok(()),
        code => Err(DiskError::Fsck {
            path: path.to_path_buf(),
            code: code.unwrap_or(-1),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        }),
    }
}

/// Space used by the image, `None` if it does not exist.
pub fn usage(path: &Path) -> Option<Usage> {
    let m = fs::metadata(path).ok()?;
    Some(Usage {
        allocated: m.blocks() * 512,
        size: m.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_sparse_and_clean() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        assert!(ensure(&img).unwrap());
        let u = usage(&img).unwrap();
        assert_eq!(u.size, DISK_SIZE);
        assert!(u.allocated < 1 << 30, "not sparse: {u:?}");
        check(&img).unwrap();
        // Nothing is redone, nothing is left behind.
        let before = fs::metadata(&img).unwrap().modified().unwrap();
        assert!(!ensure(&img).unwrap());
        assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), before);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        // A strict check agrees that it is clean.
        let st = Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }

    #[test]
    fn damaged_disks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let e = check(&img).unwrap_err().to_string();
        assert!(
            e.contains("e2fsck -f") && e.contains(&*img.to_string_lossy()),
            "{e}"
        );
        assert_eq!(usage(&d.path().join("none")), None);
    }
}
