//! Host networking for mvm: what a sandbox needs on the host to be a
//! network citizen as a Docker container is.
//!
//! mvmd owns the records (networks, endpoints, published ports) and
//! persists them; this crate owns the kernel state that realises them and
//! brings the host to exactly the [`DesiredState`] it is given with
//! [`HostNet::apply`] (reconcile) or the per-object calls built on it.
//!
//! - [`spec`]: the desired state and its validation.
//! - [`ipam`]: subnets, addresses and MACs (pure).
//! - [`names`]: the names of everything mvm creates on the host.
//! - [`links`]: bridges and TAPs over netlink and the tun ioctls.
//! - [`nft`]: the nftables ruleset, applied in one transaction.
//! - [`proxy`]: the userspace port proxy (loopback and IPv6).
//! - [`publish`]: `-p` values (ranges, `/udp`, ephemeral ports).
//! - [`dns`]: the embedded DNS server of each network.
//! - [`host`]: [`HostNet`], reconcile and the per-object calls.

pub mod dns;
pub mod host;
pub mod ipam;
pub mod links;
pub mod names;
pub mod nft;
pub mod proxy;
pub mod publish;
pub mod spec;

pub use host::{Config, Error, HostNet};
pub use spec::{
    DesiredState, EndpointSpec, NetworkKind, NetworkSpec, PortSpec, Protocol, SpecError,
};
