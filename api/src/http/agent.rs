//! Endpoints served through the guest agent: exec, archive, stats.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use hyper_util::rt::TokioIo;
use mvm_api::exec::{ExecCreateRequest, ExecCreateResponse, Stats, TopResponse};
use mvm_api::ErrorCode;
use mvm_protocol::agent::client::AgentClient;
use mvm_protocol::agent::{Exec, Target};
use mvm_runtime::Status;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{ReaderStream, StreamReader};

use super::{json_response, ApiResult, Error, Json, Query};
use crate::exec::{agent_err, exit_code, proxy, start_failure_code, write_failure, AGENT_TIMEOUT};
use crate::Daemon;

type D = State<Arc<Daemon>>;

/// The protocol name of the upgraded exec/attach streams.
pub const UPGRADE_PROTOCOL: &str = "mvm-stream";

/// The id of a running sandbox.
fn running(d: &Daemon, key: &str) -> ApiResult<String> {
    let e = d.manager.get(key)?;
    let r = e.snapshot();
    if r.state.status != Status::Running {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "sandbox {} is not running ({:?}); start it first",
                r.spec.name, r.state.status
            ),
        ));
    }
    if r.state.paused {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "sandbox {} is paused; unpause it first (mvctl unpause {0})",
                r.spec.name
            ),
        ));
    }
    Ok(e.id.clone())
}

async fn agent(d: &Daemon, key: &str) -> ApiResult<AgentClient> {
    let id = running(d, key)?;
    Ok(d.manager
        .runtime()
        .agent(&id, AGENT_TIMEOUT)
        .await
        .map_err(agent_err)?)
}

fn path_param(q: &Query) -> ApiResult<String> {
    match q.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(Error::new(
            ErrorCode::BadRequest,
            "the path query parameter is required (path=/dir/in/the/sandbox)",
        )),
    }
}

/// `POST /v1/sandboxes/{id}/exec`.
pub async fn exec_create(
    State(d): D,
    Path(id): Path<String>,
    Json(req): Json<ExecCreateRequest>,
) -> ApiResult<Response> {
    let sid = running(&d, &id)?;
    let exec_id = d.execs.create(&sid, req)?;
    Ok(json_response(
        StatusCode::CREATED,
        &ExecCreateResponse { id: exec_id },
    ))
}

/// `GET /v1/exec/{exec_id}`.
pub async fn exec_inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &d.execs.get(&id)?))
}

/// `POST /v1/exec/{exec_id}/resize?h=&w=`.
pub async fn exec_resize(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let x = d.execs.get(&id)?;
    let (Some(h), Some(w)) = (q.num::<u16>("h")?, q.num::<u16>("w")?) else {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "resize needs h (rows) and w (columns)",
        ));
    };
    let pid = match x.pid {
        Some(p) if x.running && p > 0 => p,
        _ => {
            return Err(Error::new(
                ErrorCode::InvalidState,
                format!("exec session {id} is not running"),
            ))
        }
    };
    let mut c = agent(&d, &x.sandbox_id).await?;
    c.resize(Target::Pid(pid), h, w).await.map_err(agent_err)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/exec/{exec_id}/start`: upgrade to `mvm-stream`, then the
/// agent protocol's frames (STDIN and `resize`/`signal` controls from the
/// client; STDOUT/STDERR and a final `exited` control to it).
pub async fn exec_start(
    State(d): D,
    Path(id): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wants_upgrade {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("exec start streams over an upgraded connection: send Connection: Upgrade and Upgrade: {UPGRADE_PROTOCOL}"),
        ));
    }
    let x = d.execs.get(&id)?;
    running(&d, &x.sandbox_id)?;
    let x = d.execs.claim(&id)?;
    let client = match agent(&d, &x.sandbox_id).await {
        Ok(c) => c,
        Err(e) => {
            d.execs.ended(&id, 125);
            return Err(e);
        }
    };
    let c = &x.config;
    let exec = Exec {
        args: c.cmd.clone(),
        env: c.env.clone(),
        cwd: c.working_dir.clone(),
        user: c.user.clone(),
        tty: c.tty,
        stdin: c.stdin,
        rows: c.rows,
        cols: c.cols,
    };
    let session = client.exec(exec).await;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let execs = d.execs.clone();
    let exec_id = id.clone();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::warn!(exec = %exec_id, "exec upgrade failed: {e}");
                // The process (if started) runs on without a client.
                if let Ok(s) = session {
                    execs.started(&exec_id, s.pid);
                    let code = s.output.wait().await.map(|e| exit_code(&e)).unwrap_or(1);
                    execs.ended(&exec_id, code);
                } else {
                    execs.ended(&exec_id, 125);
                }
                return;
            }
        };
        match session {
            Ok(s) => {
                execs.started(&exec_id, s.pid);
                let code = match proxy(io, s).await {
                    Ok(exit) => exit_code(&exit),
                    Err(e) => {
                        tracing::warn!(exec = %exec_id, "exec session: {e}");
                        1
                    }
                };
                execs.ended(&exec_id, code);
            }
            Err(e) => {
                let code = start_failure_code(&e).unwrap_or(125);
                let mut io = io;
                let _ = write_failure(&mut io, &e.to_string(), code).await;
                execs.ended(&exec_id, code);
            }
        }
    });
    Ok(switching_protocols())
}

/// The `101 Switching Protocols` answer to the `mvm-stream` upgrade that
/// exec start and attach both use.
pub fn switching_protocols() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    r
}

/// `GET /v1/sandboxes/{id}/archive?path=`: a tar of the path.
pub async fn archive_get(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let path = path_param(&q)?;
    let c = agent(&d, &id).await?;
    let out = c.copy_out(&path).await.map_err(agent_err)?;
    let body = Body::from_stream(ReaderStream::new(out));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

/// `PUT /v1/sandboxes/{id}/archive?path=`: extract the tar body into the
/// existing directory `path`.
pub async fn archive_put(
    State(d): D,
    Path(id): Path<String>,
    q: Query,
    body: Body,
) -> ApiResult<Response> {
    let path = path_param(&q)?;
    let mut c = agent(&d, &id).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    c.copy_in(&path, reader).await.map_err(agent_err)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn stats_of(s: mvm_protocol::agent::Stats) -> Stats {
    Stats {
        read: crate::manager::now(),
        cpu_usage_usec: s.cpu_usage_usec,
        cpu_user_usec: s.cpu_user_usec,
        cpu_system_usec: s.cpu_system_usec,
        system_cpu_usec: s.system_cpu_usec,
        online_cpus: s.online_cpus,
        memory_usage_bytes: s.memory_usage_bytes,
        memory_limit_bytes: s.memory_limit_bytes,
        memory_cache_bytes: s.memory_cache_bytes,
        pids: s.pids,
        block_read_bytes: s.block_read_bytes,
        block_write_bytes: s.block_write_bytes,
        net_rx_bytes: s.net_rx_bytes,
        net_tx_bytes: s.net_tx_bytes,
    }
}

/// `GET /v1/sandboxes/{id}/stats?stream=false`: one `Stats` object, or
/// with `stream=true` NDJSON, one line a second until the sandbox stops.
pub async fn stats(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let stream = q.flag("stream", false)?;
    let mut c = agent(&d, &id).await?;
    let first = stats_of(c.stats().await.map_err(agent_err)?);
    if !stream {
        return Ok(json_response(StatusCode::OK, &first));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        let mut next = Some(first);
        while let Some(s) = next.take() {
            let mut line = serde_json::to_vec(&s).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tx.closed() => return,
            }
            next = c.stats().await.ok().map(stats_of);
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Docker's `TIME` column: cumulative CPU time as `hh:mm:ss`.
fn cpu_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `GET /v1/sandboxes/{id}/top`: the workload's processes, read by the
/// guest agent from the guest's /proc.
pub async fn top(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    let mut c = agent(&d, &id).await?;
    let procs = c.processes().await.map_err(|e| {
        if e.code() == Some(mvm_protocol::agent::ErrorCode::Unsupported) {
            Error::new(
                ErrorCode::InvalidState,
                format!("the sandbox's guest init is too old to list processes ({e}); restart the sandbox with a current mvm-init"),
            )
        } else {
            agent_err(e).into()
        }
    })?;
    let titles = ["PID", "PPID", "USER", "TIME", "COMMAND"];
    let r = TopResponse {
        titles: titles.iter().map(|t| t.to_string()).collect(),
        processes: procs
            .into_iter()
            .map(|p| {
                vec![
                    p.pid.to_string(),
                    p.ppid.to_string(),
                    p.user,
                    cpu_time(p.cpu_ms),
                    p.cmd,
                ]
            })
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &r))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_column() {
        assert_eq!(super::cpu_time(0), "00:00:00");
        assert_eq!(super::cpu_time(3_723_999), "01:02:03");
    }
}
