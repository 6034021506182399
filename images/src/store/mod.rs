//! The content-addressed image store.
//!
//! Layout under the store root (OCI image-layout style, so `blobs/` can be
//! read by other tools):
//!
//! ```text
//! oci-layout            {"imageLayoutVersion":"1.0.0"}
//! refs.json             names -> manifest digests (+ untagged images)
//! lock                  store-wide flock: shared for writers' lease
//!                       bookkeeping, exclusive for index changes and GC
//! blobs/sha256/<hex>    manifests, configs, layers, exactly as received
//! leases/<id>.lease     one per in-flight import/pull: digests and disk
//!                       keys it is writing, flock'ed while its owner lives
//! tmp/<lease-id>/       in-flight files of that lease
//! disks/<key>.ext4      flattened read-only root disks (see rootdisk)
//! ```
//!
//! Invariants (checked by [`Store::fsck`]):
//! - a file in `blobs/sha256/` is complete and its content hashes to its
//!   name (written to `tmp/`, hashed while streaming, fsynced, renamed);
//! - every name in `refs.json` points to a complete linux/amd64 image: its
//!   manifest, config and all layers are present (checked under the
//!   exclusive lock before tagging);
//! - garbage collection never deletes a blob reachable from a name, an
//!   untagged image, or a live lease.
//!
//! Crash safety follows from atomic renames: a crash leaves at most files
//! in `tmp/` and a lease whose flock died with its process; the next GC
//! removes both.

mod blobs;
mod gc;
mod index;
mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::Serialize;

use crate::digest::Digest;
use crate::fsutil::{self, FileLock};
use crate::manifest::{
    self, ImageConfig, Manifest, ManifestError, ManifestKind, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};
use crate::reference::{Reference, ReferenceError};

pub use blobs::{BlobInfo, Expected};
pub(crate) use gc::remove_tree;
pub use gc::{FsckReport, PruneReport};
pub use lease::Lease;

/// An image's identity: the digest of its config, as Docker defines it.
pub type ImageId = Digest;

/// Environment variable overriding the mvm state root (`/var/lib/mvm`).
pub const ROOT_ENV: &str = "MVM_ROOT";
/// Default mvm state root.
pub const DEFAULT_ROOT: &str = "/var/lib/mvm";
/// Default largest blob accepted (a single layer); above any real image
/// layer, low enough to bound what a hostile source can make us write.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 64 << 30;

/// Errors from store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The filesystem of the store is full.
    #[error("no space left on device while {op} {}: free disk space or run an image prune, then retry", path.display())]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
    },
    /// Reading the source of a blob failed (network, archive...).
    #[error("reading the content of blob {what} failed: {source}")]
    Source {
        /// The expected digest, or "new blob".
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Content does not hash to the digest it was announced with.
    #[error("digest mismatch: expected {expected}, content hashes to {actual} ({size} bytes); the source is corrupt or was tampered with")]
    DigestMismatch {
        /// Announced digest.
        expected: Digest,
        /// Actual digest.
        actual: Digest,
        /// Bytes received.
        size: u64,
    },
    /// Content length differs from the announced size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}{}", if actual < expected { " (truncated)" } else { "" })]
    SizeMismatch {
        /// Announced digest.
        digest: Digest,
        /// Announced size.
        expected: u64,
        /// Received size.
        actual: u64,
    },
    /// A blob is larger than the configured limit.
    #[error("blob {what} exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// Which blob.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A blob is missing.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// No image matches the name or ID.
    #[error("no such image: {0} (list images to see what the store has, or import/pull it first)")]
    ImageNotFound(String),
    /// A manifest or config is invalid.
    #[error("image {digest}: {source}")]
    Manifest {
        /// The manifest (or config) digest.
        digest: Digest,
        /// The problem.
        source: ManifestError,
    },
    /// A manifest refers to content that is not in the store.
    #[error("image {manifest} is incomplete: its {what} {missing} is not in the store; pull or load it again")]
    Incomplete {
        /// The manifest.
        manifest: Digest,
        /// "config", "layer 3", "platform manifest".
        what: String,
        /// The missing digest.
        missing: Digest,
    },
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A reference pins a digest that differs from the one being tagged.
    #[error("reference {reference} pins digest {pinned}, but the image's manifest is {actual}")]
    PinnedDigestMismatch {
        /// The reference.
        reference: String,
        /// Its digest.
        pinned: Digest,
        /// The manifest being tagged.
        actual: Digest,
    },
    /// refs.json is unreadable.
    #[error("the image index {} is corrupt ({source}); restore it from a backup or remove it (images then need to be re-tagged)", path.display())]
    IndexCorrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An image prefix matches more than one image.
    #[error("image ID prefix {0:?} is ambiguous; give more digits")]
    AmbiguousId(String),
    /// Refusing to remove an image used by a sandbox.
    #[error("image {reference} ({id}) is in use by a sandbox; stop and remove the sandbox first, or force the removal")]
    InUse {
        /// What the user named.
        reference: String,
        /// Its ID.
        id: ImageId,
    },
    /// Refusing to remove an ID that several names share.
    #[error("image {id} is referenced by several names ({names}); remove them by name or force the removal")]
    MultipleNames {
        /// The ID.
        id: ImageId,
        /// The names.
        names: String,
    },
    /// The store root is not usable.
    #[error("the image store at {} is not usable: {reason}", path.display())]
    BadRoot {
        /// The root.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Wraps an I/O error with its context, turning ENOSPC/EDQUOT into the
    /// dedicated, actionable [`StoreError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| {
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ) {
                StoreError::NoSpace { op, path }
            } else {
                StoreError::Io { op, path, source }
            }
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A fully resolved, complete image.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// The digest the name points at (an index for multi-platform images).
    pub digest: Digest,
    /// The linux/amd64 image manifest's digest (equal to `digest` unless
    /// the name points at an index).
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The parsed image manifest.
    pub manifest: Manifest,
    /// The image ID (config digest).
    pub id: ImageId,
    /// The parsed config.
    pub config: ImageConfiguration,
    /// The uncompressed digests of the layers, lowest first.
    pub diff_ids: Vec<Digest>,
}

impl ImageRecord {
    /// The runtime defaults (entrypoint, cmd, env, ...).
    pub fn image_config(&self) -> ImageConfig {
        ImageConfig::from_configuration(&self.config)
    }

    /// Sum of the stored sizes of config and layers.
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// One image in [`Store::list`].
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Tag references (`docker.io/library/busybox:latest`), sorted.
    pub repo_tags: Vec<String>,
    /// Digest references (`repo@sha256:...`), sorted.
    pub repo_digests: Vec<String>,
    /// Image ID (config digest).
    pub id: ImageId,
    /// The digest names point at.
    pub digest: Digest,
    /// Config `created`, RFC 3339, if stated.
    pub created: Option<String>,
    /// Stored bytes of config and layers (compressed sizes, as stored).
    pub size: u64,
}

/// What [`Store::inspect`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Names as in the summary.
    pub repo_tags: Vec<String>,
    /// Digest names.
    pub repo_digests: Vec<String>,
    /// Image ID.
    pub id: ImageId,
    /// Digest names point at.
    pub digest: Digest,
    /// linux/amd64 manifest digest.
    pub manifest_digest: Digest,
    /// Its media type.
    pub manifest_media_type: String,
    /// Layer descriptors.
    pub layers: Vec<crate::manifest::Descriptor>,
    /// diff_ids.
    pub diff_ids: Vec<Digest>,
    /// Config `created`.
    pub created: Option<String>,
    /// os/architecture.
    pub platform: String,
    /// Runtime defaults.
    pub config: ImageConfig,
    /// Stored size.
    pub size: u64,
}

/// What [`Store::remove`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images (IDs) no longer referenced by any name.
    pub deleted: Vec<ImageId>,
    /// What the clean-up of their content freed.
    pub pruned: PruneReport,
}

/// The image store. Cheap to clone; every method is safe to call from
/// several threads and processes at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    max_blob_size: u64,
}

impl Store {
    /// The images directory under the mvm root: `$MVM_ROOT/images`, or
    /// `/var/lib/mvm/images`.
    pub fn default_root() -> PathBuf {
        let base = std::env::var_os(ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        base.join("images")
    }

    /// Opens the store at `root`, creating its layout if needed.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in [
            root.clone(),
            root.join("blobs/sha256"),
            root.join("leases"),
            root.join("tmp"),
            root.join("disks"),
        ] {
            b.create(&d)
                .map_err(StoreError::io("creating directory", &d))?;
        }
        let md = fs::symlink_metadata(&root).map_err(StoreError::io("inspecting", &root))?;
        if !md.is_dir() {
            return Err(StoreError::BadRoot {
                path: root,
                reason: "not a directory".into(),
            });
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fsutil::write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(StoreError::io("writing", &layout))?;
        }
        let store = Store {
            root,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        };
        if !store.refs_path().exists() {
            let _lock = store.lock(true)?;
            if !store.refs_path().exists() {
                store.write_index(&index::Index::default())?;
            }
        }
        Ok(store)
    }

    /// Opens the store at [`Store::default_root`].
    pub fn open_default() -> Result<Store> {
        Store::open(Store::default_root())
    }

    /// Sets the largest blob accepted by `put_blob`.
    pub fn with_max_blob_size(mut self, limit: u64) -> Self {
        self.max_blob_size = limit;
        self
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is present).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The root disk cache directory.
    pub fn disks_dir(&self) -> PathBuf {
        self.root.join("disks")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// Takes the store-wide lock.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<FileLock> {
        let p = self.root.join("lock");
        FileLock::acquire(&p, exclusive).map_err(StoreError::io("locking", p))
    }

    /// Reads a blob fully, refusing blobs larger than `max`.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_blob(d)?;
        let mut buf = Vec::new();
        (&mut f)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(StoreError::io("reading blob", self.blob_path(d)))?;
        if buf.len() as u64 > max {
            return Err(StoreError::TooLarge {
                what: d.to_string(),
                limit: max,
            });
        }
        Ok(buf)
    }

    /// Reads and parses a manifest or index blob.
    pub fn read_manifest(&self, d: &Digest) -> Result<(ManifestKind, Vec<u8>)> {
        let bytes = self.read_blob(d, MAX_MANIFEST_SIZE)?;
        let kind = manifest::parse_manifest(&bytes, None)
            .map_err(|source| StoreError::Manifest { digest: *d, source })?;
        Ok((kind, bytes))
    }

    /// Resolves a manifest digest to a complete linux/amd64 image, checking
    /// that the config and every layer are present.
    pub fn image_at(&self, digest: &Digest) -> Result<ImageRecord> {
        if !self.has_blob(digest) {
            return Err(StoreError::BlobNotFound(*digest));
        }
        let (kind, bytes) = self.read_manifest(digest)?;
        let (manifest_digest, manifest, bytes) = match kind {
            ManifestKind::Image(m) => (*digest, m, bytes),
            ManifestKind::Index(i) => {
                let child = i
                    .pick_linux_amd64()
                    .map_err(|source| StoreError::Manifest {
                        digest: *digest,
                        source,
                    })?;
                if !self.has_blob(&child.digest) {
                    return Err(StoreError::Incomplete {
                        manifest: *digest,
                        what: "linux/amd64 manifest".into(),
                        missing: child.digest,
                    });
                }
                let (ck, cb) = self.read_manifest(&child.digest)?;
                match ck {
                    ManifestKind::Image(m) => (child.digest, m, cb),
                    ManifestKind::Index(_) => {
                        return Err(StoreError::Manifest {
                            digest: child.digest,
                            source: ManifestError::UnsupportedMediaType {
                                what: "nested index entry".into(),
                                media_type: child.media_type.clone(),
                            },
                        })
                    }
                }
            }
        };
        let manifest_media_type =
            manifest::manifest_media_type(&bytes).map_err(|source| StoreError::Manifest {
                digest: manifest_digest,
                source,
            })?;
        let cfg_digest = manifest.config.digest;
        if !self.has_blob(&cfg_digest) {
            return Err(StoreError::Incomplete {
                manifest: manifest_digest,
                what: "config".into(),
                missing: cfg_digest,
            });
        }
        let cfg_bytes = self.read_blob(&cfg_digest, MAX_CONFIG_SIZE)?;
        let config = manifest::parse_config(&cfg_bytes).map_err(|source| StoreError::Manifest {
            digest: cfg_digest,
            source,
        })?;
        let diff_ids = manifest::diff_ids(&config).map_err(|source| StoreError::Manifest {
            digest: cfg_digest,
            source,
        })?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Manifest {
                digest: manifest_digest,
                source: ManifestError::LayerCountMismatch {
                    layers: manifest.layers.len(),
                    diff_ids: diff_ids.len(),
                },
            });
        }
        for (i, l) in manifest.layers.iter().enumerate() {
            match fs::metadata(self.blob_path(&l.digest)) {
                Ok(md) if md.len() == l.size => {}
                Ok(md) => {
                    return Err(StoreError::SizeMismatch {
                        digest: l.digest,
                        expected: l.size,
                        actual: md.len(),
                    })
                }
                Err(_) => {
                    return Err(StoreError::Incomplete {
                        manifest: manifest_digest,
                        what: format!("layer {}", i + 1),
                        missing: l.digest,
                    })
                }
            }
        }
        Ok(ImageRecord {
            digest: *digest,
            manifest_digest,
            manifest_media_type,
            manifest,
            id: cfg_digest,
            config,
            diff_ids,
        })
    }

    /// Points `reference` at the image whose manifest (or index) is
    /// `digest`, after checking the image is complete and linux/amd64.
    /// Replaces what the name pointed at before, like `docker tag`.
    pub fn tag(&self, reference: &Reference, digest: &Digest) -> Result<ImageRecord> {
        if let Some(pinned) = reference.digest() {
            if pinned != digest {
                return Err(StoreError::PinnedDigestMismatch {
                    reference: reference.to_string(),
                    pinned: *pinned,
                    actual: *digest,
                });
            }
        }
        let _lock = self.lock(true)?;
        let rec = self.image_at(digest)?;
        let mut idx = self.read_index()?;
        idx.refs.insert(reference.index_key(), *digest);
        idx.untagged.remove(digest);
        self.write_index(&idx)?;
        Ok(rec)
    }

    /// Records a complete image that has no name (like Docker's dangling
    /// images), so that GC keeps it until it is tagged, removed or pruned.
    pub fn add_untagged(&self, digest: &Digest) -> Result<ImageRecord> {
        let _lock = self.lock(true)?;
        let rec = self.image_at(digest)?;
        let mut idx = self.read_index()?;
        if !idx.refs.values().any(|d| d == digest) {
            idx.untagged.insert(*digest);
            self.write_index(&idx)?;
        }
        Ok(rec)
    }

    /// Removes one name. The content stays until a prune; use
    /// [`Store::remove`] for Docker `rmi` semantics.
    pub fn untag(&self, reference: &Reference) -> Result<Digest> {
        let _lock = self.lock(true)?;
        let mut idx = self.read_index()?;
        idx.refs
            .remove(&reference.index_key())
            .ok_or_else(|| StoreError::ImageNotFound(reference.to_string()))
            .and_then(|d| self.write_index(&idx).map(|_| d))
    }

    /// Resolves a name (`busybox`, `localhost:5000/x:1`, `x@sha256:..`)
    /// or an image ID (`sha256:<hex>`, or a unique hex prefix of at least
    /// 12 digits) to a complete image.
    pub fn resolve(&self, spec: &str) -> Result<ImageRecord> {
        let idx = self.read_index()?;
        let digest = self.lookup(&idx, spec)?;
        self.image_at(&digest)
    }

    /// Like [`Store::resolve`] for a parsed reference.
    pub fn resolve_ref(&self, reference: &Reference) -> Result<ImageRecord> {
        let idx = self.read_index()?;
        let d = idx
            .refs
            .get(&reference.index_key())
            .copied()
            .or_else(|| {
                // A digest reference also matches the same content stored
                // under another tag of the same repository.
                let pinned = reference.digest()?;
                let repo = reference.repository();
                idx.refs
                    .iter()
                    .any(|(k, d)| d == pinned && key_repository(k) == repo)
                    .then_some(*pinned)
            })
            .ok_or_else(|| StoreError::ImageNotFound(reference.to_string()))?;
        self.image_at(&d)
    }

    /// Finds the manifest digest that `spec` names.
    fn lookup(&self, idx: &index::Index, spec: &str) -> Result<Digest> {
        Ok(match self.find(idx, spec)? {
            Found::Name(_, d) | Found::Id(d) => d,
        })
    }

    /// Finds what `spec` names, in Docker's order: a full ID or digest
    /// (`sha256:<64 hex>` or 64 hex digits), then a name, then a unique ID
    /// prefix (at least 4 hex digits, optionally with `sha256:`).
    fn find(&self, idx: &index::Index, spec: &str) -> Result<Found> {
        let hexpart = spec.strip_prefix("sha256:").unwrap_or(spec);
        let is_hex = hexpart.len() >= 4
            && hexpart.len() <= 64
            && hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex && (hexpart.len() == 64 || spec.starts_with("sha256:")) {
            return self
                .match_id(idx, hexpart)?
                .map(Found::Id)
                .ok_or_else(|| StoreError::ImageNotFound(spec.to_string()));
        }
        let parsed = Reference::parse(spec);
        if let Ok(reference) = &parsed {
            let key = reference.index_key();
            if let Some(d) = idx.refs.get(&key) {
                return Ok(Found::Name(key, *d));
            }
            if let Some(pinned) = reference.digest() {
                let repo = reference.repository();
                if let Some((k, _)) = idx
                    .refs
                    .iter()
                    .find(|(k, d)| *d == pinned && key_repository(k) == repo)
                {
                    return Ok(Found::Name(k.clone(), *pinned));
                }
            }
        }
        if is_hex {
            if let Some(d) = self.match_id(idx, hexpart)? {
                return Ok(Found::Id(d));
            }
        }
        parsed?;
        Err(StoreError::ImageNotFound(spec.to_string()))
    }

    /// The root manifest digest whose own digest or image ID starts with
    /// `hexpart`.
    fn match_id(&self, idx: &index::Index, hexpart: &str) -> Result<Option<Digest>> {
        let mut found: BTreeSet<Digest> = BTreeSet::new();
        for root in idx.roots() {
            if root.hex().starts_with(hexpart) {
                found.insert(root);
                continue;
            }
            if let Ok(rec) = self.image_at(&root) {
                if rec.id.hex().starts_with(hexpart) {
                    found.insert(root);
                }
            }
        }
        // Several manifests may share one config (same image pushed with
        // different compression): they are the same image ID.
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            _ => {
                let ids: BTreeSet<Digest> = found
                    .iter()
                    .filter_map(|d| self.image_at(d).ok().map(|r| r.id))
                    .collect();
                if ids.len() == 1 {
                    Ok(found.into_iter().next())
                } else {
                    Err(StoreError::AmbiguousId(hexpart.to_string()))
                }
            }
        }
    }

    /// Lists images, newest first. Incomplete or unreadable entries (which
    /// fsck reports) are skipped rather than failing the listing.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let idx = self.read_index()?;
        let mut by_digest: BTreeMap<Digest, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (k, d) in &idx.refs {
            let e = by_digest.entry(*d).or_default();
            if k.contains('@') {
                e.1.push(k.clone());
            } else {
                e.0.push(k.clone());
            }
        }
        for d in &idx.untagged {
            by_digest.entry(*d).or_default();
        }
        let mut out = Vec::new();
        for (d, (tags, digests)) in by_digest {
            let Ok(rec) = self.image_at(&d) else {
                tracing::warn!(digest = %d, "skipping incomplete image in listing");
                continue;
            };
            out.push(ImageSummary {
                repo_tags: tags,
                repo_digests: digests,
                id: rec.id,
                digest: d,
                created: rec.config.created().clone(),
                size: rec.size(),
            });
        }
        out.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.repo_tags.cmp(&b.repo_tags))
        });
        Ok(out)
    }

    /// Everything about one image.
    pub fn inspect(&self, spec: &str) -> Result<ImageInfo> {
        let idx = self.read_index()?;
        let digest = self.lookup(&idx, spec)?;
        let rec = self.image_at(&digest)?;
        let (mut repo_tags, mut repo_digests) = (Vec::new(), Vec::new());
        for (k, d) in &idx.refs {
            if *d == digest {
                if k.contains('@') {
                    repo_digests.push(k.clone());
                } else {
                    repo_tags.push(k.clone());
                }
            }
        }
        Ok(ImageInfo {
            repo_tags,
            repo_digests,
            id: rec.id,
            digest,
            manifest_digest: rec.manifest_digest,
            manifest_media_type: rec.manifest_media_type.clone(),
            layers: rec.manifest.layers.clone(),
            diff_ids: rec.diff_ids.clone(),
            created: rec.config.created().clone(),
            platform: format!("{}/{}", rec.config.os(), rec.config.architecture()),
            config: rec.image_config(),
            size: rec.size(),
        })
    }

    /// Removes an image like `docker rmi`: by name, the name goes (and the
    /// image with it if it was its last name); by ID, every name of that
    /// image goes (only with `force` if there are several). An image for
    /// which `in_use` says true is kept unless `force`. Content no longer
    /// referenced is deleted right away (blobs, root disk).
    pub fn remove(
        &self,
        spec: &str,
        force: bool,
        in_use: &dyn Fn(&ImageId) -> bool,
    ) -> Result<RemoveReport> {
        let lock = self.lock(true)?;
        let mut idx = self.read_index()?;
        let mut report = RemoveReport::default();
        let (keys, digest): (Vec<String>, Digest) = match self.find(&idx, spec)? {
            Found::Id(d) => {
                let id = self.image_at(&d).map(|r| r.id).ok();
                // Every root that has this image ID (or is this digest).
                let roots: BTreeSet<Digest> = idx
                    .roots()
                    .into_iter()
                    .filter(|r| {
                        *r == d || (id.is_some() && self.image_at(r).ok().map(|x| x.id) == id)
                    })
                    .collect();
                let keys: Vec<String> = idx
                    .refs
                    .iter()
                    .filter(|(_, v)| roots.contains(v))
                    .map(|(k, _)| k.clone())
                    .collect();
                let repos: BTreeSet<String> = keys.iter().map(|k| key_repository(k)).collect();
                if repos.len() > 1 && !force {
                    return Err(StoreError::MultipleNames {
                        id: id.unwrap_or(d),
                        names: keys.join(", "),
                    });
                }
                for r in &roots {
                    idx.untagged.remove(r);
                }
                (keys, d)
            }
            Found::Name(key, d) => (vec![key], d),
        };
        let id = self.image_at(&digest).map(|r| r.id).unwrap_or(digest);
        let remaining = idx
            .refs
            .iter()
            .filter(|(k, v)| **v == digest && !keys.contains(k))
            .count();
        if remaining == 0 && in_use(&id) && !force {
            return Err(StoreError::InUse {
                reference: spec.to_string(),
                id,
            });
        }
        let mut candidates: BTreeSet<Digest> = BTreeSet::new();
        for k in &keys {
            if let Some(d) = idx.refs.remove(k) {
                candidates.insert(d);
                report.untagged.push(k.clone());
            }
        }
        candidates.insert(digest);
        let still_rooted: BTreeSet<Digest> = idx.roots().into_iter().collect();
        for c in &candidates {
            if !still_rooted.contains(c) {
                if let Ok(r) = self.image_at(c) {
                    if !report.deleted.contains(&r.id) {
                        report.deleted.push(r.id);
                    }
                }
            }
        }
        self.write_index(&idx)?;
        report.pruned = self.collect_garbage(&lock)?;
        Ok(report)
    }

    /// Garbage collection: deletes blobs and root disks that no name, no
    /// untagged image and no live lease references, stale leases and
    /// orphaned temp files. With `untagged_images`, untagged images are
    /// dropped first, except those `in_use` reports.
    pub fn prune(
        &self,
        untagged_images: bool,
        in_use: &dyn Fn(&ImageId) -> bool,
    ) -> Result<PruneReport> {
        let lock = self.lock(true)?;
        let mut removed = Vec::new();
        if untagged_images {
            let mut idx = self.read_index()?;
            let before = idx.untagged.clone();
            idx.untagged.retain(|d| {
                let id = self.image_at(d).map(|r| r.id).unwrap_or(*d);
                in_use(&id)
            });
            removed = before.difference(&idx.untagged).copied().collect();
            self.write_index(&idx)?;
        }
        let mut report = self.collect_garbage(&lock)?;
        report.images_removed = removed;
        Ok(report)
    }

    /// Starts a lease: blobs and disks written under it are safe from GC
    /// until it is dropped (or its process dies).
    pub fn lease(&self) -> Result<Lease> {
        Lease::create(self)
    }

    /// All names, sorted, with the digest each points at.
    pub fn references(&self) -> Result<Vec<(String, Digest)>> {
        Ok(self.read_index()?.refs.into_iter().collect())
    }
}

/// What a user-given image spec designates.
enum Found {
    /// A name (index key) and the digest it points at.
    Name(String, Digest),
    /// An image by ID or digest.
    Id(Digest),
}

/// `docker.io/library/x` from `docker.io/library/x:tag` or `...@sha256:..`.
fn key_repository(key: &str) -> String {
    if let Some((r, _)) = key.split_once('@') {
        return r.to_string();
    }
    match (key.rfind(':'), key.rfind('/')) {
        (Some(c), Some(s)) if c > s => key[..c].to_string(),
        (Some(c), None) => key[..c].to_string(),
        _ => key.to_string(),
    }
}
