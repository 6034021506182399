//! `machine.json`: what a running machine is (QEMU's pid, the forwarded
//! port, the token, the logs), and whether it still runs.
//!
//! The file is written 0600 (it names the token file, and only the owner of
//! the machine may stop it), atomically (a reader never sees half a file).
//! A pid alone is not an identity once the process is gone: the kernel
//! reuses pids. So the file also keeps the process's start time from
//! `/proc/<pid>/stat`, and a process counts as the machine only if both
//! match, as mvmd does for its VMMs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not ours or is damaged.
    #[error("{path} is not a valid machine state file ({source}); if no machine runs, delete it")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The running machine, as `mvctl machine start` recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// QEMU's pid.
    pub pid: u32,
    /// QEMU's start time (`/proc/<pid>/stat` field 22, clock ticks since
    /// boot): tells QEMU from a later process with a reused pid.
    pub pid_start_time: u64,
    /// Host port forwarded to mvmd's 2375 in L1 (on 127.0.0.1).
    pub port: u16,
    /// The API token file (0600).
    pub token_file: PathBuf,
    /// When QEMU was started (RFC 3339).
    pub started_at: String,
    /// Seconds from QEMU start until mvmd answered, once it has.
    #[serde(default)]
    pub ready_secs: Option<f64>,
    /// vCPUs of L1.
    pub cpus: u32,
    /// Memory of L1 in MiB.
    pub memory_mib: u64,
    /// The disk image.
    pub disk: PathBuf,
    /// The boot dir (logs).
    pub boot_dir: PathBuf,
    /// The host's mvmd binary the machine's copy came from.
    pub mvmd: PathBuf,
    /// The programs the machine runs (copies on its disk of these host
    /// files, with these hashes).
    #[serde(default)]
    pub artifacts: Vec<super::artifacts::Artifact>,
    /// The watcher process that restarts the machine when L1 stalls.
    #[serde(default)]
    pub watcher: Option<Proc>,
    /// Host directories shared writable at their paths (the home and
    /// the directory the machine was started from); a restart after a
    /// failure keeps them.
    #[serde(default)]
    pub shares: Vec<PathBuf>,
}

/// A process, identified as [`MachineState`] identifies QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl Proc {
    /// This very process.
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// Process `pid` as it is now.
    pub fn of(pid: u32) -> Option<Self> {
        proc_stat(pid).map(|s| Proc {
            pid,
            start_time: s.start_time,
        })
    }

    /// Whether it still runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some(s) if s.start_time == self.start_time && s.running())
    }
}

impl MachineState {
    /// The API endpoint, as mvctl's `-H` takes it.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Whether QEMU still runs: same pid, same start time, not a zombie.
    pub fn is_alive(&self) -> bool {
        self.qemu().is_alive()
    }

    /// QEMU's process.
    pub fn qemu(&self) -> Proc {
        Proc {
            pid: self.pid,
            start_time: self.pid_start_time,
        }
    }

    /// Read the state file; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    what: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StateError::Invalid {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Write the state file, 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |what| {
            move |source| StateError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create"))?;
        // The mode above is filtered by the umask; 0600 must hold whatever
        // the umask is.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io("chmod"))?;
        let json = serde_json::to_vec_pretty(self).expect("the state serialises");
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io("write"))?;
        fs::rename(&tmp, path).map_err(io("rename into"))
    }

    /// Delete the state file (a missing one is fine).
    pub fn remove(path: &Path) -> Result<(), StateError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
                what: "remove",
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// The parts of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (`R`, `S`, `Z`...).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Neither a zombie nor dead.
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Read `/proc/<pid>/stat`; `None` if there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parse a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample(pid: u32, start: u64) -> MachineState {
        MachineState {
            pid,
            pid_start_time: start,
            port: 40000,
            token_file: "/s/boot/token".into(),
            started_at: "2026-11-27T10:00:00Z".into(),
            ready_secs: None,
            cpus: 2,
            memory_mib: 4096,
            disk: "/s/disk.img".into(),
            boot_dir: "/s/boot".into(),
            mvmd: "/usr/local/bin/mvmd".into(),
            artifacts: Vec::new(),
            watcher: None,
            shares: Vec::new(),
        }
    }

    #[test]
    fn parse_stat_with_hostile_names() {
        let line =
            "123 (a) b) (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 98765
            })
        );
        assert_eq!(parse_stat("123 (x) Z 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn save_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("machine.json");
        assert_eq!(MachineState::load(&p).unwrap(), None);
        let s = sample(1, 2);
        s.save(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(MachineState::load(&p).unwrap(), Some(s.clone()));
        // Overwriting works and leaves no temp file.
        s.save(&p).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        MachineState::remove(&p).unwrap();
        MachineState::remove(&p).unwrap();
        assert!(!p.exists());
        fs::write(&p, "{not json").unwrap();
        let e = MachineState::load(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid machine state file"), "{e}");
    }

    #[test]
    fn liveness_follows_the_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let st = proc_stat(pid).unwrap();
        assert!(sample(pid, st.start_time).is_alive());
        // A reused pid has another start time.
        assert!(!sample(pid, st.start_time + 1).is_alive());
        child.kill().unwrap();
        // Killed but not reaped: a zombie is not alive.
        for _ in 0..100 {
            if !proc_stat(pid).is_some_and(|s| s.running()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!sample(pid, st.start_time).is_alive());
        child.wait().unwrap();
        assert!(!sample(pid, st.start_time).is_alive());
    }
}
