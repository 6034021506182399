//! A CPU quota on the VMM process (`--cpus 1.5`), through a per-sandbox
//! cgroup `mvm/<id>`.
//!
//! cgroup v2 (`cpu.max`) is preferred; hosts that still mount the v1 `cpu`
//! controller get `cpu.cfs_quota_us`. Without either the quota cannot be
//! honoured, and the caller turns the error into a warning instead of
//! refusing the sandbox (vCPUs still bound what the guest can use).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Scheduling period for the quota, in microseconds (the kernel default).
pub const PERIOD_US: u64 = 100_000;

/// Why no quota could be set.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup with the cpu controller is mounted (looked for cgroup2 with \"cpu\" in cgroup.controllers, and a cgroup v1 \"cpu\" hierarchy); the CPU quota is not enforced")]
    Unavailable,
    #[error("cannot set up the cgroup {path}: {source}; the CPU quota is not enforced")]
    Io { path: PathBuf, source: io::Error },
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
    /// ended; a cgroup with live processes cannot be removed).
    pub fn remove(id: &str) {
        if let Some(h) = Hierarchy::detect() {
            let root = match &h {
                Hierarchy::V2(r) | Hierarchy::V1(r) => r,
            };
            let _ = fs::remove_dir(root.join("mvm").join(id));
        }
    }
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
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
}
