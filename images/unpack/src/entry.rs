//! What an entry's headers say: type, mode, owners, time, xattrs, from
//! the header block and its PAX records (which win), and the xattr policy.

use std::io::Read;

use crate::error::{Error, Result};
use crate::options::{Options, XattrPolicy};

/// An entry's metadata.
pub(crate) struct Meta {
    pub kind: tar::EntryType,
    /// Permission bits, `0o7777` at most.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// `SCHILY.xattr.*` records, unfiltered.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of data this entry occupies in the archive (before padding):
    /// where the next header starts.
    pub stored_size: u64,
}

/// Reads the metadata of `entry`. PAX records that do not parse are
/// ignored, as other readers do (none of them can make the entry unsafe:
/// the path is validated separately).
pub(crate) fn read<R: Read>(entry: &mut tar::Entry<'_, R>, display: &str) -> Result<Meta> {
    let header = entry.header();
    let kind = header.entry_type();
    let archive_err = |source| Error::Archive {
        after: Some(display.to_string()),
        source,
    };
    let mode = header.mode().map_err(archive_err)? & 0o7777;
    let mut meta = Meta {
        kind,
        mode,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        mtime: header
            .mtime()
            .ok()
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(0),
        xattrs: Vec::new(),
        stored_size: header.entry_size().map_err(archive_err)?,
    };
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Ok(meta);
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let val = ext.value_bytes();
        if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
            meta.xattrs.push((x.as_bytes().to_vec(), val.to_vec()));
            continue;
        }
        let Ok(s) = std::str::from_utf8(val) else {
            continue;
        };
        match key {
            "uid" => meta.uid = s.parse().unwrap_or(meta.uid),
            "gid" => meta.gid = s.parse().unwrap_or(meta.gid),
            "mtime" => {
                if let Some(m) = s.split('.').next().and_then(|i| i.parse().ok()) {
                    meta.mtime = m;
                }
            }
            // The tar crate reads this many bytes of data (it overrides
            // the header's size field).
            "size" => meta.stored_size = s.parse().unwrap_or(meta.stored_size),
            _ => {}
        }
    }
    Ok(meta)
}

/// Whether an xattr may be kept under `opts`.
pub(crate) fn xattr_allowed(name: &[u8], opts: &Options) -> bool {
    if name.is_empty() || name.contains(&0) || name.starts_with(b"trusted.overlay.") {
        return false;
    }
    if name == b"security.capability" && !opts.keep_setid {
        return false;
    }
    match opts.xattrs {
        XattrPolicy::None => false,
        XattrPolicy::User => name.starts_with(b"user."),
        XattrPolicy::All => {
            name.starts_with(b"user.")
                || name.starts_with(b"security.")
                || name.starts_with(b"trusted.")
                || name == b"system.posix_acl_access"
                || name == b"system.posix_acl_default"
        }
    }
}

/// The mode to give a file under `opts`: setuid/setgid cleared unless
/// kept. Returns the mode and whether bits were dropped.
pub(crate) fn effective_mode(mode: u32, opts: &Options) -> (u32, bool) {
    if opts.keep_setid || mode & 0o6000 == 0 {
        (mode, false)
    } else {
        (mode & !0o6000, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_policies() {
        let layer = Options::layer();
        let copy = Options::copy();
        assert!(xattr_allowed(b"user.x", &copy));
        assert!(!xattr_allowed(b"security.capability", &copy));
        assert!(!xattr_allowed(b"security.selinux", &copy));
        assert!(!xattr_allowed(b"system.posix_acl_access", &copy));
        assert!(xattr_allowed(b"security.capability", &layer));
        assert!(xattr_allowed(b"system.posix_acl_access", &layer));
        assert!(!xattr_allowed(b"trusted.overlay.opaque", &layer));
        assert!(!xattr_allowed(b"system.nfs4_acl", &layer));
        let no_setid = Options {
            keep_setid: false,
            ..Options::layer()
        };
        assert!(!xattr_allowed(b"security.capability", &no_setid));
    }

    #[test]
    fn setid_bits() {
        assert_eq!(effective_mode(0o4755, &Options::copy()), (0o755, true));
        assert_eq!(effective_mode(0o2775, &Options::copy()), (0o775, true));
        assert_eq!(effective_mode(0o1777, &Options::copy()), (0o1777, false));
        assert_eq!(effective_mode(0o4755, &Options::layer()), (0o4755, false));
    }
}
