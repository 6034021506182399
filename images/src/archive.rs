//! Image archives: `docker save` / OCI-layout tarballs in and out, and
//! `docker import`-style root filesystem tarballs.
//!
//! Loading streams the archive once: every file that can be content goes
//! straight into the store under a lease (files under `blobs/sha256/` are
//! verified against their names as they are written), the small metadata
//! files (`manifest.json`, `index.json`, `oci-layout`, `repositories`)
//! are kept in memory. Then the images are assembled and checked (complete,
//! linux/amd64, uncompressed layers hash to their diff_ids), and only when
//! all of them are good are they tagged. Any failure leaves the store as it
//! was: nothing tagged, and the blobs this load created are deleted again.
//!
//! Formats read:
//! - OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`), as
//!   written by skopeo, buildah, containerd and `docker save` >= 25. Names
//!   come from the `io.containerd.image.name` annotation, or from
//!   `org.opencontainers.image.ref.name` when it is a full reference (a bare
//!   tag needs [`LoadOptions::default_repository`]). An index entry that is
//!   itself an index resolves to its linux/amd64 manifest, which is what
//!   gets tagged.
//! - Legacy docker-archive (`manifest.json` with `Config`, `RepoTags`,
//!   `Layers`; `<id>/layer.tar` or any other layer file names, symlinked
//!   duplicates). A manifest with OCI media types is synthesised; its
//!   layers keep the archive's bytes (usually uncompressed) so the layer
//!   digests equal the diff_ids Docker computed.
//!
//! Formats written: OCI layout, or docker-archive in Docker 25's combined
//! layout (an OCI layout plus `manifest.json` pointing into `blobs/`), which
//! both old and new `docker load`, skopeo and this loader read. Blobs are
//! written exactly as stored, so digests survive a save/load round trip.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

use oci_spec::image::Config;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::fsutil;
use crate::layer;
use crate::manifest::{
    self, media_type, Compression, Descriptor, ManifestError, ManifestKind, MAX_MANIFEST_SIZE,
};
use crate::reference::{valid_tag, Reference, ReferenceError};
use crate::store::{BlobInfo, Expected, ImageId, ImageRecord, Lease, Store, StoreError};

/// Largest metadata file (`manifest.json`, `index.json`...) read.
const MAX_METADATA_SIZE: u64 = 16 << 20;
/// Annotation containerd and Docker use for the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation for the reference name in a layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors from loading, saving and importing archives.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tarball is corrupt or truncated.
    #[error("the archive is corrupt or truncated {}: {source}; check the file is complete (re-save or re-download it)", after.as_deref().map(|e| format!("in or after entry {e:?}")).unwrap_or_else(|| "at its start".into()))]
    Corrupt {
        /// The last entry read.
        after: Option<String>,
        /// The error.
        source: io::Error,
    },
    /// Neither docker nor OCI layout metadata found.
    #[error("not an image archive: no manifest.json (docker-archive) or oci-layout + index.json (OCI layout) found; for a plain root filesystem tarball use import instead")]
    NotAnArchive,
    /// A metadata file is invalid.
    #[error("invalid {file} in the archive: {reason}")]
    Invalid {
        /// Which file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file referenced by the metadata is missing.
    #[error("the archive's {referenced_by} refers to {path:?}, which is not in the archive")]
    Missing {
        /// Which metadata.
        referenced_by: String,
        /// The missing path or digest.
        path: String,
    },
    /// An uncompressed layer does not match its diff_id.
    #[error("layer {path:?} hashes to {actual} but the image config gives diff_id {expected}; the archive is corrupt")]
    DiffIdMismatch {
        /// Archive path.
        path: String,
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// Invalid manifest or config.
    #[error("{what}: {source}")]
    Manifest {
        /// Which document.
        what: String,
        /// The problem.
        source: ManifestError,
    },
    /// An invalid name in the archive or the options.
    #[error("invalid image name {name:?} in {what}: {source}")]
    Name {
        /// Where it came from.
        what: String,
        /// The name.
        name: String,
        /// The problem.
        source: ReferenceError,
    },
    /// `tag_as` with several images.
    #[error(
        "the archive holds {0} images; a single name can only be given to a one-image archive"
    )]
    TagAsMultiple(usize),
    /// A root filesystem tarball is not a valid tar.
    #[error("the root filesystem tarball is corrupt or truncated: {0}")]
    BadRootfs(layer::LayerError),
    /// Writing the output failed.
    #[error("writing the archive failed: {0}")]
    Write(io::Error),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// Archive flavour for [`Store::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save` layout (OCI layout plus `manifest.json`).
    Docker,
    /// Plain OCI image layout.
    Oci,
}

/// Options for [`Store::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Repository for OCI entries whose `ref.name` is a bare tag.
    pub default_repository: Option<Reference>,
    /// An extra name for the image of a one-image archive.
    pub tag_as: Option<Reference>,
}

/// An image that [`Store::load`] or [`Store::import`] stored.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedImage {
    /// The digest the names point at.
    pub digest: Digest,
    /// The image ID.
    pub id: ImageId,
    /// Names given (empty: stored untagged).
    pub names: Vec<String>,
}

/// Options for [`Store::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Process defaults (CMD, ENV, ...), like `docker import --change`.
    pub config: Option<Config>,
    /// Config `created` (RFC 3339); default now.
    pub created: Option<String>,
    /// History comment, like `docker import --message`.
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// An image assembled from an archive, ready to be tagged.
struct Pending {
    digest: Digest,
    record: ImageRecord,
    names: Vec<Reference>,
}

/// A reader that fails instead of ending early: tar entries of a truncated
/// archive otherwise just end short.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry data ends {} bytes early", self.remaining),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Lexically normalises an archive path (`./a/../b` -> `b`).
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

struct Streamed {
    meta: HashMap<String, Vec<u8>>,
    files: HashMap<String, BlobInfo>,
    links: HashMap<String, String>,
}

impl Streamed {
    fn resolve(&self, path: &str) -> Option<BlobInfo> {
        let mut p = normalize(path);
        for _ in 0..16 {
            if let Some(b) = self.files.get(&p) {
                return Some(*b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

impl Store {
    /// Loads every image of a docker-archive or OCI-layout tarball. All or
    /// nothing: on error no name changes and the blobs this load added are
    /// removed again.
    pub fn load(&self, reader: impl Read, opts: &LoadOptions) -> Result<Vec<LoadedImage>> {
        let lease = self.lease()?;
        let result = self.load_with(&lease, reader, opts);
        // On success everything the new names use is referenced and stays;
        // archive by-products (legacy `<id>/json` files...) go.
        let cleanup = lease.discard_unreferenced();
        let loaded = result?;
        cleanup?;
        Ok(loaded)
    }

    fn load_with(
        &self,
        lease: &Lease,
        reader: impl Read,
        opts: &LoadOptions,
    ) -> Result<Vec<LoadedImage>> {
        let streamed = self.stream_archive(lease, reader)?;
        let mut pending = if streamed.meta.contains_key("index.json") {
            if !streamed.meta.contains_key("oci-layout") {
                return Err(ArchiveError::Missing {
                    referenced_by: "index.json".into(),
                    path: "oci-layout".into(),
                });
            }
            self.assemble_oci(lease, &streamed, opts)?
        } else if streamed.meta.contains_key("manifest.json") {
            self.assemble_docker(lease, &streamed)?
        } else {
            return Err(ArchiveError::NotAnArchive);
        };
        if let Some(extra) = &opts.tag_as {
            if pending.len() != 1 {
                return Err(ArchiveError::TagAsMultiple(pending.len()));
            }
            pending[0].names.push(extra.clone());
        }
        let mut out = Vec::new();
        for p in pending {
            for n in &p.names {
                self.tag(n, &p.digest)?;
            }
            if p.names.is_empty() {
                self.add_untagged(&p.digest)?;
            }
            out.push(LoadedImage {
                digest: p.digest,
                id: p.record.id,
                names: p.names.iter().map(|n| n.to_string()).collect(),
            });
        }
        Ok(out)
    }

    fn stream_archive(&self, lease: &Lease, reader: impl Read) -> Result<Streamed> {
        let mut s = Streamed {
            meta: HashMap::new(),
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let mut archive = tar::Archive::new(reader);
        let mut last: Option<String> = None;
        let corrupt = |last: &Option<String>, source| ArchiveError::Corrupt {
            after: last.clone(),
            source,
        };
        let entries = archive.entries().map_err(|e| corrupt(&last, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(&last, e))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = normalize(&raw);
            let kind = entry.header().entry_type();
            let size = entry.size();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if matches!(
                        path.as_str(),
                        "manifest.json" | "index.json" | "oci-layout" | "repositories"
                    ) {
                        if size > MAX_METADATA_SIZE {
                            return Err(ArchiveError::Invalid {
                                file: path,
                                reason: format!("larger than {MAX_METADATA_SIZE} bytes"),
                            });
                        }
                        let mut buf = Vec::with_capacity(size as usize);
                        ExactReader {
                            inner: &mut entry,
                            remaining: size,
                        }
                        .read_to_end(&mut buf)
                        .map_err(|e| corrupt(&Some(raw.clone()), e))?;
                        s.meta.insert(path, buf);
                    } else {
                        let expected = path
                            .strip_prefix("blobs/sha256/")
                            .map(|hex| {
                                Digest::from_hex(hex).map_err(|_| ArchiveError::Invalid {
                                    file: raw.clone(),
                                    reason: "blob file name is not a sha256 digest".into(),
                                })
                            })
                            .transpose()?
                            .map(|digest| Expected {
                                digest,
                                size: Some(size),
                            });
                        let r = ExactReader {
                            inner: &mut entry,
                            remaining: size,
                        };
                        let info = match self.put_blob(lease, expected, r) {
                            Ok(i) => i,
                            Err(StoreError::Source { source, .. }) => {
                                return Err(corrupt(&Some(raw.clone()), source))
                            }
                            Err(e) => return Err(e.into()),
                        };
                        s.files.insert(path, info);
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let resolved = if kind == tar::EntryType::Link {
                        normalize(&target)
                    } else {
                        let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        normalize(&format!("{dir}/{target}"))
                    };
                    s.links.insert(path, resolved);
                }
                _ => {}
            }
            last = Some(raw);
        }
        Ok(s)
    }

    fn assemble_oci(
        &self,
        lease: &Lease,
        s: &Streamed,
        opts: &LoadOptions,
    ) -> Result<Vec<Pending>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        let layout: Layout =
            serde_json::from_slice(&s.meta["oci-layout"]).map_err(|e| ArchiveError::Invalid {
                file: "oci-layout".into(),
                reason: e.to_string(),
            })?;
        if !layout.image_layout_version.starts_with("1.") {
            return Err(ArchiveError::Invalid {
                file: "oci-layout".into(),
                reason: format!(
                    "unsupported imageLayoutVersion {:?} (1.x is supported)",
                    layout.image_layout_version
                ),
            });
        }
        let index: manifest::Index =
            serde_json::from_slice(&s.meta["index.json"]).map_err(|e| ArchiveError::Invalid {
                file: "index.json".into(),
                reason: e.to_string(),
            })?;
        // Legacy names from manifest.json (docker save >= 25), by config.
        let mut docker_names: HashMap<Digest, Vec<String>> = HashMap::new();
        if let Some(mj) = s.meta.get("manifest.json") {
            if let Ok(entries) = serde_json::from_slice::<Vec<DockerManifestEntry>>(mj) {
                for e in entries {
                    if let Some(cfg) = s.resolve(&e.config) {
                        docker_names
                            .entry(cfg.digest)
                            .or_default()
                            .extend(e.repo_tags.unwrap_or_default());
                    }
                }
            }
        }
        let mut by_digest: BTreeMap<Digest, Pending> = BTreeMap::new();
        for desc in &index.manifests {
            if !self.has_blob(&desc.digest) {
                return Err(ArchiveError::Missing {
                    referenced_by: "index.json".into(),
                    path: format!("blobs/sha256/{}", desc.digest.hex()),
                });
            }
            lease.pin_blob(&desc.digest)?;
            let (kind, _) = self.read_manifest(&desc.digest)?;
            let target = match kind {
                ManifestKind::Image(_) => desc.digest,
                ManifestKind::Index(i) => {
                    let child = i
                        .pick_linux_amd64()
                        .map_err(|source| ArchiveError::Manifest {
                            what: format!("index {}", desc.digest),
                            source,
                        })?;
                    child.digest
                }
            };
            let record = self.image_at(&target)?;
            self.verify_uncompressed_layers(&record)?;
            let mut names = Vec::new();
            let mut push = |r: Reference| {
                if !names.contains(&r) {
                    names.push(r);
                }
            };
            if let Some(n) = desc.annotation(ANNOTATION_IMAGE_NAME) {
                push(parse_name(n, "index.json annotation")?);
            }
            if let Some(n) = desc.annotation(ANNOTATION_REF_NAME) {
                if n.contains(['/', ':', '@']) {
                    push(parse_name(n, "index.json ref.name")?);
                } else if let Some(repo) = &opts.default_repository {
                    if valid_tag(n) {
                        push(repo.with_tag(n).map_err(|source| ArchiveError::Name {
                            what: "index.json ref.name".into(),
                            name: n.to_string(),
                            source,
                        })?);
                    }
                }
            }
            for n in docker_names.get(&record.id).into_iter().flatten() {
                push(parse_name(n, "manifest.json RepoTags")?);
            }
            match by_digest.get_mut(&target) {
                Some(p) => {
                    for n in names {
                        if !p.names.contains(&n) {
                            p.names.push(n);
                        }
                    }
                }
                None => {
                    by_digest.insert(
                        target,
                        Pending {
                            digest: target,
                            record,
                            names,
                        },
                    );
                }
            }
        }
        Ok(by_digest.into_values().collect())
    }

    fn assemble_docker(&self, lease: &Lease, s: &Streamed) -> Result<Vec<Pending>> {
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&s.meta["manifest.json"])
            .map_err(|e| ArchiveError::Invalid {
                file: "manifest.json".into(),
                reason: e.to_string(),
            })?;
        if entries.is_empty() {
            return Err(ArchiveError::Invalid {
                file: "manifest.json".into(),
                reason: "lists no images".into(),
            });
        }
        // Old archives name images only in `repositories`: repo -> tag ->
        // top layer id (the directory of the last layer).
        let repositories: BTreeMap<String, BTreeMap<String, String>> = s
            .meta
            .get("repositories")
            .and_then(|r| serde_json::from_slice(r).ok())
            .unwrap_or_default();
        let mut out: Vec<Pending> = Vec::new();
        for e in entries {
            let missing = |p: &str| ArchiveError::Missing {
                referenced_by: "manifest.json".into(),
                path: p.to_string(),
            };
            let cfg = s.resolve(&e.config).ok_or_else(|| missing(&e.config))?;
            let cfg_bytes = self.read_blob(&cfg.digest, manifest::MAX_CONFIG_SIZE)?;
            let config =
                manifest::parse_config(&cfg_bytes).map_err(|source| ArchiveError::Manifest {
                    what: format!("image config {}", e.config),
                    source,
                })?;
            let diff_ids =
                manifest::diff_ids(&config).map_err(|source| ArchiveError::Manifest {
                    what: format!("image config {}", e.config),
                    source,
                })?;
            if diff_ids.len() != e.layers.len() {
                return Err(ArchiveError::Manifest {
                    what: "manifest.json".into(),
                    source: ManifestError::LayerCountMismatch {
                        layers: e.layers.len(),
                        diff_ids: diff_ids.len(),
                    },
                });
            }
            let mut layers = Vec::new();
            for (path, diff_id) in e.layers.iter().zip(&diff_ids) {
                let info = s.resolve(path).ok_or_else(|| missing(path))?;
                let compression = {
                    let f = self.open_blob(&info.digest)?;
                    layer::decompress(f, None)
                        .map_err(|source| ArchiveError::Corrupt {
                            after: Some(path.clone()),
                            source,
                        })?
                        .1
                };
                let mt = match compression {
                    Compression::None => {
                        if info.digest != *diff_id {
                            return Err(ArchiveError::DiffIdMismatch {
                                path: path.clone(),
                                expected: *diff_id,
                                actual: info.digest,
                            });
                        }
                        media_type::OCI_LAYER_TAR
                    }
                    Compression::Gzip => media_type::OCI_LAYER_GZIP,
                    Compression::Zstd => media_type::OCI_LAYER_ZSTD,
                };
                layers.push(Descriptor::new(mt, info.digest, info.size));
            }
            let m = manifest::Manifest {
                schema_version: 2,
                media_type: Some(media_type::OCI_MANIFEST.to_string()),
                config: Descriptor::new(media_type::OCI_CONFIG, cfg.digest, cfg.size),
                layers,
                annotations: None,
            };
            let bytes = serde_json::to_vec(&m).expect("manifest serialises");
            let (info, _) = self.put_manifest(lease, None, &bytes)?;
            let record = self.image_at(&info.digest)?;
            let mut names = Vec::new();
            for t in e.repo_tags.iter().flatten() {
                let r = parse_name(t, "manifest.json RepoTags")?;
                if !names.contains(&r) {
                    names.push(r);
                }
            }
            if names.is_empty() {
                let top = e
                    .layers
                    .last()
                    .and_then(|l| normalize(l).rsplit_once('/').map(|(d, _)| d.to_string()));
                for (repo, tags) in &repositories {
                    for (tag, id) in tags {
                        if Some(id) == top.as_ref() {
                            names.push(parse_name(&format!("{repo}:{tag}"), "repositories")?);
                        }
                    }
                }
            }
            out.push(Pending {
                digest: info.digest,
                record,
                names,
            });
        }
        Ok(out)
    }

    /// Uncompressed layers are their own diff_id: check it now, so a
    /// corrupt archive fails at load rather than at first run.
    fn verify_uncompressed_layers(&self, rec: &ImageRecord) -> Result<()> {
        for (l, diff_id) in rec.manifest.layers.iter().zip(&rec.diff_ids) {
            if manifest::layer_compression(&l.media_type).ok() == Some(Compression::None)
                && l.digest != *diff_id
            {
                return Err(ArchiveError::DiffIdMismatch {
                    path: format!("blobs/sha256/{}", l.digest.hex()),
                    expected: *diff_id,
                    actual: l.digest,
                });
            }
        }
        Ok(())
    }

    /// Writes the images `specs` name (names or IDs) as one archive.
    pub fn save(&self, specs: &[&str], format: ArchiveFormat, writer: impl Write) -> Result<()> {
        let refs = self.references()?;
        let mut images: Vec<(ImageRecord, Vec<Reference>)> = Vec::new();
        for spec in specs {
            let rec = self.resolve(spec)?;
            // A name saves that name; an ID saves every name of the image.
            let names: Vec<Reference> = match Reference::parse(spec) {
                Ok(r) if refs.iter().any(|(k, _)| *k == r.index_key()) => vec![r],
                _ => refs
                    .iter()
                    .filter(|(_, d)| *d == rec.digest)
                    .filter_map(|(k, _)| Reference::parse(k).ok())
                    .collect(),
            };
            match images
                .iter_mut()
                .find(|(r, _)| r.manifest_digest == rec.manifest_digest)
            {
                Some((_, n)) => n.extend(names),
                None => images.push((rec, names)),
            }
        }
        let mut tar = tar::Builder::new(writer);
        tar.mode(tar::HeaderMode::Deterministic);
        let add = |tar: &mut tar::Builder<_>, path: &str, data: &mut dyn Read, size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, data)
                .map_err(ArchiveError::Write)
        };
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(
            &mut tar,
            "oci-layout",
            &mut &layout[..],
            layout.len() as u64,
        )?;
        let mut written = std::collections::HashSet::new();
        let mut index = manifest::Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        };
        let mut docker_manifest = Vec::new();
        for (rec, names) in &images {
            let mut blobs = vec![rec.manifest_digest, rec.manifest.config.digest];
            blobs.extend(rec.manifest.layers.iter().map(|l| l.digest));
            for d in blobs {
                if written.insert(d) {
                    let mut f = self.open_blob(&d)?;
                    let size = self.blob_size(&d)?;
                    add(&mut tar, &format!("blobs/sha256/{}", d.hex()), &mut f, size)?;
                }
            }
            let mdesc = Descriptor::new(
                &rec.manifest_media_type,
                rec.manifest_digest,
                self.blob_size(&rec.manifest_digest)?,
            );
            if names.is_empty() {
                index.manifests.push(mdesc.clone());
            }
            for n in names {
                let mut d = mdesc.clone();
                let mut ann = BTreeMap::new();
                ann.insert(ANNOTATION_IMAGE_NAME.to_string(), n.to_string());
                ann.insert(ANNOTATION_REF_NAME.to_string(), n.to_string());
                d.annotations = Some(ann);
                index.manifests.push(d);
            }
            docker_manifest.push(DockerManifestEntry {
                config: format!("blobs/sha256/{}", rec.manifest.config.digest.hex()),
                repo_tags: Some(
                    names
                        .iter()
                        .filter(|n| n.tag().is_some() && n.digest().is_none())
                        .map(|n| n.familiar())
                        .collect(),
                ),
                layers: rec
                    .manifest
                    .layers
                    .iter()
                    .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                    .collect(),
            });
        }
        let idx = serde_json::to_vec(&index).expect("index serialises");
        add(&mut tar, "index.json", &mut &idx[..], idx.len() as u64)?;
        if format == ArchiveFormat::Docker {
            let mj = serde_json::to_vec(&docker_manifest).expect("manifest.json serialises");
            add(&mut tar, "manifest.json", &mut &mj[..], mj.len() as u64)?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(ArchiveError::Write)
    }

    /// Creates a one-layer image from a root filesystem tarball (plain,
    /// gzip or zstd), like `docker import`. The layer is stored exactly as
    /// given, once checked with the rules it will be unpacked with (a
    /// tarball with `..` or absolute names, entries beneath a symlink, or
    /// hard links out of the tree is refused now rather than when a root
    /// disk is built). With no `reference`, the image is stored untagged.
    pub fn import(
        &self,
        reader: impl Read,
        reference: Option<&Reference>,
        opts: &ImportOptions,
    ) -> Result<LoadedImage> {
        let lease = self.lease()?;
        let result = self.import_with(&lease, reader, reference, opts);
        let cleanup = lease.discard_unreferenced();
        let loaded = result?;
        cleanup?;
        Ok(loaded)
    }

    fn import_with(
        &self,
        lease: &Lease,
        reader: impl Read,
        reference: Option<&Reference>,
        opts: &ImportOptions,
    ) -> Result<LoadedImage> {
        let layer = self.put_blob(lease, None, reader)?;
        let (diff_id, compression) = {
            let f = self.open_blob(&layer.digest)?;
            let (plain, c) = layer::decompress(f, None).map_err(|e| {
                ArchiveError::BadRootfs(layer::LayerError::Archive {
                    after: None,
                    source: e,
                })
            })?;
            let mut hashing = HashingReader::new(plain);
            validate_tar(&mut hashing).map_err(ArchiveError::BadRootfs)?;
            let (d, _) = hashing.drain_and_finish().map_err(|e| {
                ArchiveError::BadRootfs(layer::LayerError::Archive {
                    after: Some("end of archive".into()),
                    source: e,
                })
            })?;
            (d, c)
        };
        let created = opts.created.clone().unwrap_or_else(fsutil::now_rfc3339);
        let mut history = serde_json::json!({"created": created, "created_by": "mvm import"});
        if let Some(m) = &opts.message {
            history["comment"] = serde_json::Value::String(m.clone());
        }
        let mut config = serde_json::json!({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
            "history": [history],
        });
        if let Some(c) = &opts.config {
            config["config"] = serde_json::to_value(c).expect("config serialises");
        }
        let cfg_bytes = serde_json::to_vec(&config).expect("config serialises");
        let cfg = self.put_blob_bytes(lease, None, &cfg_bytes)?;
        let mt = match compression {
            Compression::None => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        };
        let m = manifest::Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_string()),
            config: Descriptor::new(media_type::OCI_CONFIG, cfg.digest, cfg.size),
            layers: vec![Descriptor::new(mt, layer.digest, layer.size)],
            annotations: None,
        };
        let bytes = serde_json::to_vec(&m).expect("manifest serialises");
        debug_assert!(bytes.len() as u64 <= MAX_MANIFEST_SIZE);
        let (info, _) = self.put_manifest(lease, None, &bytes)?;
        let rec = match reference {
            Some(r) => self.tag(r, &info.digest)?,
            None => self.add_untagged(&info.digest)?,
        };
        Ok(LoadedImage {
            digest: info.digest,
            id: rec.id,
            names: reference.map(|r| vec![r.to_string()]).unwrap_or_default(),
        })
    }
}

fn parse_name(n: &str, what: &str) -> Result<Reference> {
    Reference::parse(n).map_err(|source| ArchiveError::Name {
        what: what.to_string(),
        name: n.to_string(),
        source,
    })
}

/// Reads a rootfs tar stream to its end and checks it with the rules its
/// layer will be unpacked with (`mvm_unpack`'s layer preset: names, entry
/// types, hard links, limits, complete data), so that a tarball the root
/// disk build would refuse is refused now, naming the entry. Nothing is
/// written anywhere: the clean re-serialisation goes to a sink.
fn validate_tar(r: &mut impl Read) -> Result<(), layer::LayerError> {
    let mut stats = mvm_unpack::Stats::default();
    mvm_unpack::sanitize(
        r,
        io::sink(),
        &layer::UnpackOptions::default().to_unpack(),
        &mut stats,
    )?;
    if stats.entries == 0 {
        return Err(layer::LayerError::Archive {
            after: None,
            source: io::Error::new(io::ErrorKind::InvalidData, "no entries: not a tar archive"),
        });
    }
    Ok(())
}
