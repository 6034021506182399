//! Registries: `pull`, `push`, `login` and `logout` over the OCI
//! distribution API (Docker Registry HTTP API v2).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mvm_images::registry::{self, AuthFile, Credentials, LoginOptions, PullOptions, NoProgress};
//! use mvm_images::{Reference, Store};
//! let store = Store::open_default()?;
//! let r = Reference::parse("localhost:5000/app:1")?;
//! let auth = AuthFile::default_location()?;
//! let opts = LoginOptions { insecure: true, ..Default::default() };
//! registry::login("localhost:5000", &Credentials::new("me", "pw"), &opts, &auth).await?;
//! let opts = PullOptions { insecure: true, ..Default::default() };
//! let image = registry::pull(&store, &r, &opts, &NoProgress).await?;
//! registry::push(&store, &r, &Default::default(), &NoProgress).await?;
//! # Ok(()) }
//! ```
//!
//! # Pull
//! The manifest is fetched with every supported media type accepted
//! (OCI and Docker schema 2 manifests, OCI indexes and Docker manifest
//! lists); for an index the linux/amd64 entry is chosen. Every document
//! and blob is checked against its digest (and size) while it streams into
//! the store's verified `put_blob`, under a [`Lease`](crate::Lease) so a
//! concurrent prune cannot delete a half-pulled image. Blobs already in
//! the store are not downloaded; layers download in parallel
//! (`max_concurrent_downloads`). The reference is tagged only once the
//! store holds the whole, verified image; a failed pull removes what it
//! wrote that nothing else references, so the store is as before.
//!
//! # Push
//! The local image's linux/amd64 manifest is pushed with its exact bytes
//! (so its digest is preserved). Blobs the registry has are skipped
//! (`HEAD`), blobs of another repository of the same registry that the
//! store knows about are cross-mounted, the rest is uploaded (one
//! streaming `PUT` each). The manifest goes last, so the tag never names
//! an incomplete image.
//!
//! # Authentication
//! Anonymous first; on a 401 the registry's challenge says how: HTTP
//! basic (htpasswd registries) or a bearer token from a token server
//! (Docker Hub). Credentials come from [`AuthFile`] (Docker's
//! `config.json` format) unless given explicitly.
//!
//! # Why reqwest and not the `oci-client` crate
//! `oci-client` 0.18 was evaluated first. It panics on a token server
//! answer that is not a valid header value (`parse().unwrap()` when
//! applying a bearer token; with `panic = "abort"` that kills the whole
//! server), reads manifests without a size limit, loses the HTTP status
//! of 4xx answers that carry an error body (so 403 and 404 are hard to
//! tell apart), swallows token errors (wrong credentials surface as an
//! anonymous 401), has no way to check credentials for `login`, and
//! follows the `urls` of foreign layers to arbitrary hosts. The protocol
//! subset needed here is small, so it is implemented directly on
//! `reqwest` (rustls), with every input treated as hostile.
//!
//! # Errors
//! [`RegistryError`] says what went wrong and what to do: 401 (log in),
//! 403, unknown manifest (check name and tag), 5xx (retried with
//! back-off, then reported with the status), connection refused (is the
//! registry running?), digest mismatch, unsupported media types, missing
//! platform (with the platforms the image has).

#[cfg(feature = "progress-bars")]
mod bars;
mod bridge;
mod challenge;
mod client;
pub mod credentials;
pub mod host;
mod login;
pub mod progress;
mod pull;
mod push;

use std::time::Duration;

#[cfg(feature = "progress-bars")]
pub use bars::ProgressBars;
pub use credentials::{AuthFile, Credentials, CredentialsError};
pub use host::{HostError, RegistryHost};
pub use login::{check_login, login, logout};
pub use progress::{JsonLines, NoProgress, Progress, ProgressEvent, Recorder};
pub use pull::pull;
pub use push::{push, PushReport};

use crate::digest::Digest;
use crate::manifest::{ManifestError, Platform};
use crate::store::StoreError;

/// Errors from registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A bad host name or a refused `--insecure`.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The credentials file could not be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The store failed (I/O, disk full, incomplete local image...).
    #[error(transparent)]
    Store(StoreError),
    /// The registry wants credentials and none were given.
    #[error("authentication required: run mvctl login {host}")]
    AuthRequired {
        /// The registry.
        host: String,
    },
    /// The registry (or its token server) rejected the credentials.
    #[error("the registry {host} refused the credentials of user {user:?}: run mvctl login {host} with the right user name and password")]
    CredentialsRefused {
        /// The registry.
        host: String,
        /// The user name that was tried.
        user: String,
    },
    /// The registry wants a user name and password (HTTP basic), but the
    /// credentials are an identity token.
    #[error("the registry {host} asks for a user name and password, but the saved credentials for it are an identity token; run mvctl login {host} with a user name and password")]
    TokenNotAccepted {
        /// The registry.
        host: String,
    },
    /// Authenticated, but not allowed (HTTP 403, or a 401 despite a valid
    /// token).
    #[error("access denied: {host} does not allow {action} on {repository} (HTTP {status}){detail}; check that the repository exists and that your account may {action} it")]
    Denied {
        /// The registry.
        host: String,
        /// The repository path.
        repository: String,
        /// `pull` or `push`.
        action: &'static str,
        /// 401 or 403.
        status: u16,
        /// The registry's message, if any.
        detail: String,
    },
    /// No such tag, digest or repository.
    #[error(
        "manifest unknown: check the name and tag ({reference} was not found on {host}{detail})"
    )]
    ManifestUnknown {
        /// The reference asked for.
        reference: String,
        /// The registry.
        host: String,
        /// The registry's message, if any.
        detail: String,
    },
    /// A blob the manifest names is not in the registry.
    #[error("the registry {host} has no blob {digest} in {repository}, although the image's manifest refers to it; the image in the registry is broken, push it again")]
    BlobUnknown {
        /// The registry.
        host: String,
        /// The repository.
        repository: String,
        /// The blob.
        digest: Digest,
    },
    /// An index without the wanted platform.
    #[error("image {reference} has no {wanted} variant; available: {available}")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// `linux/amd64`.
        wanted: String,
        /// What the index offers.
        available: String,
    },
    /// A platform other than linux/amd64 (with an optional variant
    /// v1-v4) was asked for.
    #[error("platform {wanted} requested, but mvm runs linux/amd64 images only (linux/amd64/v1 to v4 select amd64 variants); {reference} {available}")]
    UnsupportedPlatform {
        /// What was asked for.
        wanted: String,
        /// The reference.
        reference: String,
        /// What the image offers (`offers: linux/amd64, ...`).
        available: String,
    },
    /// A document is not a usable manifest, index or config.
    #[error("{what} of {reference}: {source}")]
    Manifest {
        /// Which document.
        what: String,
        /// The reference.
        reference: String,
        /// The problem.
        source: ManifestError,
    },
    /// The registry kept failing (5xx, 429) or answered something
    /// unexpected.
    #[error("the registry {host} answered {what} with HTTP {status}{}{detail}", if *attempts > 1 { format!(" {attempts} times") } else { String::new() })]
    Status {
        /// The registry.
        host: String,
        /// The request (`GET manifest x:1`).
        what: String,
        /// The last status.
        status: u16,
        /// How many attempts were made.
        attempts: u32,
        /// The registry's message and advice.
        detail: String,
    },
    /// Nothing listens at the registry's address.
    #[error(
        "cannot connect to {host} ({url}): connection refused; is the registry running at {host}?"
    )]
    ConnectionRefused {
        /// The registry.
        host: String,
        /// The URL tried.
        url: String,
    },
    /// Any other network failure (DNS, TLS, reset, timeout).
    #[error("network error talking to {host} while {what}: {detail}{hint}")]
    Network {
        /// The registry.
        host: String,
        /// The request.
        what: String,
        /// The error chain.
        detail: String,
        /// Advice.
        hint: String,
    },
    /// Content does not hash to the digest it was asked for by.
    #[error("{what} from {host} hashes to {actual}, expected {expected}; the registry served corrupt or tampered content (nothing was stored)")]
    DigestMismatch {
        /// The registry.
        host: String,
        /// Which document or blob.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// Content has a different size than its descriptor says.
    #[error("{what} from {host} is {actual} bytes, but its descriptor says {expected}; the registry served corrupt content (nothing was stored)")]
    SizeMismatch {
        /// The registry.
        host: String,
        /// Which blob.
        what: String,
        /// Descriptor size.
        expected: u64,
        /// Received bytes (at least).
        actual: u64,
    },
    /// A document exceeds its size limit.
    #[error("{what} from {host} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The registry.
        host: String,
        /// Which document.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The registry broke the protocol (missing Location, bad token...).
    #[error("the registry {host} broke the distribution protocol: {message}")]
    Protocol {
        /// The registry.
        host: String,
        /// What was wrong.
        message: String,
    },
    /// A push by digest that does not match the local image.
    #[error("cannot push {reference}: {reason}")]
    BadPushReference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A background task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Store(e)
    }
}

/// How often and how patiently to retry transient failures (5xx, 429,
/// connection resets, timeouts, a body cut off mid-way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based).
    pub(crate) fn delay(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(10))
            .min(Duration::from_secs(30))
    }
}

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub enum CredentialSource {
    /// [`AuthFile::default_location`] (mvm's file, then Docker's);
    /// anonymous if there is no home directory.
    #[default]
    Default,
    /// A specific credentials file.
    File(AuthFile),
    /// These credentials.
    Explicit(Credentials),
    /// None.
    Anonymous,
}

impl CredentialSource {
    /// The credentials for `host`, if any.
    pub fn resolve(&self, host: &str) -> Result<Option<Credentials>, CredentialsError> {
        let from_file = |f: &AuthFile| {
            let l = f.lookup(host)?;
            for w in &l.warnings {
                tracing::warn!("credentials for {host}: {w}");
            }
            Ok(l.found.map(|f| f.credentials))
        };
        match self {
            CredentialSource::Default => match AuthFile::default_location() {
                Ok(f) => from_file(&f),
                Err(CredentialsError::NoHome) => Ok(None),
                Err(e) => Err(e),
            },
            CredentialSource::File(f) => from_file(f),
            CredentialSource::Explicit(c) => Ok(Some(c.clone())),
            CredentialSource::Anonymous => Ok(None),
        }
    }
}

/// The platform mvm runs.
pub fn linux_amd64() -> Platform {
    Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    }
}

/// Options of [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Plain HTTP; allowed for loopback registries (and those listed in
    /// `insecure_registries`) only.
    pub insecure: bool,
    /// Registries an administrator allows plain HTTP for.
    pub insecure_registries: Vec<String>,
    /// The platform to pick from an index (linux/amd64, the only one the
    /// store accepts).
    pub platform: Platform,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure: false,
            insecure_registries: Vec::new(),
            platform: linux_amd64(),
            max_concurrent_downloads: 3,
            credentials: CredentialSource::Default,
            retry: RetryPolicy::default(),
        }
    }
}

/// Options of [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Plain HTTP (see [`PullOptions::insecure`]).
    pub insecure: bool,
    /// Registries an administrator allows plain HTTP for.
    pub insecure_registries: Vec<String>,
    /// Blobs uploaded at once.
    pub max_concurrent_uploads: usize,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            insecure: false,
            insecure_registries: Vec::new(),
            max_concurrent_uploads: 3,
            credentials: CredentialSource::Default,
            retry: RetryPolicy::default(),
        }
    }
}

/// Options of [`login`].
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    /// Plain HTTP (see [`PullOptions::insecure`]).
    pub insecure: bool,
    /// Registries an administrator allows plain HTTP for.
    pub insecure_registries: Vec<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

/// Runs a blocking store operation off the async executor: store calls
/// take file locks and fsync, which must not stall other tasks.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, RegistryError>
where
    F: FnOnce() -> Result<T, RegistryError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Internal(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(400));
        assert_eq!(r.delay(40), Duration::from_secs(30));
    }

    #[test]
    fn futures_are_send() {
        // An API server spawns these on a multi-threaded runtime.
        fn assert_send<T: Send>(_: &T) {}
        let store = crate::Store::open(tempfile::tempdir().unwrap().path()).unwrap();
        let r = crate::Reference::parse("localhost:1/x:1").unwrap();
        let (po, pu, lo) = (
            PullOptions::default(),
            PushOptions::default(),
            LoginOptions::default(),
        );
        let f = pull(&store, &r, &po, &NoProgress);
        assert_send(&f);
        let f = push(&store, &r, &pu, &NoProgress);
        assert_send(&f);
        let a = AuthFile::at("/nonexistent/auth.json");
        let c = Credentials::new("u", "p");
        let f = login("localhost:1", &c, &lo, &a);
        assert_send(&f);
    }
}
