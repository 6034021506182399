//! Flattening images into read-only ext4 root disks (cached by content).

use crate::digest::{Digest, Hasher};

/// Version of the conversion: bump when the disk format or the unpacker's
/// output changes, so that cached disks are rebuilt.
pub const CONVERTER_VERSION: &str = "mvm-rootdisk-v1";
/// File name suffix of cached disks.
pub const DISK_SUFFIX: &str = ".ext4";

/// The cache key of an image's root disk: sha256 over the converter
/// version and the ordered layer diff_ids. Two images with the same layers
/// (e.g. re-tagged, or differing only in config) share one disk.
pub fn disk_key(diff_ids: &[Digest]) -> String {
    let mut h = Hasher::new();
    h.update(CONVERTER_VERSION.as_bytes());
    h.update(b"\n");
    for d in diff_ids {
        h.update(d.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finish().hex()
}
