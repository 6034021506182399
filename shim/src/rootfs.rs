//! The container's root as containerd's snapshotter prepared it, turned
//! into one host directory the microVM gets as its virtio-fs root
//! (`mvm_runtime::Root::Directory`).
//!
//! - no mounts: the bundle's `rootfs` directory is the root (a bundle made
//!   by hand, or by a client that mounted it already);
//! - one `bind` mount (the `native` snapshotter): its source directory is
//!   shared as it is, nothing is mounted on the host;
//! - one `overlay` mount (the `overlayfs` snapshotter): mounted on the
//!   bundle's `rootfs` and shared from there, unmounted at delete.
//!
//! The guest's writes go to the snapshot's writable directory, as a runc
//! container's do, so `ctr snapshot` and commits see them. Mount lists
//! come from containerd, not from the container's author, but they are
//! still checked: anything else is a clear error.

use std::path::{Path, PathBuf};

/// A mount as containerd sends it (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    /// `bind`, `overlay`...
    pub kind: String,
    /// Source path (or `overlay`).
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Why the root could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("the bundle's root {} is not a directory; give the container a snapshot (ctr run --snapshotter native) or create the rootfs directory", path.display())]
    Missing { path: PathBuf },
    #[error("the root mount list has {0} entries; the mvm runtime takes one (a bind or overlay snapshot)")]
    TooMany(usize),
    #[error("root mount type {0:?} is not supported by the mvm runtime (use the native or overlayfs snapshotter)")]
    Unsupported(String),
    #[error("the bind root {0:?} is not an existing absolute directory")]
    BadSource(String),
    #[error("root overlay option {0:?} is not supported")]
    BadOption(String),
    #[error("cannot mount the root overlay on {}: {source}", path.display())]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The prepared root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRoot {
    /// The directory the guest gets as `/`.
    pub dir: PathBuf,
    /// We mounted an overlay on it, to unmount at delete.
    pub mounted: bool,
}

/// Prepare the root of the bundle at `bundle` from containerd's `mounts`.
pub fn prepare(bundle: &Path, mounts: &[RootMount]) -> Result<PreparedRoot, RootfsError> {
    let target = bundle.join("rootfs");
    match mounts {
        [] => {
            if !target.is_dir() {
                return Err(RootfsError::Missing { path: target });
            }
            Ok(PreparedRoot {
                dir: target,
                mounted: false,
            })
        }
        [m] if m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            let src = PathBuf::from(&m.source);
            if !src.is_absolute() || !src.is_dir() {
                return Err(RootfsError::BadSource(m.source.clone()));
            }
            Ok(PreparedRoot {
                dir: src,
                mounted: false,
            })
        }
        [m] if m.kind == "overlay" => {
            let data = overlay_data(&m.options)?;
            std::fs::create_dir_all(&target).map_err(|source| RootfsError::Mount {
                path: target.clone(),
                source,
            })?;
            mount_overlay(&target, &data).map_err(|source| RootfsError::Mount {
                path: target.clone(),
                source,
            })?;
            Ok(PreparedRoot {
                dir: target,
                mounted: true,
            })
        }
        [m] => Err(RootfsError::Unsupported(m.kind.clone())),
        many => Err(RootfsError::TooMany(many.len())),
    }
}

/// The overlay's mount data: only the options overlayfs takes as data.
fn overlay_data(options: &[String]) -> Result<String, RootfsError> {
    const KEYS: &[&str] = &[
        "lowerdir=",
        "upperdir=",
        "workdir=",
        "index=",
        "redirect_dir=",
        "metacopy=",
        "userxattr",
        "volatile",
    ];
    for o in options {
        if !KEYS.iter().any(|k| o.starts_with(k)) || o.contains('\0') {
            return Err(RootfsError::BadOption(o.clone()));
        }
    }
    Ok(options.join(","))
}

fn mount_overlay(target: &Path, data: &str) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let bad = |_| std::io::Error::from_raw_os_error(libc::EINVAL);
    let t = CString::new(target.as_os_str().as_bytes()).map_err(bad)?;
    let d = CString::new(data).map_err(bad)?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            0,
            d.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Undo [`prepare`]: unmount an overlay we mounted (lazily: a virtiofsd
/// that has not quite ended may still hold it).
pub fn release(root: &PreparedRoot) {
    if !root.mounted {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let Ok(t) = std::ffi::CString::new(root.dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe {
        libc::umount2(t.as_ptr(), libc::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, source: &str, options: &[&str]) -> RootMount {
        RootMount {
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_native_snapshot_is_shared_as_it_is() {
        let snap = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let src = snap.path().to_str().unwrap();
        let r = prepare(bundle.path(), &[m("bind", src, &["rbind", "rw"])]).unwrap();
        assert_eq!(r.dir, snap.path());
        assert!(!r.mounted);
    }

    #[test]
    fn bad_root_mounts_are_clear_errors() {
        let bundle = tempfile::tempdir().unwrap();
        let e = prepare(bundle.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("rootfs"), "{e}");
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        assert!(prepare(bundle.path(), &[]).is_ok());
        let e = prepare(bundle.path(), &[m("bind", "relative", &[])]).unwrap_err();
        assert!(matches!(e, RootfsError::BadSource(_)));
        let e = prepare(bundle.path(), &[m("nfs", "x", &[])]).unwrap_err();
        assert!(matches!(e, RootfsError::Unsupported(_)));
        let two = [m("bind", "/", &[]), m("bind", "/", &[])];
        assert!(matches!(
            prepare(bundle.path(), &two),
            Err(RootfsError::TooMany(2))
        ));
        let e = prepare(
            bundle.path(),
            &[m("overlay", "overlay", &["lowerdir=/a", "suid"])],
        )
        .unwrap_err();
        assert!(matches!(e, RootfsError::BadOption(o) if o == "suid"));
    }
}
