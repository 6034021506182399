//! `/v1/images` handlers: the image store (`mvm-images`) over HTTP.
//!
//! Store calls block (file locks, fsync, mkfs), so they run on the
//! blocking pool; request bodies are bridged to `std::io::Read` and never
//! buffered whole.

use std::io::{self, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use mvm_api::images::{Progress, TagRequest};
use mvm_api::ErrorCode;
use mvm_images::{
    ArchiveError, ArchiveFormat, ImageId, ImportOptions, LoadOptions, Reference, StoreError,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{json_response, ApiResult, Error, Json, Query};
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
fn body_reader(
    body: Body,
) -> SyncIoBridge<StreamReader<impl futures_util::Stream<Item = io::Result<Bytes>> + Unpin, Bytes>>
{
    let stream = body.into_data_stream().map_err(io::Error::other);
    SyncIoBridge::new(StreamReader::new(stream))
}

/// Run `job` on the blocking pool and answer with an NDJSON progress
/// stream: a status line, then `result` or `error`.
fn progress_response<F>(status: String, job: F) -> Response
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
    let reader = body_reader(body);
    Ok(progress_response(
        "loading the image archive".into(),
        move || {
            let opts = LoadOptions {
                tag_as,
                ..LoadOptions::default()
            };
            let loaded = store.load(reader, &opts).map_err(archive_err)?;
            Ok(serde_json::to_value(&loaded).unwrap_or_default())
        },
    ))
}

pub async fn import(State(d): D, q: Query, body: Body) -> ApiResult<Response> {
    let reference = optional_reference(&q, "ref")?;
    let store = d.manager.runtime().store().clone();
    let reader = body_reader(body);
    Ok(progress_response(
        "importing the root filesystem".into(),
        move || {
            let loaded = store
                .import(reader, reference.as_ref(), &ImportOptions::default())
                .map_err(archive_err)?;
            Ok(serde_json::to_value(&loaded).unwrap_or_default())
        },
    ))
}

/// A `Write` that sends chunks into an HTTP body channel.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>);

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

/// Registry operations: wired once the registry client lands in
/// mvm-images.
pub async fn pull() -> ApiResult<Response> {
    Err(registry_missing())
}

/// See [`pull`].
pub async fn push() -> ApiResult<Response> {
    Err(registry_missing())
}

/// See [`pull`].
pub async fn login() -> ApiResult<Response> {
    Err(registry_missing())
}

/// See [`pull`].
pub async fn logout() -> ApiResult<Response> {
    Err(registry_missing())
}

fn registry_missing() -> Error {
    Error::new(
        ErrorCode::Upstream,
        "registry operations are not available in this mvmd build yet; use load/import instead",
    )
}
