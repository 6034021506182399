//! The client of mvmd's REST API (`docs/api.md`).
//!
//! HTTP/1.1 with hyper over a Unix socket (the default, no token) or TCP
//! (bearer token). One connection per request: a CLI makes a handful of
//! requests, some of which block for minutes (`wait`, `logs -f`), and
//! separate connections let those run side by side without a pool.
//!
//! Everything the daemon sends is treated as untrusted input: bodies are
//! read with size limits and NDJSON lines have a maximum length, so a
//! confused or hostile daemon cannot make the client eat all memory.

mod api;
mod body;
pub mod ndjson;
mod query;
pub mod tls;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mvm_api::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub use api::{Answer, LogsOptions, WaitCondition};
pub use body::Body;
pub use ndjson::NdjsonStream;
pub use query::{encode_segment, Query};

/// Largest JSON answer read into memory (an `inspect` or a list).
const MAX_JSON_BODY: usize = 64 << 20;
/// Largest error body kept for a message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long a connection attempt may take. Connecting to a local socket is
/// instant; a forwarded TCP port of the machine answers within seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol name of mvmd's upgraded streams (attach, exec).
pub const UPGRADE_PROTOCOL: &str = "mvm-stream";

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `-H`/`MVM_HOST` is not a daemon address.
    #[error("invalid daemon address {given:?}: {why} (use unix:///path/to/mvmd.sock or tcp://host:port)")]
    BadHost {
        /// What was given.
        given: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Nothing answers at the address.
    #[error("cannot connect to mvmd at {host}: {source}")]
    Connect {
        /// The address.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error body.
    #[error("{0}")]
    Api(ApiError),
    /// The daemon answered with a failure status but no error body.
    #[error("mvmd at {host} answered {status} to {what}: {body}")]
    Unexpected {
        /// The address.
        host: String,
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The HTTP exchange failed (connection dropped, malformed answer,
    /// a TLS alert).
    #[error("talking to mvmd at {host} failed: {}", chain(source))]
    Http {
        /// The address.
        host: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// An answer is not what the API promises.
    #[error("mvmd's answer to {what} is not valid: {why}")]
    Decode {
        /// The request.
        what: String,
        /// Why.
        why: String,
    },
    /// Reading a request body (a file being uploaded) failed.
    #[error("reading {what} failed: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not switch to a stream for attach or exec.
    #[error("mvmd did not open a stream for {what} (HTTP {status})")]
    NoUpgrade {
        /// The request.
        what: String,
        /// The status it answered instead.
        status: u16,
    },
}

impl ClientError {
    /// The API error code, when the daemon gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// True when nothing answered at the address (the daemon is not
    /// running), as opposed to a daemon that answered badly.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }

    /// True for the daemon's `not_found`.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where mvmd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Host {
    /// Parse `unix:///path`, `tcp://host:port`, or a bare absolute socket
    /// path (what `-H` and `MVM_HOST` accept).
    pub fn parse(s: &str) -> Result<Host> {
        let bad = |why| ClientError::BadHost {
            given: s.to_string(),
            why,
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix socket path must be absolute"));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let addr = rest.trim_end_matches('/');
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(bad("a tcp address needs a port"));
            };
            if host.is_empty() {
                return Err(bad("a tcp address needs a host"));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad("the port must be a number from 1 to 65535"));
            }
            if addr.contains('/') || addr.contains('@') {
                return Err(bad("a tcp address is host:port, without a path or user"));
            }
            return Ok(Host::Tcp(addr.to_string()));
        }
        if s.starts_with('/') {
            return Ok(Host::Unix(PathBuf::from(s)));
        }
        Err(bad("unknown scheme"))
    }

    /// The default Unix socket.
    pub fn default_unix() -> Host {
        Host::Unix(PathBuf::from(mvm_api::DEFAULT_SOCKET))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "unix://{}", p.display()),
            Host::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

struct Inner {
    host: Host,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A client of one mvmd. Cheap to clone (tasks that wait or follow logs
/// take their own copy).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("host", &self.inner.host)
            .field("token", &self.inner.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// An error and its causes, `a: b: c` (hyper's own message is as short as
/// "connection error"; the cause, such as a TLS alert, is what helps).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The stream of an upgraded connection (attach, exec).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

impl Client {
    /// A client of the daemon at `host`; `token` is sent as a bearer token
    /// (TCP only; Unix sockets are protected by file permissions).
    pub fn new(host: Host, token: Option<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                host,
                token,
                tls: None,
            }),
        }
    }

    /// A client that speaks TLS with `cfg` to a tcp:// daemon.
    pub fn with_tls(host: Host, token: Option<String>, cfg: Arc<rustls::ClientConfig>) -> Client {
        Client {
            inner: Arc::new(Inner {
                host,
                token,
                tls: Some(cfg),
            }),
        }
    }

    /// The daemon's address.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    fn host_str(&self) -> String {
        self.inner.host.to_string()
    }

    async fn connect(&self) -> Result<SendRequest<Body>> {
        let host = self.host_str();
        let conn_err = |source| ClientError::Connect {
            host: host.clone(),
            source,
        };
        let timeout = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out");
        match &self.inner.host {
            Host::Unix(path) => {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                    .await
                    .map_err(|_| conn_err(timeout()))?
                    .map_err(conn_err)?;
                self.handshake(s).await
            }
            Host::Tcp(addr) => {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| conn_err(timeout()))?
                    .map_err(conn_err)?;
                let _ = s.set_nodelay(true);
                match &self.inner.tls {
                    None => self.handshake(s).await,
                    Some(cfg) => {
                        let name = tls::server_name(addr).map_err(|e| {
                            conn_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                        })?;
                        let t = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, s),
                        )
                        .await
                        .map_err(|_| conn_err(timeout()))?
                        .map_err(|e| {
                            conn_err(std::io::Error::other(format!(
                                "TLS handshake failed: {e} (check --tlscacert, --tlscert and --tlskey, and that the daemon serves TLS)"
                            )))
                        })?;
                        self.handshake(t).await
                    }
                }
            }
        }
    }

    async fn handshake<S>(&self, io: S) -> Result<SendRequest<Body>>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| ClientError::Http {
                host: self.host_str(),
                source,
            })?;
        // The connection task ends with the request (or the upgraded
        // stream); its error, if any, surfaces through the request.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        // `path` was assembled by `Query` from encoded parts; a failure here
        // is a bug in this crate, but answer it as an error anyway.
        *req.uri_mut() = path
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/invalid-path"));
        let headers = req.headers_mut();
        let host = match &self.inner.host {
            Host::Unix(_) => HeaderValue::from_static("mvmd"),
            Host::Tcp(a) => HeaderValue::from_str(a).unwrap_or(HeaderValue::from_static("mvmd")),
        };
        headers.insert(HOST, host);
        if let (Host::Tcp(_), Some(token)) = (&self.inner.host, &self.inner.token) {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(AUTHORIZATION, v);
            }
        }
        if let Some(ct) = content_type {
            if let Ok(v) = HeaderValue::from_str(ct) {
                headers.insert(CONTENT_TYPE, v);
            }
        }
        req
    }

    /// Send a request; a failure status becomes [`ClientError::Api`] (or
    /// `Unexpected` without an error body). The response body is left
    /// unread for the caller.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<Response<Incoming>> {
        self.send_with(method, path, body, content_type, &[]).await
    }

    /// [`Client::send`] with extra request headers (`X-Registry-Auth`).
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
        extra: &[(&'static str, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut req = self.build(method, path, body, content_type);
        for (name, value) in extra {
            req.headers_mut().insert(*name, value.clone());
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http {
                host: self.host_str(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_from(resp, &what).await)
    }

    async fn error_from(&self, resp: Response<Incoming>, what: &str) -> ClientError {
        let status = resp.status();
        let bytes = match Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(mut e) => {
                if e.code == ErrorCode::Unauthorized && matches!(self.inner.host, Host::Tcp(_)) {
                    let hint = if self.inner.token.is_some() {
                        "the token was refused: check MVM_TOKEN or --token-file"
                    } else {
                        "this address needs a token: set MVM_TOKEN or pass --token-file"
                    };
                    e.message = format!("{} ({hint})", e.message);
                }
                ClientError::Api(e)
            }
            Err(_) => ClientError::Unexpected {
                host: self.host_str(),
                what: what.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                    .trim()
                    .to_string(),
            },
        }
    }

    /// Send a request with a JSON body (or none) and decode a JSON answer.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let resp = self.send_json(method, path, body).await?;
        let bytes = read_limited(resp.into_body(), MAX_JSON_BODY, &what, &self.host_str()).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what,
            why: e.to_string(),
        })
    }

    /// Send a request with a JSON body (or none); ignore the answer's body.
    pub async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<()> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let resp = self.send_json(method, path, body).await?;
        read_limited(resp.into_body(), MAX_JSON_BODY, &what, &self.host_str()).await?;
        Ok(())
    }

    async fn send_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response<Incoming>> {
        match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).map_err(|e| ClientError::Decode {
                    what: format!("{method} {path} (request)"),
                    why: e.to_string(),
                })?;
                self.send(method, path, Body::full(bytes), Some("application/json"))
                    .await
            }
            None => self.send(method, path, Body::empty(), None).await,
        }
    }

    /// Send a request and read its answer as an NDJSON stream of `T`.
    pub async fn ndjson<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<NdjsonStream<T>> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let resp = self.send(method, path, body, content_type).await?;
        Ok(NdjsonStream::new(resp.into_body(), what, self.host_str()))
    }

    /// Switch the connection to a bidirectional stream (attach, exec).
    pub async fn upgrade(&self, method: Method, path: &str) -> Result<Upgraded> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut req = self.build(method, path, Body::empty(), None);
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        req.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http {
                host: self.host_str(),
                source,
            })?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            if !resp.status().is_success() {
                return Err(self.error_from(resp, &what).await);
            }
            return Err(ClientError::NoUpgrade {
                what,
                status: resp.status().as_u16(),
            });
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|source| ClientError::Http {
                host: self.host_str(),
                source,
            })?;
        Ok(TokioIo::new(up))
    }
}

/// Read a whole body, refusing more than `limit` bytes.
pub async fn read_limited(body: Incoming, limit: usize, what: &str, host: &str) -> Result<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(source) => Err(ClientError::Http {
                host: host.to_string(),
                source: *source,
            }),
            Err(e) => Err(ClientError::Decode {
                what: what.to_string(),
                why: e.to_string(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(
            Host::parse("unix:///run/mvm/mvmd.sock").unwrap(),
            Host::default_unix()
        );
        assert_eq!(
            Host::parse("/tmp/x.sock").unwrap(),
            Host::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Host::parse("tcp://127.0.0.1:2375").unwrap(),
            Host::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            Host::parse("tcp://[::1]:2375/").unwrap(),
            Host::Tcp("[::1]:2375".into())
        );
        for bad in [
            "unix://relative",
            "tcp://host",
            "tcp://:80",
            "tcp://h:0",
            "tcp://h:99999",
            "http://x:1",
            "x",
            "tcp://h:1/p",
        ] {
            let e = Host::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid daemon address"), "{bad}: {e}");
        }
        assert_eq!(Host::Tcp("h:1".into()).to_string(), "tcp://h:1");
        assert_eq!(
            Host::default_unix().to_string(),
            "unix:///run/mvm/mvmd.sock"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new(Host::Tcp("h:1".into()), Some("s3cret".into()));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
