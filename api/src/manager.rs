//! The sandbox manager: the single owner of sandbox state. It keeps every
//! sandbox in memory, persists each change to the database before anyone
//! can observe it, supervises running VMMs (pidfd), collects their output
//! into the logs, and applies restart policies and auto-remove.
//!
//! Locking: each sandbox has an async operation lock (start, stop, kill,
//! restart, remove are serialised per sandbox) and a short sync lock on
//! its row. The supervisor never takes the operation lock to record an
//! exit, so an operation may hold it while waiting for an exit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mvm_api::sandbox::{CreateRequest, CreateResponse, SandboxInfo, SandboxSummary, WaitResponse};
use mvm_api::{ApiError, ErrorCode};
use mvm_protocol::agent::signal;
use mvm_runtime::state::{self, Op};
use mvm_runtime::{restart, Intent, Runtime, RuntimeError, State, Status, VmmProcess};

use crate::convert;
use tokio::sync::watch;

use crate::db::{Db, DbError, Internal, Row};
use crate::loghub::LogHub;
use crate::network::{Networks, SandboxNet, Who};
use crate::output::{self, Link};

/// Result of manager operations: API errors with stable codes.
pub type Result<T> = std::result::Result<T, ApiError>;

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    err(ErrorCode::Internal, e.to_string())
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NameTaken(_) => err(ErrorCode::Conflict, e.to_string()),
            e => internal(e),
        }
    }
}

fn runtime_err(e: RuntimeError) -> ApiError {
    err(convert::error_code(e.kind()), e.to_string())
}

/// Now, RFC 3339 with nanoseconds.
pub fn now() -> String {
    mvm_runtime::logs::now_rfc3339()
}

/// What waiters watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Snap {
    /// Lifecycle state.
    pub status: Status,
    /// Runs ended so far.
    pub exits: u64,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    /// Error of the last run.
    pub error: Option<String>,
    /// The sandbox is gone.
    pub removed: bool,
}

/// One sandbox.
pub struct Entry {
    /// Id.
    pub id: String,
    row: Mutex<Row>,
    op: tokio::sync::Mutex<()>,
    watch: watch::Sender<Snap>,
    /// Workload logs and the attach fan-out.
    pub logs: Arc<LogHub>,
    /// The current run's agent session (stdin, resize).
    pub link: Arc<Link>,
}

impl Entry {
    fn new(row: Row, hub: LogHub) -> Self {
        let snap = snap_of(&row, false);
        let (watch, _) = watch::channel(snap);
        Self {
            id: row.spec.id.clone(),
            row: Mutex::new(row),
            op: tokio::sync::Mutex::new(()),
            watch,
            logs: Arc::new(hub),
            link: Arc::new(Link::default()),
        }
    }

    fn row(&self) -> MutexGuard<'_, Row> {
        self.row.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the row.
    pub fn snapshot(&self) -> Row {
        self.row().clone()
    }

    /// Subscribe to state changes.
    pub fn subscribe(&self) -> watch::Receiver<Snap> {
        self.watch.subscribe()
    }
}

fn snap_of(row: &Row, removed: bool) -> Snap {
    Snap {
        status: row.state.status,
        exits: row.internal.exits,
        exit_code: row.state.exit_code,
        error: row.state.error.clone(),
        removed,
    }
}

/// The exit of a removed sandbox, kept for late `wait`s (`run --rm`).
#[derive(Debug, Clone)]
struct Tomb {
    exit_code: i32,
    error: Option<String>,
    at: Instant,
}

const TOMB_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Entry>>,
    /// name -> id; an empty id is a reservation by a create in progress.
    names: HashMap<String, String>,
    tombs: HashMap<String, Tomb>,
}

/// The manager.
pub struct Manager {
    rt: Runtime,
    db: Db,
    net: Networks,
    inner: Mutex<Inner>,
    /// Machine mode: the host directories the machine shares writable at
    /// their host paths (`--machine-share`); bind mounts must be inside
    /// one, since any other path in the machine is its read-only view
    /// of the host root, whose writes would never reach the host.
    machine_shares: std::sync::OnceLock<Vec<std::path::PathBuf>>,
}

/// How long to wait for a VMM to end after SIGTERM or SIGKILL.
const VMM_GRACE: Duration = Duration::from_secs(10);

/// How long stop and kill look for the guest agent before falling back to
/// signalling the VMM.
const AGENT_CONNECT: Duration = Duration::from_secs(2);
/// How long the kernel may take to report a cgroup frozen or thawed (it
/// waits for every task to reach a safe point: a vCPU leaves KVM_RUN).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

impl Manager {
    /// A manager over `rt` and `db` (call [`Manager::recover`] next).
    pub fn new(rt: Runtime, db: Db, net: Networks) -> Arc<Self> {
        Arc::new(Self {
            rt,
            db,
            net,
            inner: Mutex::new(Inner::default()),
            machine_shares: std::sync::OnceLock::new(),
        })
    }

    /// Machine mode: bind mounts are allowed only inside `shares` (set
    /// once, before serving).
    pub fn set_machine_shares(&self, shares: Vec<std::path::PathBuf>) {
        let _ = self.machine_shares.set(shares);
    }

    /// In machine mode, refuse a bind mount whose (canonical) source is
    /// not inside a directory the machine shares with the host, naming
    /// the shared ones.
    fn check_machine_binds(&self, mounts: &[mvm_runtime::MountSpec]) -> Result<()> {
        let Some(shares) = self.machine_shares.get() else {
            return Ok(());
        };
        for m in mounts {
            let mvm_runtime::MountSpec::Bind { source, .. } = m else {
                continue;
            };
            // A missing or relative source is refused by the runtime's
            // own checks, with their message.
            let Ok(real) = std::fs::canonicalize(source) else {
                continue;
            };
            if !shares.iter().any(|s| real.starts_with(s)) {
                let list: Vec<String> = shares.iter().map(|p| p.display().to_string()).collect();
                return Err(err(
                    ErrorCode::BadRequest,
                    format!(
                        "bind mount source {} is not shared with the mvm machine, which shares {} (your home directory and the directory the machine was started from, writable at the same paths); use a directory under one of them, or stop the machine and start it from the directory to share (mvctl machine stop; cd DIR; mvctl machine start)",
                        source.display(),
                        if list.is_empty() { "nothing".to_string() } else { list.join(", ") },
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The networks.
    pub fn networks(&self) -> &Networks {
        &self.net
    }

    /// Sandbox id to name, for network views.
    pub fn sandbox_names(&self) -> HashMap<String, String> {
        self.entries()
            .iter()
            .map(|e| (e.id.clone(), e.row().spec.name.clone()))
            .collect()
    }

    /// Names of the sandboxes whose settings name network `n`.
    pub fn network_users(&self, n: &mvm_net::NetworkSpec) -> Vec<String> {
        self.entries()
            .iter()
            .filter_map(|e| {
                let r = e.row();
                Networks::names(n, &r.internal.network).then(|| r.spec.name.clone())
            })
            .collect()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hub(&self, id: &str) -> LogHub {
        LogHub::new(self.rt.paths(id).logs, self.rt.config().log_limits)
    }

    fn persist(&self, e: &Entry, row: &Row) -> Result<()> {
        self.db.update(&e.id, &row.state, &row.internal)?;
        e.watch.send_replace(snap_of(row, false));
        Ok(())
    }

    /// Change the row of `e` with `f`, persist it, notify watchers.
    fn update<T>(&self, e: &Entry, f: impl FnOnce(&mut Row) -> T) -> Result<T> {
        let mut row = e.row();
        let mut new = row.clone();
        let out = f(&mut new);
        self.persist(e, &new)?;
        *row = new;
        Ok(out)
    }

    /// All sandboxes.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner().by_id.values().cloned().collect()
    }

    /// Find a sandbox by full id, name, or unique id prefix (>= 4).
    pub fn get(&self, key: &str) -> Result<Arc<Entry>> {
        let inner = self.inner();
        if let Some(e) = inner.by_id.get(key) {
            return Ok(e.clone());
        }
        if let Some(e) = inner.names.get(key).and_then(|id| inner.by_id.get(id)) {
            return Ok(e.clone());
        }
        if mvm_runtime::names::is_id_prefix(key) {
            let mut found = inner.by_id.iter().filter(|(id, _)| id.starts_with(key));
            if let Some((_, e)) = found.next() {
                if found.next().is_some() {
                    return Err(err(
                        ErrorCode::BadRequest,
                        format!(
                            "the id prefix {key:?} matches several sandboxes; give more characters"
                        ),
                    ));
                }
                return Ok(e.clone());
            }
        }
        Err(err(ErrorCode::NotFound, format!("no such sandbox: {key}")))
    }

    // ----- create -----

    /// Create a sandbox (disks and a row; not started).
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<CreateResponse> {
        let name = match &req.name {
            Some(n) => {
                mvm_runtime::names::validate_name(n)
                    .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
                n.clone()
            }
            None => loop {
                let n = mvm_runtime::names::generate_name();
                if !self.inner().names.contains_key(&n) {
                    break n;
                }
            },
        };
        if req.image.trim().is_empty() {
            return Err(err(
                ErrorCode::BadRequest,
                "no image given: name the image to run",
            ));
        }
        {
            let mut inner = self.inner();
            if let Some(id) = inner.names.get(&name) {
                let by = if id.is_empty() {
                    "a sandbox being created".to_string()
                } else {
                    format!("sandbox {}", &id[..12])
                };
                return Err(err(
                    ErrorCode::Conflict,
                    format!("the name {name:?} is already in use by {by}; choose another name or remove that sandbox"),
                ));
            }
            inner.names.insert(name.clone(), String::new());
        }
        let r = self.create_reserved(&name, req).await;
        if r.is_err() {
            let mut inner = self.inner();
            if inner.names.get(&name).is_some_and(|id| id.is_empty()) {
                inner.names.remove(&name);
            }
        }
        r
    }

    async fn create_reserved(
        self: &Arc<Self>,
        name: &str,
        req: CreateRequest,
    ) -> Result<CreateResponse> {
        let id = mvm_runtime::names::new_id();
        let exposed = if req.publish_all {
            self.rt
                .store()
                .resolve(&req.image)
                .map(|r| r.image_config().exposed_ports)
                .unwrap_or_default()
        } else {
            vec![]
        };
        let network = SandboxNet::from_request(&req, &exposed)?;
        self.net.check_exists(&self.db, &network.network)?;
        let rt = self.rt.clone();
        let (id2, name2) = (id.clone(), name.to_string());
        let mut sreq = convert::sandbox_request(&req).map_err(|m| err(ErrorCode::BadRequest, m))?;
        sreq.mounts = self.add_volumes_from(&req.volumes_from, sreq.mounts)?;
        self.check_machine_binds(&sreq.mounts)?;
        self.check_block_mounts(&sreq.mounts)?;
        let created = tokio::task::spawn_blocking(move || rt.create(&id2, &name2, &sreq))
            .await
            .map_err(internal)?
            .map_err(runtime_err)?;
        if let Err(e) = self.record_volumes(&created.spec).await {
            let _ = self.rt.remove(&id);
            return Err(e);
        }
        let row = Row {
            spec: created.spec,
            created: now(),
            state: state::created(),
            internal: Internal {
                network,
                ..Internal::default()
            },
        };
        if let Err(e) = self.db.insert(&row) {
            let _ = self.rt.remove(&id);
            return Err(e.into());
        }
        let entry = Arc::new(Entry::new(row, self.hub(&id)));
        let mut inner = self.inner();
        inner.names.insert(name.to_string(), id.clone());
        inner.by_id.insert(id.clone(), entry);
        tracing::info!(sandbox = %id, name, "created");
        Ok(CreateResponse {
            id,
            warnings: created.warnings,
        })
    }

    // ----- start -----

    /// Start a created or exited sandbox; from checkpoint `checkpoint`
    /// (its guest resumed where the checkpoint left it) when given.
    pub async fn start(
        self: &Arc<Self>,
        key: &str,
        checkpoint: Option<&str>,
    ) -> Result<Vec<String>> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let status = e.row().state.status;
        state::check(status, Op::Start).map_err(|m| err(ErrorCode::InvalidState, m))?;
        self.start_from(&e, true, checkpoint).await
    }

    /// Start with the operation lock held. `manual`: a user's start,
    /// which resets the restart count and the manual-stop mark.
    async fn start_locked(self: &Arc<Self>, e: &Arc<Entry>, manual: bool) -> Result<Vec<String>> {
        self.start_from(e, manual, None).await
    }

    async fn start_from(
        self: &Arc<Self>,
        e: &Arc<Entry>,
        manual: bool,
        checkpoint: Option<&str>,
    ) -> Result<Vec<String>> {
        let (spec, settings) = {
            let r = e.row();
            (r.spec.clone(), r.internal.network.clone())
        };
        if let Some(msg) = self.block_volume_conflict(&spec) {
            tracing::warn!(sandbox = %e.id, "start refused: {msg}");
            return Err(err(ErrorCode::Conflict, msg));
        }
        let rt = self.rt.clone();
        let t0 = Instant::now();
        let size = e.link.size().filter(|_| spec.process.tty);
        let who = Who {
            id: &spec.id,
            name: &spec.name,
            hostname: &spec.hostname,
            resolvable: true,
        };
        let attached = match self.net.attach(&self.db, who, &settings).await {
            Ok(a) => a,
            Err(er) => {
                tracing::warn!(sandbox = %e.id, "start failed: {}", er.message);
                let t = now();
                self.update(e, |r| {
                    r.state = state::start_failed(&r.state, &er.message, &t);
                    r.internal.vmm = None;
                })?;
                let code = e.row().state.exit_code.unwrap_or(125);
                e.logs.exited(code);
                return Err(er);
            }
        };
        let boot = attached.boot;
        let checkpoint = checkpoint.map(str::to_string);
        let started = tokio::task::spawn_blocking(move || match &checkpoint {
            Some(name) => rt.restore_with(&spec, &[], &boot, name),
            None => rt.start_with(&spec, size, &[], &boot),
        })
        .await
        .map_err(internal)?;
        let started = match started {
            Ok(s) => s,
            Err(er) => {
                if let Err(d) = self.net.detach(&self.db, &e.id).await {
                    tracing::warn!(sandbox = %e.id, "releasing its network endpoint: {}", d.message);
                }
                let msg = er.to_string();
                tracing::warn!(sandbox = %e.id, "start failed: {msg}");
                let t = now();
                self.update(e, |r| {
                    r.state = state::start_failed(&r.state, &msg, &t);
                    r.internal.vmm = None;
                })?;
                // Clients attached for this start learn that it ended.
                let code = e.row().state.exit_code.unwrap_or(125);
                e.logs.exited(code);
                return Err(runtime_err(er));
            }
        };
        let t = now();
        let proc = started.process;
        self.update(e, |r| {
            if manual {
                r.state.restart_count = 0;
                r.internal.manual_stop = false;
                r.internal.backoff_ms = None;
            }
            r.state = state::started(&r.state, proc.pid, &t);
            r.internal.vmm = Some(proc);
            r.internal.intent = Intent::None;
            if attached.ip.is_some() {
                r.internal.network.last_ip = attached.ip;
            }
        })?;
        tracing::info!(sandbox = %e.id, pid = proc.pid, elapsed_ms = t0.elapsed().as_millis() as u64, "started");
        self.supervise(e.clone(), proc);
        let mut warnings = attached.warnings;
        warnings.extend(started.warnings);
        Ok(warnings)
    }

    /// Watch a running VMM: collect the workload's output through the
    /// guest agent into the logs, and record its end.
    fn supervise(self: &Arc<Self>, e: Arc<Entry>, proc: VmmProcess) {
        let me = self.clone();
        e.logs.begin();
        e.link.begin();
        tokio::spawn(async move {
            let (stop_tx, stop_rx) = watch::channel(false);
            let open_stdin = e.row().spec.process.open_stdin;
            let pump = tokio::spawn(output::pump(
                me.rt.paths(&e.id).agent_socket(),
                e.id.clone(),
                e.logs.clone(),
                e.link.clone(),
                open_stdin,
                stop_rx,
            ));
            // How the VMM ended, when it was reaped here (a seccomp kill
            // is reported as such).
            let mut end = None;
            match proc.pidfd() {
                Ok(Some(fd)) => match fd.wait().await {
                    Ok(how) => end = how,
                    Err(er) => {
                        tracing::warn!(sandbox = %e.id, "waiting for the VMM: {er}; polling instead");
                        while proc.is_alive() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                },
                Ok(None) => {}
                Err(er) => {
                    tracing::warn!(sandbox = %e.id, "cannot watch the VMM: {er}; polling instead");
                    while proc.is_alive() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            let _ = stop_tx.send(true);
            let _ = pump.await;
            // The endpoint (TAP, rules, published ports) goes before the
            // end is visible anywhere (a `logs -f` ending, the state), so
            // whoever sees the end can bind its host ports again.
            if let Err(er) = me.net.detach(&me.db, &e.id).await {
                tracing::warn!(sandbox = %e.id, "releasing its network endpoint: {}", er.message);
            }
            e.logs.end();
            me.on_exit(&e, end).await;
        });
    }

    /// Record the end of a run; then restart or auto-remove as the policy
    /// says.
    async fn on_exit(self: &Arc<Self>, e: &Arc<Entry>, end: Option<mvm_runtime::VmmEnd>) {
        let (intent, started_at) = {
            let r = e.row();
            (r.internal.intent, r.state.started_at.clone())
        };
        let rt = self.rt.clone();
        let id = e.id.clone();
        let info = tokio::task::spawn_blocking(move || {
            let info = rt.exit_info(&id, intent, end);
            rt.after_exit(&id);
            info
        })
        .await;
        // Its TAP, rules and published ports go with the VMM (already
        // done by `supervise`; this is for a VMM that ended while mvmd was
        // down).
        if let Err(er) = self.net.detach(&self.db, &e.id).await {
            tracing::warn!(sandbox = %e.id, "releasing its network endpoint: {}", er.message);
        }
        let info = match info {
            Ok(i) => i,
            Err(er) => {
                tracing::error!(sandbox = %e.id, "exit info: {er}");
                return;
            }
        };
        let ran_for = started_at
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                (Utc::now() - t.with_timezone(&Utc))
                    .to_std()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let t = now();
        let decision = self.update(e, |r| {
            if r.state.status == Status::Removing {
                r.internal.vmm = None;
                r.internal.exits += 1;
                return None;
            }
            r.state = state::exited(&r.state, &info, &t);
            r.internal.vmm = None;
            r.internal.intent = Intent::None;
            r.internal.exits += 1;
            let policy = r.spec.lifecycle.restart_policy.clone();
            if restart::should_restart(
                &policy,
                info.exit_code,
                r.state.restart_count,
                r.internal.manual_stop,
            ) {
                let prev = r.internal.backoff_ms.map(Duration::from_millis);
                let delay = restart::next_delay(prev, ran_for);
                r.internal.backoff_ms = Some(delay.as_millis() as u64);
                r.state.status = Status::Restarting;
                r.state.restart_count += 1;
                Some(Ok(delay))
            } else if r.spec.lifecycle.auto_remove {
                Some(Err(()))
            } else {
                None
            }
        });
        tracing::info!(sandbox = %e.id, exit_code = info.exit_code, reason = ?info.reason, "exited");
        Self::announce_exit(e, info.exit_code);
        match decision {
            Ok(Some(Ok(delay))) => {
                let me = self.clone();
                let e = e.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _op = e.op.lock().await;
                    let (status, removed) = (e.row().state.status, e.watch.borrow().removed);
                    if status == Status::Restarting && !removed {
                        tracing::info!(sandbox = %e.id, ?delay, "restarting (policy)");
                        if let Err(er) = me.start_locked(&e, false).await {
                            tracing::warn!(sandbox = %e.id, "restart failed: {}", er.message);
                        }
                    }
                });
            }
            Ok(Some(Err(()))) => {
                let me = self.clone();
                let id = e.id.clone();
                tokio::spawn(async move {
                    // --rm takes the sandbox's anonymous volumes along.
                    if let Err(er) = me.remove(&id, false, true).await {
                        if er.code != ErrorCode::NotFound {
                            tracing::warn!(sandbox = %id, "auto-remove failed: {}", er.message);
                        }
                    }
                });
            }
            Ok(None) => {}
            Err(er) => tracing::error!(sandbox = %e.id, "recording the exit: {}", er.message),
        }
    }

    /// Tell attached clients how the run ended (after the state has it).
    fn announce_exit(e: &Entry, exit_code: i32) {
        e.logs.exited(exit_code);
    }

    /// Wait until the run that is going on now has ended.
    async fn wait_exit(&self, e: &Entry, exits_before: u64, timeout: Duration) -> bool {
        let mut rx = e.subscribe();
        let r = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.exits > exits_before || s.removed),
        )
        .await;
        matches!(r, Ok(Ok(_)))
    }

    // ----- stop / kill -----

    /// Stop: the stop signal, `timeout` to end, then the VMM is killed.
    pub async fn stop(self: &Arc<Self>, key: &str, timeout: Option<u64>) -> Result<()> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        self.stop_locked(&e, timeout).await
    }

    async fn stop_locked(self: &Arc<Self>, e: &Arc<Entry>, timeout: Option<u64>) -> Result<()> {
        let (status, vmm, exits, stop_timeout, stop_signal) = {
            let r = e.row();
            (
                r.state.status,
                r.internal.vmm,
                r.internal.exits,
                r.spec.lifecycle.stop_timeout,
                r.spec.lifecycle.stop_signal_number(),
            )
        };
        if status == Status::Restarting {
            self.update(e, |r| {
                r.state.status = Status::Exited;
                r.internal.manual_stop = true;
            })?;
            return Ok(());
        }
        state::check(status, Op::Stop).map_err(|m| err(ErrorCode::InvalidState, m))?;
        let Some(vmm) = vmm else {
            return Err(internal("the sandbox is running but has no VMM on record"));
        };
        self.thaw_for(e).await?;
        let timeout_secs = timeout.unwrap_or(stop_timeout);
        self.update(e, |r| {
            r.internal.intent = Intent::Stop {
                signal: stop_signal,
                timeout_secs,
            };
            r.internal.manual_stop = true;
        })?;
        let timeout = Duration::from_secs(timeout_secs);
        // The guest agent sends the stop signal to the workload, waits
        // the timeout, SIGKILLs it, and the guest powers off. Without an
        // agent (still booting, or an init without one) SIGTERM makes the
        // VMM end the guest at once.
        let sig = stop_signal;
        match self.rt.agent(&e.id, AGENT_CONNECT).await {
            Ok(mut c) => {
                tokio::spawn(async move {
                    if let Err(er) = c.shutdown(sig, timeout).await {
                        tracing::debug!("agent shutdown: {er}");
                    }
                });
                if self.wait_exit(e, exits, timeout + VMM_GRACE).await {
                    return Ok(());
                }
                tracing::warn!(sandbox = %e.id, "the guest did not power off after the agent's shutdown; sending SIGTERM to the VMM");
                let _ = vmm.signal(libc::SIGTERM);
            }
            Err(er) => {
                tracing::debug!(sandbox = %e.id, "no guest agent ({er}); sending SIGTERM to the VMM");
                let _ = vmm.signal(libc::SIGTERM);
            }
        }
        if self.wait_exit(e, exits, VMM_GRACE.max(timeout)).await {
            return Ok(());
        }
        tracing::warn!(sandbox = %e.id, "the VMM did not end after SIGTERM; killing it");
        let _ = vmm.signal(libc::SIGKILL);
        if self.wait_exit(e, exits, VMM_GRACE).await {
            return Ok(());
        }
        Err(internal(format!(
            "the VMM (pid {}) did not end after SIGKILL; check the host",
            vmm.pid
        )))
    }

    /// Kill: SIGKILL ends the microVM; other signals go to the workload.
    pub async fn kill(self: &Arc<Self>, key: &str, sig: &str) -> Result<()> {
        let n = signal::parse(sig).ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("invalid signal {sig:?}: use a name like SIGKILL or a number from 1 to 64"),
            )
        })?;
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let (status, vmm, exits) = {
            let r = e.row();
            (r.state.status, r.internal.vmm, r.internal.exits)
        };
        state::check(status, Op::Stop).map_err(|m| err(ErrorCode::InvalidState, m))?;
        if status == Status::Restarting {
            self.update(&e, |r| {
                r.state.status = Status::Exited;
                r.internal.manual_stop = true;
            })?;
            return Ok(());
        }
        let Some(vmm) = vmm else {
            return Err(internal("the sandbox is running but has no VMM on record"));
        };
        if n != libc::SIGKILL {
            self.thaw_for(&e).await?;
            // The workload gets the signal through the guest agent, as
            // `docker kill -s` delivers it to the container's process.
            match self.rt.agent(&e.id, AGENT_CONNECT).await {
                Ok(mut c) => {
                    return c
                        .signal(mvm_protocol::agent::Target::Main, n)
                        .await
                        .map_err(|er| err(ErrorCode::InvalidState, er.to_string()));
                }
                Err(er) => {
                    tracing::debug!(sandbox = %e.id, "no guest agent ({er}); the VMM gets the signal");
                }
            }
        }
        let vmm_signal = match n {
            libc::SIGKILL => libc::SIGKILL,
            // Without the guest agent these end the microVM (the workload
            // is reported as killed by that signal).
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP => libc::SIGTERM,
            _ => {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("signal {sig} can only be delivered to the workload by the guest agent, which this sandbox does not have; use SIGKILL, SIGTERM, SIGINT, SIGQUIT or SIGHUP"),
                ))
            }
        };
        self.update(&e, |r| {
            r.internal.intent = Intent::Kill { signal: n };
            r.internal.manual_stop = true;
        })?;
        let _ = vmm.signal(vmm_signal);
        if self.wait_exit(&e, exits, VMM_GRACE).await {
            return Ok(());
        }
        let _ = vmm.signal(libc::SIGKILL);
        if self.wait_exit(&e, exits, VMM_GRACE).await {
            return Ok(());
        }
        Err(internal(format!(
            "the VMM (pid {}) did not end after SIGKILL",
            vmm.pid
        )))
    }

    // ----- checkpoints -----

    /// Checkpoint a running sandbox (`docker checkpoint create`): it
    /// stops once the checkpoint is made, unless `leave_running`.
    pub async fn checkpoint_create(
        self: &Arc<Self>,
        key: &str,
        name: &str,
        leave_running: bool,
    ) -> Result<mvm_runtime::checkpoint::CheckpointInfo> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let (spec, status, paused, exits, manual_stop) = {
            let r = e.row();
            (
                r.spec.clone(),
                r.state.status,
                r.state.paused,
                r.internal.exits,
                r.internal.manual_stop,
            )
        };
        if status != Status::Running {
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "sandbox {} is not running; only a running sandbox can be checkpointed",
                    spec.name
                ),
            ));
        }
        if paused {
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "sandbox {} is paused; unpause it first (mvctl unpause {0})",
                    spec.name
                ),
            ));
        }
        if mvm_runtime::checkpoint::path(&self.rt.paths(&e.id), name)
            .map_err(|er| err(ErrorCode::BadRequest, er.to_string()))?
            .exists()
        {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "sandbox {} already has a checkpoint named {name}",
                    spec.name
                ),
            ));
        }
        if !leave_running {
            // The end that follows is asked for: no restart policy.
            self.update(&e, |r| r.internal.manual_stop = true)?;
        }
        let rt = self.rt.clone();
        let n = name.to_string();
        let made =
            tokio::task::spawn_blocking(move || rt.checkpoint_create(&spec, &n, leave_running))
                .await
                .map_err(internal)?;
        let info = match made {
            Ok(i) => i,
            Err(er) => {
                if !leave_running {
                    self.update(&e, |r| r.internal.manual_stop = manual_stop)?;
                }
                tracing::warn!(sandbox = %e.id, "checkpoint {name} failed: {er}");
                return Err(runtime_err(er));
            }
        };
        tracing::info!(sandbox = %e.id, checkpoint = name, paused_us = info.paused_us, memory_bytes = info.memory_bytes, "checkpoint made");
        // As with Docker, the sandbox has stopped when the call returns.
        if !leave_running && !self.wait_exit(&e, exits, VMM_GRACE).await {
            tracing::warn!(sandbox = %e.id, "the VMM did not end within {VMM_GRACE:?} of its checkpoint");
        }
        Ok(info)
    }

    /// The checkpoints of a sandbox, oldest first.
    pub fn checkpoint_list(
        &self,
        key: &str,
    ) -> Result<Vec<mvm_runtime::checkpoint::CheckpointInfo>> {
        let e = self.get(key)?;
        self.rt.checkpoint_list(&e.id).map_err(runtime_err)
    }

    /// Remove a checkpoint of a sandbox.
    pub async fn checkpoint_remove(self: &Arc<Self>, key: &str, name: &str) -> Result<()> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let rt = self.rt.clone();
        let (id, n) = (e.id.clone(), name.to_string());
        tokio::task::spawn_blocking(move || rt.checkpoint_remove(&id, &n))
            .await
            .map_err(internal)?
            .map_err(runtime_err)
    }

    // ----- pause / unpause -----

    /// Pause: freeze the running microVM (its VMM's cgroup), as `docker
    /// pause` freezes a container's processes. The guest stops as a whole
    /// and keeps its memory; exec, stats and top wait for `unpause`.
    pub async fn pause(self: &Arc<Self>, key: &str) -> Result<()> {
        self.set_paused(key, true).await
    }

    /// Unpause: thaw a paused microVM.
    pub async fn unpause(self: &Arc<Self>, key: &str) -> Result<()> {
        self.set_paused(key, false).await
    }

    async fn set_paused(self: &Arc<Self>, key: &str, paused: bool) -> Result<()> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let (name, status, was) = {
            let r = e.row();
            (r.spec.name.clone(), r.state.status, r.state.paused)
        };
        if status != Status::Running {
            return Err(err(
                ErrorCode::InvalidState,
                format!("sandbox {name} is not running; only a running sandbox can be paused or unpaused"),
            ));
        }
        if was == paused {
            return Err(err(
                ErrorCode::Conflict,
                if paused {
                    format!("sandbox {name} is already paused")
                } else {
                    format!("sandbox {name} is not paused")
                },
            ));
        }
        self.freeze(&e, paused).await?;
        self.update(&e, |r| r.state.paused = paused)?;
        tracing::info!(sandbox = %e.id, "{}", if paused { "paused" } else { "unpaused" });
        Ok(())
    }

    /// Freeze or thaw `e`'s cgroup (blocking work off the async threads).
    async fn freeze(&self, e: &Entry, frozen: bool) -> Result<()> {
        let id = e.id.clone();
        tokio::task::spawn_blocking(move || {
            mvm_runtime::cgroup::set_frozen(&id, frozen, FREEZE_TIMEOUT)
        })
        .await
        .map_err(internal)?
        .map_err(|er| err(ErrorCode::InvalidState, er.to_string()))
    }

    /// Thaw a paused sandbox before an operation that needs its guest
    /// (stop's agent shutdown, a signal through the agent), as Docker
    /// unpauses a container it stops.
    async fn thaw_for(&self, e: &Entry) -> Result<()> {
        if !e.row().state.paused {
            return Ok(());
        }
        self.freeze(e, false).await?;
        self.update(e, |r| r.state.paused = false)?;
        Ok(())
    }

    /// Restart: stop if running, then start.
    pub async fn restart(self: &Arc<Self>, key: &str, timeout: Option<u64>) -> Result<Vec<String>> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let status = e.row().state.status;
        if matches!(status, Status::Running | Status::Restarting) {
            self.stop_locked(&e, timeout).await?;
        }
        let status = e.row().state.status;
        state::check(status, Op::Start).map_err(|m| err(ErrorCode::InvalidState, m))?;
        self.start_locked(&e, true).await
    }

    // ----- remove -----

    /// Remove (a running sandbox only with `force`, which kills it), and
    /// with `volumes` its anonymous volumes no other sandbox uses.
    pub async fn remove(self: &Arc<Self>, key: &str, force: bool, volumes: bool) -> Result<()> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        if e.watch.borrow().removed {
            return Err(err(ErrorCode::NotFound, format!("no such sandbox: {key}")));
        }
        let (status, vmm, exits) = {
            let r = e.row();
            (r.state.status, r.internal.vmm, r.internal.exits)
        };
        if !force {
            state::check(status, Op::Remove).map_err(|m| err(ErrorCode::Conflict, m))?;
        }
        self.update(&e, |r| {
            r.internal.manual_stop = true;
            if matches!(r.state.status, Status::Running) {
                r.internal.intent = Intent::Kill {
                    signal: libc::SIGKILL,
                };
            }
            r.state.status = Status::Removing;
        })?;
        if let (Status::Running, Some(vmm)) = (status, vmm) {
            let _ = vmm.signal(libc::SIGKILL);
            if !self.wait_exit(&e, exits, VMM_GRACE).await {
                return Err(internal(format!(
                    "the VMM (pid {}) did not end after SIGKILL",
                    vmm.pid
                )));
            }
        }
        self.finish_remove(&e, volumes).await
    }

    /// Release the sandbox's network endpoint, delete its files and row;
    /// with `volumes`, its anonymous volumes too, before waiters hear of the
    /// removal (so `run --rm` returns with them gone).
    async fn finish_remove(&self, e: &Arc<Entry>, volumes: bool) -> Result<()> {
        self.net.detach(&self.db, &e.id).await?;
        let rt = self.rt.clone();
        let id = e.id.clone();
        tokio::task::spawn_blocking(move || rt.remove(&id))
            .await
            .map_err(internal)?
            .map_err(runtime_err)?;
        self.db.delete(&e.id)?;
        let row = e.snapshot();
        {
            let mut inner = self.inner();
            inner.by_id.remove(&e.id);
            if inner.names.get(&row.spec.name) == Some(&e.id) {
                inner.names.remove(&row.spec.name);
            }
            let tomb = Tomb {
                exit_code: row.state.exit_code.unwrap_or(0),
                error: row.state.error.clone(),
                at: Instant::now(),
            };
            inner.tombs.retain(|_, t| t.at.elapsed() < TOMB_TTL);
            inner.tombs.insert(e.id.clone(), tomb.clone());
            inner.tombs.insert(row.spec.name.clone(), tomb);
        }
        if volumes {
            self.remove_anonymous_volumes(&row.spec).await;
        }
        let mut s = snap_of(&row, true);
        s.status = Status::Removing;
        e.watch.send_replace(s);
        tracing::info!(sandbox = %e.id, "removed");
        Ok(())
    }

    // ----- wait -----

    /// Block until `condition` holds: `not-running` (default),
    /// `next-exit` or `removed`.
    pub async fn wait(&self, key: &str, condition: &str) -> Result<WaitResponse> {
        let e = match self.get(key) {
            Ok(e) => e,
            Err(er) => {
                if let Some(t) = self.inner().tombs.get(key).cloned() {
                    return Ok(WaitResponse {
                        exit_code: t.exit_code,
                        error: t.error,
                    });
                }
                return Err(er);
            }
        };
        let mut rx = e.subscribe();
        let initial = rx.borrow().clone();
        let done: Box<dyn Fn(&Snap) -> bool + Send + Sync> = match condition {
            "" | "not-running" => Box::new(|s: &Snap| {
                s.removed || !matches!(s.status, Status::Running | Status::Restarting)
            }),
            "next-exit" => {
                let n = initial.exits;
                Box::new(move |s: &Snap| s.removed || s.exits > n)
            }
            "removed" => Box::new(|s: &Snap| s.removed),
            other => {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!(
                        "invalid wait condition {other:?}: use not-running, next-exit or removed"
                    ),
                ))
            }
        };
        drop(e);
        let r = rx.wait_for(|s| done(s)).await.map(|s| s.clone());
        let s = r.unwrap_or_else(|_| rx.borrow().clone());
        Ok(WaitResponse {
            exit_code: s.exit_code.unwrap_or(0),
            error: s.error,
        })
    }

    // ----- views -----

    /// `GET /v1/sandboxes/{id}`.
    pub fn inspect(&self, key: &str) -> Result<SandboxInfo> {
        let e = self.get(key)?;
        Ok(self.info_of(&e.snapshot()))
    }

    fn info_of(&self, r: &Row) -> SandboxInfo {
        SandboxInfo {
            id: r.spec.id.clone(),
            name: r.spec.name.clone(),
            image: r.spec.image.clone(),
            image_id: r.spec.image_id.clone(),
            created: r.created.clone(),
            config: convert::process_config(&r.spec),
            host_config: convert::host_config(&r.spec),
            state: convert::state(&r.state),
            paths: self.rt.paths(&r.spec.id).as_map(),
            mounts: convert::mount_points(&r.spec, &self.rt.volumes()),
            network_settings: self.net.settings(&self.db, &r.spec.id, &r.internal.network),
        }
    }

    /// `GET /v1/sandboxes`.
    pub fn list(&self, all: bool, labels: &[(String, Option<String>)]) -> Vec<SandboxSummary> {
        let mut rows: Vec<Row> = self.entries().iter().map(|e| e.snapshot()).collect();
        let mut ports = self.net.ports(&self.db);
        rows.sort_by(|a, b| b.created.cmp(&a.created));
        rows.into_iter()
            .filter(|r| all || matches!(r.state.status, Status::Running | Status::Restarting))
            .filter(|r| {
                labels.iter().all(|(k, v)| match (r.spec.labels.get(k), v) {
                    (Some(_), None) => true,
                    (Some(have), Some(want)) => have == want,
                    (None, _) => false,
                })
            })
            .map(|r| SandboxSummary {
                id: r.spec.id.clone(),
                name: r.spec.name.clone(),
                image: r.spec.image.clone(),
                command: r.spec.process.argv().join(" "),
                created: r.created.clone(),
                status: convert::status(r.state.status),
                status_text: status_text(&r.state),
                exit_code: r.state.exit_code,
                labels: r.spec.labels.clone(),
                ports: ports.remove(&r.spec.id).unwrap_or_default(),
            })
            .collect()
    }

    /// Image ids in use by sandboxes.
    pub fn images_in_use(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|e| e.row().spec.image_id.clone())
            .collect()
    }

    /// Counts by state.
    pub fn counts(&self) -> (u64, u64) {
        let entries = self.entries();
        let running = entries
            .iter()
            .filter(|e| matches!(e.row().state.status, Status::Running | Status::Restarting))
            .count() as u64;
        (entries.len() as u64, running)
    }

    // ----- network connect / disconnect -----

    /// Change the networks of a sandbox that is not running (`network
    /// connect` and `disconnect`: `change` gets its settings and name and
    /// returns the new settings), for its next start. A running sandbox is
    /// refused: its NICs are virtio-mmio devices fixed when its microVM
    /// booted (no hotplug), so the change could only take effect at a
    /// restart, which is the user's to decide.
    pub async fn change_networks(
        self: &Arc<Self>,
        key: &str,
        what: &str,
        change: impl FnOnce(&Db, &SandboxNet, &str) -> Result<SandboxNet>,
    ) -> Result<()> {
        let e = self.get(key)?;
        let _op = e.op.lock().await;
        let (status, name, settings) = {
            let r = e.row();
            (
                r.state.status,
                r.spec.name.clone(),
                r.internal.network.clone(),
            )
        };
        match status {
            Status::Created | Status::Exited => {}
            Status::Running | Status::Restarting => {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!(
                        "sandbox {name} is running: a microVM's network devices are fixed when it boots (virtio-mmio has no hotplug), so network {what} works on a stopped sandbox only; stop it first (mvctl stop {name}), then start it again"
                    ),
                ))
            }
            Status::Removing => {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("sandbox {name} is being removed"),
                ))
            }
        }
        let new = change(&self.db, &settings, &name)?;
        self.update(&e, |r| r.internal.network = new)?;
        tracing::info!(sandbox = %e.id, "network {what}: networks changed for the next start");
        Ok(())
    }

    // ----- recovery -----

    /// Load the database and bring it in line with the host: re-attach to
    /// live VMMs, record the end of dead ones, finish interrupted removals,
    /// delete orphaned directories, and apply restart policies.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let rows = self.db.load()?;
        // Before the API answers, so no import is running yet.
        self.rt.volumes().clean_staging();
        let known: std::collections::HashSet<String> =
            rows.iter().map(|r| r.spec.id.clone()).collect();
        for id in self.rt.sandbox_dirs() {
            if !known.contains(&id) {
                tracing::info!(sandbox = %id, "removing an orphaned sandbox directory (no database row)");
                let _ = self.rt.remove(&id);
            }
        }
        if let Err(er) = self.net.detach_orphans(&self.db, &known).await {
            tracing::warn!("removing orphaned network endpoints: {}", er.message);
        }
        let mut entries = Vec::new();
        {
            let mut inner = self.inner();
            for row in rows {
                let id = row.spec.id.clone();
                inner.names.insert(row.spec.name.clone(), id.clone());
                let e = Arc::new(Entry::new(row, self.hub(&id)));
                inner.by_id.insert(id, e.clone());
                entries.push(e);
            }
        }
        for e in entries {
            let row = e.snapshot();
            let alive = row.internal.vmm.filter(|v| v.is_alive());
            match row.state.status {
                Status::Removing => {
                    if let Some(v) = alive {
                        let _ = v.signal(libc::SIGKILL);
                    }
                    // Whether `rm -v` was asked is not stored: --rm's
                    // anonymous volumes go, others stay (prune finds them).
                    let volumes = row.spec.lifecycle.auto_remove;
                    if let Err(er) = self.finish_remove(&e, volumes).await {
                        tracing::warn!(sandbox = %e.id, "finishing an interrupted removal: {}", er.message);
                    }
                }
                Status::Running => match alive {
                    Some(v) => {
                        tracing::info!(sandbox = %e.id, pid = v.pid, "re-attached to a running VMM");
                        self.supervise(e.clone(), v);
                    }
                    None => {
                        tracing::info!(sandbox = %e.id, "its VMM ended while mvmd was down");
                        self.on_exit(&e, None).await;
                    }
                },
                Status::Restarting => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _op = e.op.lock().await;
                        if e.row().state.status == Status::Restarting {
                            let _ = me.start_locked(&e, false).await;
                        }
                    });
                }
                Status::Created | Status::Exited => {
                    // Nothing of this sandbox may run now. A start that
                    // mvmd did not live to record leaves its virtio-fs
                    // backends (started before the VMM) waiting for a
                    // VMM that never connects, and they would stay until
                    // the next start or removal: stop them, with the
                    // sockets and cgroup of that boot.
                    let rt = self.rt.clone();
                    let id = e.id.clone();
                    let cleaned = tokio::task::spawn_blocking(move || {
                        if let Some(v) = alive {
                            // A VMM whose start was not recorded (crash in
                            // between): it is not ours to keep.
                            let _ = v.signal(libc::SIGKILL);
                            if let Ok(Some(fd)) = v.pidfd() {
                                let _ = fd.wait_blocking(Duration::from_secs(5));
                            }
                        }
                        rt.after_exit(&id);
                    })
                    .await;
                    if let Err(er) = cleaned {
                        tracing::warn!(sandbox = %e.id, "cleaning up after an unrecorded start: {er}");
                    }
                    let policy = row.spec.lifecycle.restart_policy.clone();
                    if row.state.status == Status::Exited
                        && restart::restart_on_daemon_start(&policy, row.internal.manual_stop)
                    {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let _op = e.op.lock().await;
                            if e.row().state.status == Status::Exited {
                                tracing::info!(sandbox = %e.id, "restarting on daemon start (policy)");
                                let _ = me.start_locked(&e, false).await;
                            }
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Docker's `Up 5 seconds` / `Exited (0) 2 minutes ago`.
pub fn status_text(s: &State) -> String {
    let since = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                human_duration(
                    (Utc::now() - t.with_timezone(&Utc))
                        .to_std()
                        .unwrap_or_default(),
                )
            })
            .unwrap_or_else(|| "a while".into())
    };
    match s.status {
        Status::Created => "Created".into(),
        Status::Running if s.paused => format!("Up {} (Paused)", since(&s.started_at)),
        Status::Running => format!("Up {}", since(&s.started_at)),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code.unwrap_or(0),
            since(&s.finished_at)
        ),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            since(&s.finished_at)
        ),
        Status::Removing => "Removal In Progress".into(),
    }
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86400),
        1_209_600..=4_838_399 => format!("{} weeks", s / 604_800),
        4_838_400..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// Label filters `k` or `k=v`.
pub fn parse_label_filters(values: &[String]) -> Vec<(String, Option<String>)> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (v.clone(), None),
        })
        .collect()
}

/// Labels as a map (for summaries).
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(5)), "5 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
    }
}
