//! The "machine": on hosts without hardware KVM, mvmd and its microVMs run
//! inside the emulated KVM host (`resources/testhost/`), started once and
//! kept running, with the API forwarded to a local TCP port (as `podman
//! machine` does).
//!
//! PLACEHOLDER: the "machine" helper owns this module and replaces this
//! file. It fixes the interface mvctl calls; every entry point answers that
//! machine mode is not available yet.

use crate::cli::MachineCommand;

/// Where the machine's mvmd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `tcp://127.0.0.1:PORT`.
    pub url: String,
    /// Bearer token of that port.
    pub token: String,
}

/// Size of the machine when [`ensure_running`] has to start it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// vCPUs of the emulated host (its default when `None`).
    pub cpus: Option<u32>,
    /// Memory of the emulated host in MiB (its default when `None`).
    pub memory_mib: Option<u64>,
}

/// Errors of the machine module.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// This build has no machine support yet.
    #[error(
        "machine mode not available yet: this host has no hardware KVM, and running mvmd inside \
         the emulated KVM host is not implemented in this build; use a host with KVM (Intel VT-x \
         or AMD-V) or point MVM_HOST at a remote mvmd"
    )]
    NotAvailable,
}

/// Start the machine unless it runs, and return its endpoint.
pub fn ensure_running(_opts: &StartOptions) -> Result<Endpoint, MachineError> {
    Err(MachineError::NotAvailable)
}

/// The endpoint of the running machine, if one runs.
pub fn endpoint() -> Option<Endpoint> {
    None
}

/// `mvctl machine start|stop|status`; returns the exit status.
pub fn cli(_cmd: MachineCommand) -> Result<i32, MachineError> {
    Err(MachineError::NotAvailable)
}
