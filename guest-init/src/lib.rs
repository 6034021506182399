//! `mvm-init`: PID 1 inside every mvm guest.
//!
//! A library so each piece is tested on the host; `main.rs` only calls
//! [`init::main`]. One module per job:
//!
//! * [`init`]: the sequence, from boot report to power-off.
//! * [`status`]: reporting events to the host (status port), echoed on the console.
//! * [`console`]: init's own `mvm-init:` lines.
//! * [`mounts`]: /proc, /sys, /dev and friends.
//! * [`rootfs`]: disks by serial, overlay, switch root.
//! * [`shares`]: the spec's mounts in the workload's root (virtio-fs
//!   shares, tmpfs, block volumes).
//! * [`copyup`]: an empty block volume gets the image's content.
//! * [`hostname`], [`net`]: identity and loopback.
//! * [`network`], [`netlink`], [`etcfiles`]: the launch spec's network
//!   (interfaces, routes, /etc/hosts, /etc/resolv.conf, /etc/hostname).
//! * [`user`]: Docker `--user` against the image's passwd and group.
//! * [`env`]: the workload's environment and `PATH` lookup.
//! * [`process`]: fork/exec with an error pipe.
//! * [`reaper`]: reaping, signal forwarding, stopping the rest.
//! * [`shutdown`]: durability, power-off.
//! * [`agent`]: the host's agent over vsock (exec, attach, copy, stats).
//! * [`warm`]: a warm boot's wait for its spec (the agent's `launch`).
//! * [`reseed`]: the host's clock and entropy from the spec.
//! * [`sys`]: checked wrappers for raw syscalls.

pub mod agent;
pub mod console;
pub mod copyup;
pub mod env;
pub mod etcfiles;
pub mod hostname;
pub mod init;
pub mod mounts;
pub mod net;
pub mod netlink;
pub mod network;
pub mod process;
pub mod reaper;
pub mod reseed;
pub mod rootfs;
pub mod shares;
pub mod shutdown;
pub mod status;
pub mod sys;
pub mod user;
pub mod warm;
