//! /etc/hosts, /etc/resolv.conf and /etc/hostname when the launch spec
//! has a `network` section: init owns them then, as Docker does (it
//! bind-mounts its own over the image's), and writes them whole.
//!
//! They go into the overlay's upper layer, and [`RUNTIME_FILES`] keeps
//! them out of a build's exported changes. The image is hostile: its
//! /etc/hosts may be a symlink to anywhere (a share, /proc). Each file is
//! written to a new file beside it and renamed over it, which replaces a
//! symlink rather than writing through it; /etc itself must be a real
//! directory (it is created when missing).
//!
//! [`RUNTIME_FILES`]: mvm_protocol::layer::RUNTIME_FILES

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use mvm_protocol::launch::{Dns, Network};

/// What Docker's /etc/hosts starts with (libnetwork's `etchosts`).
const HOSTS_HEADER: &str = "127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
";

/// Why the network's /etc files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EtcError {
    #[error("cannot write the network's /etc files: {path} in the image is not a directory (a symlink or a file); init does not follow it")]
    NotADirectory { path: String },
    #[error("cannot write the network's /etc files: cannot create {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// /etc/hosts: Docker's standard lines, each interface address with the
/// hostname (when the spec names one), then the spec's `hosts` entries.
pub fn hosts(hostname: Option<&str>, net: &Network) -> String {
    let mut out = String::from(HOSTS_HEADER);
    if let Some(name) = hostname {
        for a in net.interfaces.iter().flat_map(|i| &i.addresses) {
            out.push_str(&format!("{}\t{name}\n", a.address));
        }
    }
    for h in &net.hosts {
        out.push_str(&format!("{}\t{}\n", h.address, h.names.join(" ")));
    }
    out
}

/// /etc/resolv.conf from the spec's resolver.
pub fn resolv_conf(dns: &Dns) -> String {
    let mut out = String::new();
    for ns in &dns.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Write /etc/hosts, /etc/resolv.conf and (when the spec names a
/// hostname) /etc/hostname under `root`.
pub fn write(root: &Path, hostname: Option<&str>, net: &Network) -> Result<(), EtcError> {
    let etc = root.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(EtcError::NotADirectory {
                path: etc.display().to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(&etc).map_err(|source| EtcError::CreateDir {
                path: etc.display().to_string(),
                source,
            })?
        }
        Err(source) => {
            return Err(EtcError::CreateDir {
                path: etc.display().to_string(),
                source,
            })
        }
    }
    replace(&etc, "hosts", &hosts(hostname, net))?;
    replace(&etc, "resolv.conf", &resolv_conf(&net.dns))?;
    if let Some(name) = hostname {
        replace(&etc, "hostname", &format!("{name}\n"))?;
    }
    Ok(())
}

/// Put `content` at `dir/name` by writing `dir/.name.mvm` and renaming it
/// over `name`: whatever `name` was (missing, a file, a symlink), it is
/// now a regular file, and nothing outside `dir` was written.
fn replace(dir: &Path, name: &str, content: &str) -> Result<(), EtcError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.mvm"));
    let err = |source| EtcError::Write {
        path: path.display().to_string(),
        source,
    };
    // A leftover of ours (or the image's trap) must not be followed either.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| {
            // Not left in the upper layer (a build would export it).
            let _ = std::fs::remove_file(&temp);
            err(e)
        })?;
    std::fs::rename(&temp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_protocol::launch::{HostEntry, Interface, IpCidr};
    use std::os::unix::fs::PermissionsExt;

    fn net() -> Network {
        let cidr = |a: &str, p| IpCidr {
            address: a.parse().unwrap(),
            prefix_len: p,
        };
        Network {
            interfaces: vec![
                Interface {
                    mac: "02:00:00:00:00:01".into(),
                    name: "eth0".into(),
                    addresses: vec![cidr("172.18.0.2", 16), cidr("fd00::2", 64)],
                    mtu: None,
                },
                Interface {
                    mac: "02:00:00:00:00:02".into(),
                    name: "eth1".into(),
                    addresses: vec![cidr("10.3.0.5", 24)],
                    mtu: None,
                },
            ],
            routes: vec![],
            dns: Dns {
                nameservers: vec!["172.18.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                search: vec!["svc.local".into(), "local".into()],
                options: vec!["ndots:0".into(), "edns0".into()],
            },
            hosts: vec![HostEntry {
                address: "10.3.0.9".parse().unwrap(),
                names: vec!["db".into(), "db.svc.local".into()],
            }],
        }
    }

    #[test]
    fn contents_are_dockers() {
        let n = net();
        assert_eq!(
            hosts(Some("web"), &n),
            format!(
                "{HOSTS_HEADER}172.18.0.2\tweb\nfd00::2\tweb\n10.3.0.5\tweb\n10.3.0.9\tdb db.svc.local\n"
            )
        );
        assert_eq!(
            hosts(None, &n),
            format!("{HOSTS_HEADER}10.3.0.9\tdb db.svc.local\n")
        );
        assert_eq!(
            resolv_conf(&n.dns),
            "nameserver 172.18.0.1\nnameserver fd00::1\nsearch svc.local local\noptions ndots:0 edns0\n"
        );
        assert_eq!(resolv_conf(&Dns::default()), "");
    }

    #[test]
    fn files_replace_the_images_even_symlinks_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        // The image's files: a symlink out of the root, a plain file, and
        // a leftover temporary that is a symlink too.
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep me\n").unwrap();
        std::os::unix::fs::symlink(&target, etc.join("resolv.conf")).unwrap();
        std::os::unix::fs::symlink(&target, etc.join(".hosts.mvm")).unwrap();
        std::fs::write(etc.join("hosts"), "1.2.3.4 image-entry\n").unwrap();

        write(root.path(), Some("web"), &net()).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        let resolv = etc.join("resolv.conf");
        assert!(std::fs::symlink_metadata(&resolv).unwrap().is_file());
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            resolv_conf(&net().dns)
        );
        let hosts_text = std::fs::read_to_string(etc.join("hosts")).unwrap();
        assert!(!hosts_text.contains("image-entry"), "{hosts_text}");
        assert_eq!(hosts_text, hosts(Some("web"), &net()));
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "web\n"
        );
        let mode = std::fs::metadata(etc.join("hosts")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o7777 & !0o644, 0, "at most rw-r--r--");
        let names: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".mvm")),
            "no temporaries left: {names:?}"
        );
    }

    #[test]
    fn missing_etc_is_created_and_a_symlinked_etc_refused() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), None, &Network::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hosts")).unwrap(),
            HOSTS_HEADER
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            ""
        );
        assert!(!root.path().join("etc/hostname").exists());

        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        let e = write(root.path(), Some("web"), &net()).unwrap_err();
        assert!(matches!(e, EtcError::NotADirectory { .. }), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
