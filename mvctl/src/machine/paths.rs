//! Where the machine keeps its files, and where the programs it starts are.
//!
//! Two places, as for mvmd itself: the state dir (`MVM_MACHINE_DIR`,
//! default `/var/lib/mvm-machine`) keeps what survives a restart of the
//! machine (the disk image) and the logs of the current and the previous
//! boot; the run dir (`MVM_RUN_DIR`, default `/run/mvm`) keeps what only
//! means something while QEMU runs (`machine.json`, the lock, the control
//! FIFOs).

use std::path::{Path, PathBuf};

/// Environment variable overriding the state dir.
pub const DIR_ENV: &str = "MVM_MACHINE_DIR";
/// Default state dir.
pub const DEFAULT_DIR: &str = "/var/lib/mvm-machine";
/// Environment variable overriding the run dir (shared with mvmd).
pub const RUN_DIR_ENV: &str = "MVM_RUN_DIR";
/// Default run dir.
pub const DEFAULT_RUN_DIR: &str = "/run/mvm";
/// Environment variable naming the directory with the testhost scripts
/// (`build-initramfs.sh`, `init`, `machine-l1`).
pub const TESTHOST_ENV: &str = "MVM_TESTHOST_DIR";
/// Environment variable naming the mvmd binary to run in the machine.
pub const MVMD_ENV: &str = "MVM_MACHINE_MVMD";

/// Errors finding the machine's programs.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// No testhost scripts.
    #[error(
        "cannot find the emulated KVM host's scripts (build-initramfs.sh, init, machine-l1); looked in {looked}; \
         set {TESTHOST_ENV} to the resources/testhost directory of mvm, or run `make install`"
    )]
    NoTesthost {
        /// Where we looked.
        looked: String,
    },
    /// No mvmd binary.
    #[error(
        "no mvmd binary found next to mvctl or on PATH; build it (make build), install it (make install), \
         or set {MVMD_ENV}"
    )]
    NoMvmd,
    /// A path that cannot be passed to L1 (its init reads line-based files).
    #[error("{what} {path:?} contains a newline; the machine cannot use it")]
    Newline {
        /// What the path is.
        what: String,
        /// The path.
        path: PathBuf,
    },
}

/// The machine's files on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// State dir.
    pub dir: PathBuf,
    /// Run dir.
    pub run_dir: PathBuf,
}

impl Paths {
    /// Paths with explicit dirs.
    pub fn new(dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            run_dir: run_dir.into(),
        }
    }

    /// From `MVM_MACHINE_DIR` / `MVM_RUN_DIR`, or the defaults.
    pub fn from_env() -> Self {
        let get = |k: &str, d: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(d))
        };
        Self::new(get(DIR_ENV, DEFAULT_DIR), get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
    }

    /// The persistent disk image (sparse raw ext4), mvmd's `/var/lib/mvm`.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// The current boot's dir: L1's out dir (logs, token, job).
    pub fn boot(&self) -> PathBuf {
        self.dir.join("boot")
    }

    /// The previous boot's dir, kept for debugging.
    pub fn previous_boot(&self) -> PathBuf {
        self.dir.join("boot.1")
    }

    /// Hashes of the host's programs, by file identity
    /// ([`super::artifacts::hash_all`]).
    pub fn artifact_memo(&self) -> PathBuf {
        self.dir.join("artifact-hashes.json")
    }

    /// The last restart of a failed machine and the sandboxes it cost
    /// ([`super::watch`]).
    pub fn last_restart(&self) -> PathBuf {
        self.dir.join("last-restart.json")
    }

    /// The watcher's own log (it outlives the boots it watches).
    pub fn watch_log(&self) -> PathBuf {
        self.dir.join("watch.log")
    }

    /// QEMU's HMP monitor socket: a look at L1's vCPUs when it stalls.
    pub fn monitor(&self) -> PathBuf {
        self.run_dir.join("machine-monitor.sock")
    }

    /// `machine.json`: the running machine's state (0600).
    pub fn state(&self) -> PathBuf {
        self.run_dir.join("machine.json")
    }

    /// Serialises start and stop between mvctl processes.
    pub fn lock(&self) -> PathBuf {
        self.run_dir.join("machine.lock")
    }

    /// Base path of the control channel: QEMU's `pipe` chardev opens
    /// `<base>.in` (host to L1) and `<base>.out` (L1 to host).
    pub fn control(&self) -> PathBuf {
        self.run_dir.join("machine-control")
    }

    /// The FIFO the host writes control lines to.
    pub fn control_in(&self) -> PathBuf {
        self.run_dir.join("machine-control.in")
    }

    /// The FIFO L1 could answer on (unused, but QEMU opens it).
    pub fn control_out(&self) -> PathBuf {
        self.run_dir.join("machine-control.out")
    }
}

/// Files of one boot, all in the boot dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// The boot dir.
    pub dir: PathBuf,
}

impl BootFiles {
    /// The files of boot dir `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// API token (0600), read by mvmd in L1 and by mvctl.
    pub fn token(&self) -> PathBuf {
        self.dir.join("token")
    }
    /// L1's serial console: its kernel log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// QEMU's own stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// Messages of the machine job in L1 (`machine-l1`).
    pub fn machine_log(&self) -> PathBuf {
        self.dir.join("machine.log")
    }
    /// mvmd's output.
    pub fn mvmd_log(&self) -> PathBuf {
        self.dir.join("mvmd.log")
    }
    /// Why the machine job gave up, if it did.
    pub fn machine_error(&self) -> PathBuf {
        self.dir.join("machine-error")
    }
    /// Why the testhost init could not start the job.
    pub fn init_error(&self) -> PathBuf {
        self.dir.join("init-error")
    }
    /// `clean` once the disk was released at stop, else why not.
    pub fn stopped(&self) -> PathBuf {
        self.dir.join("stopped")
    }
    /// Written by the testhost init when the job starts (L1 uptime).
    pub fn job_started(&self) -> PathBuf {
        self.dir.join("job-started")
    }
    /// L1 uptimes at each step.
    pub fn timings(&self) -> PathBuf {
        self.dir.join("timings")
    }
    /// The programs to install on the machine's disk (name, hash, size,
    /// host path), written by mvctl, read by `machine-l1`.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }
    /// The heartbeat: rewritten by the testhost init every 10 s while the
    /// machine runs (L1 uptime).
    pub fn alive(&self) -> PathBuf {
        self.dir.join("alive")
    }
    /// L1's wall clock when mvmd was about to start (RFC 3339), written by
    /// `machine-l1`: what mvmd's times in this boot compare with.
    pub fn l1_started_at(&self) -> PathBuf {
        self.dir.join("l1-started-at")
    }
    /// Why mvctl stopped this boot's L1 as failed, if it did.
    pub fn stalled(&self) -> PathBuf {
        self.dir.join("stalled")
    }
    /// QEMU's view of L1's vCPUs when it was found stalled.
    pub fn l1_state(&self) -> PathBuf {
        self.dir.join("l1-state.txt")
    }
    /// QEMU's view of L1's vCPUs before a wake-up kick ([`super::wake`]).
    pub fn l1_state_wake(&self) -> PathBuf {
        self.dir.join("l1-state-wake.txt")
    }
}

/// The first existing directory with the testhost scripts: `$MVM_TESTHOST_DIR`,
/// `<prefix>/lib/mvm/testhost` (an install), `/usr/local/lib/mvm/testhost`,
/// then the source tree mvctl was built from.
pub fn testhost_dir() -> Result<PathBuf, PathsError> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os(TESTHOST_ENV).filter(|v| !v.is_empty()) {
        // An explicit choice is the only candidate: a typo must not fall
        // back silently to another copy.
        candidates.push(PathBuf::from(d));
    } else {
        if let Some(prefix) = exe_dir().and_then(|d| d.parent().map(Path::to_path_buf)) {
            candidates.push(prefix.join("lib/mvm/testhost"));
        }
        candidates.push(PathBuf::from("/usr/local/lib/mvm/testhost"));
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/testhost"));
    }
    let complete = |d: &Path| {
        ["build-initramfs.sh", "init", "machine-l1"]
            .iter()
            .all(|f| d.join(f).is_file())
    };
    match candidates.iter().find(|d| complete(d)) {
        Some(d) => Ok(d.canonicalize().unwrap_or_else(|_| d.clone())),
        None => Err(PathsError::NoTesthost {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The mvmd binary to run in L1: `$MVM_MACHINE_MVMD`, else next to mvctl,
/// else on PATH.
pub fn mvmd_binary() -> Result<PathBuf, PathsError> {
    let p = match std::env::var_os(MVMD_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::connect::daemon_binary().ok_or(PathsError::NoMvmd)?,
    };
    Ok(p.canonicalize().unwrap_or(p))
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Refuse paths with a newline (L1's init reads line-based files).
pub fn check_no_newline(what: &str, path: &Path) -> Result<(), PathsError> {
    if path.as_os_str().as_encoded_bytes().contains(&b'\n') {
        return Err(PathsError::Newline {
            what: what.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = Paths::new("/s", "/r");
        assert_eq!(p.disk(), Path::new("/s/disk.img"));
        assert_eq!(p.boot(), Path::new("/s/boot"));
        assert_eq!(p.state(), Path::new("/r/machine.json"));
        assert_eq!(p.control_in(), Path::new("/r/machine-control.in"));
        let b = BootFiles::new(p.boot());
        assert_eq!(b.token(), Path::new("/s/boot/token"));
        assert_eq!(b.mvmd_log(), Path::new("/s/boot/mvmd.log"));
    }

    #[test]
    fn newlines_are_refused() {
        check_no_newline("the machine dir", Path::new("/tmp/x y")).unwrap();
        let e = check_no_newline("the machine dir", Path::new("/a\nb"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("newline"), "{e}");
    }

    #[test]
    fn the_source_tree_has_the_scripts() {
        // Built from this repository, the fallback candidate exists.
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/testhost");
        for f in ["build-initramfs.sh", "init", "machine-l1"] {
            assert!(d.join(f).is_file(), "{} missing", d.join(f).display());
        }
    }
}
