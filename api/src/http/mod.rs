//! The REST API (docs/api.md): routes, JSON errors, query parsing, auth.

mod agent;
mod attach;
mod build;
mod images;
mod networks;
mod sandboxes;
mod system;
mod volumes;

pub use images::store_code;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use mvm_api::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

use crate::Daemon;

/// The largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// The OpenAPI document, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// An API error as an HTTP response.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl Error {
    /// A new error.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self(ApiError::new(code, msg))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = ?self.0.code, "{}", self.0.message);
        }
        json_response(status, &self.0)
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, Error>;

/// A JSON response.
pub fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON request body with our error format and size limit (axum's own
/// extractor answers in plain text).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("cannot read the request body: {e} (JSON bodies are limited to {MAX_JSON_BODY} bytes)"),
            )
        })?;
        if bytes.len() > MAX_JSON_BODY {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "the request body is {} bytes; JSON bodies are limited to {MAX_JSON_BODY}",
                    bytes.len()
                ),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| Error::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
    }
}

/// Query parameters, in order, percent-decoded (repeated keys allowed).
#[derive(Debug, Default, Clone)]
pub struct Query(pub Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Query {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let mut out = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("malformed query parameter {pair:?}"),
                    )
                })
            };
            out.push((dec(k)?, dec(v)?));
        }
        Ok(Query(out))
    }
}

impl Query {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A boolean: absent -> `default`; present without value, `1`,
    /// `true` -> true; `0`, `false` -> false.
    pub fn flag(&self, key: &str, default: bool) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(default),
            Some("" | "1" | "true" | "True" | "yes") => Ok(true),
            Some("0" | "false" | "False" | "no") => Ok(false),
            Some(v) => Err(Error::new(
                ErrorCode::BadRequest,
                format!("query parameter {key}={v:?} is not a boolean: use true or false"),
            )),
        }
    }

    /// A number.
    pub fn num<T: std::str::FromStr>(&self, key: &str) -> ApiResult<Option<T>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("query parameter {key}={v:?} is not a valid number"),
                )
            }),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The API router (no auth; see [`with_token`]).
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/version", get(system::version))
        .route("/v1/info", get(system::info))
        .route("/v1/system/prune", post(system::prune))
        .route("/v1/system/df", get(system::df))
        .route(
            "/v1/sandboxes",
            get(sandboxes::list).post(sandboxes::create),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::inspect).delete(sandboxes::remove),
        )
        .route("/v1/sandboxes/{id}/start", post(sandboxes::start))
        .route("/v1/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/v1/sandboxes/{id}/restart", post(sandboxes::restart))
        .route("/v1/sandboxes/{id}/kill", post(sandboxes::kill))
        .route("/v1/sandboxes/{id}/pause", post(sandboxes::pause))
        .route(
            "/v1/sandboxes/{id}/checkpoints",
            get(sandboxes::checkpoint_list).post(sandboxes::checkpoint_create),
        )
        .route(
            "/v1/sandboxes/{id}/checkpoints/{name}",
            axum::routing::delete(sandboxes::checkpoint_remove),
        )
        .route("/v1/sandboxes/{id}/unpause", post(sandboxes::unpause))
        .route("/v1/sandboxes/{id}/wait", post(sandboxes::wait))
        .route("/v1/sandboxes/{id}/logs", get(sandboxes::logs))
        .route("/v1/sandboxes/{id}/console", get(sandboxes::console))
        .route("/v1/sandboxes/{id}/attach", post(attach::attach))
        .route("/v1/sandboxes/{id}/resize", post(attach::resize))
        .route("/v1/sandboxes/{id}/exec", post(agent::exec_create))
        .route("/v1/exec/{exec_id}", get(agent::exec_inspect))
        .route("/v1/exec/{exec_id}/start", post(agent::exec_start))
        .route("/v1/exec/{exec_id}/resize", post(agent::exec_resize))
        .route(
            "/v1/sandboxes/{id}/archive",
            get(agent::archive_get).put(agent::archive_put),
        )
        .route("/v1/sandboxes/{id}/stats", get(agent::stats))
        .route("/v1/sandboxes/{id}/top", get(agent::top))
        .route("/v1/networks", get(networks::list).post(networks::create))
        .route("/v1/networks/prune", post(networks::prune))
        .route("/v1/networks/{id}/connect", post(networks::connect))
        .route("/v1/networks/{id}/disconnect", post(networks::disconnect))
        .route(
            "/v1/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/v1/images", get(images::list).delete(images::remove))
        .route("/v1/images/inspect", get(images::inspect))
        .route("/v1/images/tag", post(images::tag))
        .route("/v1/images/prune", post(images::prune))
        .route("/v1/images/load", post(images::load))
        .route("/v1/images/save", get(images::save))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/push", post(images::push))
        .route("/v1/volumes", get(volumes::list).post(volumes::create))
        .route("/v1/volumes/prune", post(volumes::prune))
        .route(
            "/v1/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/v1/volumes/{name}/export", get(volumes::export))
        .route("/v1/volumes/{name}/import", post(volumes::import))
        .route("/v1/build", post(build::build))
        .route("/v1/auth/login", post(images::login))
        .fallback(|req: Request| async move {
            Error::new(
                ErrorCode::NotFound,
                format!(
                    "no such endpoint: {} {} (see /openapi.json)",
                    req.method(),
                    req.uri().path()
                ),
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            Error::new(
                ErrorCode::BadRequest,
                format!(
                    "method {} is not allowed on {} (see /openapi.json)",
                    req.method(),
                    req.uri().path()
                ),
            )
        })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(d)
}

async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(%method, path, status = resp.status().as_u16(), ms = t0.elapsed().as_millis() as u64, "request");
    resp
}

/// Require `Authorization: Bearer <token>` (compared in constant time).
pub fn with_token(router: Router, token: String) -> Router {
    let token = Arc::new(token);
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Error::new(
                    ErrorCode::Unauthorized,
                    "missing or wrong bearer token: send Authorization: Bearer <token> (MVM_TOKEN for mvctl)",
                )
                .into_response();
            }
            next.run(req).await
        }
    }))
}

/// Compare without an early exit, so timing does not leak the token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%3Ac+d").unwrap(), "a/b:c d");
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%2").is_none());
    }

    /// Every route of the router is documented in openapi.json.
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let paths = doc["paths"].as_object().unwrap();
        let src = include_str!("mod.rs");
        for line in src.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix(".route(\"") {
                let path = &rest[..rest.find('"').unwrap()];
                assert!(paths.contains_key(path), "{path} is not in openapi.json");
            }
        }
    }

    /// Every `$ref` in openapi.json points at something the document
    /// defines: the JSON is edited by hand, and a dangling reference
    /// breaks every client generator.
    #[test]
    fn openapi_references_resolve() {
        fn walk(v: &serde_json::Value, doc: &serde_json::Value, at: &str) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = r
                            .strip_prefix('#')
                            .unwrap_or_else(|| panic!("{at}: {r} is not a local reference"));
                        assert!(doc.pointer(pointer).is_some(), "{at}: {r} is not defined");
                    }
                    for (k, v) in m {
                        walk(v, doc, &format!("{at}/{k}"));
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        walk(v, doc, &format!("{at}/{i}"));
                    }
                }
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        walk(&doc, &doc, "");
    }
}
