//! Where the guest kernel, the guest init and the VMM binary come from,
//! and the shared init initramfs built once per init binary.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variables naming the artifacts.
pub const KERNEL_ENV: &str = "MVM_KERNEL";
/// See [`KERNEL_ENV`].
pub const INIT_ENV: &str = "MVM_INIT";
/// See [`KERNEL_ENV`].
pub const VMM_ENV: &str = "MVM_VMM";

/// Why an artifact is missing.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no guest {what} found (looked at {looked}); run `make kernel build` or `make install`, or pass --{flag} / set {env}")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        looked: String,
    },
    #[error("cannot build the init archive {path}: {source}")]
    InitArchive { path: PathBuf, source: io::Error },
}

/// The three files every sandbox needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// Guest kernel (ELF vmlinux with a PVH note).
    pub kernel: PathBuf,
    /// Static guest init.
    pub init: PathBuf,
    /// `mvm-vmm`.
    pub vmm: PathBuf,
}

/// Explicit choices (flags); `None` falls back to the environment and the
/// default locations.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOverrides {
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--init`.
    pub init: Option<PathBuf>,
    /// `--vmm`.
    pub vmm: Option<PathBuf>,
}

impl Artifacts {
    /// Find the artifacts: flag, then environment, then `$PREFIX/lib/mvm`
    /// (the prefix is the parent of the directory holding this binary),
    /// then the build tree and the kernel cache.
    pub fn locate(o: &ArtifactOverrides) -> Result<Self, ArtifactError> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let prefix = exe_dir
            .as_ref()
            .and_then(|d| d.parent().map(Path::to_path_buf));
        let cache = std::env::var_os("MVM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/mvm"));

        let mut kernel_candidates = Vec::new();
        if let Some(p) = &prefix {
            kernel_candidates.push(p.join("lib/mvm/vmlinux"));
        }
        kernel_candidates.push(PathBuf::from("/usr/local/lib/mvm/vmlinux"));
        // The kernel cache (resources/kernel/build.sh): newest first.
        if let Ok(rd) = fs::read_dir(cache.join("kernel")) {
            let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("vmlinux"))
                .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
                .collect();
            found.sort_by_key(|b| std::cmp::Reverse(b.0));
            kernel_candidates.extend(found.into_iter().map(|(_, p)| p));
        }
        let kernel = pick("kernel", "kernel", KERNEL_ENV, &o.kernel, kernel_candidates)?;

        let mut init_candidates = Vec::new();
        if let Some(p) = &prefix {
            init_candidates.push(p.join("lib/mvm/mvm-init"));
            // In a build tree: target/<profile>/mvmd -> target/x86_64-.../release/mvm-init.
            init_candidates.push(p.join("x86_64-unknown-linux-gnu/release/mvm-init"));
        }
        init_candidates.push(PathBuf::from("/usr/local/lib/mvm/mvm-init"));
        let init = pick("init", "init", INIT_ENV, &o.init, init_candidates)?;

        let mut vmm_candidates = Vec::new();
        if let Some(d) = &exe_dir {
            vmm_candidates.push(d.join("mvm-vmm"));
            // Test binaries live in target/<profile>/deps.
            if let Some(p) = d.parent() {
                vmm_candidates.push(p.join("mvm-vmm"));
            }
        }
        vmm_candidates.push(PathBuf::from("/usr/local/bin/mvm-vmm"));
        let vmm = pick("VMM (mvm-vmm)", "vmm", VMM_ENV, &o.vmm, vmm_candidates)?;
        Ok(Self { kernel, init, vmm })
    }

    /// The shared initramfs (`/init` + `/dev/console`) for this init
    /// binary, built once and cached under `dir` by the binary's sha256, so
    /// a new init build gets a new archive and running sandboxes keep
    /// theirs.
    pub fn init_archive(&self, dir: &Path) -> Result<PathBuf, ArtifactError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArtifactError::InitArchive { path, source }
        };
        let bin = fs::read(&self.init).map_err(err(&self.init))?;
        let hash = hex::encode(Sha256::digest(&bin));
        let path = dir.join(format!("{}.cpio", &hash[..32]));
        if path.exists() {
            return Ok(path);
        }
        fs::create_dir_all(dir).map_err(err(dir))?;
        let archive = mvm_protocol::initramfs::init_archive(&bin).map_err(err(&path))?;
        // Unique per call: parallel first starts in one mvmd build it at
        // the same time (the same name made one's rename remove the
        // other's file).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{}.{seq}.tmp", &hash[..16], std::process::id()));
        let r = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&archive)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(err(&path)(e));
        }
        Ok(path)
    }
}

fn pick(
    what: &'static str,
    flag: &'static str,
    env: &'static str,
    explicit: &Option<PathBuf>,
    defaults: Vec<PathBuf>,
) -> Result<PathBuf, ArtifactError> {
    let from_env = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    // An explicit choice is never silently replaced by a default.
    if let Some(p) = explicit.clone().or(from_env) {
        if p.is_file() {
            return Ok(p);
        }
        return Err(ArtifactError::Missing {
            what,
            flag,
            env,
            looked: p.display().to_string(),
        });
    }
    if let Some(p) = defaults.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(ArtifactError::Missing {
        what,
        flag,
        env,
        looked: defaults
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_win_and_missing_ones_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("vmlinux");
        fs::write(&f, b"x").unwrap();
        let o = ArtifactOverrides {
            kernel: Some(f.clone()),
            init: Some(f.clone()),
            vmm: Some(d.path().join("nope")),
        };
        let e = Artifacts::locate(&o).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("--vmm"), "{e}");
        let o = ArtifactOverrides {
            vmm: Some(f.clone()),
            ..o
        };
        let a = Artifacts::locate(&o).unwrap();
        assert_eq!(a.kernel, f);
    }

    #[test]
    fn init_archive_is_cached_by_content() {
        let d = tempfile::tempdir().unwrap();
        let init = d.path().join("init");
        fs::write(&init, b"\x7fELF one").unwrap();
        let a = Artifacts {
            kernel: init.clone(),
            init: init.clone(),
            vmm: init.clone(),
        };
        let cache = d.path().join("cache");
        let p1 = a.init_archive(&cache).unwrap();
        assert_eq!(a.init_archive(&cache).unwrap(), p1);
        assert!(fs::read(&p1).unwrap().starts_with(b"070701"));
        fs::write(&init, b"\x7fELF two").unwrap();
        assert_ne!(a.init_archive(&cache).unwrap(), p1);
    }
}
