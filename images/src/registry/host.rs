//! Which registry to talk to, and whether plain HTTP is allowed.
//!
//! Plain HTTP exposes credentials and lets anyone on the path swap image
//! content (digests protect layers, but not the tag-to-manifest lookup).
//! So `--insecure` is honoured only for loopback registries (a local test
//! registry), or for hosts an administrator listed explicitly.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::reference::DEFAULT_DOMAIN;

/// Errors about registry host names and transport policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// Not a `host[:port]`.
    #[error("invalid registry host {0:?}: expected host[:port], e.g. localhost:5000 or registry.example.com")]
    Invalid(String),
    /// `--insecure` for a host that is neither loopback nor configured.
    #[error("--insecure (plain HTTP) is only allowed for loopback registries such as localhost:5000 or 127.0.0.1:5000; {0} is not one. Use HTTPS, or add {0} to the insecure registries in the configuration if you accept the risk")]
    InsecureNotAllowed(String),
}

/// A registry endpoint: the host users name and the URL the API is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// As users name it (`docker.io`, `localhost:5000`).
    name: String,
    /// Scheme and authority of the API (`https://registry-1.docker.io`).
    base: String,
    /// True if plain HTTP.
    plain_http: bool,
}

impl RegistryHost {
    /// Resolves `name` (a reference's domain, or what the user typed for
    /// login: `https://host/` and Docker Hub's aliases are accepted) and
    /// applies the transport policy: HTTPS unless `insecure` is asked for
    /// a loopback host, or the host is listed in `insecure_registries`.
    pub fn new(
        name: &str,
        insecure: bool,
        insecure_registries: &[String],
    ) -> Result<RegistryHost, HostError> {
        let name = normalize(name)?;
        let listed = insecure_registries
            .iter()
            .filter_map(|h| normalize(h).ok())
            .any(|h| h == name);
        if insecure && !listed && !is_loopback(&name) {
            return Err(HostError::InsecureNotAllowed(name));
        }
        let plain_http = insecure || listed;
        let api = if name == DEFAULT_DOMAIN {
            "registry-1.docker.io"
        } else {
            name.as_str()
        };
        let base = format!("{}://{api}", if plain_http { "http" } else { "https" });
        Ok(RegistryHost {
            name,
            base,
            plain_http,
        })
    }

    /// The host as users name it, for messages and credential lookup.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `scheme://authority` of the registry API.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// True if the registry is reached over plain HTTP.
    pub fn is_plain_http(&self) -> bool {
        self.plain_http
    }
}

/// Validates and normalises a registry host: lowercase, no scheme, no
/// path, Docker Hub's aliases mapped to `docker.io`.
pub fn normalize(input: &str) -> Result<String, HostError> {
    let invalid = || HostError::Invalid(input.to_string());
    let s = input.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    // Login accepts Docker Hub's historical URL form (`.../v1/`).
    let s = match s.split_once('/') {
        Some((h, rest)) if rest.is_empty() || rest == "v1/" || rest == "v1" || rest == "v2/" => h,
        Some(_) => return Err(invalid()),
        None => s,
    };
    let s = s.to_ascii_lowercase();
    if s.is_empty() || s.len() > 255 {
        return Err(invalid());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(invalid)?;
        addr.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        match after {
            "" => (&s[..], None),
            p => (
                &s[..addr.len() + 2],
                Some(p.strip_prefix(':').ok_or_else(invalid)?),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (&s[..], None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        if p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535) {
            return Err(invalid());
        }
    }
    if !host.starts_with('[') {
        let ok = host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        });
        if !ok {
            return Err(invalid());
        }
    }
    Ok(match s.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DEFAULT_DOMAIN.to_string()
        }
        _ => s,
    })
}

/// True for `localhost`, `127.0.0.0/8` and `[::1]`, with or without port.
pub fn is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if h == "localhost" {
        return true;
    }
    if let Ok(v4) = h.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    h.parse::<Ipv6Addr>().is_ok_and(|v6| v6.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize("LocalHost:5000").unwrap(), "localhost:5000");
        assert_eq!(
            normalize("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(
            normalize("http://reg.example:443/").unwrap(),
            "reg.example:443"
        );
        assert_eq!(normalize("[::1]:5000").unwrap(), "[::1]:5000");
        assert_eq!(normalize("myregistry").unwrap(), "myregistry");
        for bad in [
            "",
            "a b",
            "host:0",
            "host:99999",
            "host:",
            "-host",
            "host/path",
            "user@host",
            "[zz]:1",
            "host:5000/v2/x",
            "a..b",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn insecure_only_for_loopback_or_listed() {
        let h = RegistryHost::new("127.0.0.1:5000", true, &[]).unwrap();
        assert_eq!(h.base_url(), "http://127.0.0.1:5000");
        assert!(RegistryHost::new("localhost:1", true, &[]).is_ok());
        assert!(RegistryHost::new("[::1]:1", true, &[]).is_ok());
        assert!(RegistryHost::new("127.1.2.3", true, &[]).is_ok());
        assert_eq!(
            RegistryHost::new("reg.example:5000", true, &[]),
            Err(HostError::InsecureNotAllowed("reg.example:5000".into()))
        );
        assert_eq!(
            RegistryHost::new("localhost.evil.example", true, &[]),
            Err(HostError::InsecureNotAllowed(
                "localhost.evil.example".into()
            ))
        );
        let listed = vec!["reg.example:5000".to_string()];
        let h = RegistryHost::new("reg.example:5000", false, &listed).unwrap();
        assert!(h.is_plain_http());
        let h = RegistryHost::new("docker.io", false, &[]).unwrap();
        assert_eq!(h.base_url(), "https://registry-1.docker.io");
        assert_eq!(h.name(), "docker.io");
        assert!(!h.is_plain_http());
    }
}
