//! `push`: blobs the registry lacks (skipped if present, cross-mounted if
//! another repository of the same registry has them), then the manifest.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Body, Method, Response, StatusCode, Url};
use serde::Serialize;

use super::bridge::file_stream;
use super::client::{digest_header, Client, NotFound, Retry, Scope};
use super::progress::{Progress, ProgressEvent};
use super::{blocking, host::RegistryHost, PushOptions, RegistryError};
use crate::digest::Digest;
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE};
use crate::reference::Reference;
use crate::store::{Lease, Store, StoreError};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How often byte progress is reported during an upload.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// The reference pushed.
    pub reference: String,
    /// The manifest digest the registry now has under the reference.
    pub digest: Digest,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Blobs linked from another repository of the registry.
    pub mounted: usize,
}

/// How one blob got to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Uploaded,
    Skipped,
    Mounted,
}

/// Pushes the local image `reference` names to the registry and
/// repository in that reference. A multi-platform image pushes its
/// linux/amd64 manifest (the only one the store holds). A digest
/// reference must name that manifest.
pub async fn push(
    store: &Store,
    reference: &Reference,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<PushReport> {
    let host = RegistryHost::new(reference.domain(), opts.insecure, &opts.insecure_registries)?;
    let creds = opts.credentials.resolve(host.name())?;
    let client = Client::new(host, creds, opts.retry)?;
    progress.event(&ProgressEvent::Resolving {
        reference: reference.to_string(),
    });
    let rec = {
        let (store, r) = (store.clone(), reference.clone());
        blocking(move || Ok(store.resolve_ref(&r)?)).await?
    };
    let target = match (reference.tag(), reference.digest()) {
        (_, Some(d)) if *d != rec.manifest_digest => {
            return Err(RegistryError::BadPushReference {
                reference: reference.to_string(),
                reason: format!(
                    "the pushed manifest would be {} (the linux/amd64 manifest of the local image), not the pinned digest; push by tag instead",
                    rec.manifest_digest
                ),
            })
        }
        (_, Some(d)) => d.to_string(),
        (Some(t), None) => t.to_string(),
        (None, None) => return Err(RegistryError::Internal("reference without tag".into())),
    };
    // Blobs in push order: layers, then config (a registry may check that
    // the config exists when the manifest arrives; order does not matter
    // for that, but small-last makes the bars read naturally).
    let mut blobs: Vec<Descriptor> = rec.manifest.layers.clone();
    blobs.push(rec.manifest.config.clone());
    let manifest_digest = rec.manifest_digest;
    let (lease, manifest_bytes, sources) = {
        let store = store.clone();
        let blobs = blobs.clone();
        let domain = reference.domain().to_string();
        let repo = reference.path().to_string();
        blocking(move || {
            // Pin everything: a prune running meanwhile must not remove
            // blobs half way through the upload.
            let lease = store.lease()?;
            lease.pin_blob(&manifest_digest)?;
            for b in &blobs {
                lease.pin_blob(&b.digest)?;
                if !store.has_blob(&b.digest) {
                    return Err(StoreError::BlobNotFound(b.digest).into());
                }
            }
            let bytes = store.read_blob(&manifest_digest, MAX_MANIFEST_SIZE)?;
            let sources = mount_sources(&store, &domain, &repo);
            Ok((lease, bytes, sources))
        })
        .await?
    };
    let lease = Arc::new(lease);
    let count = blobs.len();
    progress.event(&ProgressEvent::Resolved {
        reference: reference.to_string(),
        digest: manifest_digest,
        count,
        total_bytes: blobs.iter().map(|b| b.size).sum(),
    });
    let ctx = Ctx {
        store,
        client: &client,
        repo: reference.path(),
        scope: Scope::Push(reference.path().to_string()),
        progress,
        _lease: lease,
    };
    // Futures built up front: see the note in pull.rs (rust#102211).
    let jobs: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| ctx.send_blob(i + 1, count, b, sources.get(&b.digest)))
        .collect();
    let mut uploads =
        futures_util::stream::iter(jobs).buffer_unordered(opts.max_concurrent_uploads.max(1));
    let mut report = PushReport {
        reference: reference.to_string(),
        digest: manifest_digest,
        size: manifest_bytes.len() as u64,
        uploaded: 0,
        skipped: 0,
        mounted: 0,
    };
    let mut first_error = None;
    while let Some(r) = uploads.next().await {
        match r {
            Ok(Sent::Uploaded) => report.uploaded += 1,
            Ok(Sent::Skipped) => report.skipped += 1,
            Ok(Sent::Mounted) => report.mounted += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(uploads);
    if let Some(e) = first_error {
        return Err(e);
    }
    progress.event(&ProgressEvent::Verifying {
        reference: reference.to_string(),
    });
    ctx.put_manifest(
        &target,
        &rec.manifest_media_type,
        manifest_bytes,
        manifest_digest,
    )
    .await?;
    progress.event(&ProgressEvent::Done {
        reference: reference.to_string(),
        digest: manifest_digest,
        id: rec.id,
    });
    Ok(report)
}

/// For each blob, a repository of the same registry that has it, as far
/// as the store knows (images pulled from or pushed to it keep their
/// names). Best effort: a wrong guess only costs a normal upload.
fn mount_sources(store: &Store, domain: &str, repo: &str) -> HashMap<Digest, String> {
    let mut out = HashMap::new();
    let Ok(refs) = store.references() else {
        return out;
    };
    for (key, _) in refs {
        let Ok(r) = Reference::parse(&key) else {
            continue;
        };
        if r.domain() != domain || r.path() == repo {
            continue;
        }
        let Ok(rec) = store.resolve(&key) else {
            continue;
        };
        for d in rec
            .manifest
            .layers
            .iter()
            .chain(std::iter::once(&rec.manifest.config))
        {
            out.entry(d.digest).or_insert_with(|| r.path().to_string());
        }
    }
    out
}

struct Ctx<'a> {
    store: &'a Store,
    client: &'a Client,
    repo: &'a str,
    scope: Scope,
    progress: &'a dyn Progress,
    /// Keeps the pinned blobs from GC until the push ends.
    _lease: Arc<Lease>,
}

impl Ctx<'_> {
    /// Gets one blob to the registry: skip, mount, or upload.
    async fn send_blob(
        &self,
        index: usize,
        count: usize,
        blob: &Descriptor,
        mount_from: Option<&String>,
    ) -> Result<Sent> {
        let (digest, size) = (blob.digest, blob.size);
        if self.exists(&digest, size).await? {
            self.progress.event(&ProgressEvent::BlobExists {
                index,
                count,
                digest,
                size,
            });
            return Ok(Sent::Skipped);
        }
        let retry = self.client.retry();
        let mut attempt = 1;
        loop {
            match self.upload(index, count, blob, mount_from).await {
                Ok(sent) => return Ok(sent),
                Err(e) if attempt < retry.attempts && transient(&e) => {
                    self.progress.event(&ProgressEvent::Retrying {
                        what: format!("upload of blob {digest}"),
                        attempt,
                        reason: e.to_string(),
                    });
                    tokio::time::sleep(retry.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// HEAD: does the registry have the blob (with the right size)?
    async fn exists(&self, digest: &Digest, size: u64) -> Result<bool> {
        let url = self.client.url(self.repo, &format!("blobs/{digest}"));
        let what = format!("HEAD blob {digest}");
        let resp = self
            .client
            .send(
                &what,
                &self.scope,
                Retry::Idempotent,
                self.progress,
                &|_| self.client.request(Method::HEAD, &url),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => {
                // The header, not `content_length()`: a HEAD response has
                // no body, which reqwest reports as length 0.
                let len = resp
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                Ok(len.is_none_or(|n| n == size))
            }
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .client
                .status_error(resp, &what, &self.scope, NotFound::Other)
                .await),
        }
    }

    /// One upload attempt: start a session (asking for a mount when a
    /// source is known), then one streaming PUT of the whole blob.
    async fn upload(
        &self,
        index: usize,
        count: usize,
        blob: &Descriptor,
        mount_from: Option<&String>,
    ) -> Result<Sent> {
        let (digest, size) = (blob.digest, blob.size);
        let mut start = self.client.url(self.repo, "blobs/uploads/");
        if let Some(from) = mount_from {
            start = format!("{start}?mount={digest}&from={from}");
        }
        let what = format!("POST upload of blob {digest}");
        let resp = self
            .client
            .send(&what, &self.scope, Retry::Once, self.progress, &|_| {
                self.client
                    .request(Method::POST, &start)
                    .header(CONTENT_LENGTH, 0)
            })
            .await?;
        match (resp.status(), mount_from) {
            (StatusCode::CREATED, Some(from)) => {
                self.progress.event(&ProgressEvent::BlobMounted {
                    index,
                    count,
                    digest,
                    size,
                    from: from.clone(),
                });
                return Ok(Sent::Mounted);
            }
            (StatusCode::ACCEPTED, _) => {}
            _ => {
                return Err(self
                    .client
                    .status_error(resp, &what, &self.scope, NotFound::Other)
                    .await)
            }
        }
        let mut put_url = self.location(&resp)?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        self.progress.event(&ProgressEvent::BlobStart {
            index,
            count,
            digest,
            size,
        });
        let sent = Arc::new(AtomicU64::new(0));
        let what = format!("PUT blob {digest}");
        let store = self.store.clone();
        let counter = sent.clone();
        let build = move |_: &reqwest::Client| {
            let c = counter.clone();
            let body = match store.open_blob(&digest) {
                Ok(f) => Body::wrap_stream(file_stream(f, move |n| c.store(n, Ordering::Relaxed))),
                Err(e) => {
                    let err = io::Error::other(e.to_string());
                    Body::wrap_stream(futures_util::stream::once(async move {
                        Err::<bytes::Bytes, _>(err)
                    }))
                }
            };
            self.client
                .request(Method::PUT, put_url.as_str())
                .header(CONTENT_LENGTH, size)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body)
        };
        let request = self
            .client
            .send(&what, &self.scope, Retry::Once, self.progress, &build);
        let ticker = async {
            loop {
                tokio::time::sleep(PROGRESS_TICK).await;
                self.progress.event(&ProgressEvent::BlobProgress {
                    index,
                    count,
                    digest,
                    done: sent.load(Ordering::Relaxed).min(size),
                    total: size,
                });
            }
        };
        let resp = match futures_util::future::select(Box::pin(request), Box::pin(ticker)).await {
            futures_util::future::Either::Left((r, _)) => r?,
            futures_util::future::Either::Right(((), _)) => unreachable!("the ticker never ends"),
        };
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self
                .client
                .status_error(resp, &what, &self.scope, NotFound::Other)
                .await);
        }
        if let Some(d) = digest_header(resp.headers()) {
            if d != digest {
                return Err(RegistryError::Protocol {
                    host: self.client.host().to_string(),
                    message: format!("it stored blob {digest} under digest {d}"),
                });
            }
        }
        self.progress.event(&ProgressEvent::BlobDone {
            index,
            count,
            digest,
            size,
        });
        Ok(Sent::Uploaded)
    }

    /// The upload session URL from `Location`, resolved against the
    /// request URL. It must stay on the registry's origin: credentials are
    /// attached to it.
    fn location(&self, resp: &Response) -> Result<Url> {
        let proto = |message: String| RegistryError::Protocol {
            host: self.client.host().to_string(),
            message,
        };
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| proto("it started an upload without a Location header".into()))?;
        let url = resp
            .url()
            .join(loc)
            .map_err(|e| proto(format!("its upload Location {loc:?} is not a URL ({e})")))?;
        let base = resp.url();
        if url.scheme() != base.scheme()
            || url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
        {
            return Err(proto(format!(
                "its upload Location {url} is on another host; refusing to send credentials there"
            )));
        }
        Ok(url)
    }

    async fn put_manifest(
        &self,
        target: &str,
        media_type: &str,
        bytes: Vec<u8>,
        digest: Digest,
    ) -> Result<()> {
        let url = self.client.url(self.repo, &format!("manifests/{target}"));
        let what = format!("PUT manifest {}:{target}", self.repo);
        let body = bytes::Bytes::from(bytes);
        let resp = self
            .client
            .send(
                &what,
                &self.scope,
                Retry::Idempotent,
                self.progress,
                &|_| {
                    self.client
                        .request(Method::PUT, &url)
                        .header(CONTENT_TYPE, media_type)
                        .body(body.clone())
                },
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .client
                .status_error(resp, &what, &self.scope, NotFound::Other)
                .await);
        }
        if let Some(d) = digest_header(resp.headers()) {
            if d != digest {
                return Err(RegistryError::Protocol {
                    host: self.client.host().to_string(),
                    message: format!("it stored manifest {digest} under digest {d}"),
                });
            }
        }
        Ok(())
    }
}

/// Failures an upload restarted from scratch may get past.
fn transient(e: &RegistryError) -> bool {
    match e {
        RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
        RegistryError::Network { .. } => true,
        _ => false,
    }
}
