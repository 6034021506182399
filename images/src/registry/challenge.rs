//! `WWW-Authenticate` parsing (RFC 7235), for the two schemes registries
//! use: `Basic` (htpasswd registries) and `Bearer` (token servers, as
//! Docker Hub and the distribution registry's token auth).
//!
//! The header comes from the network, so the parser is total: any input
//! gives a (possibly empty) list, never a panic, and values are bounded.

use std::collections::BTreeMap;

/// Longest header value parsed; real challenges are a few hundred bytes.
const MAX_HEADER: usize = 8 << 10;

/// One authentication challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication.
    Basic,
    /// A token server: fetch a token at `realm` for `service`/`scope`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to pass on.
        service: Option<String>,
        /// `scope` the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses every challenge in a header value. Unknown schemes and bearer
/// challenges without a realm are dropped.
pub fn parse(header: &str) -> Vec<Challenge> {
    if header.len() > MAX_HEADER {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (scheme, params) in split(header) {
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => out.push(Challenge::Basic),
            "bearer" => {
                if let Some(realm) = params.get("realm").filter(|r| !r.is_empty()) {
                    out.push(Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                        scope: params.get("scope").cloned(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

type Raw = (String, BTreeMap<String, String>);

/// Splits `Scheme k=v, k="v", Scheme2 k=v` into schemes and parameters.
fn split(s: &str) -> Vec<Raw> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out: Vec<Raw> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        // tchars are ASCII, so this never splits a character; bytes
        // (not str slicing) keep a position inside one from panicking.
        String::from_utf8_lossy(&b[start..*i]).into_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let t = token(&mut i);
        if t.is_empty() {
            // Not a token character: skip it and resynchronise.
            i += 1;
            continue;
        }
        // Look past spaces for '=' to tell a parameter from a new scheme.
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        let is_param = j < b.len() && b[j] == b'=' && !out.is_empty();
        if !is_param {
            out.push((t, BTreeMap::new()));
            continue;
        }
        i = j + 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                v.push(b[i]);
                i += 1;
            }
            i += 1; // closing quote (or end)
            String::from_utf8_lossy(&v).into_owned()
        } else {
            token(&mut i)
        };
        if let Some((_, params)) = out.last_mut() {
            params.insert(t.to_ascii_lowercase(), value);
        }
    }
    out
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_challenges() {
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        assert_eq!(
            parse(r#"Negotiate, Basic realm="x", Bearer realm="http://a/t""#),
            vec![
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "http://a/t".into(),
                    service: None,
                    scope: None
                }
            ]
        );
        assert_eq!(
            parse(r#"bearer realm=https://a/t, service = "s\"q""#),
            vec![Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("s\"q".into()),
                scope: None
            }]
        );
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        for h in [
            "",
            "=",
            "==\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=",
            "Bearer",
            "\u{0}\u{ff}\"\\",
            "Bearer ,,,,,, realm=\"\"",
        ] {
            let _ = parse(h);
        }
        assert_eq!(parse("Bearer realm=\"\""), vec![]);
        assert_eq!(parse(&"Basic ".repeat(10_000)), vec![]);
    }
}
