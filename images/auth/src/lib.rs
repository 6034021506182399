//! Registry credentials, kept the way Docker keeps them.
//!
//! Credentials belong to the user, not to the daemon: `mvctl` reads and
//! writes them here and sends them with each pull or push (`X-Registry-Auth`,
//! `mvm_api::auth`); `mvmd` only checks them against registries and never
//! writes them anywhere.
//!
//! # Files
//! Both are Docker's `config.json` format, so users and tools already know
//! them: `{"auths": {"HOST": {"auth": base64("user:password")}},
//! "credsStore": "NAME", "credHelpers": {"HOST": "NAME"}}`.
//! - mvm's own file, `$MVM_CONFIG/auth.json`, else `~/.config/mvm/auth.json`
//!   (mode 0600 in a 0700 directory): where `mvctl login` writes.
//! - Docker's, `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`:
//!   read, so that a machine where `docker login` was run needs no second
//!   login; never written.
//!
//! # Credential helpers
//! As in Docker, a file's `credHelpers` entry for a registry, else its
//! `credsStore`, names a helper `docker-credential-NAME` (found on `PATH`)
//! that keeps the secret instead of the file: `get`, `store` and `erase`
//! speak Docker's helper protocol ([`helper`]). A helper configured in
//! Docker's file is used for `login`/`logout` too (the secret goes where
//! Docker would put it; Docker's file itself stays untouched).
//!
//! Lookup order for a registry: mvm's file (its helper for the registry,
//! then its `auths`), then Docker's (the same). The first that has
//! credentials wins; a helper that fails or a corrupt Docker file is a
//! warning, not an error, so that anonymous pulls keep working.
//!
//! Docker Hub is keyed `https://index.docker.io/v1/` as Docker does;
//! lookups accept any of its aliases and keys written with a scheme.
//!
//! # Why a crate of its own
//! `mvctl` must read and write these files and run helpers, but must not
//! link `mvm-images`, whose registry client pulls in reqwest, rustls and
//! tokio; `mvm-api` holds the wire types only and has no business with
//! files and processes. So this small crate (serde, base64, libc) is
//! shared: `mvctl` uses it for `login`/`logout` and to find what to send,
//! `mvm-images` re-exports it for library users and its own tests.

mod file;
pub mod helper;

use std::fmt;
use std::io;
use std::path::PathBuf;

use base64::Engine as _;

pub use file::{AuthFile, Found, Lookup, Removal, Source};
pub use helper::HelperError;

/// Environment variable naming mvm's configuration directory.
pub const CONFIG_ENV: &str = "MVM_CONFIG";
/// Environment variable naming Docker's configuration directory.
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";
/// The key Docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// The user name a credential helper returns for an identity token.
pub const TOKEN_USERNAME: &str = "<token>";

/// Errors from reading or writing credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read or written.
    #[error("{op} credentials file {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("credentials file {} is corrupt ({reason}); fix it or remove it and log in again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An entry's `auth` value is not base64 of `user:password`.
    #[error("credentials for {host} in {} are malformed ({reason}); log in again", path.display())]
    BadEntry {
        /// The registry.
        host: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No home directory to put the default file in.
    #[error("cannot find a place for the credentials file: set {CONFIG_ENV} or HOME")]
    NoHome,
    /// A username or password that cannot be stored or sent.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// A credential helper failed.
    #[error(transparent)]
    Helper(#[from] HelperError),
}

type Result<T, E = CredentialsError> = std::result::Result<T, E>;

/// A user name and password, or an identity token (an OAuth2 refresh
/// token that a registry's token server exchanges for access tokens; the
/// password is empty then).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The user name (may be empty with an identity token).
    pub username: String,
    /// The password or access token.
    pub password: String,
    /// An identity token, used instead of the password.
    pub identity_token: Option<String>,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
            identity_token: None,
        }
    }

    /// Credentials that are an identity token.
    pub fn with_identity_token(username: impl Into<String>, token: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: String::new(),
            identity_token: Some(token.into()),
        }
    }

    /// The identity token, if these credentials are one.
    pub fn token(&self) -> Option<&str> {
        self.identity_token.as_deref().filter(|t| !t.is_empty())
    }

    /// Checks what Docker's format can carry: a user name without ':'
    /// (the separator), a password or an identity token, and no control
    /// characters, which would also be refused in an HTTP header.
    pub fn validate(&self) -> Result<()> {
        if self.token().is_none() {
            if self.username.is_empty() {
                return Err(CredentialsError::Invalid("the user name is empty"));
            }
            if self.password.is_empty() {
                return Err(CredentialsError::Invalid("the password is empty"));
            }
        }
        if self.username.contains(':') {
            return Err(CredentialsError::Invalid("the user name contains ':'"));
        }
        if self
            .username
            .chars()
            .chain(self.password.chars())
            .chain(self.identity_token.iter().flat_map(|t| t.chars()))
            .any(char::is_control)
        {
            return Err(CredentialsError::Invalid(
                "user name, password or token contains control characters",
            ));
        }
        Ok(())
    }

    /// base64 of `user:password`, Docker's `auth` field.
    pub fn encode_auth(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    /// Parses Docker's `auth` field.
    pub fn decode_auth(auth: &str) -> std::result::Result<Self, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auth is not base64: {e}"))?;
        let s = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| "auth has no ':' between user and password".to_string())?;
        Ok(Credentials::new(u, p))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The key a registry's credentials are stored under: Docker Hub's
/// historical URL for Docker Hub, the bare `host[:port]` otherwise (what
/// Docker passes to credential helpers, too).
pub fn registry_key(host: &str) -> String {
    let h = normalize_key(host);
    if is_docker_hub(&h) {
        DOCKER_HUB_KEY.to_string()
    } else {
        h
    }
}

/// `https://host:5000/v1/` -> `host:5000`; lowercase.
fn normalize_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let k = k.split('/').next().unwrap_or(k);
    k.to_ascii_lowercase()
}

fn is_docker_hub(normalized: &str) -> bool {
    matches!(
        normalized,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

/// True if `a` and `b` name the same registry (`https://h:1/v1/` and
/// `h:1`; Docker Hub's aliases). An empty name matches nothing.
pub fn same_registry(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_key(a), normalize_key(b));
    !a.is_empty() && (a == b || (is_docker_hub(&a) && is_docker_hub(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unstorable_credentials() {
        for c in [
            Credentials::new("", "p"),
            Credentials::new("a:b", "p"),
            Credentials::new("u", ""),
            Credentials::new("u", "p\nq"),
            Credentials::with_identity_token("u", "t\r"),
            Credentials::with_identity_token("", ""),
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(Credentials::with_identity_token("", "tok")
            .validate()
            .is_ok());
        let dbg = format!(
            "{:?}",
            Credentials {
                identity_token: Some("sekrit".into()),
                ..Credentials::new("u", "hunter2")
            }
        );
        assert!(!dbg.contains("hunter2") && !dbg.contains("sekrit"), "{dbg}");
    }

    #[test]
    fn keys() {
        assert_eq!(registry_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(registry_key("registry-1.docker.io"), DOCKER_HUB_KEY);
        assert_eq!(registry_key("LocalHost:5000"), "localhost:5000");
        assert!(same_registry("https://index.docker.io/v1/", "docker.io"));
        assert!(same_registry("http://h:1/", "h:1"));
        assert!(!same_registry("h:1", "h:2"));
        assert!(!same_registry("", ""));
    }

    #[test]
    fn auth_field_round_trip() {
        let c = Credentials::new("alice", "s3cr:et");
        assert_eq!(Credentials::decode_auth(&c.encode_auth()).unwrap(), c);
        assert!(Credentials::decode_auth("!!!").is_err());
    }
}
