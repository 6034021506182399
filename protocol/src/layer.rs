//! The form of the `changes` stream (agent op, `rootfs.export_changes`):
//! an OCI layer tar of the overlay's upper directory. The guest writes it,
//! the host reads it (as hostile input) into an image layer; the rules
//! both sides follow live here.
//!
//! overlayfs records a deleted lower file as a character device 0:0 with
//! the deleted name, and a directory whose lower content is hidden (it was
//! removed and made again) with the xattr `trusted.overlay.opaque=y`. The
//! OCI image spec writes these as an empty file `.wh.NAME` and a marker
//! `DIR/.wh..wh..opq`. Other `trusted.overlay.*` xattrs are overlayfs
//! bookkeeping and are dropped. Extended attributes travel as PAX
//! `SCHILY.xattr.NAME` records, as Docker and containerd write them.

/// Prefix of a whiteout entry's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker entry.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Files a workload may change that are not part of its result: Docker
/// bind-mounts these three over the container's files, and guest init
/// writes them at boot.
pub const RUNTIME_FILES: &[&str] = &["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// Mount points guest init creates when the image lacks them; left out of
/// a layer when the workload put nothing else there.
pub const MOUNT_POINTS: &[&str] = &[
    "proc",
    "sys",
    "sys/fs",
    "sys/fs/cgroup",
    "dev",
    "dev/pts",
    "dev/shm",
    "tmp",
];

/// Whether an extended attribute belongs in a layer: `user.`,
/// `security.`, `trusted.` (except overlayfs' own) and POSIX ACLs.
pub fn keep_xattr(name: &[u8]) -> bool {
    if name.starts_with(b"trusted.overlay.") {
        return false;
    }
    name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"system.posix_acl_")
}

/// The body of a PAX extended header carrying `xattrs` as
/// `SCHILY.xattr.NAME=VALUE` records (each prefixed by its own length, the
/// length counting itself).
pub fn pax_xattr_records(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in xattrs {
        let mut rec = b" SCHILY.xattr.".to_vec();
        rec.extend_from_slice(k);
        rec.push(b'=');
        rec.extend_from_slice(v);
        rec.push(b'\n');
        // The length prefix counts its own digits: find the fixed point.
        let mut len = rec.len() + 1;
        while len.to_string().len() + rec.len() != len {
            len = len.to_string().len() + rec.len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.extend_from_slice(&rec);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths_count_themselves() {
        let recs = pax_xattr_records(&[
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"security.capability".to_vec(), vec![0u8; 95]),
        ]);
        let mut rest = &recs[..];
        let mut n = 0;
        while !rest.is_empty() {
            let sp = rest.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            assert_eq!(rest[len - 1], b'\n');
            rest = &rest[len..];
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(recs.starts_with(b"25 SCHILY.xattr.user.a=1\n"));
    }

    #[test]
    fn overlay_bookkeeping_is_not_kept() {
        assert!(keep_xattr(b"security.capability"));
        assert!(keep_xattr(b"user.x"));
        assert!(!keep_xattr(b"trusted.overlay.opaque"));
        assert!(!keep_xattr(b"system.nfs4_acl"));
    }
}
