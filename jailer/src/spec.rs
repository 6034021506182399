//! What the jailer is asked to do: its command line, one type for the
//! runtime that builds it ([`JailSpec::to_args`]) and the jailer that
//! parses it (clap).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::plan::PlanError;

/// Run one `mvm-vmm` in a jail (normally started by mvmd's runtime).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "mvm-jailer", version, about, long_about = None)]
pub struct JailSpec {
    /// The `mvm-vmm` binary (bound read-only into the jail at this path).
    #[arg(long, value_name = "PATH")]
    pub vmm: PathBuf,
    /// The VM configuration (`mvm-vmm --config`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The jail directory: emptied, filled with mount points and made the
    /// VMM's root. Owned by root; nothing else may use it.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The VMM's uid (not 0).
    #[arg(long)]
    pub uid: u32,
    /// The VMM's gid (not 0).
    #[arg(long)]
    pub gid: u32,
    /// An extra file bound read-only at its path (the VMM's shared
    /// libraries); repeatable.
    #[arg(long = "ro", value_name = "PATH")]
    pub ro: Vec<PathBuf>,
    /// Tie the VMM's life to the jailer's caller (the containerd shim, which
    /// owns its VMM outright): the jailer stays the VMM's parent, dies with
    /// its caller (the caller's `PR_SET_PDEATHSIG`), and the VMM dies with
    /// the jailer (its own `PR_SET_PDEATHSIG`, set after its credentials
    /// change, which would clear it); when the VMM ends, the jailer ends the
    /// same way (its exit code or its signal: `end_like`), so the caller
    /// that reaps the jailer learns how the VMM ended. Without it the
    /// jailer exits once the VMM runs and the VMM outlives everything but
    /// a stop (mvmd's model).
    #[arg(long)]
    pub die_with_parent: bool,
}

impl JailSpec {
    /// The command line that parses back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--vmm".into(),
            self.vmm.clone().into(),
            "--config".into(),
            self.config.clone().into(),
            "--root".into(),
            self.root.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
        ];
        for r in &self.ro {
            a.push("--ro".into());
            a.push(r.clone().into());
        }
        if self.die_with_parent {
            a.push("--die-with-parent".into());
        }
        a
    }

    /// Refuse what would not confine anything.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(PlanError::Root);
        }
        for p in [&self.vmm, &self.config, &self.root] {
            if !p.is_absolute() {
                return Err(PlanError::Path {
                    path: p.clone(),
                    why: "is not absolute",
                });
            }
        }
        if self.root.parent().is_none() {
            return Err(PlanError::Path {
                path: self.root.clone(),
                why: "cannot be the jail: it is /",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let s = JailSpec {
            vmm: "/usr/bin/mvm-vmm".into(),
            config: "/var/lib/mvm/sandboxes/a/vm.json".into(),
            root: "/var/lib/mvm/sandboxes/a/jail".into(),
            uid: 100_007,
            gid: 100_007,
            ro: vec!["/lib/x86_64-linux-gnu/libc.so.6".into()],
            die_with_parent: false,
        };
        let mut argv = vec![OsString::from("mvm-jailer")];
        argv.extend(s.to_args());
        assert_eq!(JailSpec::try_parse_from(argv).unwrap(), s);
        let tied = JailSpec {
            die_with_parent: true,
            ..s.clone()
        };
        let mut argv = vec![OsString::from("mvm-jailer")];
        argv.extend(tied.to_args());
        assert_eq!(JailSpec::try_parse_from(argv).unwrap(), tied);
        s.validate().unwrap();
        let root = JailSpec {
            uid: 0,
            ..s.clone()
        };
        assert!(root.validate().is_err());
        let rel = JailSpec {
            root: "jail".into(),
            ..s
        };
        assert!(rel.validate().is_err());
    }
}
