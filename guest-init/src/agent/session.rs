//! One connection: `hello`, then requests one at a time.
//!
//! The connection's thread reads every frame. Requests that finish at once
//! (`ping`, `stats`, `signal`, ...) are answered inline; `copy_in` and
//! `copy_out` stream inline; `exec` and `attach` hand output to a thread of
//! their own while this one keeps reading: STDIN frames go to the process
//! (a blocking write: the host's stdin waits for the process, nothing piles
//! up in the guest), and `resize` / `signal` without a target act on it.
//! Any other request while one of those runs is `busy`.
//!
//! A frame that breaks the codec (bad length, unknown kind, truncation)
//! ends this connection only. A well-framed but unusable control message
//! gets an `error` and the connection stays usable, since the stream is
//! still at a frame boundary.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mvm_protocol::agent::frame::{FrameError, FrameReader, FrameWriter};
use mvm_protocol::agent::{ErrorCode, Kind, Request, Response, Target, PROTOCOL_VERSION};

use super::conn::Conn;
use super::workload::AttachEnd;
use super::{changes, copy, exec, fdio, procs, pty, stats, Agent};

/// The write side of a connection, shared by the session's threads; each
/// frame is written whole under the lock.
#[derive(Debug, Clone)]
pub struct SharedWriter(Arc<Mutex<FrameWriter<Conn>>>);

impl SharedWriter {
    pub fn new(conn: Conn) -> Self {
        Self(Arc::new(Mutex::new(FrameWriter::new(conn))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FrameWriter<Conn>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send a control message.
    pub fn send(&self, msg: &Response) -> Result<(), FrameError> {
        self.lock().write_json(msg)
    }

    /// Send bytes as frames of `kind`.
    pub fn frame(&self, kind: Kind, data: &[u8]) -> Result<(), FrameError> {
        self.lock().write_stream(kind, data)
    }

    /// End the connection (wakes the reading thread with EOF).
    pub fn shutdown(&self) {
        self.lock().get_ref().shutdown();
    }
}

/// A streaming request holding the connection.
enum Active {
    Exec(exec::Running),
    Attach {
        id: u64,
        stdin: bool,
        done: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
}

impl Active {
    fn is_done(&self) -> bool {
        match self {
            Self::Exec(r) => r.done.load(Ordering::SeqCst),
            Self::Attach { done, .. } => done.load(Ordering::SeqCst),
        }
    }
}

/// What reading the connection produced.
enum Step {
    Request(Request),
    Continue,
    End,
}

struct Session {
    agent: Arc<Agent>,
    reader: FrameReader<Conn>,
    writer: SharedWriter,
    active: Option<Active>,
}

/// Serve one connection until it ends.
pub fn serve(agent: Arc<Agent>, conn: Conn) {
    let writer = match conn.try_clone() {
        Ok(c) => SharedWriter::new(c),
        Err(e) => {
            crate::warn!("agent: cannot duplicate a connection: {e}");
            return;
        }
    };
    let mut s = Session {
        agent,
        reader: FrameReader::new(conn),
        writer,
        active: None,
    };
    s.run();
    s.finish();
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> exec::Refusal {
    (code, message.into())
}

impl Session {
    fn reply(&self, msg: &Response) -> bool {
        self.writer.send(msg).is_ok()
    }

    fn run(&mut self) {
        let Some(mut pending) = self.hello() else {
            return;
        };
        loop {
            let req = match pending.take() {
                Some(r) => r,
                None => match self.next() {
                    Step::Request(r) => r,
                    Step::Continue => continue,
                    Step::End => return,
                },
            };
            self.retire();
            if !self.handle(req) {
                return;
            }
        }
    }

    /// The `hello` exchange; returns the request it carried, if any
    /// (`Some(None)` for none), or `None` to close.
    fn hello(&mut self) -> Option<Option<Request>> {
        let payload = match self.reader.read_frame() {
            Ok(Some((Kind::Control, p))) => p,
            Ok(Some((k, _))) => {
                let msg = format!(
                    "the first frame must be a control frame with hello, not {}",
                    k.name()
                );
                self.reply(&error(ErrorCode::BadRequest, msg));
                return None;
            }
            Ok(None) => return None,
            Err(e) => {
                crate::info!("agent: connection closed: {e}");
                return None;
            }
        };
        match mvm_protocol::agent::frame::decode_json::<Request>(payload) {
            Ok(Request::Hello { version, request }) if version == PROTOCOL_VERSION => {
                if !self.reply(&Response::Hello {
                    version: PROTOCOL_VERSION,
                }) {
                    return None;
                }
                Some(request.map(|r| *r))
            }
            Ok(Request::Hello { version, .. }) => {
                let msg = format!(
                    "protocol version {version} is not supported; this agent speaks version {PROTOCOL_VERSION}"
                );
                self.reply(&error(ErrorCode::Version, msg));
                None
            }
            Ok(_) => {
                let msg = format!(
                    "the first message must be {{\"op\":\"hello\",\"version\":{PROTOCOL_VERSION}}}"
                );
                self.reply(&error(ErrorCode::BadRequest, msg));
                None
            }
            Err(e) => {
                self.reply(&error(ErrorCode::BadRequest, format!("bad hello: {e}")));
                None
            }
        }
    }

    /// Read one frame and deal with anything that is not a request.
    fn next(&mut self) -> Step {
        let (kind, payload) = match self.reader.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Step::End,
            Err(e) => {
                if e.is_protocol() {
                    crate::info!("agent: closing a connection that broke the protocol: {e}");
                    let _ = self
                        .writer
                        .send(&error(ErrorCode::BadRequest, e.to_string()));
                }
                return Step::End;
            }
        };
        match kind {
            Kind::Control => match mvm_protocol::agent::frame::decode_json::<Request>(payload) {
                Ok(Request::Unknown) => {
                    let op = serde_json::from_slice::<serde_json::Value>(payload)
                        .ok()
                        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(String::from))
                        .unwrap_or_default();
                    let msg = format!("op {op:?} is not supported by this agent (protocol version {PROTOCOL_VERSION})");
                    if self.reply(&error(ErrorCode::Unsupported, msg)) {
                        Step::Continue
                    } else {
                        Step::End
                    }
                }
                Ok(r) => Step::Request(r),
                Err(e) => {
                    let msg = format!("malformed request: {e}");
                    if self.reply(&error(ErrorCode::BadRequest, msg)) {
                        Step::Continue
                    } else {
                        Step::End
                    }
                }
            },
            Kind::Stdin => {
                match &mut self.active {
                    Some(Active::Exec(r)) => {
                        if let Some(fd) = &r.stdin {
                            if fdio::write_all(std::os::fd::AsRawFd::as_raw_fd(fd), payload)
                                .is_err()
                            {
                                // The process closed its stdin or exited.
                                r.stdin = None;
                            }
                        }
                    }
                    Some(Active::Attach { stdin: true, .. }) => {
                        let _ = self.agent.workload.write_stdin(payload);
                    }
                    // Stdin nobody asked for, or after the end: dropped.
                    _ => {}
                }
                Step::Continue
            }
            Kind::StdinEof => {
                match &mut self.active {
                    Some(Active::Exec(r)) => {
                        if let Some(fd) = r.stdin.take() {
                            if r.terminal.is_some() {
                                let _ = fdio::write_all(std::os::fd::AsRawFd::as_raw_fd(&fd), &[4]);
                            }
                        }
                    }
                    Some(Active::Attach { stdin: true, .. }) => self.agent.workload.close_stdin(),
                    _ => {}
                }
                Step::Continue
            }
            other => {
                let msg = format!("a {} frame is not expected here", other.name());
                crate::info!("agent: closing a connection: {msg}");
                self.reply(&error(ErrorCode::BadRequest, msg));
                Step::End
            }
        }
    }

    /// Forget a streaming request that has finished.
    fn retire(&mut self) {
        if self.active.as_ref().is_some_and(Active::is_done) {
            match self.active.take() {
                Some(Active::Exec(r)) => {
                    let _ = r.thread.join();
                }
                Some(Active::Attach { thread, .. }) => {
                    let _ = thread.join();
                }
                None => {}
            }
        }
    }

    /// Handle one request; returns whether to keep the connection.
    fn handle(&mut self, req: Request) -> bool {
        let running = self.active.is_some();
        match req {
            // In-band controls for the running process: no reply (the host
            // is reading output), failures only logged.
            Request::Signal { target, signal } if running && target.is_none() => {
                if let Err(e) = self.signal_active(signal) {
                    crate::info!("agent: signal {signal}: {e}");
                }
                true
            }
            Request::Resize { target, rows, cols } if running && target.is_none() => {
                if let Err(e) = self.resize_active(rows, cols) {
                    crate::info!("agent: resize: {e}");
                }
                true
            }
            req if running => {
                let msg = format!(
                    "this connection is streaming an exec or attach; send {} on another connection",
                    req.op()
                );
                self.reply(&error(ErrorCode::Busy, msg))
            }
            Request::Hello { .. } => {
                self.reply(&error(ErrorCode::BadRequest, "hello was already exchanged"))
            }
            Request::Exec(e) => match exec::start(&self.agent, e, &self.writer) {
                Ok(r) => {
                    self.active = Some(Active::Exec(r));
                    true
                }
                Err((code, msg)) => self.reply(&error(code, msg)),
            },
            Request::Attach { stdin } => self.attach(stdin),
            Request::Signal { target, signal } => {
                let r = match check_signal(signal) {
                    Err(msg) => error(ErrorCode::BadRequest, msg),
                    Ok(()) => match self.signal_target(target.unwrap_or(Target::Main), signal) {
                        Ok(()) => Response::Done,
                        Err((code, msg)) => error(code, msg),
                    },
                };
                self.reply(&r)
            }
            Request::Resize { target, rows, cols } => {
                let r = match self.resize_target(target.unwrap_or(Target::Main), rows, cols) {
                    Ok(()) => Response::Done,
                    Err((code, msg)) => error(code, msg),
                };
                self.reply(&r)
            }
            Request::Stats => {
                let s = stats::collect(self.agent.config.cgroup.as_deref());
                self.reply(&Response::Stats(s))
            }
            Request::Ping => self.reply(&Response::Pong),
            Request::Processes => {
                let c = &self.agent.config;
                let processes = procs::list(c.cgroup.as_deref(), &c.root);
                self.reply(&Response::Processes { processes })
            }
            Request::Shutdown { signal, timeout_ms } => {
                if let Err(msg) = check_signal(signal) {
                    return self.reply(&error(ErrorCode::BadRequest, msg));
                }
                crate::info!(
                    "shutdown requested by the host: {} to the workload, {timeout_ms} ms grace",
                    crate::status::signal_name(signal)
                );
                let timeout = Duration::from_millis(timeout_ms);
                let stopped = self.agent.workload.stop(signal, timeout);
                // A guest held for its changes powers off now.
                self.agent.release_hold();
                match stopped {
                    Some(_) => self.reply(&Response::Done),
                    None => self.reply(&error(
                        ErrorCode::Internal,
                        "the workload survived SIGKILL (stuck in the kernel?)",
                    )),
                }
            }
            Request::CopyIn { path } => {
                let mut data = copy::DataReader::new(&mut self.reader);
                let result = copy::copy_in(std::path::Path::new(&path), &mut data);
                // Keep the stream in step: consume the rest of the tar.
                let drained = data.drain();
                if let Err(e) = drained {
                    crate::info!("agent: closing a connection during copy_in: {e}");
                    self.reply(&error(ErrorCode::BadRequest, e.to_string()));
                    return false;
                }
                match result {
                    Ok(()) => self.reply(&Response::Done),
                    Err(e) => self.reply(&error(e.code(), e.to_string())),
                }
            }
            Request::CopyOut { path } => {
                match copy::copy_out(std::path::Path::new(&path), &self.writer) {
                    Ok(()) => true,
                    // Before any data: a plain error reply; after: the
                    // error frame ends the stream for the host.
                    Err(e) => self.reply(&error(e.code(), e.to_string())),
                }
            }
            Request::Changes => {
                if !self.agent.exports_changes() {
                    return self.reply(&error(
                        ErrorCode::Unsupported,
                        "this guest was not launched with rootfs.export_changes",
                    ));
                }
                let Some(upper) = self.agent.changes_dir() else {
                    return self.reply(&error(
                        ErrorCode::Internal,
                        "the workload did not end; its changes are not final",
                    ));
                };
                match changes::send(&upper, &self.writer) {
                    Ok(st) => {
                        crate::info!(
                            "agent: sent the changes: {} entries, {} deletions, {} opaque directories",
                            st.entries,
                            st.whiteouts,
                            st.opaque
                        );
                        true
                    }
                    Err(e) => self.reply(&error(e.code(), e.to_string())),
                }
            }
            Request::Launch { .. } => self.reply(&error(
                ErrorCode::BadRequest,
                "this guest is launched already: a warm guest takes exactly one launch, and a cold one none",
            )),
            Request::Unknown => self.reply(&error(ErrorCode::Unsupported, "unsupported op")),
        }
    }

    fn attach(&mut self, stdin: bool) -> bool {
        let w = self.agent.workload.clone();
        if !w.attachable() {
            return self.reply(&error(
                ErrorCode::NotAttachable,
                "the main workload writes to the console (launch spec process.output is \"console\")",
            ));
        }
        let id = w.attach();
        if !self.reply(&Response::Started { pid: w.pid() }) {
            w.detach(id);
            return false;
        }
        let done = Arc::new(AtomicBool::new(false));
        let writer = self.writer.clone();
        let flag = done.clone();
        let thread = std::thread::Builder::new()
            .name("mvm-attach".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = w.stream(id, |kind, data| {
                    writer.frame(kind, data).map_err(io::Error::other)
                });
                flag.store(true, Ordering::SeqCst);
                match r {
                    Ok(AttachEnd::Exited(e)) => {
                        if writer.send(&Response::Exited(e)).is_ok() {
                            w.delivered(id);
                        }
                    }
                    Ok(AttachEnd::Detached) => {
                        let _ = writer.send(&error(
                            ErrorCode::Detached,
                            "another host attached to the workload",
                        ));
                        writer.shutdown();
                    }
                    Err(_) => writer.shutdown(),
                }
            });
        match thread {
            Ok(thread) => {
                self.active = Some(Active::Attach {
                    id,
                    stdin,
                    done,
                    thread,
                });
                true
            }
            Err(e) => {
                self.agent.workload.detach(id);
                self.reply(&error(
                    ErrorCode::Internal,
                    format!("cannot start the attach thread: {e}"),
                ))
            }
        }
    }

    fn signal_active(&self, signal: i32) -> io::Result<()> {
        check_signal(signal).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
        match &self.active {
            Some(Active::Exec(r)) => exec::signal(r.pid, signal),
            Some(Active::Attach { .. }) => self.agent.workload.signal(signal),
            None => Ok(()),
        }
    }

    fn resize_active(&self, rows: u16, cols: u16) -> io::Result<()> {
        match &self.active {
            Some(Active::Exec(r)) => match &r.terminal {
                Some(t) => pty::set_size(&**t, rows, cols),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "this exec has no terminal",
                )),
            },
            Some(Active::Attach { .. }) => self.agent.workload.resize(rows, cols),
            None => Ok(()),
        }
    }

    fn signal_target(&self, target: Target, signal: i32) -> Result<(), exec::Refusal> {
        let r = match target {
            Target::Main => self.agent.workload.signal(signal),
            Target::Pid(p) if p <= 1 => {
                return Err(refusal(
                    ErrorCode::BadRequest,
                    format!("refusing to signal pid {p}: only workload processes can be signalled"),
                ))
            }
            Target::Pid(p) => crate::sys::kill(p, signal),
        };
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => refusal(
                ErrorCode::NoSuchProcess,
                format!("no such process: {target:?}"),
            ),
            _ => refusal(ErrorCode::Io, format!("signal {signal} to {target:?}: {e}")),
        })
    }

    fn resize_target(&self, target: Target, rows: u16, cols: u16) -> Result<(), exec::Refusal> {
        let w = &self.agent.workload;
        let r = match target {
            Target::Main => w.resize(rows, cols),
            Target::Pid(p) if p == w.pid() => w.resize(rows, cols),
            Target::Pid(p) => match self.agent.terminal_of(p) {
                Some(t) => pty::set_size(&*t, rows, cols),
                None => {
                    return Err(refusal(
                        ErrorCode::NoSuchProcess,
                        format!("process {p} is not a running tty exec"),
                    ))
                }
            },
        };
        r.map_err(|e| refusal(ErrorCode::NoSuchProcess, e.to_string()))
    }

    /// The connection ended: let go of what it held. A running exec keeps
    /// running (as after `docker exec` loses its client); its stdin is
    /// closed and its output drained and discarded.
    fn finish(&mut self) {
        match self.active.take() {
            Some(Active::Attach { id, .. }) => self.agent.workload.detach(id),
            Some(Active::Exec(r)) => drop(r.stdin),
            None => {}
        }
        self.writer.shutdown();
    }
}

fn check_signal(signal: i32) -> Result<(), String> {
    if (0..=64).contains(&signal) {
        Ok(())
    } else {
        Err(format!(
            "signal {signal} is not a Linux signal number (1-64)"
        ))
    }
}

/// A terminal shared between its exec session and pid-addressed resizes.
pub type Terminal = Arc<OwnedFd>;
