//! Image endpoints' request and response bodies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `POST /v1/images/pull` and `POST /v1/images/push` body. Registry
/// credentials travel in the `X-Registry-Auth` header ([`crate::auth`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Image reference.
    pub reference: String,
    /// Allow plain HTTP (loopback registries only).
    #[serde(default)]
    pub insecure: bool,
    /// Pull: the platform to take from a multi-platform index
    /// (`linux/amd64`, the default, or `linux/amd64/v1`..`v4`; mvm runs
    /// nothing else, and asking for another platform fails naming what
    /// the image offers). Ignored by push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OCI platform `os/architecture[/variant]`, written as Docker's
/// `--platform` takes it and normalised as containerd does (`x86_64` ->
/// `amd64`, `aarch64` -> `arm64`, `arm64/v8` -> `arm64`; an architecture
/// alone means `linux/ARCH`, an OS alone `OS/amd64`). On the wire it is
/// that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v2`, or none.
    pub variant: Option<String>,
}

/// The longest platform string accepted.
const MAX_PLATFORM_LEN: usize = 128;

impl Platform {
    /// `linux/amd64`, the platform mvm runs.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// True for `linux/amd64` with no variant or `v1`..`v4`: what mvm
    /// can run.
    pub fn is_runnable(&self) -> bool {
        self.os == "linux"
            && self.architecture == "amd64"
            && self
                .variant
                .as_deref()
                .is_none_or(|v| matches!(v, "v1" | "v2" | "v3" | "v4"))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid platform {:?}: {why}; expected os/arch[/variant], e.g. linux/amd64",
                s.chars().take(MAX_PLATFORM_LEN).collect::<String>()
            )
        };
        if s.len() > MAX_PLATFORM_LEN {
            return Err(bad("too long"));
        }
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| {
            !p.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }) {
            return Err(bad("empty or invalid component"));
        }
        const OSES: [&str; 9] = [
            "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
            "android",
        ];
        let (os, arch, variant) = match parts[..] {
            [one] if OSES.contains(&one) => (one, "amd64", None),
            [one] => ("linux", one, None),
            [os, arch] => (os, arch, None),
            [os, arch, variant] => (os, arch, Some(variant)),
            _ => return Err(bad("too many components")),
        };
        let (arch, implied) = match arch {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            "i386" | "i686" => ("386", None),
            a => (a, None),
        };
        let variant = match (arch, variant.or(implied)) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        let os = if os == "macos" { "darwin" } else { os };
        Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant,
        })
    }
}

impl TryFrom<String> for Platform {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Platform> for String {
    fn from(p: Platform) -> String {
        p.to_string()
    }
}

/// The `result` of a pull: what `mvctl pull` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResult {
    /// The full reference pulled (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The manifest (or index) digest the reference now names.
    pub digest: String,
    /// The image ID (config digest).
    pub id: String,
    /// False if the reference already named this image before the pull.
    pub updated: bool,
    /// Docker's status line: `Downloaded newer image for REF` or `Image is
    /// up to date for REF`.
    pub status: String,
}

/// The `result` of a push: what `mvctl push` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    /// The full reference pushed.
    pub reference: String,
    /// The manifest digest the registry now has under the reference.
    pub digest: String,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Blobs linked from another repository of the registry.
    pub mounted: usize,
}

/// One NDJSON line of a pull/push/load/build progress stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// A build's event (`POST /v1/build`).
    Build {
        /// The event.
        event: crate::build::BuildEvent,
    },
    /// A phase message ("resolving docker.io/library/busybox:latest").
    Status {
        /// Text.
        message: String,
    },
    /// Bytes done of one item (a layer).
    Bytes {
        /// Item id (short digest).
        id: String,
        /// Bytes done.
        current: u64,
        /// Total bytes, when known.
        total: Option<u64>,
        /// What is happening to the item (`Downloading`, `Verifying`,
        /// `Pushing`), when it says more than the numbers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// An item finished ("already exists", "pull complete").
    Done {
        /// Item id.
        id: String,
        /// What happened.
        message: String,
    },
    /// The operation failed; the last line of the stream.
    Error {
        /// Stable code.
        code: crate::ErrorCode,
        /// Message.
        message: String,
    },
    /// The operation succeeded; the last line of the stream.
    Result {
        /// Operation-specific result (e.g. the image id and names).
        value: serde_json::Value,
    },
}

/// `POST /v1/images/tag` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// Existing image.
    pub source: String,
    /// New reference.
    pub target: String,
}

/// `POST /v1/auth/login` body: credentials for mvmd to check against the
/// registry (it stores nothing; the client keeps them).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Registry host (`localhost:5000`); Docker Hub when empty.
    pub server: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// Plain HTTP (loopback only).
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// `POST /v1/auth/login` answer (Docker's `/auth` answer, snake case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// `Login Succeeded`.
    pub status: String,
    /// The registry host the credentials were checked for, normalised
    /// (`docker.io`, `127.0.0.1:5000`): the key to store them under.
    pub server: String,
}

/// One image of `GET /v1/images` (the fields of the image store's summary,
/// so the daemon can serialise that directly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Tag references (`docker.io/library/busybox:latest`), sorted.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// Digest references (`repo@sha256:...`), sorted.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Image ID (config digest, `sha256:...`).
    pub id: String,
    /// The digest names point at.
    #[serde(default)]
    pub digest: String,
    /// Config `created`, RFC 3339, if stated.
    #[serde(default)]
    pub created: Option<String>,
    /// Stored bytes of config and layers.
    #[serde(default)]
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_normalise_like_containerd() {
        let p = |s: &str| s.parse::<Platform>().map(|p| p.to_string());
        assert_eq!(p("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(p("Linux/X86_64").unwrap(), "linux/amd64");
        assert_eq!(p("amd64").unwrap(), "linux/amd64");
        assert_eq!(p("linux").unwrap(), "linux/amd64");
        assert_eq!(p("linux/amd64/v3").unwrap(), "linux/amd64/v3");
        assert_eq!(p("linux/aarch64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(p("linux/armhf").unwrap(), "linux/arm/v7");
        for bad in ["", "/", "linux/", "a/b/c/d", "linux/am d64", "linux/../x"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert!(p(&"x".repeat(200)).unwrap_err().contains("too long"));
        assert!("linux/amd64/v1".parse::<Platform>().unwrap().is_runnable());
        assert!(!"linux/amd64/v9".parse::<Platform>().unwrap().is_runnable());
        assert!(!"linux/arm64".parse::<Platform>().unwrap().is_runnable());
        // On the wire: the string; a bad one is refused when decoding.
        let r: TransferRequest =
            serde_json::from_str(r#"{"reference":"a","platform":"linux/x86_64"}"#).unwrap();
        assert_eq!(r.platform, Some(Platform::linux_amd64()));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"reference":"a","insecure":false,"platform":"linux/amd64"}"#
        );
        assert!(
            serde_json::from_str::<TransferRequest>(r#"{"reference":"a","platform":"x//y"}"#)
                .is_err()
        );
    }
}
