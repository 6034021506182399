//! `/v1/networks` handlers.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mvm_api::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse, NetworkDisconnectRequest,
    NetworkPruneResponse,
};

use super::{json_response, ApiResult, Json};
use crate::network::Networks;
use crate::Daemon;

type D = State<Arc<Daemon>>;

pub async fn create(State(d): D, Json(req): Json<NetworkCreateRequest>) -> ApiResult<Response> {
    let m = &d.manager;
    let id = m.networks().create(m.db(), &req).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &NetworkCreateResponse { id },
    ))
}

pub async fn list(State(d): D) -> ApiResult<Response> {
    let m = &d.manager;
    let l = m.networks().list(m.db(), &m.sandbox_names())?;
    Ok(json_response(StatusCode::OK, &l))
}

pub async fn inspect(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    let m = &d.manager;
    let n = m.networks().inspect(m.db(), &id, &m.sandbox_names())?;
    Ok(json_response(StatusCode::OK, &n))
}

pub async fn remove(State(d): D, Path(id): Path<String>) -> ApiResult<Response> {
    let m = &d.manager;
    m.networks()
        .remove(m.db(), &id, &|n| m.network_users(n))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn prune(State(d): D) -> ApiResult<Response> {
    let m = &d.manager;
    let deleted = m.networks().prune(m.db(), &|n| m.network_users(n)).await?;
    Ok(json_response(
        StatusCode::OK,
        &NetworkPruneResponse { deleted },
    ))
}

/// `POST /v1/networks/{id}/connect`: for the sandbox's next start.
pub async fn connect(
    State(d): D,
    Path(id): Path<String>,
    Json(req): Json<NetworkConnectRequest>,
) -> ApiResult<Response> {
    d.manager
        .change_networks(&req.sandbox, "connect", |db, settings, name| {
            Networks::connect(db, &id, settings, name, &req.aliases, req.ip.as_deref())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/networks/{id}/disconnect`: for the sandbox's next start.
pub async fn disconnect(
    State(d): D,
    Path(id): Path<String>,
    Json(req): Json<NetworkDisconnectRequest>,
) -> ApiResult<Response> {
    d.manager
        .change_networks(&req.sandbox, "disconnect", |db, settings, name| {
            Networks::disconnect(db, &id, settings, name)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
