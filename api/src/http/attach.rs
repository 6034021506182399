//! `POST /v1/sandboxes/{id}/attach` and `/resize`: the main workload's
//! streams for API clients.
//!
//! mvmd is the guest agent's one attacher (crate::output); clients attach
//! to mvmd's fan-out instead: the same upgraded `mvm-stream` framing as
//! exec (STDOUT/STDERR frames, then an `exited` control frame with the
//! run's recorded exit status; STDIN, STDIN_EOF and `resize` controls from
//! the client). A client may attach before the start (`run`, `start -a`):
//! it then receives the next run from its first byte.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use mvm_api::ErrorCode;
use mvm_protocol::agent::frame;
use mvm_protocol::agent::{Exit, Kind, Request as AgentRequest};
use mvm_runtime::logs::LogFilter;
use mvm_runtime::logs::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;

use super::agent::{switching_protocols, UPGRADE_PROTOCOL};
use super::{ApiResult, Error, Query};
use crate::exec::{read_frame, write_exited, write_frame};
use crate::loghub::AttachEvent;
use crate::output::Link;
use crate::Daemon;

type D = State<Arc<Daemon>>;

/// What one client asked for.
#[derive(Debug, Clone, Copy)]
struct Wants {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    stream: bool,
}

impl Wants {
    fn stream(&self, s: Stream) -> bool {
        match s {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}

fn wants_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL))
}

/// `POST /v1/sandboxes/{id}/attach?stdin&stdout&stderr&logs&stream`.
/// Neither `stdout` nor `stderr` given: both. `stream` defaults to true;
/// `logs` (default false) first replays the stored output.
pub async fn attach(
    State(d): D,
    Path(id): Path<String>,
    q: Query,
    mut req: Request,
) -> ApiResult<Response> {
    if !wants_upgrade(&req) {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("attach streams over an upgraded connection: send Connection: Upgrade and Upgrade: {UPGRADE_PROTOCOL}"),
        ));
    }
    let e = d.manager.get(&id)?;
    let (mut stdout, mut stderr) = (q.flag("stdout", false)?, q.flag("stderr", false)?);
    if !stdout && !stderr {
        stdout = true;
        stderr = true;
    }
    let open_stdin = e.snapshot().spec.process.open_stdin;
    let wants = Wants {
        // Stdin reaches the workload only if it was created with it open.
        stdin: q.flag("stdin", false)? && open_stdin,
        stdout,
        stderr,
        stream: q.flag("stream", true)?,
    };
    let logs = q.flag("logs", false)?;
    let filter = LogFilter {
        stdout,
        stderr,
        ..LogFilter::default()
    };
    // Subscribe before answering: nothing the run writes after this
    // response can be missed.
    let (records, rx) = e
        .logs
        .attach(logs.then_some(&filter))
        .map_err(|er| Error::new(ErrorCode::Internal, format!("reading the logs: {er}")))?;
    let link = e.link.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let sid = e.id.clone();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(er) => {
                tracing::debug!(sandbox = %sid, "attach upgrade failed: {er}");
                return;
            }
        };
        let replay: Vec<(Stream, String)> =
            records.into_iter().map(|r| (r.stream, r.log)).collect();
        serve(io, replay, rx, wants, link).await;
    });
    Ok(switching_protocols())
}

/// Carry one client's attach until the run ends or the client goes.
async fn serve<S>(
    io: S,
    replay: Vec<(Stream, String)>,
    mut rx: tokio::sync::broadcast::Receiver<AttachEvent>,
    wants: Wants,
    link: Arc<Link>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(input(rd, wants, link, gone_tx));
    for (s, text) in replay {
        if write_frame(&mut wr, kind_of(s), text.as_bytes())
            .await
            .is_err()
        {
            input.abort();
            return;
        }
    }
    if wants.stream {
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = &mut gone => break,
            };
            match ev {
                Ok(AttachEvent::Output(s, b)) => {
                    if wants.stream(s) && write_frame(&mut wr, kind_of(s), &b).await.is_err() {
                        break;
                    }
                }
                Ok(AttachEvent::Exited(code)) => {
                    let _ = write_exited(&mut wr, &Exit::code(code)).await;
                    break;
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("an attached client fell behind and missed {n} output chunks");
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
    input.abort();
}

fn kind_of(s: Stream) -> Kind {
    match s {
        Stream::Stdout => Kind::Stdout,
        Stream::Stderr => Kind::Stderr,
    }
}

/// Client to workload: stdin (once the run's agent session is up) and
/// resizes. Its end (the client closed the connection) ends the attach.
async fn input<R: AsyncRead + Unpin>(
    mut rd: R,
    wants: Wants,
    link: Arc<Link>,
    gone: tokio::sync::oneshot::Sender<()>,
) {
    let mut buf = Vec::new();
    loop {
        let kind = match read_frame(&mut rd, &mut buf).await {
            Ok(Some(k)) => k,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("attach client stream: {e}");
                break;
            }
        };
        match kind {
            Kind::Stdin | Kind::StdinEof if wants.stdin => {
                let Some(stdin) = link.stdin().await else {
                    continue;
                };
                let mut s = stdin.lock().await;
                let r = if kind == Kind::Stdin {
                    s.write(&buf).await
                } else {
                    s.close().await
                };
                if let Err(e) = r {
                    tracing::debug!("writing the workload's stdin: {e}");
                }
            }
            Kind::Control => match frame::decode_json::<AgentRequest>(&buf) {
                Ok(AgentRequest::Resize { rows, cols, .. }) => {
                    if let Err(e) = link.resize(rows, cols).await {
                        tracing::debug!("resizing the workload's terminal: {e}");
                    }
                }
                _ => tracing::debug!("an attach client sent an unsupported control message"),
            },
            // Stdin for a sandbox without open stdin, or other kinds: dropped.
            _ => {}
        }
    }
    let _ = gone.send(());
}

/// `POST /v1/sandboxes/{id}/resize?h=&w=`: the terminal size of a `tty`
/// sandbox; kept for the next start when it is not running.
pub async fn resize(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let e = d.manager.get(&id)?;
    let (Some(h), Some(w)) = (q.num::<u16>("h")?, q.num::<u16>("w")?) else {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "resize needs h (rows) and w (columns)",
        ));
    };
    if h == 0 || w == 0 {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("a terminal of {h} rows and {w} columns is not a size; give both above 0"),
        ));
    }
    if !e.snapshot().spec.process.tty {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "sandbox {id} has no terminal (it was not created with -t / tty: true); nothing to resize"
            ),
        ));
    }
    e.link
        .resize(h, w)
        .await
        .map_err(|er| Error::new(ErrorCode::Internal, format!("resizing the terminal: {er}")))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
