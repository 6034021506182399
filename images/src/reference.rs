//! Image references, normalised the way Docker does it.
//!
//! `busybox` becomes `docker.io/library/busybox:latest`,
//! `localhost:5000/x:tag` keeps its registry, and `name@sha256:...` pins a
//! manifest digest. Users type these, so the parser is strict about the
//! grammar of the distribution reference spec (lowercase path components,
//! tag charset and length, total length) and says what was wrong.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Registry used when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Path prefix of Docker Hub's official images (`busybox` -> `library/busybox`).
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain + path) the reference spec allows.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the reference spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty input.
    #[error("empty image reference: give a name such as busybox or localhost:5000/app:1.0")]
    Empty,
    /// The name has uppercase letters.
    #[error("invalid reference {0:?}: repository names must be lowercase")]
    Uppercase(String),
    /// A path component does not match the grammar.
    #[error("invalid reference {0:?}: path component {1:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'")]
    BadComponent(String, String),
    /// The registry host part is invalid.
    #[error("invalid reference {0:?}: registry host {1:?} is not a valid hostname[:port]")]
    BadDomain(String, String),
    /// The tag is invalid.
    #[error("invalid reference {0:?}: tag {1:?} must be 1-128 characters of [A-Za-z0-9_.-] not starting with '.' or '-'")]
    BadTag(String, String),
    /// The name is too long.
    #[error("invalid reference {0:?}: repository name longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    /// The digest part is invalid.
    #[error("invalid reference {0:?}: {1}")]
    BadDigest(String, DigestError),
    /// A bare 64-hex string, which Docker refuses as a name because it is
    /// indistinguishable from an image ID.
    #[error("invalid reference {0:?}: a 64-hex-digit name is ambiguous with an image ID; use sha256:<id> to refer to an ID")]
    LooksLikeId(String),
}

/// A normalised image reference: registry domain, repository path, and a
/// tag and/or digest. At least one of tag and digest is always set.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let err_s = || s.to_string();
        // Split off the digest.
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| ReferenceError::BadDigest(err_s(), e))?,
                ),
            ),
            None => (s, None),
        };
        if rest.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Split off the tag: a ':' after the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(c) if last_slash.is_none_or(|sl| c > sl) => {
                (&rest[..c], Some(rest[c + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(ReferenceError::BadTag(err_s(), t.clone()));
            }
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReferenceError::LooksLikeId(err_s()));
        }
        // Split the domain: the first component is a registry if it looks
        // like a host (has '.' or ':' or is localhost), as Docker decides.
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            Some((first, _)) if first.bytes().any(|b| b.is_ascii_uppercase()) => {
                // Docker treats an uppercase first component as a domain;
                // for us the domain validation below rejects it clearly.
                return Err(ReferenceError::BadDomain(err_s(), first.to_string()));
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain == "index.docker.io" {
            domain = DEFAULT_DOMAIN.to_string();
        }
        if !valid_domain(&domain) {
            return Err(ReferenceError::BadDomain(err_s(), domain));
        }
        if path.is_empty() {
            return Err(ReferenceError::BadComponent(err_s(), String::new()));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(err_s()));
        }
        for comp in path.split('/') {
            if !valid_component(comp) {
                return Err(ReferenceError::BadComponent(err_s(), comp.to_string()));
            }
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("{OFFICIAL_REPO_PREFIX}{path}");
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(err_s()));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host, e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// This repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag(self.to_string(), tag.to_string()));
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// This repository pinned to `digest` (and no tag).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The key under which the store indexes this reference: the digest
    /// form when a digest is given (a digest pins content, so the tag is
    /// redundant, as with `docker pull name:tag@digest`), else `repo:tag`.
    pub fn index_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{}", self.repository(), d),
            (None, Some(t)) => format!("{}:{}", self.repository(), t),
            (None, None) => unreachable!("a Reference always has a tag or a digest"),
        }
    }

    /// The short form users type: `busybox:latest`, `localhost:5000/x:1`.
    pub fn familiar(&self) -> String {
        let repo = if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_REPO_PREFIX)
                .filter(|p| !p.contains('/'))
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        };
        let mut s = repo;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// hostname (labels of alnum and inner '-', separated by '.') with an
/// optional numeric port, or a bracketed IPv6 address with optional port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => return valid_port(port),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if !valid_port(p) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u32>().is_ok_and(|n| n <= 65535)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/debian:12"),
            "docker.io/library/debian:12"
        );
        assert_eq!(norm("localhost:5000/x:tag"), "localhost:5000/x:tag");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("ghcr.io/a/b/c:v1.0-rc_1"), "ghcr.io/a/b/c:v1.0-rc_1");
        assert_eq!(norm("[::1]:5000/x:y"), "[::1]:5000/x:y");
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.index_key(), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse(&format!("busybox:1@{d}")).unwrap();
        assert_eq!(r.index_key(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse("localhost:5000/a/b:1").unwrap().familiar(),
            "localhost:5000/a/b:1"
        );
        assert_eq!(
            Reference::parse("user/app:2").unwrap().familiar(),
            "user/app:2"
        );
    }

    #[test]
    fn rejects_hostile_or_wrong_names() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "../etc/passwd",
            "a//b",
            "/abs",
            "a/",
            "x:",
            "x:-tag",
            "x:.tag",
            "x:tag/evil",
            "a..b",
            "a---b-",
            "local host:5000/x",
            "host:99999/x",
            "x@sha256:zz",
            "x@md5:abcd",
            "x\0y",
            "x:t\n",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("x:{}", "a".repeat(129));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::BadTag(..))
        ));
        let long = "a".repeat(300);
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong(..))
        ));
        let id = "a".repeat(64);
        assert!(matches!(
            Reference::parse(&id),
            Err(ReferenceError::LooksLikeId(..))
        ));
    }

    #[test]
    fn separators() {
        assert!(valid_component("a_b__c-d--e.f"));
        assert!(!valid_component("a___b"));
        assert!(!valid_component("a._b"));
        assert!(!valid_component("-a"));
    }
}
