//! The workload cgroup: the main workload and every exec'd process run in
//! `<cgroup root>/workload`, so `stats` measures them and not init or the
//! agent, and a memory limit (`process.memory_max`, the containerd
//! shim's container limit) applies to the workload alone.
//!
//! Init stays in the root cgroup, which is exempt from cgroup v2's "no
//! processes in inner nodes" rule, so enabling controllers for children
//! works while init lives there.

use std::io;
use std::path::{Path, PathBuf};

/// Where init mounts cgroup2 in the guest.
pub const GUEST_ROOT: &str = "/sys/fs/cgroup";
/// The workload cgroup's name under the root.
pub const NAME: &str = "workload";
/// Controllers enabled for the workload when the kernel offers them.
pub const CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];

/// Enable [`CONTROLLERS`] below `root` and create the workload cgroup.
/// Returns its path and the controllers that could not be enabled (the
/// kernel may lack some; stats then leave those fields empty).
pub fn setup(root: &Path) -> io::Result<(PathBuf, Vec<&'static str>)> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_ascii_whitespace().collect();
    let mut missing = Vec::new();
    for c in CONTROLLERS {
        // One write per controller: one failure must not cost the others.
        let ok = available.contains(&c)
            && std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")).is_ok();
        if !ok {
            missing.push(c);
        }
    }
    let dir = root.join(NAME);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok((dir, missing))
}

/// [`setup`] in the guest, with a warning instead of an error: a workload
/// without a cgroup still runs, only its stats are poorer.
pub fn setup_guest() -> Option<PathBuf> {
    match setup(Path::new(GUEST_ROOT)) {
        Ok((dir, missing)) => {
            if !missing.is_empty() {
                crate::warn!(
                    "cgroup controllers not available for the workload: {}",
                    missing.join(" ")
                );
            }
            Some(dir)
        }
        Err(e) => {
            crate::warn!("cannot set up the workload cgroup under {GUEST_ROOT}: {e}; stats will lack CPU, memory and pids");
            None
        }
    }
}

/// Sets the workload cgroup's `memory.max` to `bytes`: going over it is an
/// OOM kill inside the cgroup (the kernel logs "Memory cgroup out of
/// memory", which the host reads as the OOM reason), not guest-wide
/// memory pressure. `memory.oom.group` makes the kill take the whole
/// workload, as a container's limit does under runc with cgroup v2.
pub fn set_memory_max(dir: &Path, bytes: u64) -> io::Result<()> {
    std::fs::write(dir.join("memory.max"), bytes.to_string())?;
    // Without it only the largest process dies; best effort (older
    // kernels lack the file).
    let _ = std::fs::write(dir.join("memory.oom.group"), "1");
    Ok(())
}
