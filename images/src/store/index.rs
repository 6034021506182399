//! `refs.json`: the names (and untagged images) of the store.
//!
//! One small JSON file replaced atomically under the exclusive store lock.
//! Readers do not lock: a rename makes each version appear whole, so a
//! reader sees either the old or the new index.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::digest::Digest;
use crate::fsutil;

/// Current format version of `refs.json`.
const VERSION: u32 = 1;
/// Refuse index files beyond this size (bounds memory on corruption).
const MAX_INDEX_SIZE: u64 = 64 << 20;

/// The parsed `refs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Index {
    /// Format version.
    pub version: u32,
    /// Index key (`repo:tag` or `repo@digest`) -> manifest or index digest.
    pub refs: BTreeMap<String, Digest>,
    /// Complete images that have no name.
    #[serde(default)]
    pub untagged: BTreeSet<Digest>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            version: VERSION,
            refs: BTreeMap::new(),
            untagged: BTreeSet::new(),
        }
    }
}

impl Index {
    /// Every digest that keeps an image alive.
    pub fn roots(&self) -> Vec<Digest> {
        let mut set: BTreeSet<Digest> = self.refs.values().copied().collect();
        set.extend(self.untagged.iter().copied());
        set.into_iter().collect()
    }
}

impl Store {
    /// Reads the index. A missing file is an empty index.
    pub(crate) fn read_index(&self) -> Result<Index> {
        use std::io::Read;
        let path = self.refs_path();
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(StoreError::io("opening", &path)(e)),
        };
        let mut buf = Vec::new();
        f.take(MAX_INDEX_SIZE)
            .read_to_end(&mut buf)
            .map_err(StoreError::io("reading", &path))?;
        let idx: Index =
            serde_json::from_slice(&buf).map_err(|source| StoreError::IndexCorrupt {
                path: path.clone(),
                source,
            })?;
        if idx.version != VERSION {
            return Err(StoreError::BadRoot {
                path: self.root.clone(),
                reason: format!(
                    "refs.json has format version {}, this build understands {VERSION}; use a matching mvm version",
                    idx.version
                ),
            });
        }
        Ok(idx)
    }

    /// Replaces the index atomically. Callers hold the exclusive lock.
    pub(crate) fn write_index(&self, idx: &Index) -> Result<()> {
        let path = self.refs_path();
        let data = serde_json::to_vec_pretty(idx).expect("index serialises");
        fsutil::write_atomic(&path, &data).map_err(StoreError::io("writing", path))
    }
}
