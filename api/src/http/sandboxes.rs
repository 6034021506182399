//! `/v1/sandboxes` handlers.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mvm_api::sandbox::CreateRequest;
use mvm_api::ErrorCode;
use mvm_runtime::logs::LogRecord;
use mvm_runtime::logs::{parse_time, LogFilter};
use mvm_runtime::Status;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use super::{json_response, ApiResult, Error, Json, Query};
use crate::manager::parse_label_filters;
use crate::Daemon;

type D = State<Arc<Daemon>>;

pub async fn create(State(d): D, Json(req): Json<CreateRequest>) -> ApiResult<Response> {
    let r = d.manager.create(req).await?;
    Ok(json_response(StatusCode::CREATED, &r))
}

pub async fn list(State(d): D, q: Query) -> ApiResult<Response> {
    let all = q.flag("all", false)?;
    let labels = parse_label_filters(&q.all("label"));
    Ok(json_response(StatusCode::OK, &d.manager.list(all, &labels)))
}

pub async fn inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &d.manager.inspect(&id)?))
}

/// Start answers 204, or 200 with `{"warnings": [...]}` when there are some.
fn started(warnings: Vec<String>) -> Response {
    if warnings.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_response(StatusCode::OK, &serde_json::json!({ "warnings": warnings }))
    }
}

/// `checkpoint=NAME` starts from that checkpoint (`start --checkpoint`).
pub async fn start(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let checkpoint = q.get("checkpoint").filter(|c| !c.is_empty());
    Ok(started(d.manager.start(&id, checkpoint).await?))
}

/// `POST /v1/sandboxes/{id}/checkpoints`.
pub async fn checkpoint_create(
    State(d): D,
    Path(id): Path<String>,
    Json(req): Json<mvm_api::checkpoint::CheckpointCreateRequest>,
) -> ApiResult<Response> {
    let info = d
        .manager
        .checkpoint_create(&id, &req.name, req.leave_running)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &crate::convert::checkpoint(&info),
    ))
}

/// `GET /v1/sandboxes/{id}/checkpoints`.
pub async fn checkpoint_list(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    let list: Vec<_> = d
        .manager
        .checkpoint_list(&id)?
        .iter()
        .map(crate::convert::checkpoint)
        .collect();
    Ok(json_response(StatusCode::OK, &list))
}

/// `DELETE /v1/sandboxes/{id}/checkpoints/{name}`.
pub async fn checkpoint_remove(
    State(d): D,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    d.manager.checkpoint_remove(&id, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn stop(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let t = q.num::<u64>("timeout")?.or(q.num::<u64>("t")?);
    d.manager.stop(&id, t).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn restart(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let t = q.num::<u64>("timeout")?.or(q.num::<u64>("t")?);
    Ok(started(d.manager.restart(&id, t).await?))
}

pub async fn kill(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let sig = q
        .get("signal")
        .filter(|s| !s.is_empty())
        .unwrap_or("SIGKILL");
    d.manager.kill(&id, sig).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn pause(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    d.manager.pause(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn unpause(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    d.manager.unpause(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn wait(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let cond = q.get("condition").unwrap_or("not-running").to_string();
    let r = d.manager.wait(&id, &cond).await?;
    Ok(json_response(StatusCode::OK, &r))
}

pub async fn remove(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let force = q.flag("force", false)?;
    let volumes = q.flag("v", false)?;
    d.manager.remove(&id, force, volumes).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/sandboxes/{id}/console`: the console's previous part (the
/// VMM rotates the file at its cap) then the current one, streamed from
/// the files, never read whole into memory.
pub async fn console(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    let e = d.manager.get(&id)?;
    let path = d.manager.runtime().paths(&e.id).console;
    let mut parts = Vec::new();
    // The console's directory is the VMM's: opened without following a
    // link, so a compromised VMM cannot have this serve another file.
    for p in [mvm_runtime::paths::previous_part(&path), path] {
        match mvm_runtime::paths::read_vm_file(&p) {
            Ok(Some(f)) => parts.push(tokio_util::io::ReaderStream::new(
                tokio::fs::File::from_std(f),
            )),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(sandbox = %id, "{e}");
                return Err(Error::new(ErrorCode::Internal, format!("console: {e}")));
            }
        }
    }
    let body = Body::from_stream(futures_util::StreamExt::flatten(
        futures_util::stream::iter(parts),
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

fn line(rec: &LogRecord) -> Bytes {
    let mut v = serde_json::to_vec(&crate::convert::log_record(rec)).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// `GET /v1/sandboxes/{id}/logs`: NDJSON of `LogRecord`. With `follow`,
/// the stream stays open until the current run's output ends (for a
/// created sandbox: until its first run ends).
pub async fn logs(State(d): D, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let e = d.manager.get(&id)?;
    let follow = q.flag("follow", false)?;
    let (mut stdout, mut stderr) = (q.flag("stdout", false)?, q.flag("stderr", false)?);
    if !stdout && !stderr {
        stdout = true;
        stderr = true;
    }
    let time = |k: &str| -> ApiResult<_> {
        match q.get(k).filter(|v| !v.is_empty() && *v != "0") {
            None => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("{k}={v:?} is not an RFC 3339 time or Unix seconds"),
                )
            }),
        }
    };
    let tail = match q.get("tail") {
        None | Some("" | "all") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("tail={v:?} is not a number or \"all\""),
            )
        })?),
    };
    let filter = LogFilter {
        tail,
        since: time("since")?,
        until: time("until")?,
        stdout,
        stderr,
    };
    let status = e.snapshot().state.status;
    let snap = e
        .logs
        .snapshot(&filter)
        .map_err(|er| Error::new(ErrorCode::Internal, format!("reading the logs: {er}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let live = follow && (snap.active || status == Status::Created);
    let mut sub = snap.rx;
    let records = snap.records;
    tokio::spawn(async move {
        for r in &records {
            if tx.send(Ok(line(r))).await.is_err() {
                return;
            }
        }
        if !live {
            return;
        }
        loop {
            tokio::select! {
                ev = sub.recv() => match ev {
                    Ok(Some(r)) => {
                        if filter.until.is_some_and(|u| parse_time(&r.time).is_some_and(|t| t >= u)) {
                            return;
                        }
                        if filter.accepts(&r) && tx.send(Ok(line(&r))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("a log follower fell behind and missed {n} records");
                    }
                },
                _ = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
