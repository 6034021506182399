//! The contract between the host side of mvm (VMM, runtime) and `mvm-init`,
//! PID 1 in the guest.
//!
//! It lives in one crate so host and guest can never disagree about it:
//!
//! * [`launch`]: the launch spec (what to run, on which disks), delivered to
//!   the guest as a file in the initramfs, so argv and env of any size and
//!   content never ride on the 2 KiB kernel command line.
//! * [`status`]: the status port, a 32-bit I/O port through which init
//!   reports boot completion, the workload's exit status and its intent to
//!   power off. It works before any virtio device is up and needs no driver.
//! * [`initramfs`]: writing the newc cpio archives that carry init and the
//!   launch spec.
//!
//! * [`agent`]: the guest agent protocol over vsock (exec, attach, signals,
//!   stats, file copy) and, with feature `client`, its tokio host client.
//!   The launch spec and status port stay as the zero-round-trip boot path.
//! * [`layer`]: the form of the root filesystem's changes the agent sends
//!   (an OCI layer tar), which the builder turns into image layers.

pub mod agent;
pub mod initramfs;
pub mod launch;
pub mod layer;
pub mod status;
