//! The main workload's output and stdin, carried by the guest agent.
//!
//! Sandboxes run with `process.output: "agent"`: init buffers what the
//! workload writes (1 MiB, then the workload waits) until a host attaches.
//! mvmd is that host, always, and the only one: a per-run [`pump`]
//! connects to the agent once it answers, attaches, and writes stdout and
//! stderr as separate streams into the sandbox's [`LogHub`] (the json log
//! and its followers, plus the raw fan-out to API attach clients). A
//! restarted mvmd attaches again and gets what the guest still holds.
//!
//! The same attach session carries the workload's stdin (sandboxes created
//! with `open_stdin`) and terminal resizes; [`Link`] hands them to the API.
//! Why one attacher in mvmd rather than one agent attach per client: the
//! guest serves one attacher at a time (a new one detaches the old), and
//! the logs must see every byte whoever is attached.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mvm_protocol::agent::client::{
    AgentClient, ClientError, Event, ExecControl, ExecStdin, VsockSocket,
};
use mvm_protocol::agent::{ErrorCode as AgentCode, AGENT_PORT};
use mvm_runtime::logs::Stream;
use tokio::sync::watch;

use crate::loghub::LogHub;

/// One connection attempt's budget; the pump retries until the VMM ends.
const CONNECT_TRY: Duration = Duration::from_secs(3);
/// First pause between failed attaches (the guest may still be booting);
/// it doubles up to [`RETRY_MAX`].
const RETRY_DELAY: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// How long output may still be read after the VMM ended (what the host
/// side of the vsock socket still holds).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The workload's stdin, shared by attach clients (one write at a time).
pub type SharedStdin = Arc<tokio::sync::Mutex<ExecStdin>>;

/// The current run's attach session, as far as API clients need it.
#[derive(Default)]
pub struct Link {
    state: Mutex<LinkState>,
    /// Bumped whenever the session comes or goes, so stdin writers waiting
    /// for the agent wake up.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct LinkState {
    /// Where stdin goes, while the session is up and the sandbox has
    /// `open_stdin`.
    stdin: Option<SharedStdin>,
    /// In-band resize for the session's terminal.
    control: Option<ExecControl>,
    /// The last size a client asked for: applied when the session comes
    /// up, and used as the launch size of the next start.
    size: Option<(u16, u16)>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// A new run starts: no session yet.
    pub fn begin(&self) {
        let mut s = self.lock();
        s.stdin = None;
        s.control = None;
        drop(s);
        self.bump();
    }

    /// The session is up: publish it and apply a size asked for earlier.
    fn up(&self, stdin: Option<SharedStdin>, control: ExecControl) -> Option<(u16, u16)> {
        let mut s = self.lock();
        s.stdin = stdin;
        s.control = Some(control);
        let size = s.size;
        drop(s);
        self.bump();
        size
    }

    /// The run's session is over.
    pub fn end(&self) {
        let mut s = self.lock();
        s.stdin = None;
        s.control = None;
        drop(s);
        self.bump();
    }

    /// The terminal size for the next start.
    pub fn size(&self) -> Option<(u16, u16)> {
        self.lock().size
    }

    /// Record a terminal size and apply it if the session is up.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let control = {
            let mut s = self.lock();
            s.size = Some((rows, cols));
            s.control.clone()
        };
        match control {
            Some(c) => c.resize(rows, cols).await,
            None => Ok(()),
        }
    }

    /// The workload's stdin once a run's session with stdin is up
    /// (waiting for it: a client may write before the guest has booted);
    /// `None` if the session that came up has no stdin. The caller bounds
    /// the wait (an attach ends with its run).
    pub async fn stdin(&self) -> Option<SharedStdin> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.lock();
                if let Some(i) = &s.stdin {
                    return Some(i.clone());
                }
                if s.control.is_some() {
                    return None;
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// Collect the current run's output until the workload's stream ends or,
/// once `stop` says the VMM has ended, what is left has been read.
pub async fn pump(
    vsock: VsockSocket,
    sandbox: String,
    logs: Arc<LogHub>,
    link: Arc<Link>,
    open_stdin: bool,
    mut stop: watch::Receiver<bool>,
) {
    // A session lost while the VMM runs (a checkpoint left running resets
    // the guest's vsock connections) is attached again: the agent keeps
    // what the workload writes meanwhile.
    'run: loop {
        let mut delay = RETRY_DELAY;
        let session = loop {
            if *stop.borrow() {
                link.end();
                return;
            }
            let attempt = async {
                let c = AgentClient::connect_once(&vsock, AGENT_PORT, CONNECT_TRY).await?;
                c.attach(open_stdin).await
            };
            let r = tokio::select! {
                r = attempt => r,
                changed = stop.changed() => {
                    if changed.is_err() {
                        link.end();
                        return;
                    }
                    continue;
                }
            };
            match r {
                Ok(s) => break s,
                Err(e) if e.code() == Some(AgentCode::NotAttachable) => {
                    // An init from before agent output: it writes to the
                    // console, which is kept in console.log.
                    tracing::warn!(sandbox = %sandbox, "the guest's output cannot be attached ({e}); it is only in the console log");
                    link.end();
                    return;
                }
                Err(e @ ClientError::Refused(_)) => {
                    // Something other than the VMM's socket is at its path (a
                    // compromised VMM planted a link): never retried.
                    tracing::warn!(sandbox = %sandbox, "the workload's output cannot be attached: {e}");
                    link.end();
                    return;
                }
                Err(e) => {
                    tracing::trace!(sandbox = %sandbox, "attaching to the guest agent: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => delay = (delay * 2).min(RETRY_MAX),
                        changed = stop.changed() => if changed.is_err() {
                            link.end();
                            return;
                        }
                    }
                }
            }
        };
        tracing::debug!(sandbox = %sandbox, pid = session.pid, "attached to the workload's output");
        let stdin = session.stdin.map(|s| Arc::new(tokio::sync::Mutex::new(s)));
        if let Some((rows, cols)) = link.up(stdin, session.control.clone()) {
            let _ = session.control.resize(rows, cols).await;
        }
        let mut output = session.output;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, output.next())
                        .await
                        .unwrap_or(Err(ClientError::Closed("the VMM had ended"))),
                    None => output.next().await,
                }
            };
            let ev = tokio::select! {
                ev = next => ev,
                _ = stop.changed(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                    continue;
                }
            };
            match ev {
                Ok(Event::Stdout(b)) => logs.write(Stream::Stdout, &b),
                Ok(Event::Stderr(b)) => logs.write(Stream::Stderr, &b),
                Ok(Event::Exited(_)) => break 'run,
                Err(e) => {
                    // The guest went down (stop, kill, crash) or another host
                    // took the session: the exit status comes from the VMM.
                    tracing::debug!(sandbox = %sandbox, "the workload's output ended: {e}");
                    if deadline.is_some() || *stop.borrow() {
                        break 'run;
                    }
                    continue 'run;
                }
            }
        }
    }
    link.end();
}
