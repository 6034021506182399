//! The RUN executor: each RUN step is a transient sandbox of
//! `mvm-runtime` ([`mvm_runtime::transient`]), booted the way `run` boots
//! a sandbox (the same kernel, init, VMM, launch files and exit mapping),
//! so builds work wherever `run` works: installed, in the mvm machine,
//! with `mvmd --kernel/--init/--vmm`.
//!
//! The image so far is the read-only root disk (the image store's cached
//! conversion), a fresh scratch disk takes the writes, the launch spec
//! carries the command, environment, user and working directory. The
//! workload's output comes through the guest agent as it is written; its
//! status from the agent's `exited` (or, when the guest could not start
//! it, from the VMM's status file). The guest then stays up
//! (`rootfs.export_changes`) and its agent sends the overlay's upper
//! directory as an OCI layer tar ([`crate::changes`] checks it on the way
//! in): the host never mounts a filesystem the guest wrote.
//!
//! A step's network comes from its [`StepNetwork`] (mvmd gives each step
//! an endpoint on the build's network, the default bridge with outbound
//! NAT unless `--network` says otherwise, as Docker's RUN steps have); an
//! executor without one boots steps with `lo` only.
//!
//! [`Executor`] is the seam the engine uses; [`RuntimeExecutor`] is the
//! product's, tests may bring their own.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvm_protocol::agent::client::{AgentClient, ClientError, Event};
use mvm_runtime::{
    BootNet, ExitReason, Intent, ProcessSpec, Resources, Root, Runtime, RuntimeError, Transient,
    TransientSpec,
};
use tokio::io::AsyncWriteExt;

use crate::changes::{self, ChangeStats};

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The runtime could not start the build microVM.
    #[error("cannot start the build microVM: {0}")]
    Start(#[from] RuntimeError),
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The microVM failed (VMM error, guest crash) or its agent broke off.
    #[error("the build microVM failed: {0}")]
    Vm(String),
    /// The step ran longer than allowed.
    #[error("the RUN step did not finish within {0:?}; the build microVM was killed")]
    Timeout(Duration),
    /// The changes the guest sent are not a usable layer.
    #[error("the RUN step's changes: {0}")]
    Changes(#[from] changes::ChangesError),
    /// The step's network endpoint could not be made.
    #[error("cannot give the build microVM its network: {0}")]
    Network(String),
}

type Result<T, E = VmError> = std::result::Result<T, E>;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The current image as a read-only ext4 disk.
    pub root_disk: PathBuf,
    /// argv (SHELL + command, or the JSON form).
    pub argv: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// USER.
    pub user: String,
    /// WORKDIR (absolute).
    pub cwd: String,
    /// A private directory for this step's files (the layer goes here).
    pub dir: PathBuf,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit status.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Init could not start it (Docker's code: 125/126/127).
    InitError {
        /// Init's description.
        message: String,
        /// The Docker exit code.
        code: i32,
    },
}

impl Exit {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// The number Docker would report.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Signal(s) => 128 + s,
            Exit::InitError { code, .. } => *code,
        }
    }
}

/// The layer a successful RUN produced.
#[derive(Debug, Clone)]
pub struct Layer {
    /// An uncompressed layer tar.
    pub path: PathBuf,
    /// What it holds.
    pub stats: ChangeStats,
}

/// A finished RUN.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: Exit,
    /// Its changes, when it succeeded.
    pub layer: Option<Layer>,
    /// VMM start to the guest agent answering.
    pub boot: Duration,
    /// The command.
    pub run: Duration,
    /// Receiving and checking the changes.
    pub commit: Duration,
}

/// Runs RUN commands in isolation and returns their changes as a layer.
pub trait Executor: Send + Sync {
    /// Runs `req`, passing each output line to `output`.
    fn run(&self, req: &RunRequest, output: &mut dyn FnMut(&str)) -> Result<RunOutcome>;
}

/// The network of a build's RUN steps: each step gets an endpoint of its
/// own (a TAP, an address, the network's rules) for as long as its
/// microVM runs. The builder is synchronous; implementations may block.
pub trait StepNetwork: Send + Sync + std::fmt::Debug {
    /// Make the host side of step `id`'s endpoint and return its boot's
    /// NICs and guest configuration (`BootNet::default()`: `lo` only).
    fn attach(&self, id: &str) -> Result<BootNet, String>;
    /// Remove what [`Self::attach`] made for `id`, once its microVM has
    /// ended; a failure is logged, not returned (the step's result stands).
    fn detach(&self, id: &str);
}

/// Runs each RUN step as a transient sandbox of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeExecutor {
    runtime: Runtime,
    /// vCPUs, memory and scratch disk of a build microVM.
    pub resources: Resources,
    /// Longest a RUN may take.
    pub timeout: Duration,
    /// The steps' network; `None`: `lo` only.
    pub network: Option<Arc<dyn StepNetwork>>,
}

/// Detaches a step's endpoint when dropped: declared before the
/// [`Transient`], it drops after it, so the TAP goes once the VMM is gone.
struct Endpoint<'a> {
    network: &'a dyn StepNetwork,
    id: String,
}

impl Drop for Endpoint<'_> {
    fn drop(&mut self) {
        self.network.detach(&self.id);
    }
}

/// The hostname RUN steps see (BuildKit's).
pub const BUILD_HOSTNAME: &str = "buildkitsandbox";

impl RuntimeExecutor {
    /// An executor on `runtime`: 1 vCPU, 512 MiB, an 8 GiB (sparse)
    /// scratch disk, an hour per step.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            resources: Resources {
                vcpus: 1,
                cpu_quota: None,
                memory_mib: 512,
                scratch_mib: 8 << 10,
                workload_memory_mib: None,
            },
            timeout: Duration::from_secs(3600),
            network: None,
        }
    }

    /// The same executor with its steps on `network`.
    pub fn with_network(mut self, network: Arc<dyn StepNetwork>) -> Self {
        self.network = Some(network);
        self
    }
}

/// Splits output chunks into lines, per stream.
#[derive(Default)]
struct Lines {
    partial: [Vec<u8>; 2],
}

/// The longest line kept whole; longer ones are cut (a progress bar
/// redrawn with `\r` for minutes is one "line").
const MAX_LINE: usize = 64 * 1024;

impl Lines {
    fn feed(&mut self, stream: usize, data: &[u8], out: &mut dyn FnMut(&str)) {
        let buf = &mut self.partial[stream];
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            emit(&line[..line.len() - 1], out);
        }
        if buf.len() > MAX_LINE {
            let line = std::mem::take(buf);
            emit(&line, out);
        }
    }

    fn flush(&mut self, out: &mut dyn FnMut(&str)) {
        for buf in &mut self.partial {
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                emit(&line, out);
            }
        }
    }
}

fn emit(line: &[u8], out: &mut dyn FnMut(&str)) {
    let s = String::from_utf8_lossy(line);
    out(s.trim_end_matches('\r'));
}

/// How long the guest gets to power off once the host is done with it.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// The largest changes stream accepted from a RUN step.
const MAX_CHANGES: u64 = 64 << 30;

impl Executor for RuntimeExecutor {
    fn run(&self, req: &RunRequest, output: &mut dyn FnMut(&str)) -> Result<RunOutcome> {
        fs::create_dir_all(&req.dir).map_err(|source| VmError::Io {
            op: "creating",
            path: req.dir.clone(),
            source,
        })?;
        // The endpoint's id is the step's own (not the transient's, which
        // the runtime picks when it boots): the TAP must exist first.
        let (net, _endpoint) = match self.network.as_deref() {
            Some(network) => {
                let id = mvm_runtime::names::new_id();
                let boot = network.attach(&id).map_err(VmError::Network)?;
                (boot, Some(Endpoint { network, id }))
            }
            None => (BootNet::default(), None),
        };
        let spec = TransientSpec {
            root: Root::Disk(req.root_disk.clone()),
            process: ProcessSpec {
                entrypoint: req.argv.clone(),
                cmd: Vec::new(),
                env: req.env.clone(),
                working_dir: req.cwd.clone(),
                user: req.user.clone(),
                tty: false,
                open_stdin: false,
            },
            hostname: BUILD_HOSTNAME.into(),
            resources: self.resources,
            export_changes: true,
            die_with_parent: false,
            net,
            files: Vec::new(),
        };
        let t = self.runtime.start_transient(&spec)?;
        // The builder is synchronous (it runs on a blocking thread); the
        // agent client is async: a small runtime of its own per step, on a
        // thread of its own. `output` is the caller's and may block (mvmd
        // sends each line to its client through a bounded channel), which
        // is not allowed inside an async runtime: lines cross a bounded
        // channel and `output` runs here, outside it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| VmError::Io {
                op: "starting an async runtime for",
                path: req.dir.clone(),
                source,
            })?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(256);
        let r = std::thread::scope(|s| {
            let step = s.spawn(|| {
                let mut send = move |l: &str| {
                    // The receiver lives until this thread ends.
                    let _ = tx.send(l.to_owned());
                };
                rt.block_on(async {
                    match tokio::time::timeout(self.timeout, drive(&t, req, &mut send)).await {
                        Ok(r) => r,
                        Err(_) => Err(VmError::Timeout(self.timeout)),
                    }
                })
            });
            for line in rx {
                output(&line);
            }
            step.join()
                .unwrap_or_else(|_| Err(VmError::Vm("the RUN step's thread panicked".into())))
        });
        if r.is_err() {
            t.kill();
        }
        r
    }
}

/// One RUN step, from boot to power-off.
async fn drive(
    t: &Transient,
    req: &RunRequest,
    output: &mut dyn FnMut(&str),
) -> Result<RunOutcome> {
    // The agent answers once the workload runs; if the VMM ends first, the
    // guest could not start it (or crashed): the status file says which.
    let client = match t.agent(Duration::from_secs(24 * 3600)).await {
        Ok(c) => c,
        Err(e) => return ended_early(t, e).await,
    };
    let boot = t.elapsed();
    let t_run = Instant::now();
    let mut session = client.attach(false).await.map_err(vm_err("attaching"))?;
    let mut lines = Lines::default();
    let exit = loop {
        match session
            .output
            .next()
            .await
            .map_err(vm_err("reading the output"))?
        {
            Event::Stdout(b) => lines.feed(0, &b, output),
            Event::Stderr(b) => lines.feed(1, &b, output),
            Event::Exited(e) => break e,
        }
    };
    lines.flush(output);
    let run = t_run.elapsed();
    let exit = match (exit.exit_code, exit.signal) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => {
            return Err(VmError::Vm(
                "the agent reported an exit without a status".into(),
            ))
        }
    };
    let t_commit = Instant::now();
    let layer = if exit.success() {
        Some(receive_changes(t, req).await?)
    } else {
        None
    };
    let commit = t_commit.elapsed();
    power_off(t).await;
    Ok(RunOutcome {
        exit,
        layer,
        boot,
        run,
        commit,
    })
}

fn vm_err(what: &'static str) -> impl FnOnce(ClientError) -> VmError {
    move |e| VmError::Vm(format!("{what} through the guest agent: {e}"))
}

/// The VMM ended before its agent answered: init could not start the
/// command (not found, not executable, bad user), or the guest failed.
async fn ended_early(t: &Transient, e: ClientError) -> Result<RunOutcome> {
    t.wait().await;
    let info = t.exit_info(Intent::None);
    match info.reason {
        ExitReason::StartFailed => Ok(RunOutcome {
            exit: Exit::InitError {
                message: info
                    .error
                    .unwrap_or_else(|| "the command could not be started".into()),
                code: info.exit_code,
            },
            layer: None,
            boot: t.elapsed(),
            run: Duration::ZERO,
            commit: Duration::ZERO,
        }),
        _ => {
            let detail = info.error.unwrap_or_else(|| e.to_string());
            let log = t.vmm_log_tail(2048);
            Err(VmError::Vm(if log.trim().is_empty() {
                detail
            } else {
                format!("{detail}\nVMM log:\n{}", log.trim_end())
            }))
        }
    }
}

/// Read the guest's changes into a checked layer tar in `req.dir`.
async fn receive_changes(t: &Transient, req: &RunRequest) -> Result<Layer> {
    let client: AgentClient = t
        .agent(Duration::from_secs(60))
        .await
        .map_err(vm_err("connecting for the changes"))?;
    let mut stream = client
        .changes()
        .await
        .map_err(vm_err("asking for the changes"))?;
    // The guest's tar goes to a file first (bounded), then through the
    // checks into the layer: the checks are synchronous, the stream async.
    let raw = req.dir.join("changes.tar");
    let io = |op: &'static str, path: &PathBuf| {
        let path = path.clone();
        move |source| VmError::Io { op, path, source }
    };
    let mut f = tokio::fs::File::create(&raw)
        .await
        .map_err(io("creating", &raw))?;
    let mut limited = tokio::io::AsyncReadExt::take(&mut stream, MAX_CHANGES + 1);
    let n = tokio::io::copy(&mut limited, &mut f)
        .await
        .map_err(|e| VmError::Vm(format!("receiving the changes: {e}")))?;
    if n > MAX_CHANGES {
        return Err(changes::ChangesError::TooLarge { limit: MAX_CHANGES }.into());
    }
    f.flush().await.map_err(io("writing", &raw))?;
    drop(f);
    let path = req.dir.join("layer.tar");
    let (raw2, path2) = (raw.clone(), path.clone());
    let stats = tokio::task::spawn_blocking(move || changes::to_layer(&raw2, &path2))
        .await
        .map_err(|e| VmError::Vm(format!("checking the changes: {e}")))??;
    let _ = fs::remove_file(&raw);
    Ok(Layer { path, stats })
}

/// Release the guest (it powers off) and wait for its VMM to end; kill it
/// after a grace.
async fn power_off(t: &Transient) {
    if let Ok(mut c) = t.agent(Duration::from_secs(5)).await {
        let _ = c.shutdown(libc::SIGKILL, Duration::ZERO).await;
    }
    if tokio::time::timeout(POWER_OFF_GRACE, t.wait())
        .await
        .is_err()
    {
        tracing::warn!(transient = %t.id(), "the build microVM did not power off; killing it");
        t.kill();
        t.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_lines_per_stream() {
        let mut lines = Vec::new();
        let mut l = Lines::default();
        l.feed(0, b"hel", &mut |s| lines.push(s.to_string()));
        l.feed(1, b"err\n", &mut |s| lines.push(s.to_string()));
        l.feed(0, b"lo\r\nwor", &mut |s| lines.push(s.to_string()));
        l.flush(&mut |s| lines.push(s.to_string()));
        assert_eq!(lines, ["err", "hello", "wor"]);
        let mut n = 0;
        l.feed(0, &vec![b'x'; MAX_LINE + 1], &mut |_| n += 1);
        assert_eq!(n, 1, "an endless line is cut");
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(Exit::Signal(9).code(), 137);
        assert!(Exit::Code(0).success());
        assert_eq!(
            Exit::InitError {
                message: "x".into(),
                code: 127
            }
            .code(),
            127
        );
    }
}
