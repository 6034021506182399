//! The control socket of a running VM (`VmConfig::control_socket`) and the
//! snapshot it serves ([`mvm_vmm_api::control`]).
//!
//! It is one more subscriber of the main thread's event loop, so while a
//! snapshot is written no device handles a queue: with the vCPUs paused
//! too, guest memory and every device hold still. One request per
//! connection, read with a deadline; a failed snapshot leaves the VM
//! running as it was and removes what it had written.
//!
//! `wait_warm_ready` is the one request answered later: its connection is
//! kept until the guest reports `WarmReady` on the status port (the port
//! signals an event this subscriber watches), so a host waits on the
//! event itself. A VM that ends first closes the connection unanswered.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use mvm_virtio::MmioTransport;
use mvm_vmm_api::control::{After, Request, Response, MAX_REQUEST_BYTES};
use mvm_vmm_api::Artifacts;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::status_port::GuestStatus;
use crate::exit::{ExitSignal, StopReason};
use crate::snapshot::{self, DevicesState, MicrovmState};
use crate::vstate::memory;
use crate::vstate::vcpu::VcpuHandles;
use crate::vstate::vm::Vm;

/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections waiting for `WarmReady` at once; more are refused, so a
/// client cannot make the VMM hold descriptors without bound.
const MAX_WARM_WAITERS: usize = 8;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("binding the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind the control socket (a stale file from an earlier VMM is removed).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// What a snapshot reads.
pub struct VmParts {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub vcpus: VcpuHandles,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub guest_status: Arc<Mutex<GuestStatus>>,
    /// Signalled by the status port at `WarmReady`.
    pub warm_ready: Arc<EventFd>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub artifacts: Option<Artifacts>,
    pub memory_bytes: u64,
}

/// The control socket's event-loop subscriber.
pub struct ControlServer {
    listener: UnixListener,
    parts: VmParts,
    exit: Arc<ExitSignal>,
    /// The vCPUs were left paused by a snapshot.
    paused: bool,
    /// Connections waiting for `WarmReady`.
    warm_waiters: Vec<UnixStream>,
}

impl ControlServer {
    pub fn new(listener: UnixListener, parts: VmParts, exit: Arc<ExitSignal>) -> Self {
        Self {
            listener,
            parts,
            exit,
            paused: false,
            warm_waiters: Vec::new(),
        }
    }

    /// The guest reported `WarmReady`: answer every waiter.
    fn warm_ready(&mut self) {
        let _ = self.parts.warm_ready.read();
        for s in self.warm_waiters.drain(..) {
            respond(&s, &Response::WarmReady);
        }
    }

    fn serve(&mut self, stream: UnixStream) {
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(REQUEST_DEADLINE)))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_DEADLINE)))
        {
            tracing::warn!("control socket: cannot set up a connection: {e}");
            return;
        }
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line);
        let req = match read {
            Ok(_) => serde_json::from_str::<Request>(line.trim()),
            Err(e) => {
                tracing::warn!("control socket: reading a request: {e}");
                return;
            }
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                let message = format!("not a control request: {e}");
                respond(&stream, &Response::Error { message });
                return;
            }
        };
        match req {
            Request::Snapshot {
                state,
                memory,
                after,
            } => {
                let answer = match self.snapshot(&state, &memory, after) {
                    Ok(r) => r,
                    Err(message) => {
                        tracing::warn!("snapshot failed: {message}");
                        Response::Error { message }
                    }
                };
                let ended = matches!(answer, Response::Snapshot { .. }) && after == After::Exit;
                respond(&stream, &answer);
                if ended {
                    self.exit.request(StopReason::Checkpointed);
                }
            }
            Request::WaitWarmReady => {
                if lock(&self.parts.guest_status).warm_ready {
                    respond(&stream, &Response::WarmReady);
                } else if self.warm_waiters.len() >= MAX_WARM_WAITERS {
                    let message = format!(
                        "{MAX_WARM_WAITERS} connections already wait for the guest's WarmReady"
                    );
                    respond(&stream, &Response::Error { message });
                } else {
                    self.warm_waiters.push(stream);
                }
            }
            Request::Resume => {
                let answer = if self.paused {
                    self.resume();
                    self.paused = false;
                    Response::Resumed
                } else {
                    Response::Error {
                        message: "the VM is not paused by a snapshot".into(),
                    }
                };
                respond(&stream, &answer);
            }
        }
    }

    /// Take a snapshot; the vCPUs run again afterwards as `after` says,
    /// and when it fails.
    fn snapshot(&mut self, state: &Path, memory: &Path, after: After) -> Result<Response, String> {
        if self.paused {
            return Err("the VM is paused by an earlier snapshot; resume it first".into());
        }
        for p in [state, memory] {
            if !p.is_absolute() {
                return Err(format!("{} is not an absolute path", p.display()));
            }
        }
        // Refusals that need no pause come first.
        for t in &self.parts.transports {
            let t = lock(t);
            let device = t.device();
            let d = device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if d.device_type() == mvm_virtio::TYPE_FS {
                drop(d);
                return Err(
                    "a VM with virtio-fs shares cannot be snapshotted: their state lives in the \
                     virtiofsd backends (a sandbox with volumes or bind mounts cannot be \
                     checkpointed)"
                        .into(),
                );
            }
        }
        let t0 = Instant::now();
        self.parts.vcpus.pause()?;
        // Notifications the event loop has not handled yet are taken now,
        // so no device touches memory or disks until the guest runs again
        // (the runtime copies the disks meanwhile); the queues are looked
        // at again then ([`Self::kick_queues`]), and in a restored VM.
        for t in &self.parts.transports {
            let t = lock(t);
            let d = lock(t.device().as_ref());
            for evt in d.queue_events() {
                let _ = evt.read();
            }
        }
        let result = self.write_snapshot(state, memory);
        let paused_us = t0.elapsed().as_micros() as u64;
        match result {
            Ok(memory_written) => {
                tracing::info!(
                    "snapshot written: {memory_written} bytes of memory, vCPUs paused {paused_us} us"
                );
                match after {
                    After::Resume => self.resume(),
                    After::Pause => self.paused = true,
                    // The VMM ends; the vCPUs never run again.
                    After::Exit => {}
                }
                Ok(Response::Snapshot {
                    paused_us,
                    memory_written,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(state);
                let _ = std::fs::remove_file(memory);
                self.resume();
                Err(e)
            }
        }
    }

    /// Run the vCPUs again, with every active queue looked at once (the
    /// notifications taken at the pause).
    fn resume(&mut self) {
        kick_queues(&self.parts.transports);
        self.parts.vcpus.resume();
    }

    fn write_snapshot(&mut self, state: &Path, memory: &Path) -> Result<u64, String> {
        let p = &self.parts;
        for t in &p.transports {
            let t = lock(t);
            let device = t.device().clone();
            let mut d = device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            d.prepare_snapshot()?;
        }
        let vcpus = p.vcpus.save()?;
        let vm = p.vm.save_state().map_err(|e| e.to_string())?;
        let devices = DevicesState {
            serial: lock(&p.serial).snapshot(),
            i8042: lock(&p.i8042).snapshot(),
            boot_complete: lock(&p.guest_status).boot_time.is_some(),
            virtio: p.transports.iter().map(|t| lock(t).save()).collect(),
        };
        let s = MicrovmState {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            artifacts: p.artifacts.clone(),
            memory_bytes: p.memory_bytes,
            vcpus,
            vm,
            devices,
        };
        let written = memory::dump(&p.mem, memory).map_err(|e| e.to_string())?;
        snapshot::write(state, &s).map_err(|e| e.to_string())?;
        Ok(written)
    }
}

/// Write one answer line (a connection's only one).
fn respond(mut s: &UnixStream, r: &Response) {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = s.write_all(&line) {
        tracing::warn!("control socket: cannot answer: {e}");
    }
}

/// Signal every queue of every active device, as if the driver had
/// notified it: a device finds what the guest made available meanwhile
/// (nothing, for most; a notification it has not handled, after a pause
/// or a restore). Spurious ones cost a look at the ring.
pub fn kick_queues(transports: &[Arc<Mutex<MmioTransport>>]) {
    for t in transports {
        let t = lock(t);
        let d = lock(t.device().as_ref());
        if !d.is_activated() {
            continue;
        }
        for evt in d.queue_events() {
            if let Err(e) = evt.write(1) {
                tracing::warn!("signalling a virtio queue: {e}");
            }
        }
    }
}

impl MutEventSubscriber for ControlServer {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.parts.warm_ready.as_raw_fd() {
            self.warm_ready();
            return;
        }
        if events.fd() != self.listener.as_raw_fd() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.listener.as_raw_fd(), self.parts.warm_ready.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.exit.request(StopReason::VmmError(format!(
                    "cannot watch the control socket in the event loop: {e:?}"
                )));
            }
        }
    }
}
