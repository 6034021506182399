//! The build cache: which image a step produced, keyed by everything the
//! step's result depends on.
//!
//! A key is sha256 over the parent's key (which chains back to the base
//! image's manifest digest), the instruction after substitution, and the
//! step's inputs: content hashes of copied files, the build args in scope
//! for RUN, the environment, user, workdir and shell. Values are the
//! manifest digests of untagged images in the store, so `image prune`
//! cleans them up like any dangling image; a value whose image was pruned
//! is a miss.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use mvm_images::digest::Hasher;
use mvm_images::Digest;

/// A cache key (hex sha256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub String);

impl Key {
    /// The root of a chain: the base image (or `scratch`).
    pub fn root(base: &str) -> Key {
        Key::derive(None, &["base", base])
    }

    /// A child key: parent plus the given parts (length-prefixed, so
    /// parts cannot run into each other).
    pub fn derive(parent: Option<&Key>, parts: &[&str]) -> Key {
        let mut h = Hasher::new();
        h.update(b"mvm-build-cache-v1\n");
        if let Some(p) = parent {
            h.update(p.0.as_bytes());
        }
        for part in parts {
            h.update(format!("\n{}:", part.len()).as_bytes());
            h.update(part.as_bytes());
        }
        Key(h.finish().hex())
    }

    /// Like [`Key::derive`] for a step of this chain.
    pub fn child(&self, parts: &[&str]) -> Key {
        Key::derive(Some(self), parts)
    }
}

/// The on-disk cache index: one small file per key.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache beside the image store (`<store>/buildcache`).
    pub fn open(store_root: &Path) -> io::Result<Cache> {
        let dir = store_root.join("buildcache");
        fs::create_dir_all(&dir)?;
        Ok(Cache { dir })
    }

    /// The manifest digest recorded for `key`.
    pub fn get(&self, key: &Key) -> Option<Digest> {
        let s = fs::read_to_string(self.dir.join(&key.0)).ok()?;
        s.trim().parse().ok()
    }

    /// Records `digest` for `key` (atomically: temp file, rename).
    pub fn put(&self, key: &Key, digest: &Digest) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}.{}", key.0, std::process::id()));
        fs::write(&tmp, digest.to_string())?;
        fs::rename(&tmp, self.dir.join(&key.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_and_separate_parts() {
        let a = Key::root("sha256:x");
        assert_eq!(a, Key::root("sha256:x"));
        assert_ne!(a, Key::root("sha256:y"));
        let b = a.child(&["RUN", "echo"]);
        assert_eq!(b, a.child(&["RUN", "echo"]));
        assert_ne!(b, a.child(&["RUNecho"]));
        assert_ne!(b, a.child(&["RU", "Necho"]));
        assert_ne!(
            b,
            Key::root("sha256:y").child(&["RUN", "echo"]),
            "parent matters"
        );
        assert_eq!(b.0.len(), 64);
    }

    #[test]
    fn index_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let k = Key::root("scratch");
        assert_eq!(c.get(&k), None);
        let digest = Digest::of(b"m");
        c.put(&k, &digest).unwrap();
        assert_eq!(c.get(&k), Some(digest));
        fs::write(d.path().join("buildcache").join(&k.0), "garbage").unwrap();
        assert_eq!(c.get(&k), None, "a corrupt entry is a miss");
    }
}
