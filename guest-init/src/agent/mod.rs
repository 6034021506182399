//! The guest agent: init's server for the host over vsock (exec, attach,
//! signals, resize, stats, file copy, shutdown), speaking
//! `mvm_protocol::agent`.
//!
//! It starts after the workload runs, on a thread of its own that opens the
//! listener itself, so listening never delays the workload. Each connection
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
use std::sync::{Arc, Mutex, Weak};
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
}

impl Agent {
    pub fn new(config: Config, router: Arc<Router>, workload: Arc<Workload>) -> Arc<Self> {
        Arc::new(Self {
            config,
            router,
            workload,
            sessions: AtomicUsize::new(0),
            terminals: Mutex::new(HashMap::new()),
        })
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
