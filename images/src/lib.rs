//! mvm's image library: a content-addressed OCI image store, a hardened
//! layer unpacker, the ext4 root disk builder, and docker/OCI archives.
//!
//! Every image becomes a read-only ext4 root disk that any number of
//! microVMs share. See the module docs for the details of each step.
#![deny(missing_docs)]

pub mod digest;
mod fsutil;
pub mod layer;
pub mod manifest;
pub mod reference;
pub mod rootdisk;
pub mod store;

pub use digest::Digest;
pub use manifest::{Descriptor, ImageConfig};
pub use reference::Reference;
pub use store::{ImageId, ImageRecord, ImageSummary, Lease, Store, StoreError};
