//! Credentials files (Docker's `config.json` format) and the helpers they
//! name.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{
    helper, normalize_key, registry_key, same_registry, Credentials, CredentialsError, Result,
    CONFIG_ENV, DOCKER_CONFIG_ENV,
};

/// Largest credentials file read. Real ones are a few KiB; the bound keeps
/// a wrong path (a disk image, /dev/zero) from exhausting memory.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// Where credentials were found or put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `auths` of a file.
    File(PathBuf),
    /// A credential helper, configured in a file.
    Helper {
        /// The helper's name (`docker-credential-NAME`).
        name: String,
        /// The file that configures it.
        config: PathBuf,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Helper { name, config } => write!(
                f,
                "credential helper docker-credential-{name} (configured in {})",
                config.display()
            ),
        }
    }
}

/// Credentials and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The credentials.
    pub credentials: Credentials,
    /// Their source.
    pub source: Source,
}

/// The result of a lookup: credentials if any source had some, and what
/// went wrong on the way (a helper that failed, a corrupt Docker file),
/// for the caller to show.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The credentials.
    pub found: Option<Found>,
    /// Problems that were skipped.
    pub warnings: Vec<String>,
}

/// What `remove` did.
#[derive(Debug, Clone, Default)]
pub struct Removal {
    /// Where credentials were removed from.
    pub removed: Vec<Source>,
    /// Credentials for the registry that remain (in Docker's file, which
    /// is never written), if any.
    pub remaining: Option<Source>,
    /// Problems that were skipped.
    pub warnings: Vec<String>,
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

    /// The read-only fallbacks.
    pub fn fallbacks(&self) -> &[PathBuf] {
        &self.fallbacks
    }

    /// The credentials for `host` (`localhost:5000`, `docker.io`, ...),
    /// dropping warnings. A corrupt main file is an error.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        Ok(self.lookup(host)?.found.map(|f| f.credentials))
    }

    /// The credentials for `host` and where they are: the main file (its
    /// helper for `host`, then its `auths`), then the fallbacks. A corrupt
    /// main file is an error; a corrupt fallback (not ours) or a failing
    /// helper is a warning.
    pub fn lookup(&self, host: &str) -> Result<Lookup> {
        let mut out = Lookup::default();
        for (i, path) in self.files().enumerate() {
            let doc = match read_doc(path) {
                Ok(d) => d,
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    out.warnings.push(format!("ignoring {e}"));
                    continue;
                }
            };
            let Some(doc) = doc else { continue };
            if let Some(name) = helper_for(&doc, host) {
                match helper::get(&name, &registry_key(host)) {
                    Ok(Some(c)) => {
                        out.found = Some(Found {
                            credentials: c,
                            source: Source::Helper {
                                name,
                                config: path.clone(),
                            },
                        });
                        return Ok(out);
                    }
                    Ok(None) => {}
                    Err(e) => out.warnings.push(e.to_string()),
                }
            }
            match auths_entry(&doc, path, host) {
                Ok(Some(c)) => {
                    out.found = Some(Found {
                        credentials: c,
                        source: Source::File(path.clone()),
                    });
                    return Ok(out);
                }
                Ok(None) => {}
                Err(e) if i == 0 => return Err(e),
                Err(e) => out.warnings.push(format!("ignoring {e}")),
            }
        }
        Ok(out)
    }

    /// Saves credentials for `host` where Docker would: with the helper
    /// the main file, else a fallback, configures for `host` (Docker's file
    /// itself is not written), else in the main file (created with mode
    /// 0600 in a 0700 directory), keeping every other entry and key.
    pub fn store(&self, host: &str, creds: &Credentials) -> Result<Source> {
        creds.validate()?;
        if let Some((name, config)) = self.configured_helper(host)? {
            helper::store(&name, &registry_key(host), creds)?;
            // The main file must not keep older secrets for the registry
            // that would be found before the helper's.
            if config != self.path && self.path.exists() {
                self.update(|auths| remove_entries(auths, host))?;
            }
            return Ok(Source::Helper { name, config });
        }
        self.update(|auths| {
            remove_entries(auths, host);
            let mut entry = Map::new();
            entry.insert("auth".into(), Value::String(creds.encode_auth()));
            if let Some(t) = creds.token() {
                entry.insert("identitytoken".into(), Value::String(t.into()));
            }
            auths.insert(registry_key(host), Value::Object(entry));
            true
        })?;
        Ok(Source::File(self.path.clone()))
    }

    /// Removes the credentials for `host`: from the main file, and from the
    /// helper configured for `host` (as `docker logout` does). Fallback
    /// files are never modified; credentials left there are reported.
    pub fn remove(&self, host: &str) -> Result<Removal> {
        let mut out = Removal::default();
        if self.path.exists() && self.update(|auths| remove_entries(auths, host))? {
            out.removed.push(Source::File(self.path.clone()));
        }
        match self.configured_helper(host) {
            Ok(Some((name, config))) => match helper::erase(&name, &registry_key(host)) {
                Ok(true) => out.removed.push(Source::Helper { name, config }),
                Ok(false) => {}
                Err(e) => out.warnings.push(e.to_string()),
            },
            Ok(None) => {}
            Err(e) => out.warnings.push(e.to_string()),
        }
        let rest = self.lookup(host)?;
        out.warnings.extend(rest.warnings);
        out.remaining = rest.found.map(|f| f.source);
        Ok(out)
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.path).chain(self.fallbacks.iter())
    }

    /// The helper the first file that configures one names for `host`.
    fn configured_helper(&self, host: &str) -> Result<Option<(String, PathBuf)>> {
        for (i, path) in self.files().enumerate() {
            match read_doc(path) {
                Ok(Some(doc)) => {
                    if let Some(name) = helper_for(&doc, host) {
                        helper::program(&name)?;
                        return Ok(Some((name, path.clone())));
                    }
                }
                Ok(None) => {}
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(None)
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
        let _lock = lock(&lock_path).map_err(io_err("locking", &lock_path))?;
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

/// Drops every `auths` key naming `host`; true if there was one.
fn remove_entries(auths: &mut Map<String, Value>, host: &str) -> bool {
    let before = auths.len();
    auths.retain(|k, _| !same_registry(k, host));
    auths.len() != before
}

/// The helper a document names for `host`: its `credHelpers` entry, else
/// its `credsStore`.
fn helper_for(doc: &Value, host: &str) -> Option<String> {
    let named = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(Value::Object(helpers)) = doc.get("credHelpers") {
        let mut entries: Vec<(&String, &Value)> = helpers
            .iter()
            .filter(|(k, _)| same_registry(k, host))
            .collect();
        entries.sort_by_key(|(k, _)| normalize_key(k) != normalize_key(host));
        if let Some(name) = entries.into_iter().find_map(|(_, v)| named(v)) {
            return Some(name);
        }
    }
    doc.get("credsStore").and_then(named)
}

/// Reads and parses a credentials file; `None` if it does not exist.
fn read_doc(path: &Path) -> Result<Option<Value>> {
    let f = match File::open(path) {
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
    let doc: Value = serde_json::from_slice(&buf).map_err(|e| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !doc.is_object() {
        return Err(CredentialsError::Corrupt {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object".into(),
        });
    }
    Ok(Some(doc))
}

/// The `auths` entry for `host` in one document.
fn auths_entry(doc: &Value, path: &Path, host: &str) -> Result<Option<Credentials>> {
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
        let text = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let mut creds = match (text("auth"), text("username"), text("password")) {
            (Some(auth), _, _) => Some(Credentials::decode_auth(auth).map_err(bad)?),
            (None, Some(u), Some(p)) => Some(Credentials::new(u, p)),
            _ => None,
        };
        if let Some(t) = text("identitytoken") {
            let username = creds.take().map(|c| c.username).unwrap_or_default();
            creds = Some(Credentials::with_identity_token(username, t));
        }
        if let Some(c) = creds.filter(|c| c.validate().is_ok()) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// An exclusive `flock` on `path`, held while the file lives.
fn lock(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    loop {
        // SAFETY: flock on a file descriptor owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Atomic write with mode 0600 (temp file, fsync, rename, fsync dir).
fn write_private(dest: &Path, data: &[u8]) -> io::Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".auth.{}.{nanos}.tmp", std::process::id()));
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
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::tests::{fake_helper, with_path};
    use crate::DOCKER_HUB_KEY;
    use base64::Engine as _;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn store_get_remove_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/auth.json");
        let f = AuthFile::at(&path);
        assert_eq!(f.get("localhost:5000").unwrap(), None);
        assert_eq!(
            f.store("localhost:5000", &Credentials::new("alice", "s3cr:et"))
                .unwrap(),
            Source::File(path.clone())
        );
        f.store("docker.io", &Credentials::new("bob", "pw"))
            .unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let dmd = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmd.permissions().mode() & 0o777, 0o700);
        // Docker's exact format.
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["auths"]["localhost:5000"]["auth"], b64("alice:s3cr:et"));
        assert!(doc["auths"][DOCKER_HUB_KEY]["auth"].is_string());
        assert_eq!(
            f.get("localhost:5000").unwrap(),
            Some(Credentials::new("alice", "s3cr:et"))
        );
        assert_eq!(f.get("index.docker.io").unwrap().unwrap().username, "bob");
        let r = f.remove("localhost:5000").unwrap();
        assert_eq!(r.removed, [Source::File(path.clone())]);
        assert!(f.remove("localhost:5000").unwrap().removed.is_empty());
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
        let enc = b64("dock:er");
        fs::write(
            &docker,
            format!(r#"{{"auths":{{"https://registry.example:5000/v1/":{{"auth":"{enc}"}}}}}}"#),
        )
        .unwrap();
        let f = AuthFile::at(&main).with_fallback(&docker);
        let l = f.lookup("registry.example:5000").unwrap();
        let found = l.found.unwrap();
        assert_eq!(found.credentials, Credentials::new("dock", "er"));
        assert_eq!(found.source, Source::File(docker.clone()));
        f.store("registry.example:5000", &Credentials::new("me", "pw"))
            .unwrap();
        assert_eq!(
            f.get("registry.example:5000").unwrap().unwrap().username,
            "me"
        );
        let doc: Value = serde_json::from_slice(&fs::read(&main).unwrap()).unwrap();
        assert_eq!(doc["psFormat"], "table");
        assert_eq!(doc["auths"]["other.example"]["auth"], "eDp5");
        // The fallback is never written; what is left there is reported.
        let r = f.remove("registry.example:5000").unwrap();
        assert_eq!(r.removed, [Source::File(main.clone())]);
        assert_eq!(r.remaining, Some(Source::File(docker.clone())));
        assert!(fs::read_to_string(&docker).unwrap().contains(&enc));
    }

    #[test]
    fn identity_tokens_are_read_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        fs::write(
            &p,
            format!(
                r#"{{"auths":{{"r.example":{{"auth":"{}","identitytoken":"refresh"}}}}}}"#,
                b64("00000000-0000:")
            ),
        )
        .unwrap();
        let f = AuthFile::at(&p);
        let c = f.get("r.example").unwrap().unwrap();
        assert_eq!(c.token(), Some("refresh"));
        assert_eq!(c.username, "00000000-0000");
        f.store("s.example", &Credentials::with_identity_token("u", "t2"))
            .unwrap();
        assert_eq!(f.get("s.example").unwrap().unwrap().token(), Some("t2"));
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
        fs::write(
            &p,
            format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nouser")),
        )
        .unwrap();
        assert!(f.get("h").is_err());
        fs::write(&p, br#"{"auths":[]}"#).unwrap();
        assert!(f.get("h").is_err());
        fs::write(&p, br#"[1]"#).unwrap();
        assert!(f.get("h").is_err());
        fs::write(&p, vec![b' '; (MAX_FILE_SIZE + 10) as usize]).unwrap();
        assert!(f.get("h").unwrap_err().to_string().contains("larger"));
        // A corrupt fallback is skipped with a warning, not fatal.
        let good = dir.path().join("none.json");
        let f = AuthFile::at(&good).with_fallback(&p);
        let l = f.lookup("h").unwrap();
        assert!(l.found.is_none());
        assert!(l.warnings[0].contains("larger"), "{:?}", l.warnings);
    }

    #[test]
    fn helpers_of_docker_config_are_used_for_get_store_and_erase() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(dir.path());
        let main = dir.path().join("mvm/auth.json");
        let docker = dir.path().join("config.json");
        fs::write(
            &docker,
            r#"{"auths":{},"credHelpers":{"127.0.0.1:5000":"test"},"credsStore":"absent-helper"}"#,
        )
        .unwrap();
        let f = AuthFile::at(&main).with_fallback(&docker);
        with_path(dir.path(), || {
            assert!(f.lookup("127.0.0.1:5000").unwrap().found.is_none());
            let src = f
                .store("127.0.0.1:5000", &Credentials::new("alice", "pw"))
                .unwrap();
            assert_eq!(
                src,
                Source::Helper {
                    name: "test".into(),
                    config: docker.clone()
                }
            );
            // The secret went to the helper: neither file holds it.
            assert!(!main.exists());
            assert!(!fs::read_to_string(&docker).unwrap().contains("alice"));
            assert!(fs::read_to_string(dir.path().join("store"))
                .unwrap()
                .contains("127.0.0.1:5000 alice pw"));
            let l = f.lookup("127.0.0.1:5000").unwrap();
            assert_eq!(
                l.found.unwrap().credentials,
                Credentials::new("alice", "pw")
            );
            // credsStore applies to every other registry; a missing helper
            // is a warning and the lookup goes on.
            let l = f.lookup("other:1").unwrap();
            assert!(l.found.is_none());
            assert!(
                l.warnings[0].contains("docker-credential-absent-helper is not installed"),
                "{:?}",
                l.warnings
            );
            let r = f.remove("127.0.0.1:5000").unwrap();
            assert_eq!(r.removed.len(), 1, "{r:?}");
            assert!(r.remaining.is_none());
            assert!(f.lookup("127.0.0.1:5000").unwrap().found.is_none());
        });
    }

    #[test]
    fn bad_helper_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        fs::write(&p, r#"{"credsStore":"../../bin/sh"}"#).unwrap();
        let f = AuthFile::at(&p);
        let e = f.store("h:1", &Credentials::new("u", "p")).unwrap_err();
        assert!(e.to_string().contains("invalid credential helper"), "{e}");
        let l = f.lookup("h:1").unwrap();
        assert!(l.found.is_none() && !l.warnings.is_empty());
    }
}
