//! The task service containerd talks to (task API v2 over ttrpc), one
//! container per shim, each container one microVM booted through
//! mvm-runtime's transient sandboxes (`Runtime::start_transient_with_shares`):
//! the same artifact discovery, init archive, launch files, virtio-fs
//! backends, VMM spawning and exit mapping as mvmd and the builder.
//!
//! # Lifecycle
//!
//! - `Create` checks the bundle (`config.json`, [`crate::bundle`]) and
//!   prepares the root ([`crate::rootfs`]); nothing runs yet. The pid it
//!   reports is the shim's own until `Start` boots the microVM; from then
//!   on the task's pid is the VMM's (the host process that *is* the
//!   container, as runc's pid is its init's).
//! - `Start` boots the microVM with the workload's output on the guest
//!   agent and attaches to it over vsock: containerd's FIFOs are pumped
//!   to and from the session ([`crate::stdio`]). The exit status is the
//!   workload's as the agent reports it, or, when the microVM ended
//!   without one (killed, crashed), the runtime's exit mapping of the
//!   VMM's status file.
//! - `Exec` runs more processes through the agent; their pids are guest
//!   pids, as `Pids` (the agent's process list) shows them.
//! - `Kill` sends signals through the agent; SIGKILL to the task kills the
//!   VMM, which ends everything in the guest at once.
//! - `Delete` removes the microVM's files and unmounts the root.
//!
//! # Resilience
//!
//! The VMM and its virtiofsd backends are spawned with
//! `die_with_parent`: the kernel kills them when the shim dies, even by
//! SIGKILL. The kernel ties that to the spawning thread, so the shim runs
//! a single-threaded tokio runtime (`main.rs`) and spawns from it. A
//! record in the bundle ([`Record`]) lets containerd's `shim delete`
//! (after a shim died) remove what is left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, TtrpcResult};
use mvm_protocol::agent::client::{AgentClient, ExecControl};
use mvm_protocol::agent::message::{Exec, Target};
use mvm_runtime::{Intent, Root, Runtime, RuntimeConfig, Transient, TransientSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex, Notify};

use crate::bundle;
use crate::rootfs::{self, PreparedRoot, RootMount};
use crate::stdio::{self, Fifos};

/// How long a guest gets to boot before its agent must answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The record of a container's microVM, in its bundle.
pub const RECORD_FILE: &str = "mvm-shim.json";

/// What `shim delete` needs after the shim died.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// The transient sandbox's directory.
    pub sandbox_dir: Option<PathBuf>,
    /// The overlay root we mounted, if any.
    pub mounted_root: Option<PathBuf>,
}

impl Record {
    fn write(&self, bundle: &Path) {
        let json = serde_json::to_vec(self).unwrap_or_default();
        if let Err(e) = mvm_vmm_api::write_atomic(&bundle.join(RECORD_FILE), &json) {
            log::warn!("cannot write {RECORD_FILE}: {e}");
        }
    }
}

/// A process's status, as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

/// A process (the container's init or an exec) and its end.
struct Proc {
    pid: u32,
    status: Status,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    fifos: Fifos,
    /// True once the process ended (for `Wait`).
    done: watch::Sender<bool>,
    /// Stdin close (containerd's CloseIO).
    close_stdin: Arc<Notify>,
    /// In-band resize and signals for an exec's session.
    control: Option<ExecControl>,
    /// An exec's guest pid.
    guest_pid: Option<i32>,
    /// An exec's OCI process.
    exec: Option<Exec>,
    /// The output FIFOs, opened at create or exec, taken at start.
    sinks: Option<stdio::Sinks>,
}

impl Proc {
    fn new(fifos: Fifos) -> Self {
        let sinks = Some(stdio::Sinks::open(&fifos));
        Self {
            sinks,
            pid: 0,
            status: Status::Created,
            exit_status: 0,
            exited_at: None,
            fifos,
            done: watch::channel(false).0,
            close_stdin: Arc::new(Notify::new()),
            control: None,
            guest_pid: None,
            exec: None,
        }
    }

    fn finish(&mut self, code: u32) {
        if self.status == Status::Stopped {
            return;
        }
        self.status = Status::Stopped;
        self.exit_status = code;
        self.exited_at = Some(now());
        self.control = None;
        // Stored even when nobody waits yet: `send` drops the value when
        // there is no receiver, and a `Wait` that came later (a task
        // killed, then `ctr task delete -f`) waited for ever.
        self.done.send_replace(true);
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    spec: bundle::Bundle,
    root: PreparedRoot,
    rootfs_mounts: Vec<RootMount>,
    init: Proc,
    execs: HashMap<String, Proc>,
    vm: Option<Arc<Transient>>,
    intent: Intent,
}

impl Container {
    /// The container's init (`exec_id` empty) or one of its execs.
    fn proc(&self, exec_id: &str) -> Result<&Proc, ttrpc::Error> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| err(Code::NOT_FOUND, format!("no exec {exec_id}")))
    }
}

/// The shim's state, shared by the ttrpc handlers and the tasks that pump
/// stdio and watch the microVM.
pub struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    runtime: std::sync::OnceLock<Runtime>,
    container: Mutex<Option<Container>>,
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn unimplemented(what: &str) -> ttrpc::Error {
    err(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported by the mvm runtime"),
    )
}

fn runtime_code(kind: mvm_runtime::ErrorKind) -> Code {
    match kind {
        mvm_runtime::ErrorKind::Invalid => Code::INVALID_ARGUMENT,
        mvm_runtime::ErrorKind::NotFound => Code::NOT_FOUND,
        mvm_runtime::ErrorKind::Unavailable => Code::UNAVAILABLE,
        mvm_runtime::ErrorKind::Internal => Code::INTERNAL,
    }
}

impl Service {
    /// A service publishing to containerd through `publisher`.
    pub fn new(namespace: String, exit: Arc<ExitSignal>, publisher: RemotePublisher) -> Arc<Self> {
        Arc::new(Self {
            namespace,
            exit,
            publisher,
            runtime: std::sync::OnceLock::new(),
            container: Mutex::new(None),
        })
    }

    fn runtime(&self) -> Result<&Runtime, ttrpc::Error> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = RuntimeConfig::from_env(Default::default())
            .and_then(Runtime::new)
            .map_err(|e| err(runtime_code(e.kind()), e.to_string()))?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    async fn create(&self, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let mut guard = self.container.lock().await;
        if guard.is_some() {
            return Err(err(
                Code::ALREADY_EXISTS,
                "this shim already runs a container",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(unimplemented("restoring a checkpoint"));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let stdin = !req.stdin.is_empty();
        let spec = bundle::load(&bundle_dir, &req.id, req.terminal, stdin)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        for w in &spec.warnings {
            log::warn!("{w}");
        }
        if let bundle::PodRole::Sandbox { id } = &spec.pod {
            log::info!(
                "{}: the sandbox of pod {id}: its microVM is the pod's, its process the first workload",
                req.id
            );
        }
        // The artifacts must exist before anything is prepared.
        self.runtime()?;
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let root = rootfs::prepare(&bundle_dir, &mounts)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        let record = Record {
            sandbox_dir: None,
            mounted_root: root.mounted.then(|| root.dir.clone()),
        };
        record.write(&bundle_dir);
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Proc::new(fifos);
        init.pid = std::process::id();
        let pid = init.pid;
        *guard = Some(Container {
            id: req.id.clone(),
            bundle: bundle_dir,
            spec,
            root,
            rootfs_mounts: mounts,
            init,
            execs: HashMap::new(),
            vm: None,
            intent: Intent::None,
        });
        drop(guard);
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_init(self: &Arc<Self>) -> TtrpcResult<api::StartResponse> {
        let mut guard = self.container.lock().await;
        let c = guard
            .as_mut()
            .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
        if c.init.status != Status::Created {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "the container was already started",
            ));
        }
        let rt = self.runtime()?;
        let spec = TransientSpec {
            root: Root::Directory(c.root.dir.clone()),
            process: c.spec.process.clone(),
            hostname: c.spec.hostname.clone(),
            resources: c.spec.resources,
            export_changes: false,
            die_with_parent: true,
            // No NIC: a containerd sandbox has `lo` only.
            net: Default::default(),
            files: c.spec.files.clone(),
        };
        // On this (the only) thread: the VMM's death signal is tied to it.
        let vm = rt
            .start_transient_with_shares(&spec, &c.spec.shares)
            .map_err(|e| err(runtime_code(e.kind()), e.to_string()))?;
        let vm = Arc::new(vm);
        Record {
            sandbox_dir: Some(vm.paths().dir.clone()),
            mounted_root: c.root.mounted.then(|| c.root.dir.clone()),
        }
        .write(&c.bundle);
        let pid = vm.pid() as u32;
        c.init.pid = pid;
        c.init.status = Status::Running;
        c.vm = Some(vm.clone());
        let id = c.id.clone();
        let fifos = c.init.fifos.clone();
        let sinks = c.init.sinks.take().unwrap_or_default();
        let close = c.init.close_stdin.clone();
        let stdin = c.spec.process.open_stdin;
        drop(guard);
        let this = self.clone();
        tokio::spawn(async move { this.run_init(vm, fifos, sinks, close, stdin).await });
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Attach to the workload, pump its stdio, wait for the microVM to end
    /// and report the exit.
    async fn run_init(
        self: Arc<Self>,
        vm: Arc<Transient>,
        fifos: Fifos,
        sinks: stdio::Sinks,
        close: Arc<Notify>,
        stdin: bool,
    ) {
        let mut exit = None;
        match vm.agent(AGENT_TIMEOUT).await {
            Ok(agent) => match agent.attach(stdin).await {
                Ok(session) => {
                    if let Some(s) = session.stdin {
                        stdio::pump_stdin(fifos.stdin.clone(), s, close);
                    }
                    {
                        let mut g = self.container.lock().await;
                        if let Some(c) = g.as_mut() {
                            c.init.control = Some(session.control);
                        }
                    }
                    exit = stdio::pump_output(sinks, session.output).await;
                }
                Err(e) => log::warn!("attaching to the workload: {e}"),
            },
            Err(e) => log::warn!("connecting to the guest agent: {e}"),
        }
        vm.wait().await;
        let intent = {
            let g = self.container.lock().await;
            g.as_ref().map(|c| c.intent).unwrap_or_default()
        };
        let info = vm.exit_info(intent);
        let end = vm.end();
        let log_tail = vm.vmm_log_tail(2048);
        // The container's handle is the last: `Delete` removes the files.
        drop(vm);
        let mut g = self.container.lock().await;
        let Some(c) = g.as_mut() else { return };
        let code = match (exit, c.intent) {
            // A SIGKILL of the task kills the VMM: 137, as runc's.
            (_, Intent::Kill { signal }) if signal == libc::SIGKILL => 128 + signal,
            (Some(e), _) => e.shell_code(),
            (None, _) => {
                // The runtime's mapping: a VMM killed by signal N from
                // outside is 128+N (the task's pid is the VMM's, so this
                // is what runc reports for a container's init killed so).
                let code = info.exit_code;
                log::warn!(
                    "the microVM ended without a workload exit ({}; VMM process: {end:?}): {log_tail}",
                    info.error.as_deref().unwrap_or("no detail"),
                );
                code
            }
        };
        c.init.finish(code as u32);
        log::info!("{}: the microVM ended; exit status {code}", c.id);
        // Execs cannot outlive the microVM.
        for p in c.execs.values_mut() {
            if p.status == Status::Running {
                p.finish(137);
            }
        }
        let (id, pid, at) = (c.id.clone(), c.init.pid, c.init.exited_at.clone());
        drop(g);
        if info.oom_killed {
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        }
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.clone(),
                id,
                pid,
                exit_status: code as u32,
                exited_at: at.into(),
                ..Default::default()
            }),
        )
        .await;
    }

    async fn start_exec(self: &Arc<Self>, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let (vm, exec, fifos, close, id) = {
            let g = self.container.lock().await;
            let c = g
                .as_ref()
                .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
            let p = c
                .execs
                .get(exec_id)
                .ok_or_else(|| err(Code::NOT_FOUND, format!("no exec {exec_id}")))?;
            let vm = match (&c.vm, c.init.status) {
                (Some(vm), Status::Running) => vm.clone(),
                _ => {
                    return Err(err(
                        Code::FAILED_PRECONDITION,
                        "the container is not running",
                    ))
                }
            };
            (
                vm,
                p.exec.clone().unwrap_or_default(),
                p.fifos.clone(),
                p.close_stdin.clone(),
                c.id.clone(),
            )
        };
        let sinks = {
            let mut g = self.container.lock().await;
            g.as_mut()
                .and_then(|c| c.execs.get_mut(exec_id))
                .and_then(|p| p.sinks.take())
                .unwrap_or_default()
        };
        let agent = vm
            .agent(AGENT_TIMEOUT)
            .await
            .map_err(|e| err(Code::UNAVAILABLE, format!("the guest agent: {e}")))?;
        let session = agent.exec(exec).await.map_err(|e| match e.code() {
            Some(_) => err(Code::INVALID_ARGUMENT, e.to_string()),
            None => err(Code::INTERNAL, e.to_string()),
        })?;
        let guest_pid = session.pid;
        let pid = u32::try_from(guest_pid).unwrap_or(0);
        {
            let mut g = self.container.lock().await;
            if let Some(p) = g.as_mut().and_then(|c| c.execs.get_mut(exec_id)) {
                p.pid = pid;
                p.guest_pid = Some(guest_pid);
                p.status = Status::Running;
                p.control = Some(session.control.clone());
            }
        }
        if let Some(s) = session.stdin {
            stdio::pump_stdin(fifos.stdin.clone(), s, close);
        }
        let this = self.clone();
        let eid = exec_id.to_string();
        let cid = id.clone();
        tokio::spawn(async move {
            let exit = stdio::pump_output(sinks, session.output).await;
            let code = exit.map(|e| e.shell_code()).unwrap_or(255) as u32;
            let at = {
                let mut g = this.container.lock().await;
                let Some(p) = g.as_mut().and_then(|c| c.execs.get_mut(&eid)) else {
                    return;
                };
                p.finish(code);
                p.exited_at.clone()
            };
            this.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: cid,
                    id: eid,
                    pid,
                    exit_status: code,
                    exited_at: at.into(),
                    ..Default::default()
                }),
            )
            .await;
        });
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id,
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// A fresh agent connection to the running microVM.
    async fn agent(&self) -> Result<AgentClient, ttrpc::Error> {
        let vm = {
            let g = self.container.lock().await;
            g.as_ref()
                .and_then(|c| c.vm.clone())
                .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the container is not running"))?
        };
        vm.agent(AGENT_TIMEOUT)
            .await
            .map_err(|e| err(Code::UNAVAILABLE, format!("the guest agent: {e}")))
    }

    /// Clean up the container's microVM files and root.
    fn release(c: &mut Container) {
        // Dropping the last handle kills a VMM still running and removes
        // the sandbox's files and backends.
        c.vm = None;
        rootfs::release(&c.root);
        let _ = std::fs::remove_file(c.bundle.join(RECORD_FILE));
    }
}

/// `shim delete`: containerd's cleanup after a shim died. The VMM and its
/// backends died with the shim (their death signal); what is left are
/// files, removed here, and an overlay root, unmounted.
pub fn delete_leftovers(bundle: &Path) {
    let path = bundle.join(RECORD_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    if let Some(dir) = rec.sandbox_dir {
        // Only a transient sandbox directory of this installation.
        if let Ok(cfg) = RuntimeConfig::from_env(Default::default()) {
            if dir.parent() == Some(cfg.layout.transients().as_path()) {
                if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
                    let paths = cfg.layout.transient(id);
                    mvm_runtime::share::stop_recorded(&paths);
                    let _ = std::fs::remove_file(&paths.vsock);
                    mvm_runtime::cgroup::Cgroup::remove(id);
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    if let Some(root) = rec.mounted_root {
        rootfs::release(&PreparedRoot {
            dir: root,
            mounted: true,
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// The ttrpc face of [`Service`].
#[derive(Clone)]
pub struct TaskService(pub Arc<Service>);

fn status_of(s: Status) -> api::Status {
    match s {
        Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Stopped => api::Status::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let g = self.0.container.lock().await;
        let c = g
            .as_ref()
            .filter(|c| c.id == req.id)
            .ok_or_else(|| err(Code::NOT_FOUND, format!("no container {}", req.id)))?;
        let p = c.proc(&req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: status_of(p.status).into(),
            stdin: p.fifos.stdin.clone(),
            stdout: p.fifos.stdout.clone(),
            stderr: p.fifos.stderr.clone(),
            terminal: p.fifos.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at.clone().into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        self.0
            .create(req)
            .await
            .inspect_err(|e| log::warn!("create: {e:?}"))
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if req.exec_id.is_empty() {
            self.0.start_init().await
        } else {
            self.0.start_exec(&req.exec_id).await
        }
        .inspect_err(|e| log::warn!("start: {e:?}"))
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {} exec {:?}", req.id, req.exec_id);
        let mut g = self.0.container.lock().await;
        let c = g
            .as_mut()
            .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
        if !req.exec_id.is_empty() {
            let p = c.proc(&req.exec_id)?;
            if p.status == Status::Running {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                ));
            }
            let p = c.execs.remove(&req.exec_id).expect("checked above");
            return Ok(api::DeleteResponse {
                pid: p.pid,
                exit_status: p.exit_status,
                exited_at: p.exited_at.into(),
                ..Default::default()
            });
        }
        if c.init.status == Status::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "the container is still running; kill it first",
            ));
        }
        Service::release(c);
        log::info!(
            "delete {}: the microVM's files and root are released",
            req.id
        );
        let mut c = g.take().expect("checked above");
        drop(g);
        if c.init.status == Status::Created {
            c.init.finish(0);
        }
        let (pid, status, at) = (c.init.pid, c.init.exit_status, c.init.exited_at.clone());
        let _ = c.rootfs_mounts;
        self.0
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: c.id.clone(),
                    pid,
                    exit_status: status,
                    exited_at: at.clone().into(),
                    id: c.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: at.into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        _req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let mut agent = self.0.agent().await?;
        let procs = agent
            .processes()
            .await
            .map_err(|e| err(Code::UNAVAILABLE, format!("the guest agent: {e}")))?;
        Ok(api::PidsResponse {
            processes: procs
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: u32::try_from(p.pid).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!(
            "kill {} exec {:?} signal {} all {}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| {
                err(
                    Code::INVALID_ARGUMENT,
                    format!("invalid signal {}", req.signal),
                )
            })?;
        let mut g = self.0.container.lock().await;
        let c = g
            .as_mut()
            .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
        if !req.exec_id.is_empty() {
            let p = c.proc(&req.exec_id)?;
            if p.status != Status::Running {
                return Err(err(Code::NOT_FOUND, "process already finished"));
            }
            let pid = p.guest_pid;
            drop(g);
            let mut agent = self.0.agent().await?;
            if let Some(pid) = pid {
                agent
                    .signal(Target::Pid(pid), signal)
                    .await
                    .map_err(|e| err(Code::UNAVAILABLE, e.to_string()))?;
            }
            return Ok(api::Empty::default());
        }
        match c.init.status {
            Status::Stopped => Err(err(Code::NOT_FOUND, "process already finished")),
            Status::Created => {
                // Never started: nothing runs; it ends with the signal.
                c.init.finish(128 + signal as u32);
                Ok(api::Empty::default())
            }
            Status::Running => {
                c.intent = Intent::Kill { signal };
                let vm = c.vm.clone();
                drop(g);
                if signal == libc::SIGKILL {
                    if let Some(vm) = vm {
                        vm.kill();
                    }
                    return Ok(api::Empty::default());
                }
                let mut agent = self.0.agent().await?;
                agent
                    .signal(Target::Main, signal)
                    .await
                    .map_err(|e| err(Code::UNAVAILABLE, e.to_string()))?;
                Ok(api::Empty::default())
            }
        }
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut g = self.0.container.lock().await;
        let c = g
            .as_mut()
            .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let value = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let p: oci_spec::runtime::Process = serde_json::from_slice(value).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("the exec's process spec is not valid: {e}"),
            )
        })?;
        let args = p.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(err(Code::INVALID_ARGUMENT, "the exec has no args"));
        }
        let user = p.user();
        let exec = Exec {
            args,
            env: p.env().clone().unwrap_or_default(),
            cwd: Some(p.cwd().to_string_lossy().into_owned()).filter(|c| !c.is_empty()),
            user: (user.uid() != 0 || user.gid() != 0)
                .then(|| format!("{}:{}", user.uid(), user.gid())),
            tty: req.terminal,
            stdin: !req.stdin.is_empty(),
            rows: 0,
            cols: 0,
        };
        let mut proc = Proc::new(Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        proc.exec = Some(exec);
        c.execs.insert(req.exec_id.clone(), proc);
        let id = c.id.clone();
        drop(g);
        self.0
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: id,
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        let control = {
            let g = self.0.container.lock().await;
            let c = g
                .as_ref()
                .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
            c.proc(&req.exec_id)?.control.clone()
        };
        if let Some(control) = control {
            control
                .resize(rows, cols)
                .await
                .map_err(|e| err(Code::UNAVAILABLE, e.to_string()))?;
        } else if req.exec_id.is_empty() {
            // Not attached yet (the guest is booting): through a fresh
            // connection once the agent answers.
            let mut agent = self.0.agent().await?;
            agent
                .resize(Target::Main, rows, cols)
                .await
                .map_err(|e| err(Code::UNAVAILABLE, e.to_string()))?;
        }
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let g = self.0.container.lock().await;
        let c = g
            .as_ref()
            .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
        let p = c.proc(&req.exec_id)?;
        if req.stdin {
            p.close_stdin.notify_one();
        }
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let g = self.0.container.lock().await;
            let c = g
                .as_ref()
                .ok_or_else(|| err(Code::NOT_FOUND, "no container"))?;
            c.proc(&req.exec_id)?.done.subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        let g = self.0.container.lock().await;
        let p = g.as_ref().and_then(|c| c.proc(&req.exec_id).ok());
        let (status, at) = p
            .map(|p| (p.exit_status, p.exited_at.clone()))
            .unwrap_or((255, Some(now())));
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: at.into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let g = self.0.container.lock().await;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: g.as_ref().map(|c| c.init.pid).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        log::info!("shutdown (now: {})", req.now);
        let g = self.0.container.lock().await;
        if g.is_some() && !req.now {
            // Still has a container: containerd asks again after delete.
            return Ok(api::Empty::default());
        }
        drop(g);
        self.0.exit.signal();
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unimplemented("pause"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("resume"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("checkpoint"))
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        _req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("update"))
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(unimplemented("stats"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that ended before anyone waited on it is seen as ended
    /// by a later `Wait` (what `ctr task delete -f` does after a kill).
    #[tokio::test]
    async fn an_end_nobody_waited_for_is_seen_by_a_later_wait() {
        let mut p = Proc::new(Fifos::default());
        p.finish(137);
        let mut rx = p.done.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|d| *d))
            .await
            .expect("a later Wait sees the end")
            .expect("the sender lives");
        assert_eq!(p.exit_status, 137);
    }
}
