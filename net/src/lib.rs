//! Host networking for mvm: what a sandbox needs on the host to be a
//! network citizen as a Docker container is.
//!
//! mvmd owns the records (networks, endpoints, published ports) and
//! persists them; this crate owns the kernel state that realises them and
//! brings the host to exactly the [`DesiredState`] it is given.
//!
//! - [`spec`]: the desired state and its validation.
//! - [`ipam`]: subnets, addresses and MACs (pure).
//! - [`names`]: the names of everything mvm creates on the host.

pub mod ipam;
pub mod names;
pub mod spec;

pub use spec::{
    DesiredState, EndpointSpec, NetworkKind, NetworkSpec, PortSpec, Protocol, SpecError,
};
