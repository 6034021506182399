//! `/v1/images` handlers: the image store (`mvm-images`) over HTTP.
//!
//! Store calls block (file locks, fsync, mkfs), so they run on the
//! blocking pool; request bodies are bridged to `std::io::Read` and never
//! buffered whole. Pull, push and login go through `crate::registry`,
//! with the client's credentials from the request's headers.

use std::io::{self, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use mvm_api::images::{LoginRequest, LoginResponse, Progress, TagRequest, TransferRequest};
use mvm_api::ErrorCode;
use mvm_images::registry::Credentials;
use mvm_images::{
    ArchiveError, ArchiveFormat, ImageId, ImportOptions, LoadOptions, Reference, StoreError,
};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{json_response, ApiResult, Error, Json, Query};
use crate::registry::{self, ClientAuth, PullSpec};
use crate::Daemon;

type D = State<Arc<Daemon>>;

/// The API code of a store error.
pub fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::ImageNotFound(_) | StoreError::BlobNotFound(_) => ErrorCode::NotFound,
        StoreError::Reference(_)
        | StoreError::AmbiguousId(_)
        | StoreError::PinnedDigestMismatch { .. } => ErrorCode::BadRequest,
        StoreError::InUse { .. } | StoreError::MultipleNames { .. } => ErrorCode::Conflict,
        StoreError::NoSpace { .. } => ErrorCode::ResourceUnavailable,
        StoreError::DigestMismatch { .. }
        | StoreError::SizeMismatch { .. }
        | StoreError::TooLarge { .. }
        | StoreError::Manifest { .. }
        | StoreError::Incomplete { .. } => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

fn store_err(e: StoreError) -> Error {
    Error::new(store_code(&e), e.to_string())
}

fn archive_err(e: ArchiveError) -> Error {
    let code = match &e {
        ArchiveError::Store(s) => store_code(s),
        ArchiveError::Write(_) => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    Error::new(code, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
}

fn required<'a>(q: &'a Query, key: &str) -> ApiResult<&'a str> {
    q.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::new(
            ErrorCode::BadRequest,
            format!("missing query parameter {key}: name the image"),
        )
    })
}

pub async fn list(State(d): D) -> ApiResult<Response> {
    let store = d.manager.runtime().store().clone();
    let images = blocking(move || store.list().map_err(store_err)).await?;
    Ok(json_response(StatusCode::OK, &images))
}

pub async fn inspect(State(d): D, q: Query) -> ApiResult<Response> {
    let r = required(&q, "ref")?.to_string();
    let store = d.manager.runtime().store().clone();
    let info = blocking(move || store.inspect(&r).map_err(store_err)).await?;
    Ok(json_response(StatusCode::OK, &info))
}

pub async fn tag(State(d): D, Json(req): Json<TagRequest>) -> ApiResult<Response> {
    let store = d.manager.runtime().store().clone();
    blocking(move || {
        let target = Reference::parse(&req.target).map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("invalid target reference {:?}: {e}", req.target),
            )
        })?;
        let rec = store.resolve(&req.source).map_err(store_err)?;
        store.tag(&target, &rec.digest).map_err(store_err)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn in_use_checker(d: &Daemon) -> impl Fn(&ImageId) -> bool + Send + 'static {
    let used = d.manager.images_in_use();
    move |id: &ImageId| used.iter().any(|u| *u == id.to_string())
}

pub async fn remove(State(d): D, q: Query) -> ApiResult<Response> {
    let r = required(&q, "ref")?.to_string();
    let force = q.flag("force", false)?;
    let store = d.manager.runtime().store().clone();
    let in_use = in_use_checker(&d);
    let report = blocking(move || store.remove(&r, force, &in_use).map_err(store_err)).await?;
    Ok(json_response(StatusCode::OK, &report))
}

pub async fn prune(State(d): D, q: Query) -> ApiResult<Response> {
    let all = q.flag("all", false)?;
    let store = d.manager.runtime().store().clone();
    let in_use = in_use_checker(&d);
    let report = blocking(move || store.prune(all, &in_use).map_err(store_err)).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// A blocking reader over a request body.
pub(super) fn body_reader(
    body: Body,
) -> SyncIoBridge<StreamReader<impl futures_util::Stream<Item = io::Result<Bytes>> + Unpin, Bytes>>
{
    let stream = body.into_data_stream().map_err(io::Error::other);
    SyncIoBridge::new(StreamReader::new(stream))
}

/// Read and discard what a client sent after the archive ended, or after
/// it was refused part way (tar
/// writers pad to their record size, 10 KiB for GNU tar), up to
/// [`TRAILING_MAX`]: the response must not end while the client is still
/// writing, or hyper closes the connection under it and the client loses
/// the answer ("connection error" while reading it).
pub(super) fn drain_rest<R: io::Read>(reader: &mut R) {
    let _ = io::copy(&mut io::Read::take(reader, TRAILING_MAX), &mut io::sink());
}

/// The most a request may carry after its archive's end.
const TRAILING_MAX: u64 = 1 << 20;

/// Run `job` on the blocking pool and answer with an NDJSON progress
/// stream: a status line, then `result` or `error`.
pub(super) fn progress_response<F>(status: String, job: F) -> Response
where
    F: FnOnce() -> Result<serde_json::Value, Error> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(16);
    let line = |p: &Progress| {
        let mut v = serde_json::to_vec(p).unwrap_or_default();
        v.push(b'\n');
        Ok(Bytes::from(v))
    };
    tokio::spawn(async move {
        let _ = tx.send(line(&Progress::Status { message: status })).await;
        let r = tokio::task::spawn_blocking(job).await;
        let last = match r {
            Ok(Ok(value)) => Progress::Result { value },
            Ok(Err(e)) => Progress::Error {
                code: e.0.code,
                message: e.0.message,
            },
            Err(e) => Progress::Error {
                code: ErrorCode::Internal,
                message: e.to_string(),
            },
        };
        let _ = tx.send(line(&last)).await;
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

/// The image reference in query parameter `name`, if given and not empty.
fn optional_reference(q: &Query, name: &str) -> ApiResult<Option<Reference>> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .map(|t| {
            Reference::parse(t).map_err(|e| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("invalid reference {t:?}: {e}"),
                )
            })
        })
        .transpose()
}

pub async fn load(State(d): D, q: Query, body: Body) -> ApiResult<Response> {
    let tag_as = optional_reference(&q, "tag")?;
    let store = d.manager.runtime().store().clone();
    let mut reader = body_reader(body);
    Ok(progress_response(
        "loading the image archive".into(),
        move || {
            let opts = LoadOptions {
                tag_as,
                ..LoadOptions::default()
            };
            let loaded = store.load(&mut reader, &opts);
            drain_rest(&mut reader);
            let loaded = loaded.map_err(archive_err)?;
            Ok(serde_json::to_value(&loaded).unwrap_or_default())
        },
    ))
}

pub async fn import(State(d): D, q: Query, body: Body) -> ApiResult<Response> {
    let reference = optional_reference(&q, "ref")?;
    let store = d.manager.runtime().store().clone();
    let mut reader = body_reader(body);
    Ok(progress_response(
        "importing the root filesystem".into(),
        move || {
            let loaded = store.import(&mut reader, reference.as_ref(), &ImportOptions::default());
            drain_rest(&mut reader);
            let loaded = loaded.map_err(archive_err)?;
            Ok(serde_json::to_value(&loaded).unwrap_or_default())
        },
    ))
}

/// A `Write` that sends chunks into an HTTP body channel.
pub(super) struct ChannelWriter(pub(super) tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub async fn save(State(d): D, q: Query) -> ApiResult<Response> {
    let refs = q.all("ref");
    if refs.is_empty() {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "missing query parameter ref: name the images to save",
        ));
    }
    let format = match q.get("format").unwrap_or("docker") {
        "docker" | "" => ArchiveFormat::Docker,
        "oci" => ArchiveFormat::Oci,
        f => {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("invalid format {f:?}: use docker or oci"),
            ))
        }
    };
    let store = d.manager.runtime().store().clone();
    // Resolve first, so a missing image is a clean 404 and not a cut stream.
    {
        let (store, refs) = (store.clone(), refs.clone());
        blocking(move || {
            for r in &refs {
                store.resolve(r).map_err(store_err)?;
            }
            Ok(())
        })
        .await?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let specs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let w = io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        if let Err(e) = store.save(&specs, format, w) {
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// An NDJSON response fed by `job`, which reports progress into the sink
/// it is given and returns the result value (or the error) that ends the
/// stream. The job runs in its own task: a client that goes away does not
/// stop it half way.
fn registry_response<F, Fut>(job: F) -> Response
where
    F: FnOnce(Arc<dyn Fn(Progress) + Send + Sync>) -> Fut + Send + 'static,
    Fut:
        std::future::Future<Output = Result<serde_json::Value, mvm_api::ApiError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let sink = crate::registry::channel_sink(tx.clone());
    tokio::spawn(async move {
        let last = match job(sink).await {
            Ok(value) => Progress::Result { value },
            Err(e) => Progress::Error {
                code: e.code,
                message: e.message,
            },
        };
        let _ = tx.send(last);
    });
    let lines = UnboundedReceiverStream::new(rx).map(|p| {
        let mut v = serde_json::to_vec(&p).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, io::Error>(Bytes::from(v))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `POST /v1/images/pull`: `TransferRequest`, credentials in
/// `X-Registry-Auth`; NDJSON progress ending with a `PullResult`.
pub async fn pull(
    State(d): D,
    headers: HeaderMap,
    Json(req): Json<TransferRequest>,
) -> ApiResult<Response> {
    // Everything that can be wrong with the request is answered before
    // the stream starts, with a plain error status.
    let reference = registry::parse_reference(&req.reference)?;
    let auth = ClientAuth::from_headers(&headers)?;
    auth.credentials_for(reference.domain())?;
    let spec = PullSpec {
        reference,
        insecure: req.insecure,
        platform: req.platform,
    };
    let store = d.manager.runtime().store().clone();
    Ok(registry_response(move |sink| async move {
        let r = registry::pull_image(&store, &spec, &auth, &*sink).await?;
        Ok(serde_json::to_value(r).unwrap_or_default())
    }))
}

/// `POST /v1/images/push`: as [`pull`], ending with a `PushResult`.
pub async fn push(
    State(d): D,
    headers: HeaderMap,
    Json(req): Json<TransferRequest>,
) -> ApiResult<Response> {
    let reference = registry::parse_reference(&req.reference)?;
    let auth = ClientAuth::from_headers(&headers)?;
    auth.credentials_for(reference.domain())?;
    let store = d.manager.runtime().store().clone();
    // A missing local image is a plain 404, not a stream.
    {
        let (store, r) = (store.clone(), reference.clone());
        blocking(move || store.resolve_ref(&r).map(|_| ()).map_err(store_err)).await?;
    }
    let insecure = req.insecure;
    Ok(registry_response(move |sink| async move {
        let r = registry::push_image(&store, &reference, insecure, &auth, &*sink).await?;
        Ok(serde_json::to_value(r).unwrap_or_default())
    }))
}

/// `POST /v1/auth/login`: checks the credentials against the registry
/// (mvmd may be the only one that can reach it, in machine mode) and
/// stores nothing; the client keeps them.
pub async fn login(Json(req): Json<LoginRequest>) -> ApiResult<Response> {
    let server = match req.server.trim() {
        "" => "docker.io",
        s => s,
    };
    let creds = Credentials::new(req.username, req.password);
    creds
        .validate()
        .map_err(|e| Error::new(ErrorCode::BadRequest, e.to_string()))?;
    let server = registry::check_login(server, &creds, req.insecure).await?;
    Ok(json_response(
        StatusCode::OK,
        &LoginResponse {
            status: "Login Succeeded".into(),
            server,
        },
    ))
}
