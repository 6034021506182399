//! A CPU quota on the VMM process (`--cpus 1.5`), through a per-sandbox
//! cgroup `mvm/<id>`; for a jailed VMM also a memory cap (guest memory
//! plus the VMM's own, [`VMM_OVERHEAD_MIB`]) and a task cap
//! ([`Limits::for_vmm`]), both cgroup v2 only.
//!
//! cgroup v2 (`cpu.max`) is preferred; hosts that still mount the v1 `cpu`
//! controller get `cpu.cfs_quota_us`. Without either the quota cannot be
//! honoured, and the caller turns the error into a warning instead of
//! refusing the sandbox (vCPUs still bound what the guest can use).
//!
//! The same cgroup (v2) is what `pause` freezes ([`set_frozen`]).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Scheduling period for the quota, in microseconds (the kernel default).
pub const PERIOD_US: u64 = 100_000;

/// Memory a VMM uses beyond its guest's, in MiB: its own heap and
/// stacks (a few MiB), KVM's accounted kernel memory (page tables, vCPU
/// state) and slack for the page cache of its disk I/O, which the cgroup
/// reclaims rather than fails on. Measured: see docs/benchmarks.md.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Tasks a VMM may have beyond one per vCPU: its main thread, the
/// status-port and virtio-fs helper threads, with room to spare; a fork
/// bomb from a compromised VMM stops here.
pub const VMM_BASE_TASKS: u64 = 32;

/// What a sandbox's cgroup enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPU quota in CPUs (`cpu.max`).
    pub cpus: Option<f64>,
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

impl Limits {
    /// The limits of a jailed VMM with `res`.
    pub fn for_vmm(res: &crate::Resources) -> Self {
        Self {
            cpus: res.cpu_quota,
            memory_max: Some((res.memory_mib + VMM_OVERHEAD_MIB) << 20),
            pids_max: Some(VMM_BASE_TASKS + u64::from(res.vcpus)),
        }
    }
}

/// Why no quota could be set.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup with the cpu controller is mounted (looked for cgroup2 with \"cpu\" in cgroup.controllers, and a cgroup v1 \"cpu\" hierarchy); the CPU quota is not enforced")]
    Unavailable,
    #[error("cannot set up the cgroup {path}: {source}; the CPU quota is not enforced")]
    Io { path: PathBuf, source: io::Error },
    #[error("the cgroup v2 {controller} controller is not available at {root} (cgroup.controllers), so the VMM's {what} is not limited; enable it for mvmd (systemd: Delegate=yes; or mount cgroup2 with it)")]
    Controller {
        controller: &'static str,
        what: &'static str,
        root: PathBuf,
    },
    #[error("cgroup v1 is mounted: the VMM's memory and tasks are not limited (they need cgroup v2); the CPU quota is")]
    V1Limits,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.into(),
        source,
    }
}

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 mounted at this path.
    V2(PathBuf),
    /// The v1 `cpu` controller mounted at this path.
    V1(PathBuf),
}

impl Hierarchy {
    /// Find a usable hierarchy from `/proc/self/mountinfo`.
    pub fn detect() -> Option<Self> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&info)
    }

    fn from_mountinfo(info: &str) -> Option<Self> {
        let mut v1 = None;
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let opts = post.nth(1).unwrap_or("");
            if fstype == "cgroup2" {
                let p = PathBuf::from(mount_point);
                let controllers =
                    fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "cpu") {
                    return Some(Self::V2(p));
                }
            } else if fstype == "cgroup" && opts.split(',').any(|o| o == "cpu") {
                v1 = Some(Self::V1(PathBuf::from(mount_point)));
            }
        }
        v1
    }
}

/// A sandbox's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Create (or reuse) `mvm/<id>` with a quota of `cpus` CPUs.
    pub fn create(id: &str, cpus: f64) -> Result<Self, CgroupError> {
        let h = Hierarchy::detect().ok_or(CgroupError::Unavailable)?;
        Self::create_in(&h, id, cpus)
    }

    /// [`Cgroup::create`] in a given hierarchy.
    pub fn create_in(h: &Hierarchy, id: &str, cpus: f64) -> Result<Self, CgroupError> {
        let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
        match h {
            Hierarchy::V2(root) => {
                let parent = root.join("mvm");
                fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                // Delegate the cpu controller down to mvm/ and mvm/<id>.
                enable_cpu(&root.join("cgroup.subtree_control"))?;
                enable_cpu(&parent.join("cgroup.subtree_control"))?;
                let path = parent.join(id);
                create_dir(&path)?;
                let max = path.join("cpu.max");
                fs::write(&max, format!("{quota} {PERIOD_US}")).map_err(io_err(&max))?;
                Ok(Self { path })
            }
            Hierarchy::V1(root) => {
                let path = root.join("mvm").join(id);
                create_dir(&path)?;
                let period = path.join("cpu.cfs_period_us");
                fs::write(&period, PERIOD_US.to_string()).map_err(io_err(&period))?;
                let q = path.join("cpu.cfs_quota_us");
                fs::write(&q, quota.to_string()).map_err(io_err(&q))?;
                Ok(Self { path })
            }
        }
    }

    /// Create (or reuse) `mvm/<id>` enforcing `limits`. A controller the
    /// host lacks is an error: the caller decides whether to go on without
    /// the limit (and says so).
    pub fn create_limited(id: &str, limits: &Limits) -> Result<Self, CgroupError> {
        let h = Hierarchy::detect().ok_or(CgroupError::Unavailable)?;
        let root = match &h {
            Hierarchy::V2(root) => root.clone(),
            Hierarchy::V1(_) => {
                if let Some(c) = limits.cpus {
                    Self::create_in(&h, id, c)?;
                }
                return Err(CgroupError::V1Limits);
            }
        };
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let mut wanted: Vec<(&'static str, &'static str)> = Vec::new();
        if limits.cpus.is_some() {
            wanted.push(("cpu", "CPU time"));
        }
        if limits.memory_max.is_some() {
            wanted.push(("memory", "memory"));
        }
        if limits.pids_max.is_some() {
            wanted.push(("pids", "number of tasks"));
        }
        for (c, what) in &wanted {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(CgroupError::Controller {
                    controller: c,
                    what,
                    root: root.clone(),
                });
            }
        }
        let names: Vec<&str> = wanted.iter().map(|(c, _)| *c).collect();
        let parent = root.join("mvm");
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        enable(&root.join("cgroup.subtree_control"), &names)?;
        enable(&parent.join("cgroup.subtree_control"), &names)?;
        let path = parent.join(id);
        create_dir(&path)?;
        let set = |file: &str, value: String| {
            let f = path.join(file);
            fs::write(&f, value).map_err(io_err(&f))
        };
        if let Some(c) = limits.cpus {
            let quota = ((c * PERIOD_US as f64).round() as u64).max(1000);
            set("cpu.max", format!("{quota} {PERIOD_US}"))?;
        }
        if let Some(m) = limits.memory_max {
            set("memory.max", m.to_string())?;
            // The VMM is one process: an OOM kill takes all of it.
            let _ = set("memory.oom.group", "1".into());
        }
        if let Some(p) = limits.pids_max {
            set("pids.max", p.to_string())?;
        }
        Ok(Self { path })
    }

    /// The file a process writes `0` to in order to join.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The quota as configured, in CPUs (for tests and `inspect`).
    pub fn quota_cpus(&self) -> Option<f64> {
        if let Ok(s) = fs::read_to_string(self.path.join("cpu.max")) {
            let mut it = s.split_whitespace();
            let q: f64 = it.next()?.parse().ok()?;
            let p: f64 = it.next()?.parse().ok()?;
            return Some(q / p);
        }
        let q: f64 = fs::read_to_string(self.path.join("cpu.cfs_quota_us"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let p: f64 = fs::read_to_string(self.path.join("cpu.cfs_period_us"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(q / p)
    }

    /// Remove the cgroup of sandbox `id` wherever it is (after its VMM
    /// ended), killing first whatever still runs in it: a cgroup with live
    /// processes cannot be removed, and nothing of a sandbox being cleaned
    /// up may run (see [`kill_leftovers`]).
    pub fn remove(id: &str) {
        if let Some(h) = Hierarchy::detect() {
            let root = match &h {
                Hierarchy::V2(r) | Hierarchy::V1(r) => r,
            };
            let dir = root.join("mvm").join(id);
            kill_leftovers(&h, &dir);
            let _ = fs::remove_dir(&dir);
            remove_kthreads(root, id);
        }
    }
}

/// Why a sandbox could not be frozen or thawed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("sandbox {id} has no cgroup v2 of its own (it runs with mvmd --no-jail and no CPU limit, or the host has only cgroup v1), and pausing freezes that cgroup; run it jailed (the default) or with --cpus")]
    NoCgroup { id: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the kernel did not report sandbox {id}'s cgroup {state} within {secs} s ({path}); try again, or read the host's kernel log")]
    Timeout {
        id: String,
        state: &'static str,
        secs: u64,
        path: PathBuf,
    },
}

/// Freeze (`frozen`) or thaw every process in sandbox `id`'s cgroup v2
/// with the kernel's freezer (`cgroup.freeze`), what `docker pause` does
/// through runc. The VMM's threads stop wherever they are, vCPUs included,
/// so the guest stops as a whole; its clock jumps on thaw (kvm-clock), as
/// after a host suspend. Returns once `cgroup.events` reports the new
/// state (woken by the kernel's notification on that file, not by
/// polling a timer), or fails after `timeout`.
pub fn set_frozen(id: &str, frozen: bool, timeout: Duration) -> Result<(), FreezeError> {
    let Some(Hierarchy::V2(root)) = Hierarchy::detect() else {
        return Err(FreezeError::NoCgroup { id: id.into() });
    };
    let dir = root.join("mvm").join(id);
    let freeze = dir.join("cgroup.freeze");
    if !freeze.exists() {
        return Err(FreezeError::NoCgroup { id: id.into() });
    }
    if frozen {
        move_kernel_threads(id, &root, &dir)?;
    }
    let events = dir.join("cgroup.events");
    // Opened before the write, so the change cannot be missed.
    let mut f = fs::File::open(&events).map_err(|source| FreezeError::Io {
        what: "open",
        path: events.clone(),
        source,
    })?;
    fs::write(&freeze, if frozen { "1" } else { "0" }).map_err(|source| FreezeError::Io {
        what: "write",
        path: freeze.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    match wait_events(&mut f, deadline, |text| {
        events_flag(text, "frozen") == Some(frozen)
    }) {
        Ok(true) => Ok(()),
        Ok(false) => Err(FreezeError::Timeout {
            id: id.into(),
            state: if frozen { "frozen" } else { "thawed" },
            secs: timeout.as_secs(),
            path: events,
        }),
        Err((what, source)) => Err(FreezeError::Io {
            what,
            path: events,
            source,
        }),
    }
}

/// Read the open `cgroup.events` file `f` until `done` holds for its text
/// (true) or `deadline` passes (false), sleeping in poll(2) between
/// reads: kernfs wakes pollers of a changed `cgroup.events` with POLLPRI,
/// so this waits on the kernel's event, not on a timer. The error names
/// the step that failed.
fn wait_events(
    f: &mut fs::File,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> Result<bool, (&'static str, io::Error)> {
    loop {
        let mut text = String::new();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_string(&mut text))
            .map_err(|e| ("read", e))?;
        if done(&text) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd on a descriptor the caller owns.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(("poll", e));
            }
        }
    }
}

/// `PF_KTHREAD` in the flags field of `/proc/TID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Move the kernel threads in sandbox `id`'s cgroup `dir` to a sibling
/// cgroup `mvm/<id>-kthreads`. KVM attaches a kernel thread of each VM
/// (the NX huge-page recovery worker, `kvm-nx-lpage-recovery-PID`, on
/// kernels before 6.13) to the cgroup of the process that made the VM.
/// Kernel threads cannot be frozen, so with it inside, `cgroup.events`
/// never reports `frozen 1` although every VMM thread is stopped
/// (measured in the emulated host, kernel 6.1: the VMM's threads waited
/// in the freezer's trap, the worker slept in its loop, `frozen 0`). The
/// worker keeps working from the sibling, and ends with the VM.
fn move_kernel_threads(id: &str, root: &Path, dir: &Path) -> Result<(), FreezeError> {
    let threads = dir.join("cgroup.threads");
    let list = fs::read_to_string(&threads).map_err(|source| FreezeError::Io {
        what: "read",
        path: threads.clone(),
        source,
    })?;
    for tid in list.split_whitespace() {
        let stat = fs::read_to_string(format!("/proc/{tid}/stat")).unwrap_or_default();
        if !stat_is_kernel_thread(&stat) {
            continue;
        }
        let aside = kthreads_dir(root, id);
        fs::create_dir_all(&aside).map_err(|source| FreezeError::Io {
            what: "create",
            path: aside.clone(),
            source,
        })?;
        let procs = aside.join("cgroup.procs");
        fs::write(&procs, tid).map_err(|source| FreezeError::Io {
            what: "move a kernel thread of the VM to",
            path: procs,
            source,
        })?;
    }
    Ok(())
}

/// How long [`Cgroup::remove`] waits for KVM's kernel thread to leave the
/// sibling cgroup: it ends shortly after the VM's last descriptor closes,
/// which is when the VMM process ended, just before the removal.
const KTHREADS_EXIT: Duration = Duration::from_secs(5);

/// Remove sandbox `id`'s kernel-thread cgroup, if pause made one: after
/// its kernel thread left (`populated 0`), else rmdir fails with EBUSY and
/// an empty cgroup would be left behind for every paused sandbox.
fn remove_kthreads(root: &Path, id: &str) {
    let aside = kthreads_dir(root, id);
    let Ok(mut events) = fs::File::open(aside.join("cgroup.events")) else {
        return;
    };
    let deadline = Instant::now() + KTHREADS_EXIT;
    let _ = wait_events(&mut events, deadline, |text| {
        events_flag(text, "populated") == Some(false)
    });
    if let Err(e) = fs::remove_dir(&aside) {
        tracing::warn!("cgroup {} left behind: {e}", aside.display());
    }
}

/// Kill the processes left in the cgroup `dir` of a sandbox being cleaned
/// up, and wait (at most [`KTHREADS_EXIT`]) until they are gone. Such a
/// process is a VMM that no one tracks: mvmd SIGKILLed between spawning it
/// and recording it, so a restarted mvmd finds the sandbox created or
/// exited with no VMM of record. Left alone, it would run on unseen and
/// hold the cgroup. Kernel threads (KVM's, briefly after its VM closed)
/// are not counted: they end by themselves and ignore signals.
///
/// cgroup v2 kills with `cgroup.kill`, atomic against forks; v1 (a CPU
/// quota only) signals each listed process.
fn kill_leftovers(h: &Hierarchy, dir: &Path) {
    let pids = user_processes(dir);
    if pids.is_empty() {
        return;
    }
    tracing::warn!(cgroup = %dir.display(), ?pids, "killing processes left in the cgroup of a sandbox being cleaned up (an unrecorded VMM)");
    let killed_all =
        matches!(h, Hierarchy::V2(_)) && fs::write(dir.join("cgroup.kill"), "1").is_ok();
    if !killed_all {
        for pid in &pids {
            // SAFETY: kill(2) with plain integers; the pid was in the
            // cgroup a moment ago (a reused pid would have to be both
            // reaped and reissued in between).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + KTHREADS_EXIT;
    while !user_processes(dir).is_empty() {
        if Instant::now() >= deadline {
            tracing::warn!(cgroup = %dir.display(), "processes still in the cgroup after SIGKILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids in cgroup `dir` that are not kernel threads.
fn user_processes(dir: &Path) -> Vec<libc::pid_t> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat_is_kernel_thread(&stat))
        })
        .collect()
}

/// Where [`move_kernel_threads`] puts a sandbox's kernel threads.
fn kthreads_dir(root: &Path, id: &str) -> PathBuf {
    root.join("mvm").join(format!("{id}-kthreads"))
}

/// Whether a `/proc/TID/stat` line is a kernel thread's (its flags, the
/// ninth field; the name in parentheses may hold spaces).
fn stat_is_kernel_thread(stat: &str) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The boolean line `key` (`frozen`, `populated`) of a `cgroup.events`
/// text.
fn events_flag(text: &str, key: &str) -> Option<bool> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(' ')?;
        match (k == key, v) {
            (true, "1") => Some(true),
            (true, "0") => Some(false),
            _ => None,
        }
    })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn enable(subtree_control: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let cur = fs::read_to_string(subtree_control).map_err(io_err(subtree_control))?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !cur.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(subtree_control, missing.join(" ")).map_err(io_err(subtree_control))
}

fn enable_cpu(subtree_control: &Path) -> Result<(), CgroupError> {
    let cur = fs::read_to_string(subtree_control).map_err(io_err(subtree_control))?;
    if cur.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    fs::write(subtree_control, "+cpu").map_err(io_err(subtree_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let v1 = "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            Hierarchy::from_mountinfo(v1),
            Some(Hierarchy::V1("/sys/fs/cgroup/cpu".into()))
        );
        let other = "30 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(Hierarchy::from_mountinfo(other), None);
    }

    /// A real quota on this host, through whichever hierarchy it has
    /// (needs root, as mvmd does).
    #[test]
    fn quota_on_the_real_hierarchy() {
        let Some(h) = Hierarchy::detect() else {
            panic!("no cgroup cpu controller on this host: mvmd would warn; the test needs one");
        };
        let id = format!("test-{}", std::process::id());
        let cg = Cgroup::create_in(&h, &id, 1.5).unwrap();
        assert_eq!(cg.quota_cpus(), Some(1.5));
        Cgroup::remove(&id);
        assert!(!cg.path.exists());
    }

    /// Removing a sandbox's cgroup kills what still runs in it (an
    /// unrecorded VMM) instead of leaving both behind; on whichever
    /// hierarchy this host has (needs root, as mvmd does).
    #[test]
    fn removal_kills_what_is_left_in_the_cgroup() {
        let h = Hierarchy::detect().expect("a cgroup cpu controller on this host");
        let id = format!("test-leftover-{}", std::process::id());
        let cg = Cgroup::create_in(&h, &id, 1.0).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        fs::write(cg.procs(), child.id().to_string()).unwrap();
        assert_eq!(user_processes(&cg.path), [child.id() as libc::pid_t]);
        Cgroup::remove(&id);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(!cg.path.exists(), "the cgroup is gone with its process");
    }

    #[test]
    fn kernel_threads_from_proc_stat() {
        let kthread = "286 (kvm-nx-lpage-recovery-284) S 2 0 0 0 -1 2129984 0 0 0 0 0 0";
        let user = "289 (vcpu 0) S 1 283 283 0 -1 4194624 25 0 0 0 1 2";
        assert!(stat_is_kernel_thread(kthread));
        assert!(!stat_is_kernel_thread(user));
        assert!(!stat_is_kernel_thread(""));
        assert!(!stat_is_kernel_thread("1 (x) S"));
    }

    #[test]
    fn the_frozen_line_of_cgroup_events() {
        assert_eq!(events_flag("populated 1\nfrozen 1\n", "frozen"), Some(true));
        assert_eq!(
            events_flag("populated 0\nfrozen 0\n", "frozen"),
            Some(false)
        );
        assert_eq!(
            events_flag("populated 0\nfrozen 1\n", "populated"),
            Some(false)
        );
        assert_eq!(events_flag("populated 1\n", "frozen"), None);
    }

    /// The freezer on the real hierarchy: a counting process stops while
    /// its cgroup is frozen and goes on after the thaw (needs root and
    /// cgroup v2, as `pause` does).
    #[test]
    fn a_frozen_cgroup_stops_its_processes() {
        let id = format!("test-freeze-{}", std::process::id());
        let Some(h @ Hierarchy::V2(_)) = Hierarchy::detect() else {
            let e = set_frozen(&id, true, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(e, FreezeError::NoCgroup { .. }), "{e}");
            return;
        };
        let e = set_frozen(&id, true, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("no cgroup v2 of its own"), "{e}");
        let cg = Cgroup::create_in(&h, &id, 1.0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while :; do i=$((i+1)); echo $i > {}.t; mv {0}.t {0}; sleep 0.01; done",
                counter.display()
            ))
            .spawn()
            .unwrap();
        fs::write(cg.procs(), child.id().to_string()).unwrap();
        let read = || {
            fs::read_to_string(&counter)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while read().is_none() {
            assert!(Instant::now() < deadline, "the counter never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        set_frozen(&id, true, Duration::from_secs(10)).unwrap();
        let at_freeze = read();
        // Frozen: no progress over a window of many counting periods.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(read(), at_freeze, "the counter moved while frozen");
        set_frozen(&id, false, Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while read() == at_freeze {
            assert!(
                Instant::now() < deadline,
                "the counter did not resume after the thaw"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        Cgroup::remove(&id);
    }

    /// A jailed VMM's limits on the real hierarchy (cgroup v2 here).
    #[test]
    fn vmm_limits_on_the_real_hierarchy() {
        let id = format!("test-limits-{}", std::process::id());
        let res = crate::Resources {
            vcpus: 2,
            cpu_quota: Some(0.5),
            memory_mib: 256,
            scratch_mib: 64,
            workload_memory_mib: None,
        };
        let l = Limits::for_vmm(&res);
        assert_eq!(l.memory_max, Some((256 + VMM_OVERHEAD_MIB) << 20));
        assert_eq!(l.pids_max, Some(VMM_BASE_TASKS + 2));
        if let Some(Hierarchy::V1(_)) = Hierarchy::detect() {
            // This host: the quota is set, the rest is refused by name.
            let e = Cgroup::create_limited(&id, &l).unwrap_err();
            assert!(matches!(e, CgroupError::V1Limits), "{e}");
            Cgroup::remove(&id);
            return;
        }
        let cg = Cgroup::create_limited(&id, &l).unwrap();
        let read = |f: &str| {
            fs::read_to_string(cg.path.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            read("memory.max"),
            ((256 + VMM_OVERHEAD_MIB) << 20).to_string()
        );
        assert_eq!(read("pids.max"), (VMM_BASE_TASKS + 2).to_string());
        assert_eq!(cg.quota_cpus(), Some(0.5));
        Cgroup::remove(&id);
        assert!(!cg.path.exists());
    }
}
