//! Whether L1 still works: the signs of the emulated host's faults that
//! `resources/testhost/run` stops an e2e job for, read from a boot dir.
//!
//! - The heartbeat: the testhost init rewrites `alive` in the boot dir
//!   every 10 s while the job (here: the machine) runs. A frozen L1 (both
//!   TCG vCPUs spinning in the emulation, L1's own processes silent) stops
//!   rewriting it.
//! - Soft lockups: a half-hung L1 (one vCPU stuck in L1's KVM, the other
//!   still writing the heartbeat) shows as "soft lockup - CPU#N stuck for
//!   Ns!" on L1's console; everything in it then crawls.
//!
//! Both are faults of the nested emulation that do not heal (see
//! resources/testhost/README.md, "Reliability"): L1 has to be restarted.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::paths::BootFiles;

/// Environment variable with the seconds without a heartbeat after which
/// L1 counts as stalled.
pub const STALL_ENV: &str = "MVM_MACHINE_STALL_SECS";
/// Default of [`STALL_ENV`]: the heartbeat comes every 10 s; on a busy
/// 2-core host it was never seen more than a few seconds late.
const DEFAULT_STALL: Duration = Duration::from_secs(120);
/// The least [`STALL_ENV`] taken: a few heartbeats.
const MIN_STALL: Duration = Duration::from_secs(20);
/// A vCPU stuck this long in L1's kernel does not recover (`run` uses the
/// same limit).
pub const STUCK_LIMIT_SECS: u64 = 60;

/// How L1 failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// The heartbeat is this old.
    NoHeartbeat {
        /// Seconds since the last one.
        secs: u64,
    },
    /// L1's console reports a vCPU stuck this long.
    SoftLockup {
        /// Seconds stuck.
        secs: u64,
    },
    /// L1 stopped making progress while booting, before the job started:
    /// neither its console nor its boot steps (`timings`) moved for this
    /// long (seen once: L1 silent after its root was ready, 2026-12-07).
    BootStalled {
        /// Seconds without progress.
        secs: u64,
    },
    /// QEMU ended by itself (L1's kernel died, or QEMU crashed).
    Died,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::NoHeartbeat { secs } => {
                write!(f, "L1 stalled: no heartbeat from it for {secs} s")
            }
            Stall::SoftLockup { secs } => write!(
                f,
                "L1 stalled: one of its vCPUs has been stuck for {secs} s (soft lockup on its console)"
            ),
            Stall::BootStalled { secs } => write!(
                f,
                "L1 stalled while booting: no console output and no boot step for {secs} s"
            ),
            Stall::Died => write!(f, "L1 died: QEMU ended on its own"),
        }
    }
}

/// The stall limit: [`STALL_ENV`] or the default.
pub fn stall_limit() -> Duration {
    std::env::var(STALL_ENV)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_STALL)
        .max(MIN_STALL)
}

/// A stall of the L1 writing to `files`, judged at `now`. Only once the
/// job runs (`job-started`): before that, the boot timeout applies.
pub fn check(files: &BootFiles, limit: Duration, now: SystemTime) -> Option<Stall> {
    let last = heartbeat(files)?;
    let age = now.duration_since(last).unwrap_or_default();
    if age > limit {
        return Some(Stall::NoHeartbeat {
            secs: age.as_secs(),
        });
    }
    let stuck = stuck_seconds(&tail(&files.console_log(), 64 * 1024));
    (stuck >= STUCK_LIMIT_SECS).then_some(Stall::SoftLockup { secs: stuck })
}

/// When L1 writing to `files` last gave a sign of life: its last
/// heartbeat, or the job's start before the first one; `None` while it
/// boots.
pub fn heartbeat(files: &BootFiles) -> Option<SystemTime> {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let started = mtime(&files.job_started())?;
    Some(mtime(&files.alive()).map_or(started, |a| a.max(started)))
}

/// A stall of the L1 booting into `files`, before its job started, judged
/// at `now`: its console log and its boot steps (`timings`, written by
/// the testhost init at each step) both older than `limit`, counted from
/// `since` at the earliest (when the caller began to wait). A healthy
/// boot writes one or the other every few seconds, and reaches the job
/// within about a minute on a loaded 2-core host.
pub fn boot_check(
    files: &BootFiles,
    limit: Duration,
    since: SystemTime,
    now: SystemTime,
) -> Option<Stall> {
    if files.job_started().exists() {
        return None;
    }
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let last = [mtime(&files.console_log()), mtime(&files.timings())]
        .into_iter()
        .flatten()
        .fold(since, SystemTime::max);
    let age = now.duration_since(last).unwrap_or_default();
    (age > limit).then_some(Stall::BootStalled {
        secs: age.as_secs(),
    })
}

/// The longest soft lockup in a kernel log ("soft lockup - CPU#1 stuck
/// for 49s!"), 0 if none.
pub fn stuck_seconds(log: &str) -> u64 {
    const MARK: &str = "soft lockup - CPU#";
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(MARK)? + MARK.len()..];
            let rest = &rest[rest.find(" stuck for ")? + " stuck for ".len()..];
            rest[..rest.find('s')?].parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

fn tail(p: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(p) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Save QEMU's view of L1's vCPUs (HMP `info registers -a` and friends on
/// the monitor socket) to `out`, for the diagnosis of a stall. Best
/// effort, a few seconds at most: a QEMU that is stuck itself does not
/// answer.
pub fn dump_l1_state(monitor: &Path, out: &Path, cpus: u32) {
    let mut commands = vec![
        "info status".to_string(),
        "info cpus".into(),
        "info registers -a".into(),
    ];
    // Each vCPU's local APIC (the vectors pending in IRR).
    for c in 0..cpus.max(1) {
        commands.extend([format!("cpu {c}"), "info lapic".into()]);
    }
    commands.push("cpu 0".into());
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let text = match hmp(monitor, &commands) {
        Ok(t) => t,
        Err(e) => format!("QEMU's monitor {} did not answer: {e}\n", monitor.display()),
    };
    if let Ok(mut f) = fs::File::create(out) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Send HMP `commands` (a kick of [`super::wake`]); their answers are
/// not needed.
pub fn kick(monitor: &Path, commands: &[&str]) -> std::io::Result<()> {
    hmp(monitor, commands).map(drop)
}

/// HMP's output without carriage returns and the terminal escapes its
/// line editor sends (`ESC [ ... letter`).
pub(crate) fn strip_escapes(text: &str) -> String {
    let text = text.replace('\r', "");
    let mut clean = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        clean.push(c);
    }
    clean
}

fn hmp(monitor: &Path, commands: &[&str]) -> std::io::Result<String> {
    let mut s = UnixStream::connect(monitor)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    // The banner first, then each command's answer: each ends at the next
    // prompt, or when the monitor goes quiet (2 s).
    for c in std::iter::once(None).chain(commands.iter().map(Some)) {
        if let Some(c) = c {
            s.write_all(format!("{c}\n").as_bytes())?;
        }
        let start = out.len();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out[start..].trim_ascii_end().ends_with(b"(qemu)") {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Drop the terminal escapes and the prompt's echo of each command.
    let clean = strip_escapes(&String::from_utf8_lossy(&out));
    Ok(clean
        .lines()
        .filter(|l| !l.starts_with("(qemu)"))
        .map(|l| format!("{l}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_lockups_from_the_console() {
        let log = "[ 100.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [qemu:123]\n\
                   [ 150.2] watchdog: BUG: soft lockup - CPU#0 stuck for 693s! [CPU 0/KVM:88]\n\
                   [ 151.0] something else 99s\n";
        assert_eq!(stuck_seconds(log), 693);
        assert_eq!(stuck_seconds("no lockups here\n"), 0);
        assert_eq!(stuck_seconds("soft lockup - CPU#1 stuck for junk\n"), 0);
    }

    #[test]
    fn a_boot_that_stops_moving_is_a_stall() {
        let d = tempfile::tempdir().unwrap();
        let files = BootFiles::new(d.path());
        let limit = Duration::from_secs(120);
        let now = SystemTime::now();
        let t = |secs| now + Duration::from_secs(secs);
        // Nothing written yet: counted from when the wait began.
        assert_eq!(boot_check(&files, limit, now, t(60)), None);
        assert!(matches!(
            boot_check(&files, limit, now, t(200)),
            Some(Stall::BootStalled { secs }) if secs >= 199
        ));
        // Console output or a boot step is progress.
        fs::write(files.console_log(), "[ 3.3] loop: module loaded\n").unwrap();
        assert_eq!(boot_check(&files, limit, now, t(100)), None);
        fs::write(files.timings(), "root_ready=4.52\n").unwrap();
        assert_eq!(boot_check(&files, limit, t(0), t(119)), None);
        assert!(matches!(
            boot_check(&files, limit, now, t(125)),
            Some(Stall::BootStalled { .. })
        ));
        // Once the job runs, the heartbeat rules ([`check`]) apply.
        fs::write(files.job_started(), "5.1").unwrap();
        assert_eq!(boot_check(&files, limit, now, t(1000)), None);
    }

    #[test]
    fn heartbeat_and_lockups() {
        let d = tempfile::tempdir().unwrap();
        let files = BootFiles::new(d.path());
        let limit = Duration::from_secs(120);
        let t = |secs| SystemTime::now() + Duration::from_secs(secs);
        // Still booting: no verdict.
        assert_eq!(check(&files, limit, t(1000)), None);
        fs::write(files.job_started(), "5.1").unwrap();
        assert_eq!(check(&files, limit, t(0)), None);
        // No heartbeat file yet counts from the job's start.
        assert!(matches!(
            check(&files, limit, t(200)),
            Some(Stall::NoHeartbeat { secs }) if secs >= 199
        ));
        fs::write(files.alive(), "15.0").unwrap();
        assert_eq!(check(&files, limit, t(100)), None);
        assert!(matches!(
            check(&files, limit, t(130)),
            Some(Stall::NoHeartbeat { .. })
        ));
        fs::write(
            files.console_log(),
            "watchdog: BUG: soft lockup - CPU#0 stuck for 45s!\n",
        )
        .unwrap();
        assert_eq!(check(&files, limit, t(0)), None);
        fs::write(
            files.console_log(),
            "watchdog: BUG: soft lockup - CPU#0 stuck for 64s!\n",
        )
        .unwrap();
        assert_eq!(
            check(&files, limit, t(0)),
            Some(Stall::SoftLockup { secs: 64 })
        );
        assert!(Stall::SoftLockup { secs: 64 }
            .to_string()
            .contains("stuck for 64 s"));
    }

    #[test]
    fn each_answer_ends_at_the_prompt_and_every_lapic_is_asked() {
        use std::io::{BufRead, BufReader};
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("mon");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // A monitor as QEMU's: a banner, the command echoed after the
        // prompt, its answer, the next prompt.
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"QEMU monitor\r\n(qemu) ").unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let cmd = line.trim();
                let _ = c.write_all(format!("{cmd}\r\nanswer to {cmd}\r\n(qemu) ").as_bytes());
                line.clear();
            }
        });
        let out = d.path().join("state.txt");
        let t0 = std::time::Instant::now();
        dump_l1_state(&sock, &out, 3);
        // Without the prompt each of the 10 commands would wait 2 s.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let text = fs::read_to_string(&out).unwrap();
        for want in [
            "answer to info registers -a",
            "answer to cpu 2",
            "answer to cpu 0",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert_eq!(text.matches("answer to info lapic").count(), 3, "{text}");
    }

    #[test]
    fn a_silent_monitor_is_reported_not_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("mon");
        // Listening but never answering, as a stopped QEMU's socket.
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let out = d.path().join("state.txt");
        let t0 = std::time::Instant::now();
        dump_l1_state(&sock, &out, 2);
        assert!(t0.elapsed() < Duration::from_secs(30));
        assert!(fs::metadata(&out).is_ok());
        dump_l1_state(&d.path().join("none"), &out, 2);
        assert!(fs::read_to_string(&out).unwrap().contains("did not answer"));
    }
}
