//! `pull`: manifest (and index) resolution, verified blob downloads into
//! the store, tagging once everything is there.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;

use super::bridge::ChannelReader;
use super::client::{self, digest_header, read_limited, BodyError, Client, NotFound, Retry, Scope};
use super::progress::{Progress, ProgressEvent};
use super::{blocking, host::RegistryHost, PullOptions, RegistryError};
use crate::digest::Digest;
use crate::manifest::{
    self, Descriptor, Index, Manifest, ManifestKind, Platform, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};
use crate::reference::Reference;
use crate::store::{Expected, ImageRecord, Lease, Store, StoreError};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Every manifest media type the store understands, as the `Accept`
/// header. Registries convert or refuse what the client does not list, so
/// all four are always offered.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Reports byte progress every this many bytes (plus at the end), so a
/// fast local pull does not flood the sink with an event per chunk.
const PROGRESS_STEP: u64 = 512 * 1024;

/// Pulls `reference` into `store` and tags it; returns the stored image.
///
/// Safe to run concurrently with other pulls (even of the same image),
/// with pushes, and with prunes. On error, nothing is tagged and what this
/// pull wrote that nothing else uses is removed again.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<ImageRecord> {
    let wanted = Wanted::of(&opts.platform);
    let host = RegistryHost::new(reference.domain(), opts.insecure, &opts.insecure_registries)?;
    let creds = opts.credentials.resolve(host.name())?;
    let client = Client::new(host, creds, opts.retry)?;
    progress.event(&ProgressEvent::Resolving {
        reference: reference.to_string(),
    });
    let repo = reference.path().to_string();
    let scope = Scope::Pull(repo.clone());
    let root_ref = reference
        .digest()
        .map(|d| d.to_string())
        .or_else(|| reference.tag().map(str::to_string))
        .ok_or_else(|| RegistryError::Internal("reference without tag or digest".into()))?;
    let root = fetch_manifest(&client, &scope, reference, &root_ref, None, progress).await?;
    if let Some(pinned) = reference.digest() {
        if *pinned != root.digest {
            return Err(RegistryError::DigestMismatch {
                host: client.host().to_string(),
                what: format!("manifest {reference}"),
                expected: *pinned,
                actual: root.digest,
            });
        }
    }
    let Some(wanted) = wanted else {
        return Err(RegistryError::UnsupportedPlatform {
            wanted: platform_name(&opts.platform),
            reference: reference.to_string(),
            available: match &root.kind {
                ManifestKind::Index(index) => format!("offers: {}", offered(index)),
                ManifestKind::Image(_) => {
                    "is a single-platform image, not an index to choose from".into()
                }
            },
        });
    };
    let mut docs = vec![root.clone()];
    // What the name will point at: the root, unless an index's entry other
    // than the one the store would resolve the index to was asked for
    // (an amd64 variant): then that entry's manifest.
    let mut tag_digest = root.digest;
    let image = match &root.kind {
        ManifestKind::Image(m) => m.clone(),
        ManifestKind::Index(index) => {
            let entry = select(index, wanted, &opts.platform, reference)?;
            let default = index.pick_linux_amd64().ok().map(|d| d.digest);
            if default != Some(entry.digest) {
                if let Some(pinned) = reference.digest() {
                    return Err(RegistryError::Manifest {
                        what: format!("index {pinned}"),
                        reference: reference.to_string(),
                        source: manifest::ManifestError::NoMatchingPlatform(format!(
                            "its {} entry is not the one mvm stores for the index; pull {}@{} (the entry's own digest) or pull by tag",
                            platform_name(&opts.platform),
                            reference.repository(),
                            entry.digest
                        )),
                    });
                }
                tag_digest = entry.digest;
                docs.clear();
            }
            let child = fetch_manifest(
                &client,
                &scope,
                reference,
                &entry.digest.to_string(),
                Some(entry),
                progress,
            )
            .await?;
            let m = match &child.kind {
                ManifestKind::Image(m) => m.clone(),
                ManifestKind::Index(_) => {
                    return Err(RegistryError::Manifest {
                        what: format!("linux/amd64 entry {}", entry.digest),
                        reference: reference.to_string(),
                        source: manifest::ManifestError::UnsupportedMediaType {
                            what: "nested index entry".into(),
                            media_type: entry.media_type.clone(),
                        },
                    })
                }
            };
            docs.push(child);
            m
        }
    };

    let lease = {
        let store = store.clone();
        Arc::new(blocking(move || Ok(store.lease()?)).await?)
    };
    let ctx = Ctx {
        store,
        client: &client,
        scope: &scope,
        reference,
        lease: lease.clone(),
        progress,
        cancel: AtomicBool::new(false),
    };
    let result = ctx.fetch_image(&docs, &image, tag_digest, opts).await;
    drop(ctx);
    match result {
        Ok(rec) => {
            progress.event(&ProgressEvent::Done {
                reference: reference.to_string(),
                digest: rec.digest,
                id: rec.id,
            });
            Ok(rec)
        }
        Err(e) => {
            // Every task holding the lease has ended (all were awaited),
            // so this is the only reference left.
            if let Ok(lease) = Arc::try_unwrap(lease) {
                let cleanup = blocking(move || Ok(lease.discard_unreferenced()?)).await;
                if let Err(c) = cleanup {
                    tracing::warn!("cleaning up after a failed pull: {c}");
                }
            }
            Err(e)
        }
    }
}

/// A fetched manifest or index.
#[derive(Clone)]
struct Fetched {
    digest: Digest,
    bytes: Vec<u8>,
    kind: ManifestKind,
}

/// GETs a manifest by tag or digest and verifies it: size limit, digest
/// (against `expected` when it came from a descriptor, the
/// `Docker-Content-Digest` header otherwise), parseable, supported media
/// types.
async fn fetch_manifest(
    client: &Client,
    scope: &Scope,
    reference: &Reference,
    tag_or_digest: &str,
    expected: Option<&Descriptor>,
    progress: &dyn Progress,
) -> Result<Fetched> {
    let repo = reference.path();
    let url = client.url(repo, &format!("manifests/{tag_or_digest}"));
    let what = format!("GET manifest {repo}:{tag_or_digest}");
    if let Some(d) = expected {
        if d.size > MAX_MANIFEST_SIZE {
            return Err(RegistryError::TooLarge {
                host: client.host().to_string(),
                what: format!("manifest {}", d.digest),
                limit: MAX_MANIFEST_SIZE,
            });
        }
    }
    let resp = client
        .send(&what, scope, Retry::Idempotent, progress, &|_| {
            client
                .request(Method::GET, &url)
                .header(ACCEPT, ACCEPT_MANIFESTS)
        })
        .await?;
    if !resp.status().is_success() {
        let nf = NotFound::Manifest(format!("{}/{repo}:{tag_or_digest}", reference.domain()));
        return Err(client.status_error(resp, &what, scope, nf).await);
    }
    let header_digest = digest_header(resp.headers());
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
    let limit = expected.map_or(MAX_MANIFEST_SIZE, |d| d.size);
    let bytes = read_limited(resp, limit).await.map_err(|e| match e {
        // A descriptor's size is exact: longer content is a mismatch.
        BodyError::TooLarge(_) if expected.is_some() => RegistryError::SizeMismatch {
            host: client.host().to_string(),
            what: format!("manifest {tag_or_digest}"),
            expected: limit,
            actual: limit + 1,
        },
        e => client.body_error(&what, e),
    })?;
    let digest = Digest::of(&bytes);
    let check = expected.map(|d| d.digest).or(header_digest);
    if let Some(want) = check {
        if want != digest {
            return Err(RegistryError::DigestMismatch {
                host: client.host().to_string(),
                what: format!("manifest {repo}:{tag_or_digest}"),
                expected: want,
                actual: digest,
            });
        }
    }
    if let Some(d) = expected {
        if d.size != bytes.len() as u64 {
            return Err(RegistryError::SizeMismatch {
                host: client.host().to_string(),
                what: format!("manifest {}", d.digest),
                expected: d.size,
                actual: bytes.len() as u64,
            });
        }
    }
    // The media type in the document wins; the Content-Type only helps
    // documents that omit it (allowed by OCI). Generic JSON types say
    // nothing.
    let declared =
        content_type.filter(|c| manifest::is_manifest_type(c) || manifest::is_index_type(c));
    let kind = manifest::parse_manifest(&bytes, declared.as_deref()).map_err(|source| {
        RegistryError::Manifest {
            what: format!("manifest {digest}"),
            reference: reference.to_string(),
            source,
        }
    })?;
    Ok(Fetched {
        digest,
        bytes,
        kind,
    })
}

/// Which linux/amd64 entries of an index a pull may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// `linux/amd64`: the entry the store resolves the index to (the
    /// first linux/amd64 one, whatever its variant).
    Default,
    /// `linux/amd64/vN` (microarchitecture level N, 1-4): the entry of the
    /// highest level up to N; `v1` and no variant are the same level.
    Level(u8),
}

impl Wanted {
    /// `None` for a platform mvm cannot run.
    fn of(p: &Platform) -> Option<Wanted> {
        if !p.is_linux_amd64() {
            return None;
        }
        match p.variant.as_deref() {
            None | Some("") => Some(Wanted::Default),
            Some(v) => amd64_level(v).map(Wanted::Level),
        }
    }
}

/// `v1`..`v4` -> 1..4.
fn amd64_level(variant: &str) -> Option<u8> {
    match variant {
        "v1" => Some(1),
        "v2" => Some(2),
        "v3" => Some(3),
        "v4" => Some(4),
        _ => None,
    }
}

/// Picks the index entry for `wanted`, or says which platforms there are.
fn select<'a>(
    index: &'a Index,
    wanted: Wanted,
    want: &Platform,
    reference: &Reference,
) -> Result<&'a Descriptor> {
    let usable =
        |d: &&Descriptor| manifest::is_manifest_type(&d.media_type) || d.media_type.is_empty();
    let amd64 = || {
        index
            .manifests
            .iter()
            .filter(usable)
            .filter(|d| d.platform.as_ref().is_some_and(Platform::is_linux_amd64))
    };
    let found = match wanted {
        Wanted::Default => amd64().next(),
        Wanted::Level(max) => {
            let mut best: Option<(u8, &Descriptor)> = None;
            for d in amd64() {
                let level = match d.platform.as_ref().and_then(|p| p.variant.as_deref()) {
                    None | Some("") => Some(1),
                    Some(v) => amd64_level(v),
                };
                if let Some(l) = level.filter(|l| *l <= max) {
                    if best.is_none_or(|(b, _)| l > b) {
                        best = Some((l, d));
                    }
                }
            }
            best.map(|(_, d)| d)
        }
    };
    if let Some(d) = found {
        return Ok(d);
    }
    // A single entry without a platform (some OCI layouts) is taken to be
    // the image; its config's platform is checked later anyway.
    if index.manifests.len() == 1 && index.manifests[0].platform.is_none() {
        return Ok(&index.manifests[0]);
    }
    Err(RegistryError::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: platform_name(want),
        available: offered(index),
    })
}

/// The platforms an index offers, for messages.
fn offered(index: &Index) -> String {
    let mut available: Vec<String> = Vec::new();
    for d in &index.manifests {
        // Attestation manifests (BuildKit) have platform unknown/unknown.
        let name = match &d.platform {
            Some(p) if p.os == "unknown" || p.architecture == "unknown" => continue,
            Some(p) => platform_name(p),
            None => "unspecified".to_string(),
        };
        if !available.contains(&name) {
            available.push(name);
        }
    }
    if available.is_empty() {
        "none".into()
    } else {
        available.join(", ")
    }
}

fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// State shared by the steps of one pull after the lease is taken.
struct Ctx<'a> {
    store: &'a Store,
    client: &'a Client,
    scope: &'a Scope,
    reference: &'a Reference,
    lease: Arc<Lease>,
    progress: &'a dyn Progress,
    /// Set when one download failed: the others stop early.
    cancel: AtomicBool,
}

impl Ctx<'_> {
    async fn fetch_image(
        &self,
        docs: &[Fetched],
        image: &Manifest,
        root: Digest,
        opts: &PullOptions,
    ) -> Result<ImageRecord> {
        // Manifests first: small, and they let the store check the rest.
        for doc in docs {
            let store = self.store.clone();
            let lease = self.lease.clone();
            let (digest, bytes) = (doc.digest, doc.bytes.clone());
            blocking(move || {
                store.put_manifest(
                    &lease,
                    Some(Expected {
                        digest,
                        size: Some(bytes.len() as u64),
                    }),
                    &bytes,
                )?;
                Ok(())
            })
            .await?;
        }
        self.fetch_config(image).await?;
        let count = image.layers.len();
        self.progress.event(&ProgressEvent::Resolved {
            reference: self.reference.to_string(),
            digest: root,
            count,
            total_bytes: image.layers.iter().map(|l| l.size).sum(),
        });
        let mut todo = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            if self.present(&layer.digest).await? {
                self.progress.event(&ProgressEvent::BlobExists {
                    index: i + 1,
                    count,
                    digest: layer.digest,
                    size: layer.size,
                });
            } else {
                todo.push((i + 1, layer));
            }
        }
        // Futures built up front (not in a `map` closure): a closure here
        // trips rustc's higher-ranked lifetime check and makes the whole
        // pull future non-Send (rust-lang/rust#102211).
        let jobs: Vec<_> = todo
            .into_iter()
            .map(|(index, layer)| self.download(index, count, layer))
            .collect();
        let mut downloads =
            futures_util::stream::iter(jobs).buffer_unordered(opts.max_concurrent_downloads.max(1));
        let mut first_error = None;
        while let Some(r) = downloads.next().await {
            if let Err(e) = r {
                self.cancel.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        drop(downloads);
        if let Some(e) = first_error {
            return Err(e);
        }
        self.progress.event(&ProgressEvent::Verifying {
            reference: self.reference.to_string(),
        });
        let store = self.store.clone();
        let reference = self.reference.clone();
        blocking(move || Ok(store.tag(&reference, &root)?)).await
    }

    /// Pins `digest` under the lease and reports whether it is present.
    async fn present(&self, digest: &Digest) -> Result<bool> {
        let store = self.store.clone();
        let lease = self.lease.clone();
        let d = *digest;
        blocking(move || {
            lease.pin_blob(&d)?;
            Ok(store.has_blob(&d))
        })
        .await
    }

    /// Gets the config (from the store if present), checks its platform
    /// and that it matches the manifest, before any layer is downloaded.
    async fn fetch_config(&self, image: &Manifest) -> Result<()> {
        let desc = &image.config;
        let what = format!("config {}", desc.digest);
        if desc.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::TooLarge {
                host: self.client.host().to_string(),
                what,
                limit: MAX_CONFIG_SIZE,
            });
        }
        let bytes = if self.present(&desc.digest).await? {
            let store = self.store.clone();
            let d = desc.digest;
            blocking(move || Ok(store.read_blob(&d, MAX_CONFIG_SIZE)?)).await?
        } else {
            let resp = self.get_blob(&desc.digest).await?;
            let bytes = read_limited(resp, desc.size).await.map_err(|e| match e {
                BodyError::TooLarge(_) => RegistryError::SizeMismatch {
                    host: self.client.host().to_string(),
                    what: what.clone(),
                    expected: desc.size,
                    actual: desc.size + 1,
                },
                e => self.client.body_error(&what, e),
            })?;
            let store = self.store.clone();
            let lease = self.lease.clone();
            let expected = Expected::from(desc);
            let data = bytes.clone();
            blocking(move || Ok(store.put_blob_bytes(&lease, Some(expected), &data)?))
                .await
                .map_err(|e| self.blob_error(e, &desc.digest))?;
            bytes
        };
        let config = manifest::parse_config(&bytes).map_err(|source| RegistryError::Manifest {
            what,
            reference: self.reference.to_string(),
            source,
        })?;
        let diff_ids = manifest::diff_ids(&config).map_err(|source| RegistryError::Manifest {
            what: format!("config {}", desc.digest),
            reference: self.reference.to_string(),
            source,
        })?;
        if diff_ids.len() != image.layers.len() {
            return Err(RegistryError::Manifest {
                what: format!("config {}", desc.digest),
                reference: self.reference.to_string(),
                source: manifest::ManifestError::LayerCountMismatch {
                    layers: image.layers.len(),
                    diff_ids: diff_ids.len(),
                },
            });
        }
        Ok(())
    }

    /// GET of a blob, answered 2xx (redirects are followed by the client,
    /// without credentials when they lead to another host).
    async fn get_blob(&self, digest: &Digest) -> Result<reqwest::Response> {
        let repo = self.reference.path();
        let url = self.client.url(repo, &format!("blobs/{digest}"));
        let what = format!("GET blob {digest}");
        let resp = self
            .client
            .send(&what, self.scope, Retry::Idempotent, self.progress, &|_| {
                self.client.request(Method::GET, &url)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .client
                .status_error(resp, &what, self.scope, NotFound::Blob(*digest))
                .await);
        }
        Ok(resp)
    }

    /// Downloads one layer into the store, streaming through `put_blob`
    /// (which verifies size and digest before publishing). A connection
    /// that breaks mid-way is retried from the start.
    async fn download(&self, index: usize, count: usize, layer: &Descriptor) -> Result<()> {
        let digest = layer.digest;
        let size = layer.size;
        let expected = Expected::from(layer);
        let what = format!("GET blob {digest}");
        self.progress.event(&ProgressEvent::BlobStart {
            index,
            count,
            digest,
            size,
        });
        let mut attempt = 1;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(RegistryError::Internal("download cancelled".into()));
            }
            let resp = self.get_blob(&digest).await?;
            if let Some(len) = resp.content_length() {
                if len != size {
                    return Err(RegistryError::SizeMismatch {
                        host: self.client.host().to_string(),
                        what: format!("blob {digest}"),
                        expected: size,
                        actual: len,
                    });
                }
            }
            let (tx, reader) = ChannelReader::new();
            let writer = {
                let store = self.store.clone();
                let lease = self.lease.clone();
                tokio::task::spawn_blocking(move || store.put_blob(&lease, Some(expected), reader))
            };
            let mut stream = resp.bytes_stream();
            let (mut done, mut reported) = (0u64, 0u64);
            let mut broken: Option<reqwest::Error> = None;
            let mut cancelled = false;
            while let Some(item) = stream.next().await {
                if self.cancel.load(Ordering::Relaxed) {
                    let _ = tx.send(Err(io::Error::other("download cancelled"))).await;
                    cancelled = true;
                    break;
                }
                match item {
                    Ok(chunk) => {
                        done += chunk.len() as u64;
                        if done - reported >= PROGRESS_STEP {
                            reported = done;
                            self.progress.event(&ProgressEvent::BlobProgress {
                                index,
                                count,
                                digest,
                                done: done.min(size),
                                total: size,
                            });
                        }
                        if tx.send(Ok(chunk)).await.is_err() {
                            break; // the writer stopped (too long, disk error)
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(io::Error::other(client::error_chain(&e))))
                            .await;
                        broken = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            if broken.is_none() && !cancelled {
                self.progress.event(&ProgressEvent::BlobProgress {
                    index,
                    count,
                    digest,
                    done: done.min(size),
                    total: size,
                });
                self.progress.event(&ProgressEvent::BlobVerifying {
                    index,
                    count,
                    digest,
                });
            }
            let written = writer
                .await
                .map_err(|e| RegistryError::Internal(format!("blob writer failed: {e}")))?;
            match (written, broken) {
                (Ok(_), _) => {
                    self.progress.event(&ProgressEvent::BlobDone {
                        index,
                        count,
                        digest,
                        size,
                    });
                    return Ok(());
                }
                _ if cancelled => {
                    return Err(RegistryError::Internal("download cancelled".into()));
                }
                (Err(_), Some(e)) => {
                    let err = self.client.transport_error(&what, &e);
                    if attempt < self.client.retry().attempts && client::transport_retryable(&e) {
                        self.progress.event(&ProgressEvent::Retrying {
                            what: what.clone(),
                            attempt,
                            reason: err.to_string(),
                        });
                        tokio::time::sleep(self.client.retry().delay(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(err);
                }
                (Err(e), None) => return Err(self.blob_error(e.into(), &digest)),
            }
        }
    }

    /// Puts registry context on the store's verification failures.
    fn blob_error(&self, e: RegistryError, digest: &Digest) -> RegistryError {
        let host = self.client.host().to_string();
        match e {
            RegistryError::Store(StoreError::DigestMismatch {
                expected, actual, ..
            }) => RegistryError::DigestMismatch {
                host,
                what: format!("blob {digest}"),
                expected,
                actual,
            },
            RegistryError::Store(StoreError::SizeMismatch {
                expected, actual, ..
            }) => RegistryError::SizeMismatch {
                host,
                what: format!("blob {digest}"),
                expected,
                actual,
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::media_type;

    #[test]
    fn accepts_every_supported_manifest_type() {
        for mt in [
            media_type::OCI_INDEX,
            media_type::OCI_MANIFEST,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_MANIFEST_LIST,
        ] {
            assert!(ACCEPT_MANIFESTS.contains(mt), "{mt}");
        }
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(media_type::OCI_MANIFEST, Digest::of(arch.as_bytes()), 1);
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: os.into(),
            variant: variant.map(str::to_string),
            os_version: None,
        });
        d
    }

    #[test]
    fn selects_linux_amd64_or_lists_what_exists() {
        let r = Reference::parse("localhost:1/x:1").unwrap();
        let idx = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("linux", "arm64", Some("v8")),
                entry("unknown", "unknown", None),
                entry("linux", "amd64", None),
            ],
            annotations: None,
        };
        let amd = super::super::linux_amd64();
        let d = select(&idx, Wanted::Default, &amd, &r).unwrap();
        assert_eq!(d.digest, Digest::of(b"amd64"));
        let idx = Index {
            manifests: vec![
                entry("linux", "arm64", Some("v8")),
                entry("linux", "arm", Some("v7")),
                entry("unknown", "unknown", None),
            ],
            ..idx
        };
        let e = select(&idx, Wanted::Default, &amd, &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image localhost:1/x:1 has no linux/amd64 variant; available: linux/arm64/v8, linux/arm/v7"
        );
    }

    #[test]
    fn amd64_variants_pick_the_best_level_up_to_the_one_asked_for() {
        let r = Reference::parse("localhost:1/x:1").unwrap();
        let v3 = {
            let mut d = entry("linux", "amd64", Some("v3"));
            d.digest = Digest::of(b"v3");
            d
        };
        let idx = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![v3, entry("linux", "amd64", None)],
            annotations: None,
        };
        let want = |v: &str| Platform {
            variant: Some(v.into()),
            ..super::super::linux_amd64()
        };
        let pick = |v: &str| {
            let p = want(v);
            select(&idx, Wanted::of(&p).unwrap(), &p, &r).map(|d| d.digest)
        };
        assert_eq!(pick("v1").unwrap(), Digest::of(b"amd64"));
        assert_eq!(pick("v2").unwrap(), Digest::of(b"amd64"));
        assert_eq!(pick("v3").unwrap(), Digest::of(b"v3"));
        assert_eq!(pick("v4").unwrap(), Digest::of(b"v3"));
        // No variant: the first amd64 entry, as the store resolves it.
        let amd = super::super::linux_amd64();
        let d = select(&idx, Wanted::Default, &amd, &r).unwrap();
        assert_eq!(d.digest, Digest::of(b"v3"));
        assert_eq!(Wanted::of(&want("v9")), None);
        let arm = Platform {
            architecture: "arm64".into(),
            ..amd
        };
        assert_eq!(Wanted::of(&arm), None);
        let only_v3 = Index {
            manifests: vec![idx.manifests[0].clone()],
            ..idx.clone()
        };
        let p = want("v2");
        let e = select(&only_v3, Wanted::of(&p).unwrap(), &p, &r).unwrap_err();
        assert!(e.to_string().contains("available: linux/amd64/v3"), "{e}");
    }
}
