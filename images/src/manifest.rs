//! Manifests, indexes, descriptors and image configs as they travel
//! between registries, archives and the store.
//!
//! The store keeps these documents as the exact bytes received (so digests
//! and push round trips hold); the types here are the parsed views. They
//! accept both OCI and Docker schema 2 documents, which share a shape and
//! differ in media types only.

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media types the store understands.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index (multi-platform list).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// OCI non-distributable layers (deprecated, still seen).
    pub const OCI_LAYER_ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// OCI non-distributable gzip layer.
    pub const OCI_LAYER_ND_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// OCI non-distributable zstd layer.
    pub const OCI_LAYER_ND_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (written by `docker save` since Docker 25).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker foreign (Windows base) layer.
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
}

/// Largest manifest or index accepted (Docker and containerd use 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted. Configs carry history and labels; 8 MiB
/// is far above anything real and still bounds memory for hostile input.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// Errors from parsing manifests and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON or not the expected shape.
    #[error("invalid {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A media type the store cannot handle.
    #[error("unsupported media type {media_type:?} for {what}; supported are OCI and Docker schema 2 images (schema 1 manifests must be converted, e.g. re-pushed with a current client)")]
    UnsupportedMediaType {
        /// Which document or layer.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A schema version other than 2.
    #[error(
        "unsupported manifest schemaVersion {0}; only schema 2 (OCI / Docker v2) is supported"
    )]
    SchemaVersion(u32),
    /// Config os/architecture is not linux/amd64.
    #[error("image platform is {os}/{arch}{}, but mvm runs linux/amd64 images only; build or pull the linux/amd64 variant", variant.as_deref().map(|v| format!("/{v}")).unwrap_or_default())]
    WrongPlatform {
        /// Config `os`.
        os: String,
        /// Config `architecture`.
        arch: String,
        /// Config `variant`, if any.
        variant: Option<String>,
    },
    /// Layer count and diff_id count disagree.
    #[error("image config lists {diff_ids} diff_ids but the manifest has {layers} layers; the image is malformed")]
    LayerCountMismatch {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A diff_id is not a sha256 digest.
    #[error("image config has invalid diff_id {0:?}")]
    BadDiffId(String),
    /// An index has no linux/amd64 manifest.
    #[error("image index has no linux/amd64 manifest (platforms: {0}); mvm runs linux/amd64 images only")]
    NoMatchingPlatform(String),
}

/// A content descriptor (OCI `descriptor`), used in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternative download URLs (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor with no annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    /// An annotation value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A platform in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version.
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// True for the one platform mvm runs.
    pub fn is_linux_amd64(&self) -> bool {
        self.os == "linux" && self.architecture == "amd64"
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, lowest first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Index {
    /// The linux/amd64 entry: the first with that platform, or the only
    /// entry if it states no platform (single-image OCI layouts).
    pub fn pick_linux_amd64(&self) -> Result<&Descriptor, ManifestError> {
        if let Some(d) = self
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(Platform::is_linux_amd64))
        {
            return Ok(d);
        }
        if self.manifests.len() == 1 && self.manifests[0].platform.is_none() {
            return Ok(&self.manifests[0]);
        }
        let platforms: Vec<String> = self
            .manifests
            .iter()
            .map(|d| match &d.platform {
                Some(p) => format!("{}/{}", p.os, p.architecture),
                None => "unspecified".to_string(),
            })
            .collect();
        Err(ManifestError::NoMatchingPlatform(platforms.join(", ")))
    }
}

/// A parsed manifest-like document.
// Short-lived (parsed, inspected, dropped): boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// A single-platform image.
    Image(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// True for media types that name an image manifest.
pub fn is_manifest_type(mt: &str) -> bool {
    mt == media_type::OCI_MANIFEST || mt == media_type::DOCKER_MANIFEST
}

/// True for media types that name an index.
pub fn is_index_type(mt: &str) -> bool {
    mt == media_type::OCI_INDEX || mt == media_type::DOCKER_MANIFEST_LIST
}

/// True for config media types.
pub fn is_config_type(mt: &str) -> bool {
    mt == media_type::OCI_CONFIG || mt == media_type::DOCKER_CONFIG
}

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer media type declares, or an error for media
/// types that are not tar layers.
pub fn layer_compression(mt: &str) -> Result<Compression, ManifestError> {
    use media_type::*;
    match mt {
        OCI_LAYER_TAR | OCI_LAYER_ND_TAR | DOCKER_LAYER_TAR => Ok(Compression::None),
        OCI_LAYER_GZIP | OCI_LAYER_ND_GZIP | DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP => {
            Ok(Compression::Gzip)
        }
        OCI_LAYER_ZSTD | OCI_LAYER_ND_ZSTD => Ok(Compression::Zstd),
        other => Err(ManifestError::UnsupportedMediaType {
            what: "layer".into(),
            media_type: other.to_string(),
        }),
    }
}

/// Parses a manifest or index, detecting which by `mediaType` or, when
/// absent (allowed by OCI), by shape. `declared` is the media type the
/// document arrived with (HTTP Content-Type or descriptor), if known.
pub fn parse_manifest(bytes: &[u8], declared: Option<&str>) -> Result<ManifestKind, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: "manifest",
        source,
    })?;
    let sv = probe.schema_version.unwrap_or(0);
    if sv != 2 {
        return Err(ManifestError::SchemaVersion(sv));
    }
    let mt = probe
        .media_type
        .clone()
        .or_else(|| declared.map(str::to_string))
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                media_type::OCI_INDEX.to_string()
            } else if probe.config.is_some() {
                media_type::OCI_MANIFEST.to_string()
            } else {
                String::new()
            }
        });
    if is_manifest_type(&mt) {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image manifest",
            source,
        })?;
        if !is_config_type(&m.config.media_type) {
            return Err(ManifestError::UnsupportedMediaType {
                what: "image config".into(),
                media_type: m.config.media_type.clone(),
            });
        }
        for l in &m.layers {
            layer_compression(&l.media_type)?;
        }
        Ok(ManifestKind::Image(m))
    } else if is_index_type(&mt) {
        let i: Index = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image index",
            source,
        })?;
        Ok(ManifestKind::Index(i))
    } else {
        Err(ManifestError::UnsupportedMediaType {
            what: "manifest".into(),
            media_type: mt,
        })
    }
}

/// The media type of a stored manifest document (its `mediaType` field,
/// or OCI by shape when absent).
pub fn manifest_media_type(bytes: &[u8]) -> Result<String, ManifestError> {
    Ok(match parse_manifest(bytes, None)? {
        ManifestKind::Image(m) => m
            .media_type
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string()),
        ManifestKind::Index(i) => i
            .media_type
            .unwrap_or_else(|| media_type::OCI_INDEX.to_string()),
    })
}

/// Parses an image config and checks its platform is linux/amd64.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ManifestError> {
    let cfg: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image config",
            source,
        })?;
    let os = cfg.os().to_string();
    let arch = cfg.architecture().to_string();
    if os != "linux" || arch != "amd64" {
        return Err(ManifestError::WrongPlatform {
            os,
            arch,
            variant: cfg.variant().clone(),
        });
    }
    Ok(cfg)
}

/// The config's diff_ids (uncompressed layer digests), validated.
pub fn diff_ids(cfg: &ImageConfiguration) -> Result<Vec<Digest>, ManifestError> {
    cfg.rootfs()
        .diff_ids()
        .iter()
        .map(|s| s.parse().map_err(|_| ManifestError::BadDiffId(s.clone())))
        .collect()
}

/// What the runtime needs from an image config to start its process, as
/// `docker run` derives it. Every field is as the image states it; the
/// runtime applies its own defaults (e.g. `/` for an empty working dir).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD (arguments to the entrypoint, or the command if no entrypoint).
    pub cmd: Vec<String>,
    /// ENV, `KEY=value`.
    pub env: Vec<String>,
    /// WORKDIR; empty means `/`.
    pub working_dir: String,
    /// USER (`name`, `uid`, `uid:gid`, `name:group`); empty means root.
    pub user: String,
    /// EXPOSE, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// VOLUME paths.
    pub volumes: Vec<String>,
    /// LABELs.
    pub labels: BTreeMap<String, String>,
    /// STOPSIGNAL, e.g. `SIGTERM`; empty means the runtime default.
    pub stop_signal: String,
}

impl ImageConfig {
    /// Extracts the process defaults from a parsed config.
    pub fn from_configuration(cfg: &ImageConfiguration) -> Self {
        let Some(c) = cfg.config() else {
            return ImageConfig::default();
        };
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            volumes: c.volumes().clone().unwrap_or_default(),
            labels: c
                .labels()
                .clone()
                .map(|m| m.into_iter().collect())
                .unwrap_or_default(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
        }
    }

    /// The argv the image runs by default: ENTRYPOINT followed by CMD.
    pub fn default_argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_from_docker_config() {
        let json = br#"{"architecture":"amd64","os":"linux",
          "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin"],
          "WorkingDir":"/app","User":"1000:1000","ExposedPorts":{"80/tcp":{}},
          "Volumes":{"/data":{}},"Labels":{"a":"b"},"StopSignal":"SIGINT"},
          "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg = parse_config(json).unwrap();
        let ic = ImageConfig::from_configuration(&cfg);
        assert_eq!(ic.default_argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(ic.exposed_ports, ["80/tcp"]);
        assert_eq!(ic.volumes, ["/data"]);
        assert_eq!(ic.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(ic.stop_signal, "SIGINT");
        assert_eq!(ic.user, "1000:1000");
        assert_eq!(ic.working_dir, "/app");
    }

    #[test]
    fn wrong_platform_is_refused() {
        let json = br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let e = parse_config(json).unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8"), "{e}");
    }

    #[test]
    fn manifest_kinds() {
        let d = Digest::of(b"c");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{d}","size":1}},"layers":[]}}"#,
            media_type::OCI_CONFIG
        );
        assert!(matches!(
            parse_manifest(m.as_bytes(), None),
            Ok(ManifestKind::Image(_))
        ));
        let bad = m.replace(media_type::OCI_CONFIG, "text/plain");
        assert!(matches!(
            parse_manifest(bad.as_bytes(), None),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse_manifest(v1, None),
            Err(ManifestError::SchemaVersion(1))
        ));
        let neg = m.replace("\"size\":1", "\"size\":-1");
        assert!(parse_manifest(neg.as_bytes(), None).is_err());
    }
}
