//! Registry operations on behalf of API clients: pull (also for builds'
//! `FROM`), push and the credentials check of `login`, with the client's
//! credentials and progress on the API's NDJSON stream.
//!
//! Credentials are the client's: they arrive with each request
//! (`X-Registry-Auth`, or `X-Registry-Config` for builds; see
//! [`mvm_api::auth`]), are used for that request's registry only, and are
//! never written anywhere. mvmd never reads a credentials file of its own,
//! so a pull without credentials is anonymous.
//!
//! Registry failures become API errors whose code says what kind of
//! failure it is ([`registry_error`]) and whose message says what to do.

use std::sync::Arc;

use axum::http::HeaderMap;
use mvm_api::auth::{
    decode_config, RegistryAuth, RegistryConfig, REGISTRY_AUTH_HEADER, REGISTRY_CONFIG_HEADER,
};
use mvm_api::images::{Platform, Progress, PullResult, PushResult};
use mvm_api::{ApiError, ErrorCode};
use mvm_images::manifest::{self, ManifestError};
use mvm_images::registry::credentials::same_registry;
use mvm_images::registry::{
    self, CredentialSource, Credentials, LoginOptions, ProgressEvent, PullOptions, PushOptions,
    RegistryError,
};
use mvm_images::{Digest, ImageRecord, Reference, Store, StoreError};

/// Where progress goes: one [`Progress`] record at a time (an NDJSON line
/// of the response, or a build's own stream). Called from the transfer's
/// tasks; must not block.
pub type ProgressSink<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// The credentials a client sent with a request.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// `X-Registry-Auth`: for the registry of the request's image.
    single: Option<RegistryAuth>,
    /// `X-Registry-Config`: by registry.
    by_registry: RegistryConfig,
}

impl ClientAuth {
    /// No credentials: anonymous access.
    pub fn anonymous() -> ClientAuth {
        ClientAuth::default()
    }

    /// Credentials for one registry (what `X-Registry-Auth` carries).
    pub fn single(auth: RegistryAuth) -> ClientAuth {
        ClientAuth {
            single: (!auth.is_anonymous()).then_some(auth),
            by_registry: RegistryConfig::new(),
        }
    }

    /// Credentials for several registries (what `X-Registry-Config`
    /// carries).
    pub fn by_registry(config: RegistryConfig) -> ClientAuth {
        ClientAuth {
            single: None,
            by_registry: config,
        }
    }

    /// Reads `X-Registry-Auth` and `X-Registry-Config` (either may be
    /// absent). A malformed header is a `bad_request`.
    pub fn from_headers(headers: &HeaderMap) -> Result<ClientAuth, ApiError> {
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v.to_str().map(Some).map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("invalid {name} header: not ASCII base64url"),
                    )
                }),
            }
        };
        let bad =
            |e: mvm_api::auth::AuthHeaderError| ApiError::new(ErrorCode::BadRequest, e.to_string());
        let mut auth = ClientAuth::anonymous();
        if let Some(v) = text(REGISTRY_AUTH_HEADER)? {
            auth = ClientAuth::single(RegistryAuth::decode(v).map_err(bad)?);
        }
        if let Some(v) = text(REGISTRY_CONFIG_HEADER)? {
            auth.by_registry = decode_config(v).map_err(bad)?;
        }
        Ok(auth)
    }

    /// The credentials to use with the registry `host` (a reference's
    /// domain), if any. `X-Registry-Auth` credentials that name another
    /// registry (`serveraddress`) are refused rather than sent to `host`.
    pub fn credentials_for(&self, host: &str) -> Result<Option<Credentials>, ApiError> {
        if let Some(a) = &self.single {
            if !a.serveraddress.is_empty() && !same_registry(&a.serveraddress, host) {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the {REGISTRY_AUTH_HEADER} credentials are for {}, but the image is on {host}; send credentials for {host} (or none)",
                        a.serveraddress
                    ),
                ));
            }
            return Ok(Some(credentials(a)));
        }
        Ok(self
            .by_registry
            .iter()
            .find(|(k, a)| {
                !a.is_anonymous()
                    && (same_registry(k, host) || same_registry(&a.serveraddress, host))
            })
            .map(|(_, a)| credentials(a)))
    }
}

fn credentials(a: &RegistryAuth) -> Credentials {
    if a.identitytoken.is_empty() {
        Credentials::new(&a.username, &a.password)
    } else {
        Credentials::with_identity_token(&a.username, &a.identitytoken)
    }
}

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullSpec {
    /// The image.
    pub reference: Reference,
    /// Plain HTTP (loopback registries only).
    pub insecure: bool,
    /// The platform to take from a multi-platform index (default
    /// linux/amd64).
    pub platform: Option<Platform>,
}

impl PullSpec {
    /// A pull of `reference` over HTTPS for linux/amd64.
    pub fn new(reference: Reference) -> PullSpec {
        PullSpec {
            reference,
            insecure: false,
            platform: None,
        }
    }
}

/// Parses an image reference from a request.
pub fn parse_reference(s: &str) -> Result<Reference, ApiError> {
    Reference::parse(s.trim()).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid image reference {s:?}: {e}"),
        )
    })
}

/// Pulls an image into the store with the client's credentials, sending
/// per-layer progress to `progress` (`status` lines, `bytes` per layer,
/// `done` per layer; the caller writes the final `result`/`error`).
///
/// This is also the function for a build's `FROM` of an image the store
/// lacks: call it (or [`ensure_image`]) from the build handler with the
/// build request's credentials (`ClientAuth::from_headers`, which reads
/// `X-Registry-Config` as well), and forward the records to the build's
/// stream. It is safe to run concurrently with other pulls of the same
/// image and with prunes. On failure the store is as it was before (what
/// the pull wrote and nothing else uses is removed) and the error's code
/// says what kind of failure it was: `registry_auth` (log in),
/// `forbidden`, `not_found` (no such tag, or no such platform in the
/// index), `bad_request` (bad reference, platform or `insecure`),
/// `upstream` (unreachable, failing, corrupt or oversized answers),
/// `resource_unavailable` (disk full).
pub async fn pull_image(
    store: &Store,
    spec: &PullSpec,
    auth: &ClientAuth,
    progress: ProgressSink<'_>,
) -> Result<PullResult, ApiError> {
    let reference = &spec.reference;
    let creds = auth.credentials_for(reference.domain())?;
    let platform = match &spec.platform {
        Some(p) => manifest::Platform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            os_version: None,
        },
        None => registry::linux_amd64(),
    };
    let before = {
        let (store, r) = (store.clone(), reference.clone());
        tokio::task::spawn_blocking(move || store.resolve_ref(&r).ok().map(|rec| rec.digest))
            .await
            .unwrap_or(None)
    };
    let opts = PullOptions {
        insecure: spec.insecure,
        platform,
        credentials: source(creds),
        ..PullOptions::default()
    };
    let sink = Sink {
        op: Op::Pull,
        out: progress,
    };
    let rec = registry::pull(store, reference, &opts, &sink)
        .await
        .map_err(registry_error)?;
    let updated = before != Some(rec.digest);
    let status = if updated {
        format!("Downloaded newer image for {}", reference.familiar())
    } else {
        format!("Image is up to date for {}", reference.familiar())
    };
    Ok(PullResult {
        reference: reference.to_string(),
        digest: rec.digest.to_string(),
        id: rec.id.to_string(),
        updated,
        status,
    })
}

/// The stored image `spec` names, pulled first if the store lacks it (a
/// build's `FROM`; no progress at all when it is there). See
/// [`pull_image`] for credentials, progress and errors.
pub async fn ensure_image(
    store: &Store,
    spec: &PullSpec,
    auth: &ClientAuth,
    progress: ProgressSink<'_>,
) -> Result<ImageRecord, ApiError> {
    let resolve = |store: Store, r: Reference| async move {
        tokio::task::spawn_blocking(move || store.resolve_ref(&r))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    };
    match resolve(store.clone(), spec.reference.clone()).await? {
        Ok(rec) => return Ok(rec),
        Err(StoreError::ImageNotFound(_)) => {}
        Err(e) => return Err(store_error(e)),
    }
    pull_image(store, spec, auth, progress).await?;
    resolve(store.clone(), spec.reference.clone())
        .await?
        .map_err(store_error)
}

/// Pushes a stored image with the client's credentials, progress as for
/// [`pull_image`].
pub async fn push_image(
    store: &Store,
    reference: &Reference,
    insecure: bool,
    auth: &ClientAuth,
    progress: ProgressSink<'_>,
) -> Result<PushResult, ApiError> {
    let creds = auth.credentials_for(reference.domain())?;
    let opts = PushOptions {
        insecure,
        credentials: source(creds),
        ..PushOptions::default()
    };
    let sink = Sink {
        op: Op::Push,
        out: progress,
    };
    let rep = registry::push(store, reference, &opts, &sink)
        .await
        .map_err(registry_error)?;
    Ok(PushResult {
        reference: rep.reference,
        digest: rep.digest.to_string(),
        size: rep.size,
        uploaded: rep.uploaded,
        skipped: rep.skipped,
        mounted: rep.mounted,
    })
}

/// Checks credentials against a registry (`docker login`); stores nothing.
/// Returns the registry host, normalised.
pub async fn check_login(
    server: &str,
    creds: &Credentials,
    insecure: bool,
) -> Result<String, ApiError> {
    let opts = LoginOptions {
        insecure,
        ..LoginOptions::default()
    };
    registry::check_login(server, creds, &opts)
        .await
        .map_err(registry_error)
}

fn source(creds: Option<Credentials>) -> CredentialSource {
    match creds {
        Some(c) => CredentialSource::Explicit(c),
        // Never the daemon's own files: credentials are the client's.
        None => CredentialSource::Anonymous,
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(crate::http::store_code(&e), e.to_string())
}

/// The API error for a registry failure.
pub fn registry_error(e: RegistryError) -> ApiError {
    use RegistryError as R;
    let code = match &e {
        R::Host(_) | R::Credentials(_) | R::BadPushReference { .. } => ErrorCode::BadRequest,
        R::UnsupportedPlatform { .. } => ErrorCode::BadRequest,
        R::Store(s) => crate::http::store_code(s),
        R::AuthRequired { .. } | R::CredentialsRefused { .. } | R::TokenNotAccepted { .. } => {
            ErrorCode::RegistryAuth
        }
        R::Denied { .. } => ErrorCode::Forbidden,
        R::ManifestUnknown { .. } | R::NoMatchingPlatform { .. } => ErrorCode::NotFound,
        R::Manifest { source, .. } => match source {
            ManifestError::WrongPlatform { .. } => ErrorCode::BadRequest,
            ManifestError::NoMatchingPlatform(_) => ErrorCode::NotFound,
            _ => ErrorCode::Upstream,
        },
        R::BlobUnknown { .. }
        | R::Status { .. }
        | R::ConnectionRefused { .. }
        | R::Network { .. }
        | R::DigestMismatch { .. }
        | R::SizeMismatch { .. }
        | R::TooLarge { .. }
        | R::Protocol { .. } => ErrorCode::Upstream,
        R::Internal(_) => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Pull,
    Push,
}

/// Turns the registry client's events into API progress records.
struct Sink<'a> {
    op: Op,
    out: ProgressSink<'a>,
}

/// Docker's short layer id: the first 12 hex digits.
fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Sink<'_> {
    fn map(&self, e: &ProgressEvent) -> Option<Progress> {
        let pull = self.op == Op::Pull;
        let bytes = |d: &Digest, current: u64, total: u64, what: &str| Progress::Bytes {
            id: short(d),
            current,
            total: Some(total),
            message: Some(what.to_string()),
        };
        let done = |d: &Digest, message: String| Progress::Done {
            id: short(d),
            message,
        };
        let moving = if pull { "Downloading" } else { "Pushing" };
        Some(match e {
            ProgressEvent::Resolving { reference } => Progress::Status {
                message: if pull {
                    format!("Pulling {reference}")
                } else {
                    let repo = Reference::parse(reference)
                        .map(|r| r.repository())
                        .unwrap_or_else(|_| reference.clone());
                    format!("The push refers to repository [{repo}]")
                },
            },
            ProgressEvent::Resolved {
                digest,
                count,
                total_bytes,
                ..
            } => Progress::Status {
                message: format!(
                    "{digest}: {count} {}{}, {}",
                    if pull { "layer" } else { "blob" },
                    if *count == 1 { "" } else { "s" },
                    human(*total_bytes)
                ),
            },
            ProgressEvent::BlobExists { digest, .. } => done(
                digest,
                if pull {
                    "Already exists"
                } else {
                    "Layer already exists"
                }
                .into(),
            ),
            ProgressEvent::BlobMounted { digest, from, .. } => {
                done(digest, format!("Mounted from {from}"))
            }
            ProgressEvent::BlobStart { digest, size, .. } => bytes(digest, 0, *size, moving),
            ProgressEvent::BlobProgress {
                digest,
                done,
                total,
                ..
            } => bytes(digest, *done, *total, moving),
            ProgressEvent::BlobVerifying { .. } => return None,
            ProgressEvent::BlobDone { digest, .. } => {
                done(digest, if pull { "Pull complete" } else { "Pushed" }.into())
            }
            ProgressEvent::Retrying {
                what,
                attempt,
                reason,
            } => Progress::Status {
                message: format!("Retrying {what} (attempt {attempt} failed: {reason})"),
            },
            ProgressEvent::Verifying { .. } | ProgressEvent::Done { .. } => return None,
        })
    }
}

impl registry::Progress for Sink<'_> {
    fn event(&self, event: &ProgressEvent) {
        if let Some(p) = self.map(event) {
            (self.out)(p);
        }
    }
}

/// A progress sink into an unbounded channel (the response stream reads
/// the other end). A client that went away is ignored: the transfer goes
/// on, so the store still gets the image.
pub fn channel_sink(
    tx: tokio::sync::mpsc::UnboundedSender<Progress>,
) -> Arc<dyn Fn(Progress) + Send + Sync> {
    Arc::new(move |p| {
        let _ = tx.send(p);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_go_only_to_their_registry() {
        let a = ClientAuth::single(RegistryAuth::password("127.0.0.1:5000", "u", "p"));
        assert_eq!(
            a.credentials_for("127.0.0.1:5000").unwrap(),
            Some(Credentials::new("u", "p"))
        );
        let e = a.credentials_for("evil.example").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("are for 127.0.0.1:5000"), "{e}");
        // No serveraddress: for the request's registry, as Docker sends it.
        let a = ClientAuth::single(RegistryAuth::password("", "u", "p"));
        assert!(a.credentials_for("any:1").unwrap().is_some());
        // Docker Hub's aliases.
        let a = ClientAuth::single(RegistryAuth::identity_token(
            "https://index.docker.io/v1/",
            "",
            "t",
        ));
        assert_eq!(
            a.credentials_for("docker.io").unwrap().unwrap().token(),
            Some("t")
        );
        let mut m = RegistryConfig::new();
        m.insert("h:1".into(), RegistryAuth::password("h:1", "a", "b"));
        let a = ClientAuth::by_registry(m);
        assert!(a.credentials_for("h:1").unwrap().is_some());
        assert!(a.credentials_for("h:2").unwrap().is_none());
        assert!(ClientAuth::anonymous()
            .credentials_for("h:1")
            .unwrap()
            .is_none());
    }

    #[test]
    fn headers_are_decoded_and_checked() {
        let mut h = HeaderMap::new();
        assert!(ClientAuth::from_headers(&h).unwrap().single.is_none());
        h.insert(
            REGISTRY_AUTH_HEADER,
            HeaderValue::from_str(&RegistryAuth::password("h:1", "u", "p").encode()).unwrap(),
        );
        let a = ClientAuth::from_headers(&h).unwrap();
        assert!(a.credentials_for("h:1").unwrap().is_some());
        h.insert(REGISTRY_AUTH_HEADER, HeaderValue::from_static("!!!"));
        let e = ClientAuth::from_headers(&h).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("X-Registry-Auth"), "{e}");
    }

    #[test]
    fn events_become_per_layer_records() {
        let got = std::sync::Mutex::new(Vec::new());
        let out = |p: Progress| got.lock().unwrap().push(p);
        let sink = Sink {
            op: Op::Pull,
            out: &out,
        };
        let d = Digest::of(b"layer");
        use registry::Progress as _;
        sink.event(&ProgressEvent::Resolving {
            reference: "127.0.0.1:5000/a:1".into(),
        });
        sink.event(&ProgressEvent::BlobStart {
            index: 1,
            count: 1,
            digest: d,
            size: 10,
        });
        sink.event(&ProgressEvent::BlobProgress {
            index: 1,
            count: 1,
            digest: d,
            done: 10,
            total: 10,
        });
        sink.event(&ProgressEvent::BlobVerifying {
            index: 1,
            count: 1,
            digest: d,
        });
        sink.event(&ProgressEvent::BlobDone {
            index: 1,
            count: 1,
            digest: d,
            size: 10,
        });
        let got = got.into_inner().unwrap();
        let id = d.hex()[..12].to_string();
        assert_eq!(
            got,
            [
                Progress::Status {
                    message: "Pulling 127.0.0.1:5000/a:1".into()
                },
                Progress::Bytes {
                    id: id.clone(),
                    current: 0,
                    total: Some(10),
                    message: Some("Downloading".into())
                },
                Progress::Bytes {
                    id: id.clone(),
                    current: 10,
                    total: Some(10),
                    message: Some("Downloading".into())
                },
                Progress::Done {
                    id,
                    message: "Pull complete".into()
                },
            ]
        );
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000), "1.5 MB");
    }

    #[test]
    fn error_codes() {
        let code = |e| registry_error(e).code;
        assert_eq!(
            code(RegistryError::AuthRequired { host: "h".into() }),
            ErrorCode::RegistryAuth
        );
        assert_eq!(
            code(RegistryError::Denied {
                host: "h".into(),
                repository: "r".into(),
                action: "push",
                status: 403,
                detail: String::new()
            }),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(RegistryError::ManifestUnknown {
                reference: "r".into(),
                host: "h".into(),
                detail: String::new()
            }),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(RegistryError::TooLarge {
                host: "h".into(),
                what: "manifest".into(),
                limit: 1
            }),
            ErrorCode::Upstream
        );
        assert_eq!(
            code(RegistryError::ConnectionRefused {
                host: "h".into(),
                url: "u".into()
            }),
            ErrorCode::Upstream
        );
    }
}
