//! A destination directory with sentinels around it, for the unpacker
//! targets: after extraction, everything outside the destination must be
//! exactly as it was.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `root/dest` (extract here), `root/outside/file` and `root/file`
/// (must not change), `dest/link-out` (a symlink to `../outside`, as a
/// hostile earlier layer could leave).
pub struct Fence {
    root: tempfile::TempDir,
}

const SENTINEL: &[u8] = b"must not change\n";

impl Fence {
    /// Builds the layout in a fresh temporary directory (on tmpfs).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("mvm-fuzz-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let r = root.path();
        fs::create_dir(r.join("dest")).unwrap();
        fs::create_dir(r.join("outside")).unwrap();
        fs::write(r.join("outside/file"), SENTINEL).unwrap();
        fs::write(r.join("file"), SENTINEL).unwrap();
        for f in ["file", "outside/file"] {
            fs::set_permissions(r.join(f), fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::os::unix::fs::symlink("../outside", r.join("dest/link-out")).unwrap();
        std::os::unix::fs::symlink("/", r.join("dest/link-root")).unwrap();
        Fence { root }
    }

    /// Where to extract.
    pub fn dest(&self) -> PathBuf {
        self.root.path().join("dest")
    }

    /// Panics if anything outside `dest` changed.
    pub fn check(&self) {
        let r = self.root.path();
        let mut names: Vec<_> = fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dest", "file", "outside"],
            "entries appeared next to the destination"
        );
        assert_eq!(fs::read(r.join("file")).unwrap(), SENTINEL);
        let outside: Vec<_> = fs::read_dir(r.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside,
            ["file"],
            "entries appeared in a directory outside the destination"
        );
        assert_eq!(fs::read(r.join("outside/file")).unwrap(), SENTINEL);
        for p in [r.join("file"), r.join("outside/file")] {
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(
                m.is_file() && m.nlink() == 1,
                "{} was replaced or linked",
                p.display()
            );
            assert_eq!(m.permissions().mode() & 0o7777, 0o600, "{}", p.display());
        }
    }

    /// Panics if the destination holds a setuid/setgid file or a device
    /// node (the strict options drop both).
    pub fn check_no_setid_or_devices(&self) {
        walk(&self.dest(), &mut |p, m| {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            assert!(
                !(t.is_block_device() || t.is_char_device()),
                "device node {}",
                p.display()
            );
            if !t.is_symlink() {
                assert_eq!(
                    m.mode() & 0o6000,
                    0,
                    "setuid/setgid kept on {}",
                    p.display()
                );
            }
        });
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f);
        }
    }
}
