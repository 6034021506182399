//! The host client of the guest agent (tokio).
//!
//! [`AgentClient::connect`] reaches the agent through the VMM's vsock Unix
//! socket (the `CONNECT` handshake, retried until the agent listens, within
//! a deadline). The socket is a [`VsockSocket`]: a path connected to as
//! it is (tests, an agent on the host), or a path with the function that
//! opens connections to it, for a socket in a directory the host does not
//! trust (a jailed VMM's: `mvm_runtime::paths::SandboxPaths::agent_socket`
//! never connects through a link planted there). The first request of a connection rides in the `hello`
//! frame, so a request costs one round trip. Streaming requests (`exec`,
//! `attach`, `copy_out`) take the connection over; the others can be
//! repeated on one client.
//!
//! Everything the agent sends is checked: frames are bounded by the codec,
//! and a response that does not fit the request is an error, not a panic.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::frame::{self, FrameError, Kind, HEADER_LEN, MAX_PAYLOAD};
use super::hybrid;
use super::message::{ErrorCode, Exec, Exit, ProcessInfo, Request, Response, Stats, Target};
use super::{AGENT_PORT, PROTOCOL_VERSION};

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the guest agent did not answer through {path} (vsock port {port}) within {timeout:?}: {last}; check that the VM runs with a vsock device on that socket and that its guest has booted")]
    Timeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
        last: String,
    },
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The socket's opener refused what is at its path (a link, not a
    /// socket): not retried.
    #[error("the VMM's vsock socket was refused: {0}")]
    Refused(io::Error),
    #[error(transparent)]
    Handshake(#[from] hybrid::AckError),
    #[error("agent protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("agent connection I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the guest agent speaks protocol version {agent}; this host speaks {PROTOCOL_VERSION}: update the guest init or the host")]
    Version { agent: u32 },
    #[error("the guest agent refused the request ({code}): {message}")]
    Agent { code: ErrorCode, message: String },
    #[error("the guest agent sent {got} while {waiting}")]
    Unexpected { got: String, waiting: &'static str },
    #[error("the guest agent closed the connection while {0}")]
    Closed(&'static str),
}

impl ClientError {
    /// The agent's error code, if the agent refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Reads frames from the agent.
struct FrameIn {
    r: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
}

impl FrameIn {
    /// The next frame; `None` on a clean close between frames.
    async fn next(&mut self) -> Result<Option<(Kind, &[u8])>> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.r.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    got,
                    want: HEADER_LEN,
                }
                .into());
            }
            got += n;
        }
        let (kind, len) = frame::decode_header(header)?;
        self.buf.resize(len, 0);
        if let Err(e) = self.r.read_exact(&mut self.buf).await {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(FrameError::Truncated {
                    got: HEADER_LEN,
                    want: HEADER_LEN + len,
                }
                .into());
            }
            return Err(e.into());
        }
        Ok(Some((kind, &self.buf)))
    }

    /// The next control message, refusing stream frames.
    async fn control(&mut self, waiting: &'static str) -> Result<Response> {
        match self.next().await? {
            None => Err(ClientError::Closed(waiting)),
            Some((Kind::Control, p)) => Ok(frame::decode_json(p)?),
            Some((k, _)) => Err(ClientError::Unexpected {
                got: format!("a {} frame", k.name()),
                waiting,
            }),
        }
    }
}

/// Writes frames to the agent.
struct FrameOut {
    w: OwnedWriteHalf,
}

impl FrameOut {
    async fn frame(&mut self, kind: Kind, payload: &[u8]) -> Result<()> {
        let header = frame::encode_header(kind, payload.len())?;
        if payload.len() <= 64 * 1024 {
            // One write, so a small frame is one vsock packet.
            let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
            v.extend_from_slice(&header);
            v.extend_from_slice(payload);
            self.w.write_all(&v).await?;
        } else {
            self.w.write_all(&header).await?;
            self.w.write_all(payload).await?;
        }
        Ok(())
    }

    async fn stream(&mut self, kind: Kind, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return self.frame(kind, data).await;
        }
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.frame(kind, chunk).await?;
        }
        Ok(())
    }

    async fn json(&mut self, msg: &Request) -> Result<()> {
        let json = frame::encode_json(msg)?;
        self.frame(Kind::Control, &json).await
    }
}

/// Opens a connection to a VMM's vsock Unix socket: a connected stream
/// (made non-blocking here), or an error; `PermissionDenied` means what is
/// at the path was refused and is not retried.
pub type OpenSocket = fn(&Path) -> io::Result<std::os::unix::net::UnixStream>;

/// A VMM's vsock Unix socket and how connections to it are opened.
#[derive(Debug, Clone)]
pub struct VsockSocket {
    path: PathBuf,
    open: Option<OpenSocket>,
}

impl VsockSocket {
    /// Connected to by path, following links: for sockets in directories
    /// only the caller writes.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            open: None,
        }
    }

    /// Connected to with `open`, which decides what it trusts at `path`.
    pub fn opened_by(path: impl Into<PathBuf>, open: OpenSocket) -> Self {
        Self {
            path: path.into(),
            open: Some(open),
        }
    }

    /// Where the socket is (for messages).
    pub fn as_path(&self) -> &Path {
        &self.path
    }

    async fn connect(&self) -> std::result::Result<UnixStream, Attempt> {
        let Some(open) = self.open else {
            return UnixStream::connect(&self.path)
                .await
                .map_err(|e| Attempt::Retry(format!("connect: {e}")));
        };
        let s = open(&self.path).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                Attempt::Fatal(ClientError::Refused(e))
            } else {
                Attempt::Retry(format!("connect: {e}"))
            }
        })?;
        s.set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(s))
            .map_err(|e| Attempt::Retry(format!("connect: {e}")))
    }
}

impl From<PathBuf> for VsockSocket {
    fn from(p: PathBuf) -> Self {
        Self::path(p)
    }
}

impl From<&PathBuf> for VsockSocket {
    fn from(p: &PathBuf) -> Self {
        Self::path(p.clone())
    }
}

impl From<&Path> for VsockSocket {
    fn from(p: &Path) -> Self {
        Self::path(p)
    }
}

impl From<&VsockSocket> for VsockSocket {
    fn from(s: &VsockSocket) -> Self {
        s.clone()
    }
}

/// A connection to the guest agent.
pub struct AgentClient {
    rx: FrameIn,
    tx: FrameOut,
    greeted: bool,
}

impl AgentClient {
    /// Connect to the agent through the VMM's vsock socket,
    /// retrying (the VMM may not listen yet, the agent may not yet listen
    /// in the guest) until `timeout`.
    pub async fn connect(socket: impl Into<VsockSocket>, timeout: Duration) -> Result<Self> {
        Self::connect_port(socket, AGENT_PORT, timeout).await
    }

    /// [`Self::connect`] to another guest port.
    pub async fn connect_port(
        socket: impl Into<VsockSocket>,
        port: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let socket = socket.into();
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left, hybrid_connect(&socket, port)).await {
                Ok(Ok(stream)) => return Ok(Self::from_stream(stream)),
                Ok(Err(Attempt::Fatal(e))) => return Err(e),
                Ok(Err(Attempt::Retry(e))) => e,
                Err(_) => "the handshake did not complete".to_string(),
            };
            if Instant::now() + delay >= deadline {
                return Err(ClientError::Timeout {
                    path: socket.path,
                    port,
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// One connection attempt within `timeout`, no retries: for callers
    /// that pace their own retries (a guest that is still booting should
    /// not be asked hundreds of times a second).
    pub async fn connect_once(
        socket: impl Into<VsockSocket>,
        port: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let socket = socket.into();
        let last = match tokio::time::timeout(timeout, hybrid_connect(&socket, port)).await {
            Ok(Ok(stream)) => return Ok(Self::from_stream(stream)),
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(last))) => last,
            Err(_) => "the handshake did not complete".into(),
        };
        Err(ClientError::Timeout {
            path: socket.path,
            port,
            timeout,
            last,
        })
    }

    /// Talk to an agent listening directly on a Unix socket (no VMM in
    /// between: tests, or an agent run on the host).
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.into(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Use an already connected stream (after any handshake).
    pub fn from_stream(stream: UnixStream) -> Self {
        let (r, w) = stream.into_split();
        Self {
            rx: FrameIn {
                r: BufReader::with_capacity(64 * 1024, r),
                buf: Vec::new(),
            },
            tx: FrameOut { w },
            greeted: false,
        }
    }

    /// Send a request; the first one of a connection rides in `hello`.
    async fn send(&mut self, req: Request) -> Result<()> {
        if self.greeted {
            return self.tx.json(&req).await;
        }
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            request: Some(Box::new(req)),
        };
        self.tx.json(&hello).await?;
        match self.rx.control("waiting for the agent's hello").await? {
            Response::Hello { version } if version == PROTOCOL_VERSION => {
                self.greeted = true;
                Ok(())
            }
            Response::Hello { version } => Err(ClientError::Version { agent: version }),
            Response::Error { code, message } => Err(ClientError::Agent { code, message }),
            other => Err(unexpected(&other, "waiting for the agent's hello")),
        }
    }

    /// One request, one answer.
    async fn call(&mut self, req: Request, waiting: &'static str) -> Result<Response> {
        self.send(req).await?;
        match self.rx.control(waiting).await? {
            Response::Error { code, message } => Err(ClientError::Agent { code, message }),
            r => Ok(r),
        }
    }

    /// Check that the agent answers.
    pub async fn ping(&mut self) -> Result<()> {
        match self.call(Request::Ping, "waiting for pong").await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other, "waiting for pong")),
        }
    }

    /// Resource usage of the workload.
    pub async fn stats(&mut self) -> Result<Stats> {
        match self.call(Request::Stats, "waiting for stats").await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(&other, "waiting for stats")),
        }
    }

    /// The workload's processes. An agent that predates the op answers
    /// `unsupported` (an `Agent` error with that code).
    pub async fn processes(&mut self) -> Result<Vec<ProcessInfo>> {
        match self
            .call(Request::Processes, "waiting for the process list")
            .await?
        {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected(&other, "waiting for the process list")),
        }
    }

    /// Send `signal` to the main workload or a process by pid.
    pub async fn signal(&mut self, target: Target, signal: i32) -> Result<()> {
        let req = Request::Signal {
            target: Some(target),
            signal,
        };
        self.expect_done(req, "waiting for the signal to be sent")
            .await
    }

    /// Resize the terminal of the main workload or of a process by pid.
    pub async fn resize(&mut self, target: Target, rows: u16, cols: u16) -> Result<()> {
        let req = Request::Resize {
            target: Some(target),
            rows,
            cols,
        };
        self.expect_done(req, "waiting for the resize").await
    }

    /// Stop the main workload (`signal`, then SIGKILL after `timeout`);
    /// the guest then powers off. Returns once the workload has exited
    /// (or the connection dropped because the guest went down).
    pub async fn shutdown(&mut self, signal: i32, timeout: Duration) -> Result<()> {
        let req = Request::Shutdown {
            signal,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.expect_done(req, "waiting for the shutdown").await {
            Err(ClientError::Closed(_)) => Ok(()),
            Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            r => r,
        }
    }

    /// Hand a warm guest (one that reported `WarmReady`) its launch spec.
    /// Returns once init accepted it (validated; it then sets the sandbox
    /// up and starts the workload, whose output and end the host learns
    /// as after a cold boot). A refusal is an `Agent` error: `bad_request`
    /// for a spec init will not run (or a guest already launched),
    /// `unsupported` from an init that predates warm starts. A spec over
    /// the frame limit (1 MiB) is refused here before anything is sent.
    pub async fn launch(&mut self, spec: &crate::launch::LaunchSpec) -> Result<()> {
        let req = Request::Launch {
            spec: Box::new(spec.clone()),
        };
        self.expect_done(req, "waiting for the launch to be accepted")
            .await
    }

    async fn expect_done(&mut self, req: Request, waiting: &'static str) -> Result<()> {
        match self.call(req, waiting).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other, waiting)),
        }
    }

    /// Extract the tar stream `tar` into the existing directory `path` in
    /// the guest (`docker cp` semantics: modes, owners, times, links kept).
    pub async fn copy_in(&mut self, path: &str, mut tar: impl AsyncRead + Unpin) -> Result<()> {
        self.send(Request::CopyIn { path: path.into() }).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tar.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            self.tx.frame(Kind::Data, &buf[..n]).await?;
        }
        self.tx.frame(Kind::DataEof, &[]).await?;
        match self.rx.control("waiting for the copy to finish").await? {
            Response::Done => Ok(()),
            Response::Error { code, message } => Err(ClientError::Agent { code, message }),
            other => Err(unexpected(&other, "waiting for the copy to finish")),
        }
    }

    /// A tar stream of `path` in the guest. Errors before the first byte
    /// (no such path) are returned here; later ones from the reader.
    pub async fn copy_out(self, path: &str) -> Result<CopyOut> {
        self.tar_stream(
            Request::CopyOut { path: path.into() },
            "waiting for the copy to start",
        )
        .await
    }

    /// The root filesystem's changes as an OCI layer tar (a guest launched
    /// with `rootfs.export_changes`, after its workload exited). The stream
    /// is the guest's: hostile input for the reader.
    pub async fn changes(self) -> Result<CopyOut> {
        self.tar_stream(Request::Changes, "waiting for the changes to start")
            .await
    }

    async fn tar_stream(mut self, req: Request, waiting: &'static str) -> Result<CopyOut> {
        self.send(req).await?;
        let first = match self.rx.next().await? {
            None => return Err(ClientError::Closed(waiting)),
            Some((Kind::Data, p)) => p.to_vec(),
            Some((Kind::DataEof, _)) => {
                return Ok(CopyOut {
                    rx: self.rx.r,
                    state: ReadState::Done,
                    header: [0; HEADER_LEN],
                })
            }
            Some((Kind::Control, p)) => match frame::decode_json(p)? {
                Response::Error { code, message } => {
                    return Err(ClientError::Agent { code, message })
                }
                other => return Err(unexpected(&other, waiting)),
            },
            Some((k, _)) => {
                return Err(ClientError::Unexpected {
                    got: format!("a {} frame", k.name()),
                    waiting,
                })
            }
        };
        Ok(CopyOut {
            rx: self.rx.r,
            state: ReadState::Buffered(first, 0),
            header: [0; HEADER_LEN],
        })
    }

    /// Run a process in the guest.
    pub async fn exec(mut self, exec: Exec) -> Result<ExecSession> {
        let stdin = exec.stdin;
        self.send(Request::Exec(exec)).await?;
        self.started(stdin).await
    }

    /// Attach to the main workload: its output from the start of the
    /// guest (what no earlier attacher took), then live, then its exit.
    pub async fn attach(mut self, stdin: bool) -> Result<ExecSession> {
        self.send(Request::Attach { stdin }).await?;
        self.started(stdin).await
    }

    async fn started(self, stdin: bool) -> Result<ExecSession> {
        let mut rx = self.rx;
        let waiting = "waiting for the process to start";
        let pid = match rx.control(waiting).await? {
            Response::Started { pid } => pid,
            Response::Error { code, message } => return Err(ClientError::Agent { code, message }),
            other => return Err(unexpected(&other, waiting)),
        };
        let tx = Arc::new(Mutex::new(self.tx));
        Ok(ExecSession {
            pid,
            stdin: stdin.then(|| ExecStdin {
                tx: tx.clone(),
                closed: false,
            }),
            output: ExecOutput { rx, done: false },
            control: ExecControl { tx },
        })
    }
}

/// One connection attempt: a retryable failure (nothing listens yet) or
/// a fatal one (a VMM that answers nonsense).
enum Attempt {
    Retry(String),
    Fatal(ClientError),
}

async fn hybrid_connect(
    socket: &VsockSocket,
    port: u32,
) -> std::result::Result<UnixStream, Attempt> {
    let mut s = socket.connect().await?;
    s.write_all(hybrid::connect_line(port).as_bytes())
        .await
        .map_err(|e| Attempt::Retry(format!("write CONNECT: {e}")))?;
    // Byte by byte: nothing after the newline may be consumed here.
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = s
            .read(&mut b)
            .await
            .map_err(|e| Attempt::Retry(format!("read the acknowledgement: {e}")))?;
        if n == 0 {
            return Err(Attempt::Retry(format!(
                "nothing listens on guest vsock port {port} yet"
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > hybrid::MAX_ACK_LEN {
            break;
        }
    }
    hybrid::parse_ack(&line).map_err(|e| Attempt::Fatal(e.into()))?;
    Ok(s)
}

fn unexpected(r: &Response, waiting: &'static str) -> ClientError {
    let got = serde_json::to_string(r).unwrap_or_else(|_| format!("{r:?}"));
    ClientError::Unexpected { got, waiting }
}

/// A running `exec` or `attach`: split into parts so stdin can be fed
/// from one task while another reads the output.
pub struct ExecSession {
    /// The process id in the guest.
    pub pid: i32,
    /// The process's stdin, if requested.
    pub stdin: Option<ExecStdin>,
    /// Output frames, then the exit.
    pub output: ExecOutput,
    /// Resize and signal this process.
    pub control: ExecControl,
}

/// Writes to the process's stdin.
pub struct ExecStdin {
    tx: Arc<Mutex<FrameOut>>,
    closed: bool,
}

impl ExecStdin {
    /// Send bytes. Returns when they are on their way to the guest (the
    /// agent reads no faster than the process consumes).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.tx.lock().await.stream(Kind::Stdin, data).await
    }

    /// Copy `src` to stdin until its end, then close stdin.
    pub async fn copy_from(&mut self, mut src: impl AsyncRead + Unpin) -> Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            self.write(&buf[..n]).await?;
            total += n as u64;
        }
        self.close().await?;
        Ok(total)
    }

    /// Close the process's stdin (EOF; on a terminal, an end-of-file
    /// character).
    pub async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            self.tx.lock().await.frame(Kind::StdinEof, &[]).await?;
        }
        Ok(())
    }
}

/// Sends in-band controls for the session's process.
#[derive(Clone)]
pub struct ExecControl {
    tx: Arc<Mutex<FrameOut>>,
}

impl ExecControl {
    /// Set the terminal size (for `tty` sessions).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let req = Request::Resize {
            target: None,
            rows,
            cols,
        };
        self.tx.lock().await.json(&req).await
    }

    /// Send a signal to the session's process. It travels in order with
    /// stdin; to bypass a stdin backlog use [`AgentClient::signal`] with
    /// the pid on another connection.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        let req = Request::Signal {
            target: None,
            signal,
        };
        self.tx.lock().await.json(&req).await
    }
}

/// Something the process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The end: no more events follow.
    Exited(Exit),
}

/// Reads the session's output and exit.
pub struct ExecOutput {
    rx: FrameIn,
    done: bool,
}

impl ExecOutput {
    /// The next event. The agent sends output no faster than this is
    /// called (vsock credit), so a slow reader slows the process down.
    pub async fn next(&mut self) -> Result<Event> {
        let waiting = "waiting for the process's output";
        if self.done {
            return Err(ClientError::Closed("the process had already exited"));
        }
        loop {
            match self.rx.next().await? {
                None => return Err(ClientError::Closed(waiting)),
                Some((Kind::Stdout, p)) => return Ok(Event::Stdout(p.to_vec())),
                Some((Kind::Stderr, p)) => return Ok(Event::Stderr(p.to_vec())),
                Some((Kind::Control, p)) => match frame::decode_json(p)? {
                    Response::Exited(exit) => {
                        self.done = true;
                        return Ok(Event::Exited(exit));
                    }
                    Response::Error { code, message } => {
                        return Err(ClientError::Agent { code, message })
                    }
                    // Newer agents may add informational messages.
                    Response::Unknown | Response::Done => {}
                    other => return Err(unexpected(&other, waiting)),
                },
                Some((k, _)) => {
                    return Err(ClientError::Unexpected {
                        got: format!("a {} frame", k.name()),
                        waiting,
                    })
                }
            }
        }
    }

    /// All output and the exit status.
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, Exit)> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.next().await? {
                Event::Stdout(b) => out.extend_from_slice(&b),
                Event::Stderr(b) => err.extend_from_slice(&b),
                Event::Exited(e) => return Ok((out, err, e)),
            }
        }
    }

    /// Discard output until the process exits.
    pub async fn wait(mut self) -> Result<Exit> {
        loop {
            if let Event::Exited(e) = self.next().await? {
                return Ok(e);
            }
        }
    }
}

enum ReadState {
    /// Bytes of a DATA frame already read, and how many were handed out.
    Buffered(Vec<u8>, usize),
    /// Reading a header; how many bytes of it are in.
    Header(usize),
    /// Passing through this many payload bytes of a DATA frame.
    Payload(usize),
    /// Reading a control frame's payload (an error from the agent).
    Control(Vec<u8>, usize),
    Done,
}

/// The tar stream of a `copy_out`, as an `AsyncRead`. An error the agent
/// reports mid-stream (a file vanished, an I/O error) becomes a read error,
/// so a consumer never mistakes a cut stream for a complete one.
pub struct CopyOut {
    rx: BufReader<OwnedReadHalf>,
    state: ReadState,
    header: [u8; HEADER_LEN],
}

fn proto_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl AsyncRead for CopyOut {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReadState::Done => return Poll::Ready(Ok(())),
                ReadState::Buffered(buf, at) => {
                    let n = (buf.len() - *at).min(out.remaining());
                    out.put_slice(&buf[*at..*at + n]);
                    *at += n;
                    if *at == buf.len() {
                        this.state = ReadState::Header(0);
                    }
                    return Poll::Ready(Ok(()));
                }
                ReadState::Payload(left) => {
                    let want = (*left).min(out.remaining());
                    let mut sub = out.take(want);
                    ready!(Pin::new(&mut this.rx).poll_read(cx, &mut sub))?;
                    let n = sub.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(proto_err(FrameError::Truncated {
                            got: 0,
                            want: *left,
                        })));
                    }
                    // SAFETY: `sub` wrote `n` initialised bytes into the
                    // unfilled part of `out`, which it borrowed.
                    unsafe { out.assume_init(n) };
                    out.advance(n);
                    *left -= n;
                    if *left == 0 {
                        this.state = ReadState::Header(0);
                    }
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header(got) => {
                    let mut hb = ReadBuf::new(&mut this.header[*got..]);
                    ready!(Pin::new(&mut this.rx).poll_read(cx, &mut hb))?;
                    let n = hb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the guest agent closed the connection before the end of the tar stream",
                        )));
                    }
                    *got += n;
                    if *got < HEADER_LEN {
                        continue;
                    }
                    this.state = match frame::decode_header(this.header).map_err(proto_err)? {
                        (Kind::Data, 0) => ReadState::Header(0),
                        (Kind::Data, len) => ReadState::Payload(len),
                        (Kind::DataEof, _) => ReadState::Done,
                        (Kind::Control, len) => ReadState::Control(vec![0; len], 0),
                        (k, _) => {
                            return Poll::Ready(Err(proto_err(format!(
                                "the guest agent sent a {} frame in a tar stream",
                                k.name()
                            ))))
                        }
                    };
                }
                ReadState::Control(buf, got) => {
                    if *got < buf.len() {
                        let mut cb = ReadBuf::new(&mut buf[*got..]);
                        ready!(Pin::new(&mut this.rx).poll_read(cx, &mut cb))?;
                        let n = cb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof)));
                        }
                        *got += n;
                        continue;
                    }
                    let msg = match frame::decode_json::<Response>(buf) {
                        Ok(Response::Error { code, message }) => {
                            format!("the guest agent failed the copy ({code}): {message}")
                        }
                        Ok(other) => format!("the guest agent sent {other:?} in a tar stream"),
                        Err(e) => e.to_string(),
                    };
                    this.state = ReadState::Done;
                    return Poll::Ready(Err(io::Error::other(msg)));
                }
            }
        }
    }
}
