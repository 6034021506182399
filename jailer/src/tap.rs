//! TAPs stay in the host's network namespace, attached to their bridges;
//! the VMM lives in an empty one. So the jailer opens each TAP named in
//! the configuration (with the VMM's own [`mvm_virtio::net::Tap`], one
//! definition of how a TAP is opened) and the configuration the VMM reads
//! names descriptors instead (`{"fd": 3}`, ...).

use std::os::fd::{AsRawFd, RawFd};

use mvm_virtio::net::Tap;
use mvm_vmm_api::{TapConfig, VmConfig};

/// Why a TAP could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("jail: net device {id}: {source}")]
pub struct TapError {
    id: String,
    source: mvm_virtio::net::TapError,
}

/// An open TAP, kept until the VMM has it.
#[derive(Debug)]
pub struct OpenTap(Tap);

impl OpenTap {
    /// Its descriptor in the jailer.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Open every TAP `cfg` names and rewrite it to the descriptor the VMM
/// will find it at (`first`, `first + 1`, ... in the order returned). A
/// TAP already given as a descriptor is an error: the jailer does not pass
/// on descriptors it did not open.
pub fn open_all(cfg: &mut VmConfig, first: RawFd) -> Result<Vec<OpenTap>, TapError> {
    let mut out = Vec::new();
    for n in &mut cfg.net {
        let tap = match &n.tap {
            TapConfig::Name(name) => Tap::open_named(name).map_err(|source| TapError {
                id: n.id.clone(),
                source,
            })?,
            TapConfig::Fd(fd) => {
                return Err(TapError {
                    id: n.id.clone(),
                    source: mvm_virtio::net::TapError::BadFd {
                        fd: *fd,
                        source: std::io::Error::other(
                            "a jailed VMM gets its TAPs by name (the jailer opens them)",
                        ),
                    },
                })
            }
        };
        n.tap = TapConfig::Fd(first + out.len() as RawFd);
        out.push(OpenTap(tap));
    }
    Ok(out)
}
