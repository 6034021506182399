//! Request paths with encoded segments and query parameters.
//!
//! Ids, names and image references come from the command line; they are
//! percent-encoded so that `../x`, `a?b` or `x&force=true` stay one value
//! and can never change which endpoint is called or with what.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but unreserved characters is encoded in query values.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path segments also encode `.`, so `..` cannot walk up a path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Encode one path segment (an id or name).
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A path with query parameters being built.
#[derive(Debug, Clone)]
pub struct Query {
    s: String,
    first: bool,
}

impl Query {
    /// Start from `path` (already encoded).
    pub fn new(path: impl Into<String>) -> Query {
        Query {
            s: path.into(),
            first: true,
        }
    }

    /// Add `key=value`.
    pub fn push(mut self, key: &str, value: impl AsRef<str>) -> Query {
        self.s.push(if self.first { '?' } else { '&' });
        self.first = false;
        self.s.push_str(key);
        self.s.push('=');
        self.s
            .push_str(&utf8_percent_encode(value.as_ref(), QUERY).to_string());
        self
    }

    /// Add `key=value` when `value` is `Some`.
    pub fn opt(self, key: &str, value: Option<impl AsRef<str>>) -> Query {
        match value {
            Some(v) => self.push(key, v),
            None => self,
        }
    }

    /// Add `key=true` when `on`.
    pub fn flag(self, key: &str, on: bool) -> Query {
        if on {
            self.push(key, "true")
        } else {
            self
        }
    }

    /// The finished path.
    pub fn build(self) -> String {
        self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_escape() {
        assert_eq!(encode_segment("../x"), "%2E%2E%2Fx");
        assert_eq!(encode_segment("web-1_a"), "web-1_a");
        let q = Query::new("/v1/images")
            .push("ref", "localhost:5000/app:1&force=true")
            .flag("force", false)
            .flag("all", true)
            .opt("tail", None::<&str>)
            .opt("since", Some("2024-01-01T00:00:00+01:00"))
            .build();
        assert_eq!(
            q,
            "/v1/images?ref=localhost%3A5000%2Fapp%3A1%26force%3Dtrue&all=true&since=2024-01-01T00%3A00%3A00%2B01%3A00"
        );
    }
}
