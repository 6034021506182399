//! `processes`: the workload's processes for `docker top`, from /proc.
//!
//! The processes are those of the workload cgroup (the main process and
//! every exec; init and the agent stay outside it), or, without a cgroup,
//! every process but init and kernel threads. Everything read here is the
//! kernel's text, but a process can vanish between the listing and the
//! reads, and its command line is whatever it wrote there: every parse
//! failure skips the process, never fails the request.

use std::fs;
use std::path::Path;

use mvm_protocol::agent::ProcessInfo;

use crate::user::parse_passwd;

/// Largest /etc/passwd read for user names.
const MAX_PASSWD: u64 = 1 << 20;
/// Longest command line reported (the rest is cut).
const MAX_CMDLINE: usize = 4096;
/// At most this many processes are listed (bounds the reply).
const MAX_PROCESSES: usize = 4096;

/// List the workload's processes; `root` holds the /etc/passwd for names.
pub fn list(cgroup: Option<&Path>, root: &Path) -> Vec<ProcessInfo> {
    let pids: Vec<i32> =
        match cgroup.and_then(|cg| fs::read_to_string(cg.join("cgroup.procs")).ok()) {
            Some(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            None => fs::read_dir("/proc")
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .filter(|&p: &i32| p > 1)
                        .collect()
                })
                .unwrap_or_default(),
        };
    let users = read_limited(&root.join("etc/passwd"))
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    let mut out: Vec<ProcessInfo> = pids
        .into_iter()
        .filter_map(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let stat = fs::read_to_string(dir.join("stat")).ok()?;
            let (comm, ppid, cpu_ticks) = parse_stat(&stat)?;
            let uid = fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|s| parse_uid(&s))?;
            let raw = fs::read(dir.join("cmdline")).unwrap_or_default();
            if raw.is_empty() && cgroup.is_none() && (ppid == 2 || pid == 2) {
                return None; // a kernel thread
            }
            let cmd = if raw.is_empty() {
                format!("[{comm}]")
            } else {
                cmdline(&raw)
            };
            let user = users
                .iter()
                .find(|u| u.uid == uid)
                .map(|u| u.name.clone())
                .unwrap_or_else(|| uid.to_string());
            Some(ProcessInfo {
                pid,
                ppid,
                uid,
                user,
                cpu_ms: cpu_ticks.saturating_mul(1000) / ticks,
                cmd,
            })
        })
        .take(MAX_PROCESSES)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

fn read_limited(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    fs::File::open(p)
        .ok()?
        .take(MAX_PASSWD)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// `/proc/PID/stat`: (comm, ppid, utime + stime). The command name is in
/// parentheses and may itself contain spaces and parentheses: the fields
/// start after the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, i32, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let f: Vec<&str> = text.get(close + 1..)?.split_ascii_whitespace().collect();
    // After comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((comm, ppid, utime.saturating_add(stime)))
}

/// The real uid from `/proc/PID/status` (`Uid: real effective ...`).
pub fn parse_uid(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// NUL-separated arguments as one line, cut at [`MAX_CMDLINE`].
pub fn cmdline(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let raw = &raw[..raw.len().min(MAX_CMDLINE)];
    let s: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    String::from_utf8_lossy(&s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let s = "42 (my (odd) name) S 7 42 42 0 -1 4194560 100 0 0 0 150 30 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(s), Some(("my (odd) name".into(), 7, 180)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn uid_and_cmdline() {
        assert_eq!(
            parse_uid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_uid("Name: x\n"), None);
        assert_eq!(cmdline(b"sleep\x00600\x00"), "sleep 600");
        assert_eq!(cmdline(b""), "");
        assert_eq!(cmdline(&vec![b'a'; 10_000]).len(), MAX_CMDLINE);
    }

    #[test]
    fn lists_this_process_without_a_cgroup() {
        let me = std::process::id() as i32;
        let all = list(None, Path::new("/"));
        let p = all.iter().find(|p| p.pid == me).expect("this test process");
        assert!(!p.cmd.is_empty());
        // SAFETY: getuid has no memory effects.
        let uid = unsafe { libc::getuid() };
        assert_eq!(p.uid, uid);
    }
}
