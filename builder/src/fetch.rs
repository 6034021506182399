//! `ADD <url>`: downloads a remote file for the build, with Docker's
//! semantics.
//!
//! The file is stored as downloaded (never extracted, even when it is an
//! archive), mode 0600 unless `--chmod` says otherwise, with its mtime from
//! the `Last-Modified` header when the server sends one. The content is
//! hashed while it is written, and that hash goes into the step's cache
//! key: the URL alone says nothing about what it serves today.
//!
//! Everything from the network is hostile: the body is streamed to a file
//! (never held in memory), a body shorter than its `Content-Length` is an
//! error, and a body larger than [`MAX_DOWNLOAD`] is refused.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mvm_images::digest::Hasher;
use mvm_images::Digest;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence while reading the response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest file `ADD <url>` downloads (the same order as a layer blob).
pub const MAX_DOWNLOAD: u64 = 16 << 30;

/// Why a download failed. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an http(s) URL we can fetch.
    #[error("ADD {url}: {reason}")]
    Url {
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with a status other than 2xx.
    #[error("ADD {url}: the server answered {status}; check the URL (the file must be downloadable without credentials)")]
    Status {
        /// The URL.
        url: String,
        /// Status code and reason.
        status: String,
    },
    /// Connecting, sending or reading failed.
    #[error("ADD {url}: {detail}")]
    Network {
        /// The URL.
        url: String,
        /// The error chain.
        detail: String,
    },
    /// The body is larger than allowed or shorter than announced.
    #[error("ADD {url}: {detail}")]
    Body {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// `--checksum` did not match.
    #[error("ADD {url}: the download's digest is {actual}, but --checksum expects {expected}")]
    Checksum {
        /// The URL.
        url: String,
        /// Expected digest.
        expected: String,
        /// Digest of what was downloaded.
        actual: Digest,
    },
    /// Writing the local copy failed.
    #[error("ADD {url}: writing {}: {source}", path.display())]
    Io {
        /// The URL.
        url: String,
        /// The local file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A downloaded file.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// sha256 of its content.
    pub digest: Digest,
    /// Seconds since the epoch from `Last-Modified`, if sent and valid.
    pub last_modified: Option<u64>,
}

/// True if `src` is an ADD source to download rather than a context path.
pub fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// The file name an `ADD <url> dir/` gives: the URL path's last component,
/// percent-decoded. `None` when the URL has no usable one (`/`, `..`, or a
/// name holding a slash or NUL once decoded).
pub fn file_name(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?;
    let decoded = percent_decode(last)?;
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\0']) {
        return None;
    }
    Some(decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Makes ring the process's rustls crypto provider (reqwest is built
/// without one, as in `mvm-images`); a provider installed earlier by the
/// embedding program is kept.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Downloads `url` to `dest` (created or truncated), verifying
/// `checksum` (`sha256:<hex>`) when given.
///
/// Blocking: it runs on the builder's thread (the daemon runs builds on a
/// blocking thread, never on its async executor).
pub fn fetch(url: &str, dest: &Path, checksum: Option<&str>) -> Result<Fetched, FetchError> {
    let url_err = |reason: &str| FetchError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| url_err(&format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(url_err("only http:// and https:// URLs can be fetched"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(url_err(
            "credentials in the URL are not supported (they would be stored in the image history)",
        ));
    }
    let expected =
        match checksum {
            None => None,
            Some(c) => Some(c.parse::<Digest>().map_err(|e| {
                url_err(&format!("--checksum={c}: {e}; use sha256:<64 hex digits>"))
            })?),
        };
    install_crypto_provider();
    let net = |e: reqwest::Error| FetchError::Network {
        url: url.to_string(),
        detail: chain(&e),
    };
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("mvm-build/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        // Per wait in the blocking client (the answer's headers, then each
        // read), not a limit on the whole download.
        .timeout(READ_TIMEOUT)
        .build()
        .map_err(net)?;
    let mut resp = client.get(parsed).send().map_err(net)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: status.to_string(),
        });
    }
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > MAX_DOWNLOAD) {
        return Err(FetchError::Body {
            url: url.to_string(),
            detail: format!(
                "the server announces {} bytes, more than the {MAX_DOWNLOAD} ADD downloads",
                announced.unwrap_or(0)
            ),
        });
    }
    let last_modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let io_err = |source| FetchError::Io {
        url: url.to_string(),
        path: dest.to_path_buf(),
        source,
    };
    let mut out = File::create(dest).map_err(io_err)?;
    let mut h = Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FetchError::Network {
                    url: url.to_string(),
                    detail: format!("reading the response after {size} bytes: {}", chain(&e)),
                })
            }
        };
        size += n as u64;
        if size > MAX_DOWNLOAD {
            return Err(FetchError::Body {
                url: url.to_string(),
                detail: format!(
                    "the response is larger than the {MAX_DOWNLOAD} bytes ADD downloads"
                ),
            });
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err)?;
    }
    if let Some(n) = announced {
        if size != n {
            return Err(FetchError::Body {
                url: url.to_string(),
                detail: format!("the response ended after {size} of the {n} bytes announced"),
            });
        }
    }
    out.flush().map_err(io_err)?;
    let digest = h.finish();
    if let Some(e) = expected {
        if e != digest {
            return Err(FetchError::Checksum {
                url: url.to_string(),
                expected: e.to_string(),
                actual: digest,
            });
        }
    }
    Ok(Fetched {
        path: dest.to_path_buf(),
        size,
        digest,
        last_modified,
    })
}

/// Seconds since the epoch now (the mtime of a download without
/// `Last-Modified`, as BuildKit leaves it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_urls() {
        assert_eq!(
            file_name("https://example.com/a/b/tool.tar.gz?x=1#f").as_deref(),
            Some("tool.tar.gz")
        );
        assert_eq!(
            file_name("http://h/dir/with%20space").as_deref(),
            Some("with space")
        );
        assert_eq!(file_name("http://h/"), None);
        assert_eq!(file_name("http://h/dir/"), None);
        assert_eq!(file_name("http://h/a/%2e%2e"), None);
        assert_eq!(file_name("http://h/a%2Fb"), None);
        assert_eq!(file_name("http://h/bad%zz"), None);
    }

    #[test]
    fn only_http_urls() {
        assert!(is_url("http://x/y") && is_url("https://x/y"));
        assert!(!is_url("ftp://x/y") && !is_url("./http://x"));
        let e = fetch(
            "http://user:pw@127.0.0.1:1/x",
            Path::new("/nonexistent"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("credentials"), "{e}");
    }
}
