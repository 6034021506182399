//! Sandbox ids and names.
//!
//! Ids are 64 random hex characters, like Docker's, so a prefix is a
//! practical handle; names are unique and user-chosen or generated.

use std::fmt::Write as _;

/// Why a name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid sandbox name {0:?}: use 1 to 128 characters of [a-zA-Z0-9_.-], starting with a letter or digit")]
    Invalid(String),
    #[error("invalid sandbox name {0:?}: 64 hex characters would be mistaken for an id")]
    LooksLikeId(String),
}

/// A fresh random id (64 lower-case hex characters).
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    let mut s = String::with_capacity(64);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Fill `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of
        // `buf`, which the kernel writes at most `len` bytes into.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n > 0 {
            done += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // getrandom(2) cannot fail on Linux >= 3.17 with these flags
            // except for EINTR; fall back to time-derived bytes rather
            // than panic.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            for (i, x) in buf[done..].iter_mut().enumerate() {
                *x = (t >> ((i % 16) * 8)) as u8 ^ (i as u8);
            }
            return;
        }
    }
}

/// Check a user-given name: Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let ok = name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(NameError::Invalid(name.to_string()));
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NameError::LooksLikeId(name.to_string()));
    }
    Ok(())
}

const ADJECTIVES: [&str; 24] = [
    "brave", "calm", "clever", "eager", "fair", "fancy", "gentle", "happy", "jolly", "keen",
    "kind", "lively", "lucid", "merry", "nimble", "proud", "quick", "quiet", "sharp", "steady",
    "swift", "tidy", "vivid", "witty",
];
const NOUNS: [&str; 24] = [
    "ampere", "babbage", "bohr", "curie", "darwin", "dirac", "euler", "faraday", "fermi", "gauss",
    "hopper", "kepler", "lovelace", "maxwell", "newton", "noether", "pascal", "planck", "raman",
    "shannon", "tesla", "turing", "volta", "wiles",
];

/// A generated name like `swift_turing_3fa2`; the suffix makes
/// collisions rare, and the caller retries on one.
pub fn generate_name() -> String {
    let mut b = [0u8; 4];
    fill_random(&mut b);
    format!(
        "{}_{}_{:02x}{:02x}",
        ADJECTIVES[b[0] as usize % ADJECTIVES.len()],
        NOUNS[b[1] as usize % NOUNS.len()],
        b[2],
        b[3]
    )
}

/// Whether `s` may be an id prefix (hex, at least 4 characters).
pub fn is_id_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "x.y_z", "A9"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::LooksLikeId(_))
        ));
        for _ in 0..20 {
            validate_name(&generate_name()).unwrap();
        }
        assert!(is_id_prefix("abcd"));
        assert!(!is_id_prefix("abc"));
        assert!(!is_id_prefix("web1"));
    }
}
