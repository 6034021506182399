//! Garbage collection and the consistency checker.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};

use serde::Serialize;

use super::lease::{parse_lease, LeaseContent};
use super::{Result, Store, StoreError};
use crate::digest::{Digest, HashingReader};
use crate::fsutil::FileLock;
use crate::manifest::ManifestKind;
use crate::rootdisk;

/// What a GC removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Untagged images dropped from the index.
    pub images_removed: Vec<Digest>,
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Root disks deleted.
    pub disks_removed: usize,
    /// Bytes freed by deleting blobs and disks.
    pub bytes_freed: u64,
    /// Leases of dead processes cleaned up.
    pub stale_leases: usize,
    /// Orphaned temp entries deleted.
    pub tmp_removed: usize,
}

/// What [`Store::fsck`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Inconsistencies; empty for a healthy store.
    pub problems: Vec<String>,
    /// Blobs present.
    pub blobs: usize,
    /// Images (names and untagged) checked.
    pub images: usize,
    /// Leases held by live processes (in-flight writes; not a problem).
    pub live_leases: usize,
    /// Leases of dead processes (cleaned by the next prune; not a problem).
    pub stale_leases: usize,
}

impl FsckReport {
    /// True if no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Leases {
    pins: LeaseContent,
    live_ids: BTreeSet<String>,
    stale: Vec<String>,
}

impl Store {
    /// Reads the lease directory. `exclude` is a lease whose pins are
    /// ignored (its owner is aborting and wants its own blobs checked).
    fn scan_leases(&self, exclude: Option<&str>) -> Result<Leases> {
        let dir = self.root.join("leases");
        let mut out = Leases {
            pins: LeaseContent::default(),
            live_ids: BTreeSet::new(),
            stale: Vec::new(),
        };
        for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lease") else {
                continue;
            };
            let path = entry.path();
            let file = match OpenOptions::new().read(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("opening lease", &path)(e)),
            };
            match FileLock::try_exclusive_file(file)
                .map_err(StoreError::io("locking lease", &path))?
            {
                Some(_dead) => out.stale.push(id.to_string()),
                None => {
                    out.live_ids.insert(id.to_string());
                    if Some(id) == exclude {
                        continue;
                    }
                    let mut text = String::new();
                    fs::File::open(&path)
                        .and_then(|mut f| f.read_to_string(&mut text))
                        .map_err(StoreError::io("reading lease", &path))?;
                    let c = parse_lease(&text);
                    out.pins.blobs.extend(c.blobs);
                    out.pins.disks.extend(c.disks);
                }
            }
        }
        Ok(out)
    }

    /// Everything reachable from the index: blobs and root disk keys.
    fn mark(&self) -> Result<(BTreeSet<Digest>, BTreeSet<String>)> {
        let idx = self.read_index()?;
        let mut blobs = BTreeSet::new();
        let mut disks = BTreeSet::new();
        for root in idx.roots() {
            blobs.insert(root);
            let mut manifests = vec![root];
            if let Ok((ManifestKind::Index(i), _)) = self.read_manifest(&root) {
                for child in i.manifests {
                    blobs.insert(child.digest);
                    manifests.push(child.digest);
                }
            }
            for m in manifests {
                if let Ok((ManifestKind::Image(m), _)) = self.read_manifest(&m) {
                    blobs.insert(m.config.digest);
                    blobs.extend(m.layers.iter().map(|l| l.digest));
                }
            }
            if let Ok(rec) = self.image_at(&root) {
                disks.insert(rootdisk::disk_key(&rec.diff_ids));
            }
        }
        Ok((blobs, disks))
    }

    /// Full GC. The caller holds the exclusive store lock.
    pub(super) fn collect_garbage(&self, _lock: &FileLock) -> Result<PruneReport> {
        self.gc(None, None)
    }

    /// GC restricted to `candidates` (blobs only). The caller holds the
    /// exclusive store lock.
    pub(super) fn collect_garbage_limited(
        &self,
        _lock: &FileLock,
        candidates: &BTreeSet<Digest>,
        exclude_lease: Option<&str>,
    ) -> Result<PruneReport> {
        self.gc(Some(candidates), exclude_lease)
    }

    fn gc(
        &self,
        candidates: Option<&BTreeSet<Digest>>,
        exclude_lease: Option<&str>,
    ) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let leases = self.scan_leases(exclude_lease)?;
        let (marked, keep_disks) = self.mark()?;

        let blob_dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blob_dir).map_err(StoreError::io("listing", &blob_dir))? {
            let entry = entry.map_err(StoreError::io("listing", &blob_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let remove = match Digest::from_hex(&name) {
                Ok(d) => {
                    !marked.contains(&d)
                        && !leases.pins.blobs.contains(&d)
                        && candidates.is_none_or(|c| c.contains(&d))
                }
                // Not a blob name: never written by the store (blobs only
                // arrive by rename from tmp/), so junk.
                Err(_) => candidates.is_none(),
            };
            if remove {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match r {
                    Ok(()) => {
                        report.blobs_removed += 1;
                        report.bytes_freed += size;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("removing blob", &path)(e)),
                }
            }
        }
        if candidates.is_some() {
            return Ok(report);
        }

        let disk_dir = self.disks_dir();
        for entry in fs::read_dir(&disk_dir).map_err(StoreError::io("listing", &disk_dir))? {
            let entry = entry.map_err(StoreError::io("listing", &disk_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let (key, is_lock) = if let Some(k) = name.strip_suffix(rootdisk::DISK_SUFFIX) {
                (k, false)
            } else if let Some(k) = name.strip_suffix(".lock") {
                (k, true)
            } else {
                ("", false)
            };
            if keep_disks.contains(key) || leases.pins.disks.contains(key) {
                continue;
            }
            if is_lock {
                // Only drop a lock file nobody holds (converters pin the
                // key before opening it, so an unpinned, unlocked lock
                // file is unused).
                if let Ok(Some(_l)) = FileLock::try_exclusive(&path) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.disks_removed += 1;
                    report.bytes_freed += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("removing disk", &path)(e)),
            }
        }

        for id in &leases.stale {
            let p = self.root.join("leases").join(format!("{id}.lease"));
            let _ = fs::remove_file(&p);
            report.stale_leases += 1;
        }
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(StoreError::io("listing", &tmp))? {
            let entry = entry.map_err(StoreError::io("listing", &tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if leases.live_ids.contains(&name) {
                continue;
            }
            let path = entry.path();
            if let Some(id) = name.strip_suffix(&format!(".{}", rootdisk::STAGING_MARKER)) {
                // A conversion's tree on the tmpfs: its owner's or a dead one's.
                if leases.live_ids.contains(id) {
                    continue;
                }
                remove_staging(&path);
            }
            let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => report.tmp_removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("removing temp entry", &path)(e)),
            }
        }
        Ok(report)
    }

    /// Checks the store's invariants. With `verify_content`, every blob is
    /// re-hashed (reads everything; slow on big stores). Read-only.
    pub fn fsck(&self, verify_content: bool) -> Result<FsckReport> {
        let mut rep = FsckReport::default();
        let _shared = self.lock(false)?;
        let idx = match self.read_index() {
            Ok(i) => Some(i),
            Err(e) => {
                rep.problems.push(format!("index: {e}"));
                None
            }
        };
        if let Some(idx) = &idx {
            for (name, d) in &idx.refs {
                rep.images += 1;
                if let Err(e) = self.image_at(d) {
                    rep.problems.push(format!("name {name}: {e}"));
                }
            }
            for d in &idx.untagged {
                rep.images += 1;
                if let Err(e) = self.image_at(d) {
                    rep.problems.push(format!("untagged image {d}: {e}"));
                }
            }
        }
        let blob_dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blob_dir).map_err(StoreError::io("listing", &blob_dir))? {
            let entry = entry.map_err(StoreError::io("listing", &blob_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(&name) else {
                rep.problems
                    .push(format!("blobs/sha256/{name}: not a sha256 blob name"));
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                rep.problems.push(format!("blob {d}: not a regular file"));
                continue;
            }
            rep.blobs += 1;
            if verify_content {
                let actual = fs::File::open(entry.path())
                    .and_then(|f| HashingReader::new(f).drain_and_finish());
                match actual {
                    Ok((a, _)) if a == d => {}
                    Ok((a, n)) => rep
                        .problems
                        .push(format!("blob {d}: content hashes to {a} ({n} bytes)")),
                    Err(e) => rep.problems.push(format!("blob {d}: unreadable: {e}")),
                }
            }
        }
        let disk_dir = self.disks_dir();
        for entry in fs::read_dir(&disk_dir).map_err(StoreError::io("listing", &disk_dir))? {
            let entry = entry.map_err(StoreError::io("listing", &disk_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name
                .strip_suffix(rootdisk::DISK_SUFFIX)
                .or_else(|| name.strip_suffix(".lock"));
            if key.is_none_or(|k| Digest::from_hex(k).is_err()) {
                rep.problems
                    .push(format!("disks/{name}: unexpected file in the disk cache"));
            }
        }
        let leases = self.scan_leases(None)?;
        rep.live_leases = leases.live_ids.len();
        rep.stale_leases = leases.stale.len();
        Ok(rep)
    }
}

/// `remove_dir_all` that also copes with read-only directories left by an
/// interrupted layer unpack (tar entries may carry mode 0555).
/// Removes the tmpfs staging directory a marker names (only ever one of
/// ours: directly in [`rootdisk::TMPFS_STAGING`], with our prefix).
fn remove_staging(marker: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(bytes) = fs::read(marker) else {
        return;
    };
    let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(&bytes));
    let ours = dir.parent() == Some(std::path::Path::new(rootdisk::TMPFS_STAGING))
        && dir.file_name().is_some_and(|n| {
            n.as_bytes()
                .starts_with(rootdisk::STAGING_PREFIX.as_bytes())
        });
    if ours && fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        let _ = remove_tree(dir);
    }
}

pub(crate) fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = fs::symlink_metadata(path) {
        if md.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}
