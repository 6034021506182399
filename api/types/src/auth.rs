//! Registry credentials on the wire, as Docker's Engine API carries them.
//!
//! Credentials belong to the client: mvctl keeps them (the `mvm-auth`
//! crate: Docker's `config.json` format, credential helpers) and sends them
//! with each request that needs them; mvmd uses them for that request only
//! and never stores them.
//!
//! - `X-Registry-Auth` (pull, push): base64url (RFC 4648 section 5, with or
//!   without padding) of a JSON [`RegistryAuth`]:
//!   `{"username", "password", "serveraddress"}`, or
//!   `{"identitytoken", "serveraddress"}` for an identity token (an OAuth2
//!   refresh token the registry's token server hands out).
//! - `X-Registry-Config` (builds, which may pull from several registries):
//!   base64url of a JSON object mapping registry hosts to [`RegistryAuth`].
//!
//! An absent or empty header means anonymous access.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The header carrying one registry's credentials.
pub const REGISTRY_AUTH_HEADER: &str = "X-Registry-Auth";
/// The header carrying credentials for several registries.
pub const REGISTRY_CONFIG_HEADER: &str = "X-Registry-Config";
/// The longest header value accepted.
pub const MAX_HEADER_LEN: usize = 64 << 10;

/// Errors decoding a credentials header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub struct AuthHeaderError {
    /// Which header.
    pub header: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// One registry's credentials (Docker's `AuthConfig`; unknown fields such
/// as `email` are ignored).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Password or access token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// base64 of `username:password` (Docker's `auth`), used when
    /// `username` is empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    /// The registry the credentials are for (`127.0.0.1:5000`,
    /// `https://index.docker.io/v1/`); mvmd refuses to send them to
    /// another one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serveraddress: String,
    /// An identity token, used instead of the password.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identitytoken: String,
    /// A bearer token for the registry itself (Docker's `registrytoken`):
    /// not supported, refused when set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registrytoken: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("auth", &hidden(&self.auth))
            .field("serveraddress", &self.serveraddress)
            .field("identitytoken", &hidden(&self.identitytoken))
            .field("registrytoken", &hidden(&self.registrytoken))
            .finish()
    }
}

impl RegistryAuth {
    /// Credentials with a user name and password for `server`.
    pub fn password(server: &str, username: &str, password: &str) -> Self {
        RegistryAuth {
            username: username.into(),
            password: password.into(),
            serveraddress: server.into(),
            ..Default::default()
        }
    }

    /// An identity token for `server`.
    pub fn identity_token(server: &str, username: &str, token: &str) -> Self {
        RegistryAuth {
            username: username.into(),
            identitytoken: token.into(),
            serveraddress: server.into(),
            ..Default::default()
        }
    }

    /// The header value: base64url of the JSON, padded (as Docker's CLI
    /// sends it).
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    /// Decodes an `X-Registry-Auth` value; an empty value is anonymous.
    /// The result is [`RegistryAuth::normalized`].
    pub fn decode(value: &str) -> Result<RegistryAuth, AuthHeaderError> {
        let err = |reason: String| AuthHeaderError {
            header: REGISTRY_AUTH_HEADER,
            reason,
        };
        let Some(json) = decode_base64(value).map_err(err)? else {
            return Ok(RegistryAuth::default());
        };
        let v: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| err(format!("not JSON ({e})")))?;
        if !v.is_object() {
            return Err(err("not a JSON object".into()));
        }
        let a: RegistryAuth = serde_json::from_value(v)
            .map_err(|e| err(format!("not the JSON of registry credentials ({e})")))?;
        a.normalized().map_err(err)
    }

    /// True if there is nothing to authenticate with.
    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identitytoken.is_empty()
    }

    /// Checks the fields and resolves `auth` into `username` and
    /// `password`: no control characters (they would end up in HTTP
    /// headers), no `:` in the user name, a password or identity token
    /// with a user name, no `registrytoken`.
    pub fn normalized(mut self) -> Result<RegistryAuth, String> {
        if !self.registrytoken.is_empty() {
            return Err(
                "registrytoken is not supported: send a user name and password or an identitytoken"
                    .into(),
            );
        }
        if self.username.is_empty() && !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| "auth is not base64 of user:password".to_string())?;
            let s = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
            let (u, p) = s
                .split_once(':')
                .ok_or("auth has no ':' between user and password")?;
            self.username = u.to_string();
            self.password = p.to_string();
        }
        self.auth.clear();
        let fields = [
            &self.username,
            &self.password,
            &self.serveraddress,
            &self.identitytoken,
        ];
        if fields.iter().any(|f| f.chars().any(char::is_control)) {
            return Err("a field contains control characters".into());
        }
        if self.username.contains(':') {
            return Err("the user name contains ':'".into());
        }
        if self.identitytoken.is_empty() && self.username.is_empty() != self.password.is_empty() {
            return Err("a user name needs a password, and a password a user name".into());
        }
        Ok(self)
    }
}

/// `X-Registry-Config`: credentials by registry host.
pub type RegistryConfig = BTreeMap<String, RegistryAuth>;

/// Encodes an `X-Registry-Config` value.
pub fn encode_config(config: &RegistryConfig) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE.encode(json)
}

/// Decodes an `X-Registry-Config` value (entries normalised as in
/// [`RegistryAuth::decode`]); an empty value is an empty map.
pub fn decode_config(value: &str) -> Result<RegistryConfig, AuthHeaderError> {
    let err = |reason: String| AuthHeaderError {
        header: REGISTRY_CONFIG_HEADER,
        reason,
    };
    let Some(json) = decode_base64(value).map_err(err)? else {
        return Ok(RegistryConfig::new());
    };
    let v: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| err(format!("not JSON ({e})")))?;
    let entries_are_objects = v
        .as_object()
        .is_some_and(|m| m.values().all(serde_json::Value::is_object));
    if !entries_are_objects {
        return Err(err(
            "not a JSON object of registry credentials objects".into()
        ));
    }
    let map: RegistryConfig = serde_json::from_value(v)
        .map_err(|e| err(format!("not a JSON object of registry credentials ({e})")))?;
    map.into_iter()
        .map(|(k, v)| {
            let v = v
                .normalized()
                .map_err(|r| err(format!("entry {k:?}: {r}")))?;
            Ok((k, v))
        })
        .collect()
}

/// base64url (or standard base64, which some clients send), padding
/// optional; `None` for an empty value.
fn decode_base64(value: &str) -> Result<Option<Vec<u8>>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > MAX_HEADER_LEN {
        return Err(format!("longer than {MAX_HEADER_LEN} bytes"));
    }
    let unpadded = v.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(unpadded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded))
        .map(Some)
        .map_err(|_| "not base64url".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_docker_forms() {
        let a = RegistryAuth::password("127.0.0.1:5000", "alice", "pa?ss>>word");
        let enc = a.encode();
        assert!(!enc.contains('+') && !enc.contains('/'), "{enc}");
        assert_eq!(RegistryAuth::decode(&enc).unwrap(), a);
        // Unpadded, standard alphabet, extra fields (email), `auth` form.
        let json = r#"{"auth":"YWxpY2U6cHc=","email":"a@b","serveraddress":"h:1"}"#;
        let std = base64::engine::general_purpose::STANDARD.encode(json);
        let d = RegistryAuth::decode(std.trim_end_matches('=')).unwrap();
        assert_eq!((d.username.as_str(), d.password.as_str()), ("alice", "pw"));
        assert!(d.auth.is_empty());
        let t = RegistryAuth::identity_token("h:1", "", "refresh");
        assert_eq!(RegistryAuth::decode(&t.encode()).unwrap(), t);
        assert!(RegistryAuth::decode("").unwrap().is_anonymous());
        assert!(RegistryAuth::decode(&RegistryAuth::default().encode())
            .unwrap()
            .is_anonymous());
    }

    #[test]
    fn hostile_headers_are_refused() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE.encode(s);
        for bad in [
            "%%%".to_string(),
            enc("not json"),
            enc("[]"),
            enc(r#"{"username":"a\nb","password":"p"}"#),
            enc(r#"{"username":"a:b","password":"p"}"#),
            enc(r#"{"username":"a"}"#),
            enc(r#"{"registrytoken":"x"}"#),
            enc(r#"{"auth":"!!"}"#),
            "A".repeat(MAX_HEADER_LEN + 4),
        ] {
            let e = RegistryAuth::decode(&bad).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid X-Registry-Auth header"),
                "{e}"
            );
        }
        assert!(!format!("{:?}", RegistryAuth::password("h", "u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn config_header() {
        let mut c = RegistryConfig::new();
        c.insert("h:1".into(), RegistryAuth::password("h:1", "u", "p"));
        assert_eq!(decode_config(&encode_config(&c)).unwrap(), c);
        assert!(decode_config("").unwrap().is_empty());
        let bad = base64::engine::general_purpose::URL_SAFE.encode(r#"{"h":{"username":"u"}}"#);
        assert!(decode_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("X-Registry-Config"));
    }
}
