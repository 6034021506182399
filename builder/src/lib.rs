//! `mvm build`: Dockerfile builds without a Docker engine.
//!
//! COPY, ADD and metadata instructions are done on the host; every RUN
//! step runs as a transient sandbox of `mvm-runtime` booted from the
//! build's current filesystem ([`vm`]), and the changes its guest agent
//! sends, checked ([`changes`]), become an OCI layer. Results go to the
//! mvm image store (`mvm-images`): layers as blobs, intermediate images
//! untagged (so `image prune` cleans them), the final image tagged.
//!
//! ```no_run
//! use mvm_builder::{Builder, BuildOptions, context::Context, progress::Plain, vm::RuntimeExecutor};
//! use mvm_runtime::{Runtime, RuntimeConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(RuntimeConfig::from_env(Default::default())?)?;
//! let store = runtime.store().clone();
//! let exec = RuntimeExecutor::new(runtime);
//! let out = Plain::new(std::io::stderr());
//! let builder = Builder::new(store, Some(&exec), &out)?;
//! let ctx = Context::from_dir(std::path::Path::new("."))?;
//! let opts = BuildOptions { tags: vec!["app".into()], ..Default::default() };
//! let result = builder.build(&ctx, &opts)?;
//! println!("{}", result.id);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cache;
pub mod changes;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod fetch;
pub mod progress;
pub mod tarlayer;
pub mod vm;

pub use engine::{BaseImages, BuildError, BuildOptions, BuildResult, Builder};
