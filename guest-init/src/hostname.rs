//! The guest's identity: hostname, /etc/hostname and /etc/hosts.
//!
//! Docker bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf into
//! the container. There is no host file to bind here, so init writes into
//! the overlay (the scratch disk): /etc/hostname when the spec names a
//! hostname, and the missing `localhost` and hostname lines of /etc/hosts,
//! leaving whatever the image already has.

use std::io;
use std::path::Path;

/// The kernel's limit for a hostname (`__NEW_UTS_LEN`).
pub const MAX_HOSTNAME_LEN: usize = 64;
/// Largest /etc/hosts init edits.
const MAX_HOSTS_SIZE: u64 = 1 << 20;

/// Why the hostname could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HostnameError {
    #[error("hostname {0:?} is not valid: it must be 1 to {MAX_HOSTNAME_LEN} bytes without '/' or whitespace")]
    Invalid(String),
    #[error("cannot set the hostname to {name:?}: {source}")]
    Set { name: String, source: io::Error },
}

/// Check a hostname from the spec before anything is mounted.
pub fn validate(name: &str) -> Result<(), HostnameError> {
    let bad = name.is_empty()
        || name.len() > MAX_HOSTNAME_LEN
        || name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control());
    if bad {
        return Err(HostnameError::Invalid(name.into()));
    }
    Ok(())
}

/// Set the kernel hostname.
pub fn set(name: &str) -> Result<(), HostnameError> {
    validate(name)?;
    crate::sys::sethostname(name).map_err(|source| HostnameError::Set {
        name: name.into(),
        source,
    })
}

/// The lines to append to an /etc/hosts holding `existing` so that
/// `localhost` and `hostname` resolve. Empty if nothing is missing.
pub fn hosts_additions(existing: &str, hostname: &str) -> String {
    let names: Vec<&str> = existing
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_ascii_whitespace().skip(1))
        .collect();
    let mut add = String::new();
    if !names.contains(&"localhost") {
        add.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    if !hostname.is_empty() && hostname != "localhost" && !names.contains(&hostname) {
        add.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    add
}

/// Make /etc/hosts (under `root`) resolve `localhost` and `hostname`, and
/// write /etc/hostname when `explicit` (the spec named a hostname). Best
/// effort: a read-only or odd /etc is warned about, not fatal.
pub fn write_etc(root: &Path, hostname: &str, explicit: bool) {
    let etc = root.join("etc");
    if let Err(e) = std::fs::create_dir_all(&etc) {
        crate::warn!("cannot create {}: {e}", etc.display());
        return;
    }
    if explicit {
        let path = etc.join("hostname");
        if let Err(e) = std::fs::write(&path, format!("{hostname}\n")) {
            crate::warn!("cannot write {}: {e}", path.display());
        }
    }
    let hosts = etc.join("hosts");
    let existing = match std::fs::metadata(&hosts) {
        Ok(m) if m.len() > MAX_HOSTS_SIZE => {
            crate::warn!(
                "{} is larger than {MAX_HOSTS_SIZE} bytes; leaving it alone",
                hosts.display()
            );
            return;
        }
        Ok(_) => std::fs::read(&hosts)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    // Without an explicit name the kernel default ("(none)") is no name.
    let mut add = hosts_additions(&existing, if explicit { hostname } else { "" });
    if add.is_empty() {
        return;
    }
    if !existing.is_empty() && !existing.ends_with('\n') {
        add.insert(0, '\n');
    }
    use std::io::Write;
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&hosts)
        .and_then(|mut f| f.write_all(add.as_bytes()));
    if let Err(e) = result {
        crate::warn!("cannot update {}: {e}", hosts.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("web-1.example").is_ok());
        assert!(validate(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "tab\t", "nl\n", &"a".repeat(65)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_lines_are_added_only_when_missing() {
        assert_eq!(
            hosts_additions("", "box"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox\n"
        );
        assert_eq!(hosts_additions("127.0.0.1 localhost box\n", "box"), "");
        assert_eq!(
            hosts_additions("127.0.0.1\tlocalhost\n", "box"),
            "127.0.1.1\tbox\n"
        );
        // A comment or an address is not a name.
        assert_eq!(
            hosts_additions("# localhost box\nbox 1.2.3.4\n", "box")
                .lines()
                .count(),
            3
        );
        assert_eq!(hosts_additions("127.0.0.1 localhost", ""), "");
    }

    #[test]
    fn etc_files_are_written_and_appended() {
        let root = tempfile::tempdir().unwrap();
        write_etc(root.path(), "box", true);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(),
            "box\n"
        );
        let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert!(
            hosts.contains("127.0.0.1\tlocalhost\n") && hosts.contains("127.0.1.1\tbox\n"),
            "{hosts}"
        );
        // Idempotent, and an image's own file is kept (no trailing newline).
        write_etc(root.path(), "box", true);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hosts")).unwrap(),
            hosts
        );
        std::fs::write(root.path().join("etc/hosts"), "10.0.0.1 db").unwrap();
        write_etc(root.path(), "(none)", false);
        let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        // Localhost added after the image's line; the kernel's default
        // name is not an entry.
        assert_eq!(
            hosts,
            "10.0.0.1 db\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(),
            "box\n",
            "not explicit: untouched"
        );
    }
}
