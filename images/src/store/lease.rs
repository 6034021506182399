//! Leases: GC protection for content that is being written.
//!
//! An import or pull writes blobs one at a time and tags the image only at
//! the end; a prune running in between must not delete the blobs already
//! written. Each writer holds a lease: a file `leases/<id>.lease`, flock'ed
//! exclusively for the writer's lifetime, listing the digests (and disk
//! keys) the writer is producing. GC keeps everything a locked lease
//! lists; a lease file it can lock belongs to a dead process and is
//! removed with its temp directory.
//!
//! Ordering: a digest is added to the lease (under the shared store lock)
//! *before* the writer checks for or publishes the blob, and GC holds the
//! exclusive store lock from reading leases to deleting. So either GC sees
//! the digest, or GC finished before the writer looked and the writer
//! finds the blob absent and writes it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

use super::{Result, Store, StoreError};
use crate::digest::Digest;
use crate::fsutil::{self, FileLock};

/// A held lease. Dropping it releases the protection and removes its temp
/// directory; tag the image (or pin it otherwise) before that.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    id: String,
    path: PathBuf,
    lock: FileLock,
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default)]
struct LeaseState {
    blobs: BTreeSet<Digest>,
    disks: BTreeSet<String>,
    /// Blobs this lease wrote that were not in the store before.
    created: BTreeSet<Digest>,
}

impl Lease {
    pub(super) fn create(store: &Store) -> Result<Lease> {
        // The shared store lock keeps GC from seeing the file between its
        // creation and its flock and taking it for a dead owner's.
        let _shared = store.lock(false)?;
        let id = fsutil::random_id();
        let path = store.root.join("leases").join(format!("{id}.lease"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(StoreError::io("creating lease", &path))?;
        let lock = FileLock::try_exclusive_file(file)
            .map_err(StoreError::io("locking lease", &path))?
            .ok_or_else(|| StoreError::BadRoot {
                path: path.clone(),
                reason: "a freshly created lease file is locked by someone else".into(),
            })?;
        let tmp = store.tmp_dir().join(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(StoreError::io("creating directory", &tmp))?;
        Ok(Lease {
            store: store.clone(),
            id,
            path,
            lock,
            state: Mutex::default(),
        })
    }

    /// The lease's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This lease's private temp directory inside the store (same
    /// filesystem as the blobs, so renames out of it are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.store.tmp_dir().join(&self.id)
    }

    /// Protects `digest` from GC for the lifetime of the lease. Call before
    /// relying on the blob's presence.
    pub fn pin_blob(&self, digest: &Digest) -> Result<()> {
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.blobs.contains(digest) {
                return Ok(());
            }
        }
        self.append(&format!("blob {digest}\n"))?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blobs
            .insert(*digest);
        Ok(())
    }

    /// Protects a root disk (by cache key) from GC.
    pub fn pin_disk(&self, key: &str) -> Result<()> {
        self.append(&format!("disk {key}\n"))?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .disks
            .insert(key.to_string());
        Ok(())
    }

    /// Records that this lease published `digest` (it was absent before).
    pub(super) fn note_created(&self, digest: &Digest) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created
            .insert(*digest);
    }

    /// Digests pinned so far.
    pub fn pinned_blobs(&self) -> BTreeSet<Digest> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blobs
            .clone()
    }

    /// Deletes the blobs this lease wrote that nothing else references (no
    /// name, no untagged image, no other live lease), then ends the lease.
    /// After a failed import this leaves the store as it was; after a
    /// successful one it drops by-products (files of an archive that no
    /// image uses) while keeping everything the new names reference.
    pub fn discard_unreferenced(self) -> Result<()> {
        let created = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created
            .clone();
        if created.is_empty() {
            return Ok(());
        }
        let lock = self.store.lock(true)?;
        self.store
            .collect_garbage_limited(&lock, &created, Some(&self.id))?;
        Ok(())
    }

    fn append(&self, line: &str) -> Result<()> {
        let _shared = self.store.lock(false)?;
        let mut f = self.lock.file();
        f.write_all(line.as_bytes())
            .map_err(StoreError::io("writing lease", &self.path))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.tmp_dir());
        // Remove while still holding the flock, so GC never sees an
        // unlocked file of a live owner.
        let _ = fs::remove_file(&self.path);
    }
}

/// What a lease file says.
#[derive(Debug, Default)]
pub(super) struct LeaseContent {
    pub blobs: BTreeSet<Digest>,
    pub disks: BTreeSet<String>,
}

/// Parses a lease file's lines. Appends and GC's reads exclude each other
/// through the store lock, so lines are whole; anything unparsable (a file
/// from a future version, say) is ignored rather than trusted.
pub(super) fn parse_lease(text: &str) -> LeaseContent {
    let mut c = LeaseContent::default();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("blob ") {
            if let Ok(d) = d.parse() {
                c.blobs.insert(d);
            }
        } else if let Some(k) = line.strip_prefix("disk ") {
            c.disks.insert(k.to_string());
        }
    }
    c
}
