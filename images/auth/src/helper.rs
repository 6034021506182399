//! Docker's credential helper protocol: `docker-credential-NAME ACTION`,
//! found on `PATH`, with the request on stdin and the answer on stdout.
//!
//! | action | stdin | stdout |
//! | --- | --- | --- |
//! | `get` | the server (`127.0.0.1:5000`, `https://index.docker.io/v1/`) | `{"ServerURL", "Username", "Secret"}` |
//! | `store` | `{"ServerURL", "Username", "Secret"}` | nothing |
//! | `erase` | the server | nothing |
//!
//! A missing entry is a failed exit with `credentials not found in native
//! keychain` on stdout. `Username` `<token>` means `Secret` is an identity
//! token. A helper is someone else's program: its name is checked before
//! it is run, its output is bounded and it gets [`TIMEOUT`] to answer.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Credentials, TOKEN_USERNAME};

/// How long a helper may take (some ask the user to unlock a keychain).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest helper output read.
const MAX_OUTPUT: u64 = 1 << 20;
/// What helpers print for a missing entry.
const NOT_FOUND: &str = "credentials not found";

/// Errors of credential helpers.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The configured helper name cannot be a program name.
    #[error("invalid credential helper name {0:?} in the credentials file: expected letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    /// No such program on `PATH`.
    #[error("credential helper {program} is not installed (not found on PATH); install it or remove it from credsStore/credHelpers in the credentials file")]
    NotInstalled {
        /// `docker-credential-NAME`.
        program: String,
    },
    /// The helper failed.
    #[error("credential helper {program} {action} failed: {message}")]
    Failed {
        /// `docker-credential-NAME`.
        program: String,
        /// `get`, `store` or `erase`.
        action: &'static str,
        /// What it said (bounded, control characters removed).
        message: String,
    },
    /// The helper did not answer in time.
    #[error("credential helper {program} {action} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout {
        /// `docker-credential-NAME`.
        program: String,
        /// The action.
        action: &'static str,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// `docker-credential-NAME`, after checking `name`.
pub fn program(name: &str) -> Result<String, HelperError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if !ok {
        return Err(HelperError::InvalidName(name.chars().take(80).collect()));
    }
    Ok(format!("docker-credential-{name}"))
}

/// The credentials helper `name` keeps for `server`, `None` if it has none.
pub fn get(name: &str, server: &str) -> Result<Option<Credentials>, HelperError> {
    let program = program(name)?;
    let out = match run(&program, "get", server.as_bytes()) {
        Ok(out) => out,
        Err(HelperError::Failed { message, .. }) if message.contains(NOT_FOUND) => return Ok(None),
        Err(e) => return Err(e),
    };
    let e: Entry = serde_json::from_slice(&out).map_err(|e| HelperError::Failed {
        program: program.clone(),
        action: "get",
        message: format!("its answer is not the expected JSON ({e})"),
    })?;
    if e.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if e.username == TOKEN_USERNAME {
        Credentials::with_identity_token("", e.secret)
    } else {
        Credentials::new(e.username, e.secret)
    }))
}

/// Has helper `name` keep `creds` for `server`.
pub fn store(name: &str, server: &str, creds: &Credentials) -> Result<(), HelperError> {
    let program = program(name)?;
    let entry = match creds.token() {
        Some(t) => Entry {
            server_url: server.into(),
            username: TOKEN_USERNAME.into(),
            secret: t.into(),
        },
        None => Entry {
            server_url: server.into(),
            username: creds.username.clone(),
            secret: creds.password.clone(),
        },
    };
    let input = serde_json::to_vec(&entry).unwrap_or_default();
    run(&program, "store", &input).map(|_| ())
}

/// Has helper `name` forget `server`; false if it had nothing.
pub fn erase(name: &str, server: &str) -> Result<bool, HelperError> {
    let program = program(name)?;
    match run(&program, "erase", server.as_bytes()) {
        Ok(_) => Ok(true),
        Err(HelperError::Failed { message, .. }) if message.contains(NOT_FOUND) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `program action` with `input` on stdin; its stdout on success.
fn run(program: &str, action: &'static str, input: &[u8]) -> Result<Vec<u8>, HelperError> {
    let failed = |message: String| HelperError::Failed {
        program: program.to_string(),
        action,
        message,
    };
    let mut child = match Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HelperError::NotInstalled {
                program: program.to_string(),
            })
        }
        Err(e) => return Err(failed(format!("cannot start it: {e}"))),
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE: its exit
        // status says what happened.
        let _ = stdin.write_all(input);
    }
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Timeout {
                    program: program.to_string(),
                    action,
                });
            }
            Err(e) => return Err(failed(format!("waiting for it failed: {e}"))),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let said = [&stdout[..], &stderr[..]]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let clean: String = said
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    Err(failed(if clean.is_empty() {
        format!("it exited with {status}")
    } else {
        clean
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Mutex;

    /// Tests that change `PATH` run one at a time.
    pub(crate) static PATH_LOCK: Mutex<()> = Mutex::new(());

    /// Writes a fake `docker-credential-test` into `dir`, keeping its
    /// entries in `dir/store`, one `server user secret` line each.
    pub(crate) fn fake_helper(dir: &Path) {
        let script = format!(
            r#"#!/bin/sh
store="{store}"
touch "$store"
case "$1" in
get)
  server=$(cat)
  line=$(grep -F "$server " "$store" | head -n1)
  [ -n "$line" ] || {{ echo "credentials not found in native keychain"; exit 1; }}
  set -- $line
  printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}' "$1" "$2" "$3" ;;
store)
  json=$(cat)
  server=$(echo "$json" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/')
  user=$(echo "$json" | sed 's/.*"Username":"\([^"]*\)".*/\1/')
  secret=$(echo "$json" | sed 's/.*"Secret":"\([^"]*\)".*/\1/')
  grep -vF "$server " "$store" > "$store.new"; mv "$store.new" "$store"
  echo "$server $user $secret" >> "$store" ;;
erase)
  server=$(cat)
  grep -qF "$server " "$store" || {{ echo "credentials not found in native keychain"; exit 1; }}
  grep -vF "$server " "$store" > "$store.new"; mv "$store.new" "$store" ;;
*) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
            store = dir.join("store").display()
        );
        let p = dir.join("docker-credential-test");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Runs `f` with `dir` first on `PATH`.
    pub(crate) fn with_path<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
        let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut new = std::ffi::OsString::from(dir);
        new.push(":");
        new.push(&old);
        std::env::set_var("PATH", &new);
        let r = f();
        std::env::set_var("PATH", old);
        r
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(program("pass").unwrap(), "docker-credential-pass");
        assert!(program("ecr-login").is_ok());
        for bad in ["", "../x", "a/b", "-x", "a b", "x;rm"] {
            assert!(program(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn get_store_erase_through_a_helper() {
        let dir = tempfile::tempdir().unwrap();
        fake_helper(dir.path());
        with_path(dir.path(), || {
            assert_eq!(get("test", "h:1").unwrap(), None);
            store("test", "h:1", &Credentials::new("alice", "pw")).unwrap();
            assert_eq!(
                get("test", "h:1").unwrap(),
                Some(Credentials::new("alice", "pw"))
            );
            store("test", "t:1", &Credentials::with_identity_token("", "tok")).unwrap();
            assert_eq!(
                get("test", "t:1").unwrap(),
                Some(Credentials::with_identity_token("", "tok"))
            );
            assert!(erase("test", "h:1").unwrap());
            assert!(!erase("test", "h:1").unwrap());
            assert_eq!(get("test", "h:1").unwrap(), None);
            let e = get("absent-helper", "h:1").unwrap_err();
            assert!(e.to_string().contains("not installed"), "{e}");
        });
    }
}
