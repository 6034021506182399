//! Exec sessions and the other operations served by the guest agent
//! (archive copy, stats). An exec is created (recorded here, in memory:
//! like Docker's, exec sessions do not survive the daemon), then started
//! once over an upgraded HTTP connection that carries the agent
//! protocol's frames between the client and the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mvm_api::exec::{ExecCreateRequest, ExecInfo};
use mvm_api::{ApiError, ErrorCode};
use mvm_protocol::agent::client::{ClientError, Event, ExecSession};
use mvm_protocol::agent::frame::{self, Kind, HEADER_LEN};
use mvm_protocol::agent::{Exit, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long to wait for the agent of a running sandbox (it may still be
/// booting when a request comes right after start).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Exec sessions kept after they ended, for inspection.
const MAX_ENDED: usize = 1024;

/// An agent client error as an API error.
pub fn agent_err(e: ClientError) -> ApiError {
    use mvm_protocol::agent::ErrorCode as A;
    let code = match e.code() {
        Some(A::NotFound) => ErrorCode::NotFound,
        Some(A::BadRequest | A::User | A::NotExecutable) => ErrorCode::BadRequest,
        Some(A::Busy | A::NotAttachable | A::NoSuchProcess) => ErrorCode::InvalidState,
        _ => match e {
            ClientError::Timeout { .. } | ClientError::Connect { .. } => ErrorCode::InvalidState,
            _ => ErrorCode::Internal,
        },
    };
    ApiError::new(code, e.to_string())
}

/// Docker's exit codes for an exec that could not start.
pub fn start_failure_code(e: &ClientError) -> Option<i32> {
    use mvm_protocol::agent::ErrorCode as A;
    match e.code()? {
        A::NotFound => Some(127),
        A::NotExecutable => Some(126),
        A::User => Some(125),
        _ => None,
    }
}

/// The exit status as one code: 128+N for signal N.
pub fn exit_code(e: &Exit) -> i32 {
    match (e.exit_code, e.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 0,
    }
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, ExecInfo>,
    /// Ids in creation order, to forget the oldest ended ones.
    order: Vec<String>,
}

/// The exec sessions of this daemon.
#[derive(Default, Clone)]
pub struct Execs {
    inner: Arc<Mutex<Inner>>,
}

impl Execs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a new exec for `sandbox_id`.
    pub fn create(&self, sandbox_id: &str, config: ExecCreateRequest) -> Result<String, ApiError> {
        if config.cmd.is_empty() || config.cmd[0].is_empty() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "no command given: cmd must name a program to run",
            ));
        }
        let id = mvm_runtime::names::new_id();
        let mut inner = self.lock();
        if inner.order.len() >= MAX_ENDED {
            let ended: Vec<String> = inner
                .order
                .iter()
                .filter(|i| inner.by_id.get(*i).is_some_and(|x| x.exit_code.is_some()))
                .take(inner.order.len() / 2)
                .cloned()
                .collect();
            for i in &ended {
                inner.by_id.remove(i);
            }
            inner.order.retain(|i| !ended.contains(i));
        }
        inner.by_id.insert(
            id.clone(),
            ExecInfo {
                id: id.clone(),
                sandbox_id: sandbox_id.to_string(),
                config,
                running: false,
                pid: None,
                exit_code: None,
            },
        );
        inner.order.push(id.clone());
        Ok(id)
    }

    /// The exec `id`.
    pub fn get(&self, id: &str) -> Result<ExecInfo, ApiError> {
        self.lock().by_id.get(id).cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("no such exec session: {id}"))
        })
    }

    /// Mark `id` as being started; refuses a second start.
    pub fn claim(&self, id: &str) -> Result<ExecInfo, ApiError> {
        let mut inner = self.lock();
        let x = inner.by_id.get_mut(id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("no such exec session: {id}"))
        })?;
        if x.running || x.exit_code.is_some() || x.pid == Some(0) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("exec session {id} was already started; create a new one"),
            ));
        }
        // pid 0: claimed, not yet running.
        x.pid = Some(0);
        Ok(x.clone())
    }

    /// The process runs as `pid`.
    pub fn started(&self, id: &str, pid: i32) {
        if let Some(x) = self.lock().by_id.get_mut(id) {
            x.pid = Some(pid);
            x.running = true;
        }
    }

    /// The process ended with `code`.
    pub fn ended(&self, id: &str, code: i32) {
        if let Some(x) = self.lock().by_id.get_mut(id) {
            x.running = false;
            x.exit_code = Some(code);
        }
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    w.write_all(&h).await?;
    w.write_all(payload).await
}

/// Write an `exited` control frame.
pub async fn write_exited<W: AsyncWrite + Unpin>(w: &mut W, exit: &Exit) -> std::io::Result<()> {
    let json = frame::encode_json(&Response::Exited(*exit)).map_err(std::io::Error::other)?;
    write_frame(w, Kind::Control, &json).await?;
    w.flush().await
}

/// Write an error message on STDERR and the failure's exit status: what a
/// client sees of an exec that could not start.
pub async fn write_failure<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &str,
    code: i32,
) -> std::io::Result<()> {
    write_frame(w, Kind::Stderr, format!("{msg}\n").as_bytes()).await?;
    write_exited(w, &Exit::code(code)).await
}

/// Read one frame from the client: `None` at a clean end.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Kind>> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = frame::decode_header(h)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(Some(kind))
}

/// Carry frames between an upgraded client connection and an exec or
/// attach session until the process exits; returns its exit.
pub async fn proxy<S>(io: S, session: ExecSession) -> Result<Exit, String>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let ExecSession {
        stdin,
        mut output,
        control,
        ..
    } = session;
    // Client -> process: stdin and in-band controls. Ends with the client
    // or the process; an error here never ends the process.
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut buf = Vec::new();
        loop {
            let kind = match read_frame(&mut rd, &mut buf).await {
                Ok(Some(k)) => k,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("exec client stream: {e}");
                    break;
                }
            };
            let r = match kind {
                Kind::Stdin => match stdin.as_mut() {
                    Some(s) => s.write(&buf).await,
                    None => Ok(()),
                },
                Kind::StdinEof => match stdin.as_mut() {
                    Some(s) => s.close().await,
                    None => Ok(()),
                },
                Kind::Control => match frame::decode_json::<Request>(&buf) {
                    Ok(Request::Resize { rows, cols, .. }) => control.resize(rows, cols).await,
                    Ok(Request::Signal { signal, .. }) => control.signal(signal).await,
                    Ok(_) | Err(_) => {
                        tracing::debug!("exec client sent an unsupported control message");
                        Ok(())
                    }
                },
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!("forwarding to the exec session: {e}");
                break;
            }
        }
        // The client went away (or stopped sending): the process's stdin
        // ends, as a closed pipe would.
        if let Some(mut s) = stdin {
            let _ = s.close().await;
        }
    });
    let r = loop {
        match output.next().await {
            Ok(Event::Stdout(b)) => {
                if write_frame(&mut wr, Kind::Stdout, &b).await.is_err() {
                    // The client is gone: keep draining so the process
                    // is not stalled, and record its exit.
                    break drain(output).await;
                }
            }
            Ok(Event::Stderr(b)) => {
                if write_frame(&mut wr, Kind::Stderr, &b).await.is_err() {
                    break drain(output).await;
                }
            }
            Ok(Event::Exited(exit)) => {
                let _ = write_exited(&mut wr, &exit).await;
                break Ok(exit);
            }
            Err(e) => {
                let _ = write_failure(&mut wr, &format!("mvmd: {e}"), 1).await;
                break Err(e.to_string());
            }
        }
    };
    let _ = wr.shutdown().await;
    input.abort();
    r
}

async fn drain(output: mvm_protocol::agent::client::ExecOutput) -> Result<Exit, String> {
    output.wait().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Exit::code(3)), 3);
        assert_eq!(exit_code(&Exit::signal(9)), 137);
    }

    #[test]
    fn execs_start_once() {
        let x = Execs::default();
        assert!(x.create("s", ExecCreateRequest::default()).is_err());
        let id = x
            .create(
                "s",
                ExecCreateRequest {
                    cmd: vec!["true".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        x.claim(&id).unwrap();
        assert_eq!(x.claim(&id).unwrap_err().code, ErrorCode::Conflict);
        x.started(&id, 42);
        assert!(x.get(&id).unwrap().running);
        x.ended(&id, 0);
        let i = x.get(&id).unwrap();
        assert_eq!((i.running, i.exit_code), (false, Some(0)));
        assert_eq!(x.get("nope").unwrap_err().code, ErrorCode::NotFound);
    }

    /// Frames from a client reach the session's reader and the exit
    /// frame decodes as the agent protocol's `exited`.
    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_failure(&mut a, "no such file", 127).await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        assert_eq!(
            read_frame(&mut b, &mut buf).await.unwrap(),
            Some(Kind::Stderr)
        );
        assert_eq!(buf, b"no such file\n");
        assert_eq!(
            read_frame(&mut b, &mut buf).await.unwrap(),
            Some(Kind::Control)
        );
        match frame::decode_json::<Response>(&buf).unwrap() {
            Response::Exited(e) => assert_eq!(e, Exit::code(127)),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_frame(&mut b, &mut buf).await.unwrap(), None);
    }
}
