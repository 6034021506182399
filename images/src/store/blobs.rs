//! Blob storage: verified while streaming, published atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use super::{Lease, Result, Store, StoreError};
use crate::digest::{Digest, Hasher};
use crate::fsutil;
use crate::manifest::{self, Descriptor, MAX_MANIFEST_SIZE};

/// What a blob is expected to be: its digest and, when known, its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The digest the content must hash to.
    pub digest: Digest,
    /// The exact length, if known (lets a truncated or oversized source
    /// fail early with a precise message).
    pub size: Option<u64>,
}

impl From<Digest> for Expected {
    fn from(digest: Digest) -> Self {
        Expected { digest, size: None }
    }
}

impl From<&Descriptor> for Expected {
    fn from(d: &Descriptor) -> Self {
        Expected {
            digest: d.digest,
            size: Some(d.size),
        }
    }
}

/// A blob now in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// False if the blob was already present and the source was not read.
    pub written: bool,
}

const COPY_BUF: usize = 256 * 1024;

impl Store {
    /// True if the blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(*d)
            } else {
                StoreError::io("opening blob", &p)(e)
            }
        })
    }

    /// Size of a present blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::BlobNotFound(*d)),
            Err(e) => Err(StoreError::io("inspecting blob", &p)(e)),
        }
    }

    /// Writes a blob from `reader` under `lease`.
    ///
    /// With `expected`, the content must hash to that digest (and have that
    /// size): if the blob is already present the reader is not touched
    /// (`written: false`), otherwise a mismatch is an error and nothing is
    /// published. Without `expected`, the digest is computed. In every case
    /// the blob appears in `blobs/` only complete, verified and durable.
    pub fn put_blob(
        &self,
        lease: &Lease,
        expected: Option<Expected>,
        reader: impl Read,
    ) -> Result<BlobInfo> {
        if let Some(exp) = &expected {
            lease.pin_blob(&exp.digest)?;
            if let Ok(size) = self.blob_size(&exp.digest) {
                return Ok(BlobInfo {
                    digest: exp.digest,
                    size,
                    written: false,
                });
            }
            if let Some(size) = exp.size {
                if size > self.max_blob_size {
                    return Err(StoreError::TooLarge {
                        what: exp.digest.to_string(),
                        limit: self.max_blob_size,
                    });
                }
            }
        }
        let tmp = lease
            .tmp_dir()
            .join(format!("blob-{}", fsutil::random_id()));
        let result = self.write_tmp_and_publish(lease, expected, reader, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Writes an in-memory blob (manifests, configs).
    pub fn put_blob_bytes(
        &self,
        lease: &Lease,
        expected: Option<Expected>,
        data: &[u8],
    ) -> Result<BlobInfo> {
        self.put_blob(lease, expected, data)
    }

    /// Writes a manifest or index after checking it parses and that its
    /// media types are supported. The content it references need not be
    /// present yet (pulls fetch the manifest first); [`Store::tag`] checks
    /// completeness.
    pub fn put_manifest(
        &self,
        lease: &Lease,
        expected: Option<Expected>,
        data: &[u8],
    ) -> Result<(BlobInfo, manifest::ManifestKind)> {
        let what = expected
            .map(|e| e.digest)
            .unwrap_or_else(|| Digest::of(data));
        if data.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(StoreError::TooLarge {
                what: format!("manifest {what}"),
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let kind = manifest::parse_manifest(data, None).map_err(|source| StoreError::Manifest {
            digest: what,
            source,
        })?;
        let info = self.put_blob(lease, expected, data)?;
        Ok((info, kind))
    }

    fn write_tmp_and_publish(
        &self,
        lease: &Lease,
        expected: Option<Expected>,
        mut reader: impl Read,
        tmp: &std::path::Path,
    ) -> Result<BlobInfo> {
        let what = || {
            expected
                .map(|e| e.digest.to_string())
                .unwrap_or_else(|| "(new blob)".to_string())
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(tmp)
            .map_err(StoreError::io("creating", tmp))?;
        let limit = expected
            .and_then(|e| e.size)
            .unwrap_or(self.max_blob_size)
            .min(self.max_blob_size);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StoreError::Source {
                        what: what(),
                        source,
                    })
                }
            };
            if hasher.len() + n as u64 > limit {
                if let Some(Expected {
                    digest,
                    size: Some(size),
                }) = expected
                {
                    if size < self.max_blob_size {
                        return Err(StoreError::SizeMismatch {
                            digest,
                            expected: size,
                            actual: hasher.len() + n as u64,
                        });
                    }
                }
                return Err(StoreError::TooLarge {
                    what: what(),
                    limit: self.max_blob_size,
                });
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(StoreError::io("writing blob", tmp))?;
        }
        let size = hasher.len();
        let digest = hasher.finish();
        if let Some(exp) = expected {
            if let Some(es) = exp.size {
                if es != size {
                    return Err(StoreError::SizeMismatch {
                        digest: exp.digest,
                        expected: es,
                        actual: size,
                    });
                }
            }
            if exp.digest != digest {
                return Err(StoreError::DigestMismatch {
                    expected: exp.digest,
                    actual: digest,
                    size,
                });
            }
        } else {
            lease.pin_blob(&digest)?;
        }
        f.sync_all().map_err(StoreError::io("syncing blob", tmp))?;
        drop(f);
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            // Someone else published identical content meanwhile: keep
            // theirs (readers may have it open) and drop ours.
            let _ = fs::remove_file(tmp);
            return Ok(BlobInfo {
                digest,
                size,
                written: false,
            });
        }
        fs::rename(tmp, &dest).map_err(StoreError::io("publishing blob", &dest))?;
        let dir = dest.parent().expect("blob path has a parent");
        fsutil::sync_dir(dir).map_err(StoreError::io("syncing directory", dir))?;
        lease.note_created(&digest);
        Ok(BlobInfo {
            digest,
            size,
            written: true,
        })
    }
}
