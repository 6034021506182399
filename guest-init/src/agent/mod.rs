//! The guest agent: init's server for the host over vsock (exec, attach,
//! signals, resize, stats, file copy, shutdown), speaking
//! `mvm_protocol::agent`.
//!
//! Init binds its port before the workload starts (so no workload can take
//! it; it is privileged too), and the agent serves it on a thread of its
//! own once the workload runs. Each connection
//! gets a thread (std threads and libc only: no async runtime in the guest);
//! sessions are independent, and one that misbehaves is closed alone.
//!
//! Init's main thread stays the reaper: it reaps every process, hands the
//! statuses of exec'd processes to their sessions through the [`Router`],
//! records the main workload's end in the [`Workload`], and keeps reporting
//! it on the status port as before.
//!
//! * [`session`]: one connection's requests; [`exec`], [`copy`], [`stats`]
//!   do the work, [`workload`] holds the main process and its output.
//! * [`router`]: exit statuses to sessions; [`cgroup`]: the workload cgroup.
//! * [`conn`], [`pty`], [`fdio`]: sockets, terminals, descriptors.

pub mod cgroup;
pub mod changes;
pub mod conn;
pub mod copy;
pub mod exec;
pub mod fdio;
pub mod procs;
pub mod pty;
pub mod router;
pub mod session;
pub mod stats;
pub mod workload;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

pub use router::Router;
pub use workload::Workload;

use crate::reaper::{Reaper, ReaperError};

/// Connections served at once; more are refused with `busy`. Bounds the
/// guest memory (threads, buffers) the host can make the agent use.
pub const MAX_SESSIONS: usize = 256;

/// What execs default to and where the agent finds things.
#[derive(Debug, Clone)]
pub struct Config {
    /// The launch spec's environment, before init's defaults are added.
    pub env: Vec<String>,
    /// The launch spec's user (Docker `--user` syntax).
    pub user: String,
    /// The launch spec's working directory.
    pub cwd: String,
    pub hostname: String,
    /// Root whose /etc/passwd and /etc/group resolve users (`/`).
    pub root: PathBuf,
    /// The workload cgroup, if there is one.
    pub cgroup: Option<PathBuf>,
}

/// The agent's shared state.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    pub router: Arc<Router>,
    pub workload: Arc<Workload>,
    sessions: AtomicUsize,
    /// Terminals of running tty execs, for resizes addressed by pid.
    terminals: Mutex<HashMap<libc::pid_t, Weak<OwnedFd>>>,
    /// `rootfs.export_changes`: the upper directory and the hold.
    export: Option<Export>,
}

/// The state of a guest whose changes the host will read.
#[derive(Debug)]
struct Export {
    /// The overlay's upper directory (opened before the switch into the
    /// overlay, after which no path leads to it).
    upper: OwnedFd,
    state: Mutex<ExportState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct ExportState {
    /// The workload and what it left behind have ended; the upper
    /// directory is final.
    ready: bool,
    /// The host sent `shutdown`: init may power off.
    released: bool,
}

/// How long a `changes` request waits for the workload to end.
const CHANGES_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Agent {
    pub fn new(config: Config, router: Arc<Router>, workload: Arc<Workload>) -> Arc<Self> {
        Self::with_export(config, router, workload, None)
    }

    /// An agent that serves `changes` from the upper directory `upper`
    /// (`rootfs.export_changes`).
    pub fn with_export(
        config: Config,
        router: Arc<Router>,
        workload: Arc<Workload>,
        upper: Option<OwnedFd>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            router,
            workload,
            sessions: AtomicUsize::new(0),
            terminals: Mutex::new(HashMap::new()),
            export: upper.map(|upper| Export {
                upper,
                state: Mutex::new(ExportState::default()),
                cond: Condvar::new(),
            }),
        })
    }

    /// Whether the host will read the changes (init must hold the guest).
    pub fn exports_changes(&self) -> bool {
        self.export.is_some()
    }

    /// Init's main thread: the workload and its leftovers have ended.
    pub fn changes_ready(&self) {
        if let Some(x) = &self.export {
            x.state.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
            x.cond.notify_all();
        }
    }

    /// The host asked for the power-off (`shutdown`).
    pub fn release_hold(&self) {
        if let Some(x) = &self.export {
            x.state.lock().unwrap_or_else(|e| e.into_inner()).released = true;
            x.cond.notify_all();
        }
    }

    /// Whether init may power off a guest it holds for the host: the host
    /// released it, or no host has been connected for `idle` (tracked
    /// through `idle_since`).
    pub fn hold_over(&self, idle_since: &mut Instant, idle: Duration) -> bool {
        let Some(x) = &self.export else {
            return true;
        };
        if x.state.lock().unwrap_or_else(|e| e.into_inner()).released {
            return true;
        }
        if self.sessions.load(Ordering::SeqCst) > 0 {
            *idle_since = Instant::now();
            return false;
        }
        idle_since.elapsed() >= idle
    }

    /// The upper directory once it is final, as a path that reaches it
    /// from any root (`/proc/self/fd/N`); `None` without export, or when
    /// the workload did not end within [`CHANGES_WAIT`].
    pub fn changes_dir(&self) -> Option<PathBuf> {
        let x = self.export.as_ref()?;
        let st = x.state.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) = x
            .cond
            .wait_timeout_while(st, CHANGES_WAIT, |s| !s.ready)
            .unwrap_or_else(|e| e.into_inner());
        if !st.ready {
            return None;
        }
        use std::os::fd::AsRawFd;
        Some(PathBuf::from(format!(
            "/proc/self/fd/{}",
            x.upper.as_raw_fd()
        )))
    }

    /// Accept connections on `listener` forever, a thread each.
    pub fn serve(self: Arc<Self>, listener: OwnedFd) {
        loop {
            let conn = match conn::accept(&listener) {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or memory: back off, keep serving.
                    crate::warn!("agent: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.sessions.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
                self.sessions.fetch_sub(1, Ordering::SeqCst);
                refuse(conn);
                continue;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("mvm-session".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    session::serve(me.clone(), conn);
                    me.sessions.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.sessions.fetch_sub(1, Ordering::SeqCst);
                crate::warn!("agent: cannot start a session thread: {e}");
            }
        }
    }

    /// Remember a tty exec's terminal for pid-addressed resizes.
    pub fn register_terminal(&self, pid: libc::pid_t, t: &Arc<OwnedFd>) {
        let mut map = self.terminals.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(pid, Arc::downgrade(t));
    }

    /// The terminal of a running tty exec.
    pub fn terminal_of(&self, pid: libc::pid_t) -> Option<Arc<OwnedFd>> {
        let map = self.terminals.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&pid).and_then(Weak::upgrade)
    }
}

/// Too many sessions: say so and close.
fn refuse(conn: conn::Conn) {
    use mvm_protocol::agent::frame::FrameWriter;
    use mvm_protocol::agent::{ErrorCode, Response};
    let msg = format!("the agent serves at most {MAX_SESSIONS} connections at once");
    let mut w = FrameWriter::new(conn);
    let _ = w.write_json(&Response::error(ErrorCode::Busy, msg));
    w.get_ref().shutdown();
}

/// Start the agent on its own thread; `listen` opens the listener there.
pub fn start(agent: Arc<Agent>, listen: impl FnOnce() -> io::Result<OwnedFd> + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("mvm-agent".into())
        .stack_size(256 * 1024)
        .spawn(move || match listen() {
            Ok(l) => agent.serve(l),
            Err(e) => crate::warn!(
                "the agent cannot listen on vsock port {}: {e}; exec, attach and copy will not work (does the VM have a vsock device?)",
                mvm_protocol::agent::AGENT_PORT
            ),
        });
    if let Err(e) = spawned {
        crate::warn!("cannot start the agent thread: {e}");
    }
}

/// The guest's listener.
pub fn listen_guest() -> io::Result<OwnedFd> {
    conn::listen_vsock(mvm_protocol::agent::AGENT_PORT)
}

/// How often init checks, while reaping, whether the workload's output has
/// been delivered after it exited.
const DELIVERY_TICK: Duration = Duration::from_millis(20);

/// Init's main thread from the workload's start to its end: reap (routing
/// exec statuses), record the workload's exit, then keep reaping until its
/// output has reached an attached host (see [`Workload::may_power_off`]).
/// Returns the workload's raw wait status.
pub fn supervise(reaper: &Reaper, agent: &Agent) -> Result<libc::c_int, ReaperError> {
    let router = agent.router.clone();
    let status = reaper.wait_for_routed(agent.workload.pid(), |p, s| {
        router.deliver(p, s);
    })?;
    agent.workload.set_exited(status);
    let mut unattached_since = Instant::now();
    reaper.reap_until(
        DELIVERY_TICK,
        |p, s| {
            router.deliver(p, s);
        },
        || agent.workload.may_power_off(&mut unattached_since),
    )?;
    Ok(status)
}
