//! Registry credentials, stored the way Docker stores them.
//!
//! The file is Docker's `config.json` format, so users and tools already
//! know it: `{"auths": {"HOST": {"auth": base64("user:password")}}}`.
//! mvm keeps its own file (`$MVM_CONFIG/auth.json`, else
//! `~/.config/mvm/auth.json`, mode 0600) and falls back to Docker's
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) for reading,
//! so a machine where `docker login` was run needs no second login.
//!
//! Credential helpers (`credsStore`, `credHelpers`) and identity tokens are
//! not supported; entries using them are ignored (a debug log says so) and
//! the user is asked to log in with mvm.
//!
//! Docker Hub is keyed `https://index.docker.io/v1/` as Docker does;
//! lookups accept any of its aliases and keys written with a scheme.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::fsutil::{self, FileLock};

/// Environment variable naming mvm's configuration directory.
pub const CONFIG_ENV: &str = "MVM_CONFIG";
/// Environment variable naming Docker's configuration directory.
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";
/// The key Docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Largest credentials file read. Real ones are a few KiB; the bound keeps
/// a wrong path (a disk image, /dev/zero) from exhausting memory.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// Errors from reading or writing a credentials file.
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
    /// A username or password that cannot be stored.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
}

type Result<T, E = CredentialsError> = std::result::Result<T, E>;

/// A username and password (or token used as a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Checks what Docker's format can carry: a user name without ':'
    /// (the separator) and no control characters, which would also be
    /// refused in an HTTP header.
    pub fn validate(&self) -> Result<()> {
        if self.username.is_empty() {
            return Err(CredentialsError::Invalid("the user name is empty"));
        }
        if self.username.contains(':') {
            return Err(CredentialsError::Invalid("the user name contains ':'"));
        }
        if self.password.is_empty() {
            return Err(CredentialsError::Invalid("the password is empty"));
        }
        if self
            .username
            .chars()
            .chain(self.password.chars())
            .any(char::is_control)
        {
            return Err(CredentialsError::Invalid(
                "user name or password contains control characters",
            ));
        }
        Ok(())
    }

    fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    fn decode(auth: &str) -> std::result::Result<Self, String> {
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
            .finish()
    }
}

/// The key a registry's credentials are stored under: Docker Hub's
/// historical URL for Docker Hub, the bare `host[:port]` otherwise.
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

fn same_registry(key: &str, host: &str) -> bool {
    let (a, b) = (normalize_key(key), normalize_key(host));
    a == b || (is_docker_hub(&a) && is_docker_hub(&b))
}

/// A credentials file, plus read-only fallbacks (Docker's).
#[derive(Debug, Clone)]
pub struct AuthFile {
    path: PathBuf,
    fallbacks: Vec<PathBuf>,
}

impl AuthFile {
    /// mvm's default file with Docker's as fallback, from the environment
    /// (`MVM_CONFIG`, `DOCKER_CONFIG`, `HOME`).
    pub fn default_location() -> Result<AuthFile> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = env("HOME");
        let path = match (env(CONFIG_ENV), &home) {
            (Some(dir), _) => dir.join("auth.json"),
            (None, Some(h)) => h.join(".config/mvm/auth.json"),
            (None, None) => return Err(CredentialsError::NoHome),
        };
        let docker = match (env(DOCKER_CONFIG_ENV), &home) {
            (Some(dir), _) => Some(dir.join("config.json")),
            (None, Some(h)) => Some(h.join(".docker/config.json")),
            (None, None) => None,
        };
        Ok(AuthFile {
            path,
            fallbacks: docker.into_iter().collect(),
        })
    }

    /// A specific file, without fallbacks.
    pub fn at(path: impl Into<PathBuf>) -> AuthFile {
        AuthFile {
            path: path.into(),
            fallbacks: Vec::new(),
        }
    }

    /// Adds a read-only fallback file, consulted when the main file has no
    /// entry for a registry.
    pub fn with_fallback(mut self, path: impl Into<PathBuf>) -> AuthFile {
        self.fallbacks.push(path.into());
        self
    }

    /// The file `store` writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials for `host` (`localhost:5000`, `docker.io`, ...):
    /// from the main file, else from the fallbacks. A corrupt main file is
    /// an error; a corrupt fallback (not ours) is logged and skipped.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(c) = lookup(&self.path, host)? {
            return Ok(Some(c));
        }
        for fb in &self.fallbacks {
            match lookup(fb, host) {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                Err(e) => tracing::warn!("ignoring fallback credentials: {e}"),
            }
        }
        Ok(None)
    }

    /// Saves credentials for `host` in the main file (created with mode
    /// 0600 in a 0700 directory), keeping every other entry and key.
    pub fn store(&self, host: &str, creds: &Credentials) -> Result<()> {
        creds.validate()?;
        self.update(|auths| {
            auths.retain(|k, _| !same_registry(k, host));
            let mut entry = Map::new();
            entry.insert("auth".into(), Value::String(creds.encode()));
            auths.insert(registry_key(host), Value::Object(entry));
            true
        })
        .map(|_| ())
    }

    /// Removes the credentials for `host` from the main file. Returns
    /// false if there were none (the fallbacks are never modified).
    pub fn remove(&self, host: &str) -> Result<bool> {
        if !self.path.exists() {
            return Ok(false);
        }
        self.update(|auths| {
            let before = auths.len();
            auths.retain(|k, _| !same_registry(k, host));
            auths.len() != before
        })
    }

    /// Read-modify-write of the `auths` object under a lock file, written
    /// atomically with mode 0600. `f` returns whether it changed anything.
    fn update(&self, f: impl FnOnce(&mut Map<String, Value>) -> bool) -> Result<bool> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialsError::Io { op, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating the directory of", &self.path))?;
        let lock_path = dir.join(format!(
            ".{}.lock",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "auth.json".into())
        ));
        let _lock = FileLock::acquire(&lock_path, true).map_err(io_err("locking", &lock_path))?;
        let mut doc = match read_doc(&self.path)? {
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(CredentialsError::Corrupt {
                    path: self.path.clone(),
                    reason: "the top level is not a JSON object".into(),
                })
            }
            None => Map::new(),
        };
        let auths = doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(auths) = auths else {
            return Err(CredentialsError::Corrupt {
                path: self.path.clone(),
                reason: "\"auths\" is not a JSON object".into(),
            });
        };
        if !f(auths) {
            return Ok(false);
        }
        let mut text = serde_json::to_vec_pretty(&Value::Object(doc))
            .map_err(|e| io_err("encoding", &self.path)(io::Error::other(e)))?;
        text.push(b'\n');
        write_private(&self.path, &text).map_err(io_err("writing", &self.path))?;
        Ok(true)
    }
}

/// Reads and parses a credentials file; `None` if it does not exist.
fn read_doc(path: &Path) -> Result<Option<Value>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Io {
                op: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|source| CredentialsError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(CredentialsError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_FILE_SIZE} bytes"),
        });
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| CredentialsError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Finds `host` in one file.
fn lookup(path: &Path, host: &str) -> Result<Option<Credentials>> {
    let Some(doc) = read_doc(path)? else {
        return Ok(None);
    };
    let Some(auths) = doc.get("auths") else {
        return Ok(None);
    };
    let Some(auths) = auths.as_object() else {
        return Err(CredentialsError::Corrupt {
            path: path.to_path_buf(),
            reason: "\"auths\" is not a JSON object".into(),
        });
    };
    // An exact key match wins over an alias (both may exist).
    let mut entries: Vec<(&String, &Value)> = auths
        .iter()
        .filter(|(k, _)| same_registry(k, host))
        .collect();
    entries.sort_by_key(|(k, _)| normalize_key(k) != normalize_key(host));
    for (key, entry) in entries {
        let bad = |reason: String| CredentialsError::BadEntry {
            host: key.clone(),
            path: path.to_path_buf(),
            reason,
        };
        if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            if !auth.is_empty() {
                let c = Credentials::decode(auth).map_err(bad)?;
                return Ok(Some(c));
            }
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            return Ok(Some(Credentials::new(u, p)));
        }
        if entry.get("identitytoken").is_some() {
            tracing::debug!(
                file = %path.display(),
                "credentials for {key} use an identity token, which mvm does not support; skipping"
            );
        }
    }
    if doc.get("credsStore").is_some() || doc.get("credHelpers").is_some() {
        tracing::debug!(
            file = %path.display(),
            "credential helpers are not supported; log in with mvm to store credentials for {host}"
        );
    }
    Ok(None)
}

/// Atomic write with mode 0600 (temp file, fsync, rename, fsync dir).
fn write_private(dest: &Path, data: &[u8]) -> io::Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".auth.{}.tmp", fsutil::random_id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen 0600, but a pre-set ACL default could;
        // state the mode explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        fsutil::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_get_remove_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/auth.json");
        let f = AuthFile::at(&path);
        assert_eq!(f.get("localhost:5000").unwrap(), None);
        f.store("localhost:5000", &Credentials::new("alice", "s3cr:et"))
            .unwrap();
        f.store("docker.io", &Credentials::new("bob", "pw"))
            .unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let dmd = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmd.permissions().mode() & 0o777, 0o700);
        // Docker's exact format.
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc["auths"]["localhost:5000"]["auth"],
            base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et")
        );
        assert!(doc["auths"][DOCKER_HUB_KEY]["auth"].is_string());
        assert_eq!(
            f.get("localhost:5000").unwrap(),
            Some(Credentials::new("alice", "s3cr:et"))
        );
        assert_eq!(
            f.get("index.docker.io").unwrap().unwrap().username,
            "bob".to_string()
        );
        assert!(f.remove("localhost:5000").unwrap());
        assert!(!f.remove("localhost:5000").unwrap());
        assert_eq!(f.get("localhost:5000").unwrap(), None);
        assert!(f.get("docker.io").unwrap().is_some());
    }

    #[test]
    fn keeps_foreign_keys_and_reads_docker_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("auth.json");
        fs::write(
            &main,
            r#"{"auths":{"other.example":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let docker = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("dock:er");
        fs::write(
            &docker,
            format!(r#"{{"auths":{{"https://registry.example:5000/v1/":{{"auth":"{b64}"}}}},"credsStore":"desktop"}}"#),
        )
        .unwrap();
        let f = AuthFile::at(&main).with_fallback(&docker);
        assert_eq!(
            f.get("registry.example:5000").unwrap(),
            Some(Credentials::new("dock", "er"))
        );
        f.store("registry.example:5000", &Credentials::new("me", "pw"))
            .unwrap();
        assert_eq!(
            f.get("registry.example:5000").unwrap().unwrap().username,
            "me"
        );
        let doc: Value = serde_json::from_slice(&fs::read(&main).unwrap()).unwrap();
        assert_eq!(doc["psFormat"], "table");
        assert_eq!(doc["auths"]["other.example"]["auth"], "eDp5");
        // The fallback is never written.
        assert!(fs::read_to_string(&docker).unwrap().contains(&b64));
    }

    #[test]
    fn hostile_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        let f = AuthFile::at(&p);
        fs::write(&p, b"{not json").unwrap();
        let e = f.get("h").unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(f.store("h", &Credentials::new("u", "p")).is_err());
        fs::write(&p, br#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap();
        let e = f.get("h").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let nocolon = base64::engine::general_purpose::STANDARD.encode("nouser");
        fs::write(&p, format!(r#"{{"auths":{{"h":{{"auth":"{nocolon}"}}}}}}"#)).unwrap();
        assert!(f.get("h").is_err());
        fs::write(&p, br#"{"auths":[]}"#).unwrap();
        assert!(f.get("h").is_err());
        fs::write(&p, vec![b' '; (MAX_FILE_SIZE + 10) as usize]).unwrap();
        assert!(f.get("h").unwrap_err().to_string().contains("larger"));
        // A corrupt fallback is skipped, not fatal.
        let good = dir.path().join("none.json");
        let f = AuthFile::at(&good).with_fallback(&p);
        assert_eq!(f.get("h").unwrap(), None);
    }

    #[test]
    fn rejects_unstorable_credentials() {
        for c in [
            Credentials::new("", "p"),
            Credentials::new("a:b", "p"),
            Credentials::new("u", ""),
            Credentials::new("u", "p\nq"),
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(!format!("{:?}", Credentials::new("u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn keys() {
        assert_eq!(registry_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(registry_key("registry-1.docker.io"), DOCKER_HUB_KEY);
        assert_eq!(registry_key("LocalHost:5000"), "localhost:5000");
        assert!(same_registry("https://index.docker.io/v1/", "docker.io"));
        assert!(same_registry("http://h:1/", "h:1"));
        assert!(!same_registry("h:1", "h:2"));
    }
}
