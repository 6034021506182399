//! Restarting a machine whose L1 failed, and telling the user what it
//! cost.
//!
//! The emulated host fails now and then (resources/testhost/README.md,
//! "Reliability"): L1 freezes, a vCPU of it soft-locks, or its kernel dies.
//! Every sandbox in it is then frozen or gone, and nothing in L1 can help.
//! So a watcher process, started with the machine (`mvctl machine watch`,
//! in its own session, logging to `watch.log`), checks every few seconds
//! ([`health::check`]) and, when L1 has failed, restarts it: saves QEMU's
//! view of the vCPUs, kills QEMU (a stalled L1 cannot stop cleanly), boots
//! a new L1 with the same size, and records in `last-restart.json` why,
//! and which sandboxes were lost: mvmd in the new L1 marks the sandboxes
//! whose VMMs died with the old one as exited (`vmm_died`) when it starts,
//! and those are the ones that ended at or after the new boot began.
//! The next mvctl command that reaches the machine prints that record once
//! ([`report`]); `mvctl machine status` keeps showing it.
//!
//! mvctl does the same check itself when it finds the machine not
//! answering (no watcher, or the watcher has not acted yet), so a command
//! never waits on a stalled L1. Start, stop and restart all hold the
//! machine lock; the watcher acts only under it and after checking again,
//! so a stop in progress never looks like a failure to it.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::health::{self, Stall};
use super::paths::{BootFiles, Paths};
use super::state::{MachineState, Proc};
use super::wake::{self, Action, Waker};
use super::{Endpoint, MachineError, Started};

/// How often the watcher looks.
const POLL: Duration = Duration::from_secs(5);
/// Restarts allowed within [`RESTART_WINDOW`] before the watcher gives up
/// (an L1 that fails at once after each boot would otherwise loop).
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(30 * 60);

/// A sandbox that was running when L1 failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its restart policy started it again in the new L1.
    #[serde(default)]
    pub restarted: bool,
}

/// `last-restart.json`: the last time a failed L1 was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRestart {
    /// When (RFC 3339, host clock).
    pub at: String,
    /// What had happened to L1.
    pub reason: String,
    /// The failed boot's logs.
    pub logs: PathBuf,
    /// The sandboxes that were lost.
    pub lost: Vec<Lost>,
    /// Set when the list could not be read from the new mvmd.
    #[serde(default)]
    pub lost_unknown: Option<String>,
    /// Set when the new L1 did not come up either.
    #[serde(default)]
    pub error: Option<String>,
    /// Printed by an mvctl command already.
    #[serde(default)]
    pub reported: bool,
    /// Times of the recent restarts (RFC 3339), for the give-up rule.
    #[serde(default)]
    pub history: Vec<String>,
}

impl LastRestart {
    /// The record, if there is one.
    pub fn load(paths: &Paths) -> Option<Self> {
        serde_json::from_slice(&fs::read(paths.last_restart()).ok()?).ok()
    }

    fn save(&self, paths: &Paths) {
        let p = paths.last_restart();
        let tmp = p.with_extension(format!("json.tmp.{}", std::process::id()));
        let data = serde_json::to_vec_pretty(self).unwrap_or_default();
        if fs::write(&tmp, data)
            .and_then(|_| fs::rename(&tmp, &p))
            .is_err()
        {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// One line for `machine status`.
    pub fn summary(&self) -> String {
        let when = DateTime::parse_from_rfc3339(&self.at)
            .map(|t| {
                format!(
                    "{} ago",
                    crate::format::human_duration(Utc::now().signed_duration_since(t))
                )
            })
            .unwrap_or_else(|_| self.at.clone());
        let what = match &self.error {
            Some(e) => format!("restart failed: {e}"),
            None => format!("restarted; {}", lost_text(self)),
        };
        format!(
            "{when}: {}; {what} (logs {})",
            self.reason,
            self.logs.display()
        )
    }
}

fn lost_text(r: &LastRestart) -> String {
    if let Some(why) = &r.lost_unknown {
        return format!("the sandboxes it ran are lost (which ones is unknown: {why})");
    }
    if r.lost.is_empty() {
        return "no sandbox was running".into();
    }
    let names: Vec<String> = r
        .lost
        .iter()
        .map(|l| {
            let short = &l.id[..l.id.len().min(12)];
            let again = if l.restarted {
                ", started again by its restart policy"
            } else {
                ""
            };
            format!("{} ({short}{again})", l.name)
        })
        .collect();
    format!("lost the sandboxes running in it: {}", names.join(", "))
}

/// What an mvctl command prints about a restart.
pub fn notice(r: &LastRestart) -> String {
    match &r.error {
        Some(e) => format!(
            "mvctl: the machine failed ({}) and could not be restarted: {e}\nmvctl: logs of the failed boot: {}\n",
            r.reason,
            r.logs.display()
        ),
        None => format!(
            "mvctl: the machine failed ({}) and was restarted at {}; it {}.\n\
             mvctl: `mvctl ps -a` shows them (exited, status 255); logs of the failed boot: {}\n",
            r.reason,
            r.at,
            lost_text(r),
            r.logs.display()
        ),
    }
}

/// Print the last restart once, if no command has yet.
pub fn report(paths: &Paths) {
    if let Some(r) = LastRestart::load(paths).filter(|r| !r.reported) {
        eprint!("{}", notice(&r));
        mark_reported(paths);
    }
}

/// Note that the last restart has been told.
pub fn mark_reported(paths: &Paths) {
    if let Some(mut r) = LastRestart::load(paths) {
        r.reported = true;
        r.save(paths);
    }
}

/// Restart a failed machine `s` (the caller holds the lock): save L1's
/// state, kill QEMU, boot anew with the same size, find the lost
/// sandboxes, and record it all in `last-restart.json`.
pub(crate) fn restart_locked(
    paths: &Paths,
    s: &MachineState,
    why: &Stall,
    size: (u32, u64),
) -> Result<Restarted, MachineError> {
    let old = BootFiles::new(&s.boot_dir);
    eprintln!(
        "mvctl: {why}; restarting the machine (QEMU pid {}); the sandboxes in it are lost",
        s.pid
    );
    if s.is_alive() {
        health::dump_l1_state(&paths.monitor(), &old.l1_state(), s.cpus);
        super::kill_qemu_now(s);
    }
    let _ = fs::write(old.stalled(), format!("{why}\n"));
    MachineState::remove(&paths.state())?;
    super::remove_control_fifos(paths);

    let now = Utc::now();
    let mut history: Vec<String> = LastRestart::load(paths)
        .map(|r| r.history)
        .unwrap_or_default();
    history.retain(|t| {
        DateTime::parse_from_rfc3339(t).is_ok_and(|t| {
            now.signed_duration_since(t)
                .to_std()
                .is_ok_and(|d| d < RESTART_WINDOW)
        })
    });
    history.push(now.to_rfc3339());
    let mut record = LastRestart {
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason: why.to_string(),
        // The failed boot's dir becomes the previous one at the new boot.
        logs: paths.previous_boot(),
        lost: Vec::new(),
        lost_unknown: None,
        error: None,
        reported: false,
        history,
    };
    if record.history.len() > MAX_RESTARTS {
        let e = format!(
            "it failed {} times within {} minutes; not restarted again (`mvctl machine start` tries once more)",
            record.history.len(),
            RESTART_WINDOW.as_secs() / 60
        );
        record.logs = s.boot_dir.clone();
        record.error = Some(e.clone());
        record.save(paths);
        return Err(MachineError::GaveUp(format!(
            "the machine failed ({why}): {e}; logs: {}",
            s.boot_dir.display()
        )));
    }
    let started = match super::start_locked(paths, size, Some(&s.shares)) {
        Ok(st) => st,
        Err(e) => {
            record.error = Some(e.to_string());
            record.save(paths);
            return Err(e);
        }
    };
    match lost_sandboxes(&started.endpoint, &BootFiles::new(&started.state.boot_dir)) {
        Ok(lost) => record.lost = lost,
        Err(e) => record.lost_unknown = Some(e),
    }
    record.save(paths);
    Ok(Restarted { started, record })
}

/// A restarted machine and the record of it.
pub(crate) struct Restarted {
    pub(crate) started: Started,
    pub(crate) record: LastRestart,
}

impl std::ops::Deref for Restarted {
    type Target = LastRestart;
    fn deref(&self) -> &LastRestart {
        &self.record
    }
}

/// The sandboxes the new mvmd found dead at its start: ended (`vmm_died`)
/// at or after the new boot began, by L1's clock (mvmd's times are L1's;
/// `machine-l1` wrote that clock's reading at the boot's start).
fn lost_sandboxes(ep: &Endpoint, files: &BootFiles) -> Result<Vec<Lost>, String> {
    let since = fs::read_to_string(files.l1_started_at())
        .map_err(|e| format!("{}: {e}", files.l1_started_at().display()))?;
    let since = DateTime::parse_from_rfc3339(since.trim())
        .map_err(|e| format!("L1's start time {:?}: {e}", since.trim()))?
        .with_timezone(&Utc);
    let ep = ep.clone();
    // mvctl's async client, on a thread of its own: this may run inside
    // mvctl's runtime (connect), where blocking on another is not allowed.
    std::thread::spawn(move || -> Result<Vec<Lost>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let host = crate::client::Host::parse(&ep.url).map_err(|e| e.to_string())?;
            let client = crate::client::Client::new(host, Some(ep.token.clone()));
            let mut lost = Vec::new();
            for s in client.list(true, &[]).await.map_err(|e| e.to_string())? {
                let Ok(info) = client.inspect(&s.id).await else {
                    continue;
                };
                let st = &info.state;
                let ended_now = st
                    .finished_at
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.with_timezone(&Utc) >= since);
                if ended_now && st.reason == Some(mvm_api::sandbox::ExitReason::VmmDied) {
                    lost.push(Lost {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        restarted: st.running,
                    });
                }
            }
            Ok(lost)
        })
    })
    .join()
    .map_err(|_| "the query thread panicked".to_string())?
}

/// Keep the host's forwards of published ports in step with mvmd's
/// ([`super::ports`]): what changed without an mvctl command (a restart
/// policy's start, a sandbox that ended, a restarted machine). Logged,
/// never fatal.
fn forward_ports(paths: &Paths, s: &MachineState) {
    let Ok(token) = super::read_token(&s.token_file) else {
        return;
    };
    let ep = Endpoint {
        url: s.url(),
        token,
    };
    let _lock = match super::ports::lock(paths) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("{e}"));
            return;
        }
    };
    let published = match published_ports(&ep) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("cannot list the published ports: {e}"));
            return;
        }
    };
    match super::ports::sync_locked(paths, &published) {
        Ok(done) => {
            for f in &done.added {
                log(&format!("forwarding {f} to the machine"));
            }
            for f in &done.removed {
                log(&format!("no longer forwarding {f}"));
            }
            for (f, why) in &done.failed {
                log(&format!("cannot forward {f}: {why}"));
            }
        }
        Err(e) => log(&format!("forwarding the published ports: {e}")),
    }
}

/// The ports mvmd publishes now, over the API.
fn published_ports(ep: &Endpoint) -> Result<Vec<mvm_api::network::PortBinding>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let host = crate::client::Host::parse(&ep.url).map_err(|e| e.to_string())?;
        let client = crate::client::Client::new(host, Some(ep.token.clone()));
        // Bounded: a frozen L1's QEMU still accepts on the forwarded port
        // but never answers, and a watcher stuck here would never see the
        // stall it exists to see.
        let list = tokio::time::timeout(PORTS_QUERY_TIMEOUT, client.list(false, &[]))
            .await
            .map_err(|_| {
                format!(
                    "mvmd did not answer within {} s",
                    PORTS_QUERY_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| e.to_string())?;
        Ok(list.into_iter().flat_map(|s| s.ports).collect())
    })
}

/// How long the watcher waits for mvmd's list of published ports.
const PORTS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Start the watcher for the machine in `paths`: this mvctl binary,
/// `machine watch`, in its own session, logging to `watch.log`.
pub fn spawn(paths: &Paths) -> Option<Proc> {
    let exe = std::env::current_exe().ok()?;
    // It runs in /: relative dirs would point elsewhere there.
    let dir = paths.dir.canonicalize().ok()?;
    let run_dir = paths.run_dir.canonicalize().ok()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.watch_log())
        .ok()?;
    let err = log.try_clone().ok()?;
    let mut cmd = Command::new(exe);
    cmd.args(["machine", "watch"])
        .env(super::paths::DIR_ENV, &dir)
        .env(super::paths::RUN_DIR_ENV, &run_dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: only setsid(2), async-signal-safe, between fork and exec: the
    // watcher outlives this command and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().ok()?;
    Proc::of(child.id())
}

/// Stop a watcher (before a stop of the machine).
pub fn stop(w: Proc) {
    if !w.is_alive() {
        return;
    }
    // SAFETY: kill(2) on the pid of a process just checked to be the
    // watcher (same start time); no memory is involved.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGTERM) };
    let t0 = Instant::now();
    while w.is_alive() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log(msg: &str) {
    println!(
        "{} {msg}",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
}

/// Reap children that ended (QEMUs this watcher started and then killed).
fn reap() {
    // SAFETY: waitpid(2) with WNOHANG and no status pointer only collects
    // ended children of this process.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// The watcher: `mvctl machine watch`. Runs while the machine it was
/// started for (or restarted itself) is recorded with it as its watcher;
/// returns the exit status.
pub fn run(paths: &Paths) -> i32 {
    let Some(me) = Proc::current() else {
        log("cannot read this process's own start time; not watching");
        return 1;
    };
    log(&format!(
        "watching the machine in {} (pid {}; stall limit {} s)",
        paths.dir.display(),
        me.pid,
        health::stall_limit().as_secs()
    ));
    // When the watcher last saw L1 healthy, on the monotonic clock, which
    // stands still while the host sleeps (suspend): a heartbeat that is
    // old only because the host slept is no stall.
    let mut healthy_at = Instant::now();
    let mut waker = Waker::new();
    loop {
        std::thread::sleep(POLL);
        reap();
        let s = match MachineState::load(&paths.state()) {
            Ok(Some(s)) => s,
            Ok(None) => {
                log("the machine is stopped; done");
                return 0;
            }
            Err(e) => {
                log(&format!("{e}; done"));
                return 1;
            }
        };
        match s.watcher {
            Some(w) if w == me => {}
            // Not recorded yet: the starter saves it right after spawning.
            None if s.is_alive() => continue,
            _ => {
                log("another watcher (or none) is recorded for this machine; done");
                return 0;
            }
        }
        wake(paths, &s, &mut waker);
        match failure(&s) {
            None => {
                healthy_at = Instant::now();
                forward_ports(paths, &s);
                continue;
            }
            Some(Stall::NoHeartbeat { .. }) if healthy_at.elapsed() < health::stall_limit() => {
                continue
            }
            Some(_) => {}
        }
        // Act under the lock, on what holds then: a stop or a start may
        // have been under way.
        let lock = match super::lock(paths) {
            Ok(l) => l,
            Err(e) => {
                log(&format!("{e}"));
                continue;
            }
        };
        let s = match MachineState::load(&paths.state()) {
            Ok(Some(s)) if s.watcher == Some(me) => s,
            _ => continue,
        };
        let Some(why) = failure(&s) else { continue };
        log(&format!(
            "{why}; restarting the machine (QEMU pid {})",
            s.pid
        ));
        match restart_locked(paths, &s, &why, (s.cpus, s.memory_mib)) {
            Ok(r) => {
                let mut state = r.started.state.clone();
                state.watcher = Some(me);
                if let Err(e) = state.save(&paths.state()) {
                    log(&format!("{e}"));
                }
                log(&format!(
                    "restarted: QEMU pid {}, mvmd at {}; {}",
                    state.pid,
                    state.url(),
                    lost_text(&r)
                ));
                healthy_at = Instant::now();
                waker = Waker::new();
            }
            Err(e) => {
                log(&format!("restart failed: {e}; done"));
                drop(lock);
                return 1;
            }
        }
        drop(lock);
    }
}

/// Kick an L1 whose heartbeat went silent ([`super::wake`]), and log
/// each kick and its outcome: each is a fault of the emulation.
fn wake(paths: &Paths, s: &MachineState, waker: &mut Waker) {
    let files = BootFiles::new(&s.boot_dir);
    let Some(last) = health::heartbeat(&files) else {
        return;
    };
    let action = waker.step(last, SystemTime::now());
    match action {
        Action::Nothing => {}
        Action::Woke(how) => log(&format!(
            "L1's heartbeat is back: {how} woke it (a lost wake-up of the emulation; its vCPUs before: {})",
            files.l1_state_wake().display()
        )),
        Action::Continue | Action::Nmi => {
            if action == Action::Continue {
                health::dump_l1_state(&paths.monitor(), &files.l1_state_wake(), s.cpus);
            }
            let cmds = action.commands();
            match health::kick(&paths.monitor(), cmds) {
                Ok(()) => log(&format!(
                    "no heartbeat from L1 for {} s or more: sent '{}' to QEMU's monitor to wake it",
                    wake::WAKE_AFTER.as_secs(),
                    cmds.join("', '")
                )),
                Err(e) => log(&format!("QEMU's monitor did not take '{}': {e}", cmds.join("', '"))),
            }
        }
    }
}

/// Whether the machine `s` has failed.
fn failure(s: &MachineState) -> Option<Stall> {
    if !s.is_alive() {
        return Some(Stall::Died);
    }
    health::check(
        &BootFiles::new(&s.boot_dir),
        health::stall_limit(),
        SystemTime::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lost: Vec<Lost>) -> LastRestart {
        LastRestart {
            at: "2026-12-06T10:00:00Z".into(),
            reason: "L1 stalled: no heartbeat from it for 130 s".into(),
            logs: "/var/lib/mvm-machine/boot.1".into(),
            lost,
            lost_unknown: None,
            error: None,
            reported: false,
            history: Vec::new(),
        }
    }

    #[test]
    fn the_notice_names_the_lost_sandboxes() {
        let r = record(vec![
            Lost {
                id: "0123456789abcdef0123".into(),
                name: "web".into(),
                restarted: false,
            },
            Lost {
                id: "fedcba9876543210".into(),
                name: "db".into(),
                restarted: true,
            },
        ]);
        let n = notice(&r);
        assert!(n.contains("no heartbeat from it for 130 s"), "{n}");
        assert!(n.contains("web (0123456789ab)"), "{n}");
        assert!(
            n.contains("db (fedcba987654, started again by its restart policy)"),
            "{n}"
        );
        assert!(n.contains("/var/lib/mvm-machine/boot.1"), "{n}");
        assert!(notice(&record(Vec::new())).contains("no sandbox was running"));
        let mut failed = record(Vec::new());
        failed.error = Some("L1 did not boot".into());
        assert!(notice(&failed).contains("could not be restarted: L1 did not boot"));
        assert!(failed.summary().contains("restart failed"));
    }

    #[test]
    fn reported_once() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path(), d.path().join("run"));
        report(&paths);
        record(Vec::new()).save(&paths);
        assert!(!LastRestart::load(&paths).unwrap().reported);
        report(&paths);
        assert!(LastRestart::load(&paths).unwrap().reported);
    }

    #[test]
    fn a_dead_qemu_is_a_failure() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let s = MachineState {
            pid,
            pid_start_time: 1,
            port: 1,
            token_file: "/t".into(),
            started_at: "2026-11-27T10:00:00Z".into(),
            ready_secs: None,
            cpus: 2,
            memory_mib: 4096,
            disk: "/d".into(),
            boot_dir: "/b".into(),
            mvmd: "/m".into(),
            artifacts: Vec::new(),
            watcher: None,
            shares: Vec::new(),
        };
        assert_eq!(failure(&s), Some(Stall::Died));
    }
}
