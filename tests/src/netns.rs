//! Network namespaces the tests make for themselves, so that their
//! traffic (TAPs of test VMs, veth pairs of baselines) stays on this
//! machine, inside a namespace nothing else uses, and is gone when the
//! test ends: every address the tests use lives in one of these.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// A named network namespace (`ip netns add`), deleted on drop with
/// everything in it (TAPs, veth ends, addresses).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `ip ARGS` and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    check(
        Command::new("ip").args(args).output().context("run ip")?,
        &format!("ip {}", args.join(" ")),
    )
}

fn check(out: Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    /// A fresh namespace with its loopback up. `tag` makes the name
    /// unique to this process.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("mvm-{tag}-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec` and `Vm::netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command inside the namespace; returns its output, whatever its status.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("ip netns exec {} {args:?}", self.name))
    }

    /// A persistent TAP `tap` (with `vnet_hdr`) in the namespace, with
    /// `addr` (CIDR) on it, up. A VMM in the namespace attaches to it.
    pub fn add_tap(&self, tap: &str, addr: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])?;
        self.ip(&["addr", "add", addr, "dev", tap])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// Runs `f` on a thread whose network namespace is this one: its
    /// sockets are the namespace's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns with a namespace descriptor we opened; it moves
            // only this thread, which ends with `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces, `a_addr` on `a`'s end and
/// `b_addr` on `b`'s (CIDR), both up: the container-style baseline.
pub fn veth_pair(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<()> {
    let (ea, eb) = ("mvmveth0", "mvmveth1");
    ip(&[
        "link",
        "add",
        ea,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        eb,
        "netns",
        b.name(),
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", ea])?;
    b.ip(&["addr", "add", b_addr, "dev", eb])?;
    a.ip(&["link", "set", ea, "up"])?;
    b.ip(&["link", "set", eb, "up"])
}
