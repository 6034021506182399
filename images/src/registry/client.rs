//! The HTTP side of the distribution API: requests with authentication
//! (basic or bearer, driven by the registry's challenges), retries with
//! back-off, and HTTP failures turned into [`RegistryError`]s that say
//! what to do.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use super::challenge::{self, Challenge};
use super::credentials::Credentials;
use super::host::RegistryHost;
use super::progress::{Progress, ProgressEvent};
use super::{RegistryError, RetryPolicy};
use crate::digest::Digest;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Header with the digest of the content served or stored.
pub(crate) const DIGEST_HEADER: &str = "docker-content-digest";
/// Longest error body or token response read.
const MAX_SMALL_BODY: u64 = 1 << 20;
/// Part of an error body quoted in messages.
const MAX_QUOTED: usize = 300;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence on a connection before it is considered dead.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What a request needs permission for (the bearer token scope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// Nothing specific (`GET /v2/` for login).
    None,
    /// Read a repository.
    Pull(String),
    /// Read and write a repository.
    Push(String),
}

impl Scope {
    fn as_token_scope(&self) -> Option<String> {
        match self {
            Scope::None => None,
            Scope::Pull(r) => Some(format!("repository:{r}:pull")),
            Scope::Push(r) => Some(format!("repository:{r}:pull,push")),
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Scope::Push(_) => "push",
            _ => "pull",
        }
    }

    fn repository(&self) -> String {
        match self {
            Scope::None => String::new(),
            Scope::Pull(r) | Scope::Push(r) => r.clone(),
        }
    }
}

/// Whether a request may be sent again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Safe to resend (GET, HEAD, manifest PUT).
    Idempotent,
    /// Part of a sequence the caller restarts as a whole (uploads).
    Once,
}

/// What authorization a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SentAuth {
    None,
    Basic,
    Token(HeaderValue),
}

#[derive(Debug, Default)]
struct AuthState {
    /// The registry asked for basic auth: send it with every request.
    basic: bool,
    /// Bearer tokens by scope.
    tokens: HashMap<Scope, HeaderValue>,
}

/// A client for one registry.
pub(crate) struct Client {
    http: reqwest::Client,
    host: RegistryHost,
    creds: Option<Credentials>,
    retry: RetryPolicy,
    auth: Mutex<AuthState>,
}

/// Makes ring the process's rustls crypto provider: reqwest is built without
/// one (see Cargo.toml) and takes the process default. A provider installed
/// earlier by the embedding program is kept.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Client {
    pub(crate) fn new(
        host: RegistryHost,
        creds: Option<Credentials>,
        retry: RetryPolicy,
    ) -> Result<Client> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("mvm/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| RegistryError::Network {
                host: host.name().to_string(),
                what: "setting up the HTTP client".into(),
                detail: error_chain(&e),
                hint: String::new(),
            })?;
        Ok(Client {
            http,
            host,
            creds,
            retry: RetryPolicy {
                attempts: retry.attempts.max(1),
                ..retry
            },
            auth: Mutex::new(AuthState::default()),
        })
    }

    pub(crate) fn host(&self) -> &str {
        self.host.name()
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// `base/v2/<repository>/<rest>`.
    pub(crate) fn url(&self, repository: &str, rest: &str) -> String {
        format!("{}/v2/{repository}/{rest}", self.host.base_url())
    }

    /// `base/v2/`.
    pub(crate) fn ping_url(&self) -> String {
        format!("{}/v2/", self.host.base_url())
    }

    /// Sends a request built by `build` (called again for each attempt),
    /// authenticating as the registry's challenges ask and retrying 5xx,
    /// 429 and transport failures per the policy (only with
    /// [`Retry::Idempotent`]). Returns the response for any status the
    /// caller must interpret (2xx, 3xx, 403, 404, other 4xx); 401 and
    /// final 5xx/429 become errors here.
    pub(crate) async fn send(
        &self,
        what: &str,
        scope: &Scope,
        retry: Retry,
        progress: &dyn Progress,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response> {
        let max = match retry {
            Retry::Idempotent => self.retry.attempts,
            Retry::Once => 1,
        };
        let mut attempt = 1;
        let mut auth_rounds = 0;
        loop {
            let (req, sent) = self.authorize(build(&self.http), scope);
            let outcome = req.send().await;
            let resp = match outcome {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error(what, &e);
                    if attempt < max && transport_retryable(&e) {
                        self.wait(what, attempt, &err.to_string(), progress).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                let challenges = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(challenge::parse)
                    .collect::<Vec<_>>();
                let detail = error_detail(resp).await;
                if auth_rounds < 3 && self.answer_challenge(&challenges, scope, &sent).await? {
                    auth_rounds += 1;
                    continue;
                }
                return Err(self.unauthorized(scope, &sent, detail));
            }
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                let detail = error_detail(resp).await;
                if attempt < max {
                    self.wait(
                        what,
                        attempt,
                        &format!("HTTP {}{detail}", status.as_u16()),
                        progress,
                    )
                    .await;
                    attempt += 1;
                    continue;
                }
                let advice = if status == StatusCode::TOO_MANY_REQUESTS {
                    "; the registry is rate limiting, wait and try again (logging in may raise the limit)"
                } else {
                    "; the registry is failing, try again later"
                };
                return Err(RegistryError::Status {
                    host: self.host().to_string(),
                    what: what.to_string(),
                    status: status.as_u16(),
                    attempts: attempt,
                    detail: format!("{detail}{advice}"),
                });
            }
            return Ok(resp);
        }
    }

    async fn wait(&self, what: &str, attempt: u32, reason: &str, progress: &dyn Progress) {
        tracing::debug!(host = self.host(), what, attempt, reason, "retrying");
        progress.event(&ProgressEvent::Retrying {
            what: what.to_string(),
            attempt,
            reason: reason.to_string(),
        });
        tokio::time::sleep(self.retry.delay(attempt)).await;
    }

    /// Adds what the registry asked for so far, and says what was added.
    fn authorize(&self, req: RequestBuilder, scope: &Scope) -> (RequestBuilder, SentAuth) {
        let st = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tok) = st.tokens.get(scope) {
            return (
                req.header(AUTHORIZATION, tok.clone()),
                SentAuth::Token(tok.clone()),
            );
        }
        if st.basic {
            if let Some(c) = &self.creds {
                return (
                    req.basic_auth(&c.username, Some(&c.password)),
                    SentAuth::Basic,
                );
            }
        }
        (req, SentAuth::None)
    }

    /// Acts on a 401's challenges: switch to basic auth, or fetch a token.
    /// Returns true if the request should be sent again. Requests run
    /// concurrently: one sent before another's challenge was answered
    /// just retries with what is known now.
    async fn answer_challenge(
        &self,
        challenges: &[Challenge],
        scope: &Scope,
        sent: &SentAuth,
    ) -> Result<bool> {
        if let Some(Challenge::Bearer {
            realm,
            service,
            scope: asked,
        }) = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
        {
            {
                let mut st = self.auth.lock().unwrap_or_else(|e| e.into_inner());
                match (sent, st.tokens.get(scope)) {
                    // Our token was refused (expired?): get a new one.
                    (SentAuth::Token(t), Some(cur)) if t == cur => {
                        st.tokens.remove(scope);
                    }
                    // Someone got a token meanwhile: use it.
                    (_, Some(_)) => return Ok(true),
                    (_, None) => {}
                }
            }
            let wanted = scope.as_token_scope();
            // Ask for what the registry said it needs, plus our scope (a
            // push also needs pull on the same repository).
            let mut scopes: Vec<String> = Vec::new();
            if let Some(a) = asked {
                scopes.extend(a.split(' ').filter(|s| !s.is_empty()).map(str::to_string));
            }
            if let Some(w) = wanted {
                if !scopes.contains(&w) {
                    scopes.push(w);
                }
            }
            let token = self.fetch_token(realm, service.as_deref(), &scopes).await?;
            self.auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tokens
                .insert(scope.clone(), token);
            return Ok(true);
        }
        if challenges.contains(&Challenge::Basic) && self.creds.is_some() {
            if self.creds.as_ref().is_some_and(|c| c.token().is_some()) {
                // An identity token is only good for a token server.
                return Err(RegistryError::TokenNotAccepted {
                    host: self.host().to_string(),
                });
            }
            if *sent == SentAuth::Basic {
                return Ok(false); // credentials were sent and refused
            }
            self.auth.lock().unwrap_or_else(|e| e.into_inner()).basic = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn unauthorized(&self, scope: &Scope, sent: &SentAuth, detail: String) -> RegistryError {
        let host = self.host().to_string();
        match (&self.creds, sent) {
            (None, _) | (Some(_), SentAuth::None) => RegistryError::AuthRequired { host },
            (Some(c), SentAuth::Basic) => RegistryError::CredentialsRefused {
                host,
                user: c.username.clone(),
            },
            // A valid token (the token server accepted the credentials)
            // that does not grant the scope.
            (Some(_), SentAuth::Token(_)) => RegistryError::Denied {
                host,
                repository: scope.repository(),
                action: scope.action(),
                status: 401,
                detail,
            },
        }
    }

    /// Gets a bearer token from a token server (Docker's token protocol).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<HeaderValue> {
        let host = self.host().to_string();
        let proto = |message: String| RegistryError::Protocol {
            host: host.clone(),
            message,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| proto(format!("its token realm {realm:?} is not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            // Credentials go to the realm: plain HTTP only if the registry
            // itself was reached that way (a loopback or allowed registry).
            "http" if self.host.is_plain_http() => {}
            s => {
                return Err(proto(format!(
                    "its token realm {realm:?} uses {s}; only HTTPS realms are accepted"
                )))
            }
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
            if let Some(c) = &self.creds {
                q.append_pair("account", &c.username);
            }
        }
        let identity_token = self.creds.as_ref().and_then(|c| c.token());
        let what = if identity_token.is_some() {
            "POST token"
        } else {
            "GET token"
        };
        // An identity token is an OAuth2 refresh token: it is exchanged
        // with a form POST to the realm (as Docker does), not sent as basic
        // authentication.
        let form = identity_token.map(|t| {
            let mut f = Url::parse("http://form/").expect("static URL");
            {
                let mut q = f.query_pairs_mut();
                q.append_pair("grant_type", "refresh_token");
                q.append_pair("refresh_token", t);
                q.append_pair("client_id", "mvm");
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                if !scopes.is_empty() {
                    q.append_pair("scope", &scopes.join(" "));
                }
            }
            f.query().unwrap_or_default().to_string()
        });
        let mut attempt = 1;
        let resp = loop {
            let req = match &form {
                Some(body) => {
                    let mut u = url.clone();
                    u.set_query(None);
                    self.http
                        .post(u)
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(body.clone())
                }
                None => {
                    let mut req = self.http.get(url.clone());
                    if let Some(c) = &self.creds {
                        req = req.basic_auth(&c.username, Some(&c.password));
                    }
                    req
                }
            };
            match req.send().await {
                Ok(r)
                    if (r.status().is_server_error() || r.status() == 429)
                        && attempt < self.retry.attempts =>
                {
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                Ok(r) => break r,
                Err(e) if attempt < self.retry.attempts && transport_retryable(&e) => {
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.transport_error(what, &e)),
            }
        };
        let status = resp.status();
        let refused_token = form.is_some() && status == StatusCode::BAD_REQUEST;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || refused_token {
            return Err(match &self.creds {
                Some(c) => RegistryError::CredentialsRefused {
                    host,
                    user: c.username.clone(),
                },
                None => RegistryError::AuthRequired { host },
            });
        }
        if !status.is_success() {
            let detail = error_detail(resp).await;
            return Err(RegistryError::Status {
                host,
                what: format!("{what} from {}", url.host_str().unwrap_or("?")),
                status: status.as_u16(),
                attempts: attempt,
                detail,
            });
        }
        let body = read_limited(resp, MAX_SMALL_BODY)
            .await
            .map_err(|e| self.body_error(what, e))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| proto(format!("its token server answered invalid JSON ({e})")))?;
        let token = t
            .token
            .filter(|t| !t.is_empty())
            .or(t.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| proto("its token server answered without a token".into()))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| proto("its token server answered a token with invalid characters".into()))
    }

    /// Maps a transport failure, with advice.
    pub(crate) fn transport_error(&self, what: &str, e: &reqwest::Error) -> RegistryError {
        let host = self.host().to_string();
        if let Some(ioe) = find_io_error(e) {
            if ioe.kind() == io::ErrorKind::ConnectionRefused {
                return RegistryError::ConnectionRefused {
                    host,
                    url: e
                        .url()
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| self.host.base_url().to_string()),
                };
            }
        }
        let detail = error_chain(e);
        let lower = detail.to_ascii_lowercase();
        let hint = if lower.contains("dns") || lower.contains("resolve") {
            format!("; check the registry name {host} and the network")
        } else if !self.host.is_plain_http()
            && (lower.contains("tls")
                || lower.contains("certificate")
                || lower.contains("handshake")
                || lower.contains("invalidcontenttype")
                || lower.contains("corrupt message"))
        {
            format!("; if {host} is a local registry that serves plain HTTP, pass --insecure (allowed for loopback addresses)")
        } else if e.is_timeout() {
            "; the registry did not answer in time, try again".to_string()
        } else {
            String::new()
        };
        RegistryError::Network {
            host,
            what: what.to_string(),
            detail,
            hint,
        }
    }

    /// Maps a failure while reading a response body.
    pub(crate) fn body_error(&self, what: &str, e: BodyError) -> RegistryError {
        match e {
            BodyError::TooLarge(limit) => RegistryError::TooLarge {
                host: self.host().to_string(),
                what: what.to_string(),
                limit,
            },
            BodyError::Transport(e) => self.transport_error(what, &e),
        }
    }

    /// Turns an unexpected (non-2xx) answer into the error that explains
    /// it. `reference` is what a 404 on a manifest is reported about.
    pub(crate) async fn status_error(
        &self,
        resp: Response,
        what: &str,
        scope: &Scope,
        not_found: NotFound,
    ) -> RegistryError {
        let status = resp.status();
        let detail = error_detail(resp).await;
        let host = self.host().to_string();
        match status {
            StatusCode::FORBIDDEN => RegistryError::Denied {
                host,
                repository: scope.repository(),
                action: scope.action(),
                status: 403,
                detail,
            },
            StatusCode::NOT_FOUND => match not_found {
                NotFound::Manifest(reference) => RegistryError::ManifestUnknown {
                    reference,
                    host,
                    detail,
                },
                NotFound::Blob(digest) => RegistryError::BlobUnknown {
                    host,
                    repository: scope.repository(),
                    digest,
                },
                NotFound::Other => RegistryError::Status {
                    host,
                    what: what.to_string(),
                    status: 404,
                    attempts: 1,
                    detail,
                },
            },
            s => RegistryError::Status {
                host,
                what: what.to_string(),
                status: s.as_u16(),
                attempts: 1,
                detail,
            },
        }
    }

    /// A request builder for `method url`.
    pub(crate) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }
}

/// What a 404 means for the request at hand.
pub(crate) enum NotFound {
    /// No such manifest (tag or digest) or repository.
    Manifest(String),
    /// No such blob.
    Blob(Digest),
    /// Nothing specific.
    Other,
}

/// Reading a body failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than allowed.
    TooLarge(u64),
    /// The connection failed.
    Transport(reqwest::Error),
}

/// Reads a whole body, refusing more than `limit` bytes (checked against
/// Content-Length first, then while reading).
pub(crate) async fn read_limited(mut resp: Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The registry's explanation from an error body (the distribution
/// `{"errors": [{"code", "message"}]}` envelope, or plain text), quoted
/// safely: bounded and without control characters. Empty if none.
pub(crate) async fn error_detail(resp: Response) -> String {
    let Ok(body) = read_limited(resp, MAX_SMALL_BODY).await else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Envelope>(&body) {
        Ok(env) => env
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTED)
        .collect();
    if clean.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", clean.trim())
    }
}

/// The `Docker-Content-Digest` header, if present and a sha256 digest.
pub(crate) fn digest_header(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DIGEST_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ioe) = err.downcast_ref::<io::Error>() {
            return Some(ioe);
        }
        cur = err.source();
    }
    None
}

/// Failures worth another attempt: resets, timeouts, cut-off bodies. Not
/// refused connections (nothing listens; say so at once) nor TLS or DNS
/// failures (they will not fix themselves).
pub(crate) fn transport_retryable(e: &reqwest::Error) -> bool {
    if let Some(ioe) = find_io_error(e) {
        return matches!(
            ioe.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted
        );
    }
    let chain = error_chain(e).to_ascii_lowercase();
    if chain.contains("dns") || chain.contains("certificate") || chain.contains("tls") {
        return false;
    }
    e.is_timeout() || e.is_body() || e.is_request() && !e.is_connect()
}

/// `outer: inner: innermost`, for messages.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::Push("a/b".into()).as_token_scope().unwrap(),
            "repository:a/b:pull,push"
        );
        assert_eq!(Scope::Pull("a".into()).action(), "pull");
        assert_eq!(Scope::None.as_token_scope(), None);
    }
}
