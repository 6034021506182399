//! mvm-vmm: the microVM monitor, one process per microVM.
//!
//! It boots our minimal Linux guest (ELF vmlinux through the PVH entry)
//! on KVM with an initramfs, virtio-mmio disks and entropy, an 8250
//! console and the status port guest init reports through, and ends with
//! an exit status that tells a clean guest power-off (0) from a VMM error
//! (1) and a guest crash (2). See docs/architecture.md and vmm/README.md.
//!
//! What callers share with the VMM (the configuration and status file
//! types, the exit codes, the KVM probe) is the `mvm-vmm-api` crate; this
//! library is the VMM itself, a library so its unit tests and the boot
//! tests reach the pieces; `main.rs` only calls [`cli`].

pub mod arch;
pub mod builder;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod control;
pub mod devices;
pub mod exit;
pub mod logfile;
pub mod outcome;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;
