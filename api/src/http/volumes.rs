//! `/v1/volumes` handlers (Docker's volume endpoints), and backup and
//! restore: export streams a tar of the volume as it is read (never held
//! whole), import bridges the request body to the runtime's blocking
//! unpack, as the image load does.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mvm_api::volume::{VolumeCreateRequest, VolumeImportResponse};
use mvm_api::ErrorCode;
use tokio_stream::wrappers::ReceiverStream;

use super::images::{body_reader, drain_rest, progress_response, ChannelWriter};
use super::{json_response, ApiResult, Error, Json, Query};
use crate::volumes::vol_err;
use crate::volumes::Filters;
use crate::Daemon;

type D = State<Arc<Daemon>>;

/// `filter=KEY=VALUE`, repeated.
fn filters(q: &Query) -> ApiResult<Filters> {
    Filters::parse(&q.all("filter")).map_err(|m| Error::new(ErrorCode::BadRequest, m))
}

pub async fn create(State(d): D, Json(req): Json<VolumeCreateRequest>) -> ApiResult<Response> {
    let v = d.manager.volume_create(req).await?;
    Ok(json_response(StatusCode::CREATED, &v))
}

pub async fn list(State(d): D, q: Query) -> ApiResult<Response> {
    let size = q.flag("size", false)?;
    Ok(json_response(
        StatusCode::OK,
        &d.manager.volume_list(&filters(&q)?, size)?,
    ))
}

pub async fn inspect(State(d): D, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &d.manager.volume_inspect(&name)?,
    ))
}

pub async fn remove(State(d): D, Path(name): Path<String>, q: Query) -> ApiResult<Response> {
    let force = q.flag("force", false)?;
    d.manager.volume_remove(&name, force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn prune(State(d): D, q: Query) -> ApiResult<Response> {
    let all = q.flag("all", false)?;
    let r = d.manager.volume_prune(&filters(&q)?, all).await?;
    Ok(json_response(StatusCode::OK, &r))
}

/// `GET /v1/volumes/{name}/export`: the volume as an `application/x-tar`
/// stream. An error after the first bytes can only cut the stream (the
/// status is sent); the client sees a truncated tar and mvmd logs why.
pub async fn export(State(d): D, Path(name): Path<String>) -> ApiResult<Response> {
    d.manager.volume_export_check(&name)?;
    let dirs = d.manager.runtime().volumes();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let w = io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        match dirs.export(&name, w) {
            Ok(s) => tracing::info!(
                volume = %name,
                entries = s.entries,
                bytes = s.bytes,
                changed = s.changed,
                "volume exported"
            ),
            Err(e) => {
                tracing::warn!(volume = %name, "volume export failed: {e}");
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `POST /v1/volumes/{name}/import[?force=true]` with a tar body: a
/// progress stream whose result is a [`VolumeImportResponse`]. Refusals
/// that need no body (bad name, a volume with content and no `force`, a
/// running user) are plain errors before the body is read. `check=true`
/// asks only those questions (no body; 204 when an import would be
/// accepted): a client that is refused while it is still sending a large
/// body may see its connection closed before it reads the refusal, so
/// mvctl asks first and sends the body after.
pub async fn import(
    State(d): D,
    Path(name): Path<String>,
    q: Query,
    body: Body,
) -> ApiResult<Response> {
    let force = q.flag("force", false)?;
    let check = q.flag("check", false)?;
    let mode = d.manager.volume_import_check(&name, force)?;
    if check {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let dirs = d.manager.runtime().volumes();
    let manager = d.manager.clone();
    let mut reader = body_reader(body);
    let rt = tokio::runtime::Handle::current();
    Ok(progress_response(
        format!("importing into volume {name}"),
        move || {
            let got = dirs.import(&name, &mut reader, mode);
            drain_rest(&mut reader);
            let got = got.map_err(vol_err)?;
            rt.block_on(manager.volume_import_done(&name))?;
            tracing::info!(volume = %name, entries = got.stats.entries, bytes = got.stats.bytes, "volume imported");
            let r = VolumeImportResponse {
                name,
                created: got.created,
                replaced: got.replaced,
                entries: got.stats.entries,
                bytes: got.stats.bytes,
                skipped_devices: got.stats.skipped_devices,
                xattrs_dropped: got.stats.xattrs_dropped,
            };
            Ok(serde_json::to_value(&r).unwrap_or_default())
        },
    ))
}
