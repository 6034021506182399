//! mvm's image library: a content-addressed OCI image store, a hardened
//! layer unpacker, the ext4 root disk builder, and docker/OCI archives.
//!
//! Users bring container images the way they do with Docker; every image
//! becomes a read-only ext4 root disk that any number of microVMs share.
//!
//! # API at a glance
//!
//! ```no_run
//! use mvm_images::{Store, Reference, archive::{ImportOptions, LoadOptions}, rootdisk::RootDiskOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open_default()?;                 // $MVM_ROOT/images or /var/lib/mvm/images
//! // docker load / docker import
//! let loaded = store.load(std::fs::File::open("busybox.tar")?, &LoadOptions::default())?;
//! let r = Reference::parse("busybox")?;               // docker.io/library/busybox:latest
//! store.import(std::fs::File::open("rootfs.tar")?, Some(&r), &ImportOptions::default())?;
//! // resolve, run defaults, root disk
//! let rec = store.resolve("busybox")?;
//! let defaults = rec.image_config();                  // entrypoint, cmd, env, ...
//! let disk = store.root_disk(&rec, &RootDiskOptions::default())?; // cached ext4, read-only
//! store.create_scratch_disk(std::path::Path::new("/tmp/scratch.ext4"), 1 << 30)?;
//! // list / inspect / remove / prune / check
//! let images = store.list()?;
//! store.remove("busybox", false, &|_id| false)?;
//! store.prune(true, &|_id| false)?;
//! assert!(store.fsck(false)?.is_clean());
//! # Ok(()) }
//! ```
//!
//! # For registry clients (pull/push)
//!
//! - `let lease = store.lease()?` before writing; keep it until tagged.
//! - `store.put_blob(&lease, Some((&descriptor).into()), reader)` writes a
//!   layer or config verified against digest and size; if the blob is
//!   already present it returns at once (`written: false`) without reading.
//!   Use `store.has_blob(&d)` to skip the download entirely, but pin first
//!   (`lease.pin_blob(&d)`) so GC cannot remove it between check and tag.
//! - `store.put_manifest(&lease, Some(d.into()), &bytes)` for manifests and
//!   indexes (parsed and media-type checked; children may arrive later).
//! - `store.tag(&reference, &manifest_digest)` checks completeness and
//!   platform, then names the image atomically.
//! - For push: `store.resolve(..)` gives the manifest digest and
//!   descriptors; `store.open_blob(&d)` / `store.read_blob(&d, max)` read
//!   the exact bytes; `manifest::manifest_media_type` gives Content-Type.
//! - On failure, `lease.discard_unreferenced()` removes what was written.
//!
//! # Concurrency and crash safety
//!
//! See [`store`]: blobs are written to a lease's temp dir and renamed in
//! after verification and fsync; the name index is replaced atomically
//! under a store-wide `flock`; GC honours live leases; root disks are
//! built under a per-disk lock and renamed into place.
#![deny(missing_docs)]

pub mod archive;
pub mod digest;
mod fsutil;
pub mod layer;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod rootdisk;
pub mod store;

pub use archive::{ArchiveError, ArchiveFormat, ImportOptions, LoadOptions, LoadedImage};
pub use digest::Digest;
pub use layer::{DevicePolicy, LayerError, Limits, UnpackOptions};
pub use manifest::{Descriptor, ImageConfig};
pub use reference::Reference;
pub use rootdisk::{RootDisk, RootDiskError, RootDiskOptions};
pub use store::{
    BlobInfo, Expected, FsckReport, ImageId, ImageInfo, ImageRecord, ImageSummary, Lease,
    PruneReport, RemoveReport, Store, StoreError,
};
