//! `/v1/volumes` handlers (Docker's volume endpoints).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mvm_api::volume::VolumeCreateRequest;
use mvm_api::ErrorCode;

use super::{json_response, ApiResult, Error, Json, Query};
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
