//! `-v`, `--mount`, `--tmpfs` as Docker spells them, parsed into the
//! API's [`MountRequest`]s. Every string is a user's: anything not
//! understood is refused with what was wrong and the accepted forms.
//!
//! Host paths stay as the user gave them (absolute only; mvmd resolves
//! and checks them on its host). A later step translating host paths for
//! the mvm machine (whose mvmd sees the host through a share) maps
//! `MountRequest::source` of `type: bind` here, in one place.

use mvm_api::volume::{MountRequest, MountType};

fn request(kind: MountType, source: Option<String>, target: &str) -> MountRequest {
    MountRequest {
        kind,
        source,
        target: target.to_string(),
        read_only: false,
        tmpfs_size: None,
        tmpfs_mode: None,
        tmpfs_options: vec![],
    }
}

/// Whether `s` names a volume rather than a host path: Docker's rule
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, which mvmd applies too.
fn is_volume_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `--volumes-from SANDBOX[:ro|:rw]`: checked here so a bad mode fails
/// before any request; the value is sent as given.
pub fn parse_volumes_from_flag(s: &str) -> Result<String, String> {
    mvm_api::volume::parse_volumes_from(s).map(|_| s.to_string())
}

/// `-v`: `/target` (anonymous volume), `name:/target[:opts]` (named
/// volume), `/host:/target[:opts]` (bind); opts `ro`, `rw` (and Docker's
/// propagation and SELinux options, which a microVM has no use for, are
/// refused by name).
pub fn parse_volume_flag(s: &str) -> Result<MountRequest, String> {
    let bad = |why: &str| {
        format!("invalid -v {s:?}: {why}; use NAME:/PATH[:ro], /HOST/DIR:/PATH[:ro] or /PATH")
    };
    if s.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, o] => (Some(*src), *t, Some(*o)),
        _ => return Err(bad("too many ':'")),
    };
    if !target.starts_with('/') {
        return Err(bad("the path in the sandbox must be absolute"));
    }
    let mut m = match source {
        None => request(MountType::Volume, None, target),
        Some("") => return Err(bad("the source is empty")),
        Some(src) if src.starts_with('/') => {
            request(MountType::Bind, Some(src.to_string()), target)
        }
        Some(src) if is_volume_name(src) => {
            request(MountType::Volume, Some(src.to_string()), target)
        }
        Some(src) if src.starts_with('.') || src.starts_with('~') || src.contains('/') => {
            return Err(bad(&format!(
                "the host path {src:?} is relative; give an absolute path (e.g. \"$PWD/{}\")",
                src.trim_start_matches("./")
            )))
        }
        Some(src) => {
            return Err(bad(&format!(
                "{src:?} is neither an absolute host path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
            )))
        }
    };
    if let Some(opts) = opts {
        for o in opts.split(',') {
            match o {
                "ro" | "readonly" => m.read_only = true,
                "rw" => m.read_only = false,
                "" => return Err(bad("an option is empty")),
                o => {
                    return Err(bad(&format!(
                        "unknown option {o:?} (ro and rw are understood)"
                    )))
                }
            }
        }
    }
    Ok(m)
}

/// A size with an optional unit (`64m`, `1g`, `4096`), in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (
            &s[..i],
            match c.to_ascii_lowercase() {
                'b' => 1u64,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return None,
            },
        ),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// tmpfs options: `size=`, `mode=`, `ro`/`rw`, `exec`/`noexec`, ...
fn tmpfs_opts(m: &mut MountRequest, opts: &str, what: &str) -> Result<(), String> {
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                m.tmpfs_size = Some(parse_size(v).filter(|n| *n > 0).ok_or_else(|| {
                    format!("{what}: size {v:?} is not a size (e.g. 64m, 1g)")
                })?)
            }
            Some(("mode", v)) => {
                m.tmpfs_mode = Some(parse_mode(v).ok_or_else(|| {
                    format!("{what}: mode {v:?} is not octal permission bits (e.g. 1777)")
                })?)
            }
            None if ["ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev"]
                .contains(&o) =>
            {
                if o == "ro" {
                    m.read_only = true;
                } else if o == "rw" {
                    m.read_only = false;
                } else {
                    m.tmpfs_options.push(o.to_string());
                }
            }
            _ => {
                return Err(format!(
                    "{what}: unknown option {o:?}; use size=, mode=, ro, rw, exec, noexec, suid, nosuid, dev, nodev"
                ))
            }
        }
    }
    Ok(())
}

/// `--tmpfs /path[:opts]`.
pub fn parse_tmpfs_flag(s: &str) -> Result<MountRequest, String> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    if !target.starts_with('/') {
        return Err(format!(
            "invalid --tmpfs {s:?}: the path must be absolute (e.g. /run:size=64m)"
        ));
    }
    let mut m = request(MountType::Tmpfs, None, target);
    tmpfs_opts(&mut m, opts, &format!("invalid --tmpfs {s:?}"))?;
    Ok(m)
}

/// `--mount type=volume|bind|tmpfs,source=,target=,readonly,tmpfs-size=,
/// tmpfs-mode=` (Docker's keys and aliases: `src`, `dst`, `destination`,
/// `ro`, `readonly=true|false`).
pub fn parse_mount_flag(s: &str) -> Result<MountRequest, String> {
    let what = format!("invalid --mount {s:?}");
    let mut kind = None;
    let (mut source, mut target, mut ro) = (None, None, false);
    let (mut size, mut mode) = (None, None);
    for field in s.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field.trim(), None),
        };
        match (k, v) {
            ("type", Some(t)) => {
                kind = Some(match t {
                    "volume" => MountType::Volume,
                    "bind" => MountType::Bind,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return Err(format!(
                            "{what}: unknown type {other:?}; use volume, bind or tmpfs"
                        ))
                    }
                })
            }
            ("source" | "src", Some(v)) => source = Some(v.to_string()),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None) => ro = true,
            ("readonly" | "ro", Some(v)) => {
                ro = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("{what}: readonly={v:?}: use true or false")),
                }
            }
            ("tmpfs-size", Some(v)) => {
                size = Some(parse_size(v).filter(|n| *n > 0).ok_or_else(|| {
                    format!("{what}: tmpfs-size {v:?} is not a size (e.g. 64m)")
                })?)
            }
            ("tmpfs-mode", Some(v)) => {
                mode = Some(parse_mode(v).ok_or_else(|| {
                    format!("{what}: tmpfs-mode {v:?} is not octal permission bits")
                })?)
            }
            _ => {
                return Err(format!(
                    "{what}: unknown field {field:?}; use type=, source=, target=, readonly, tmpfs-size=, tmpfs-mode="
                ))
            }
        }
    }
    let kind = kind.unwrap_or(MountType::Volume);
    let target = target.ok_or_else(|| format!("{what}: target= is missing"))?;
    if !target.starts_with('/') {
        return Err(format!(
            "{what}: target {target:?} must be an absolute path"
        ));
    }
    if kind != MountType::Tmpfs && (size.is_some() || mode.is_some()) {
        return Err(format!("{what}: tmpfs-size and tmpfs-mode need type=tmpfs"));
    }
    match (kind, source.as_deref()) {
        (MountType::Bind, None | Some("")) => {
            return Err(format!("{what}: type=bind needs source=/host/dir"))
        }
        (MountType::Bind, Some(src)) if !src.starts_with('/') => {
            return Err(format!(
                "{what}: the bind source {src:?} is relative; give an absolute path"
            ))
        }
        (MountType::Volume, Some(src)) if !src.is_empty() && !is_volume_name(src) => {
            return Err(format!(
                "{what}: {src:?} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+); use type=bind for a host directory"
            ))
        }
        (MountType::Tmpfs, Some(_)) => {
            return Err(format!("{what}: type=tmpfs takes no source"))
        }
        _ => {}
    }
    let mut m = request(kind, source.filter(|s| !s.is_empty()), &target);
    m.read_only = ro;
    m.tmpfs_size = size;
    m.tmpfs_mode = mode;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_in_dockers_forms() {
        let m = parse_volume_flag("data:/var/lib/app").unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), m.target.as_str(), m.read_only),
            (MountType::Volume, Some("data"), "/var/lib/app", false)
        );
        let m = parse_volume_flag("/srv/src:/src:ro").unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), m.read_only),
            (MountType::Bind, Some("/srv/src"), true)
        );
        let m = parse_volume_flag("/cache").unwrap();
        assert_eq!((m.kind, m.source), (MountType::Volume, None));
        for (bad, why) in [
            ("./src:/src", "relative"),
            ("src/x:/src", "relative"),
            ("~/x:/src", "relative"),
            ("data:rel", "absolute"),
            ("rel", "absolute"),
            ("data:/x:rshared", "unknown option"),
            ("data:/x:ro:z", "too many"),
            (":/x", "empty"),
            ("a:/x", "neither"),
            ("data:/x:", "empty"),
            ("da\0ta:/x", "NUL"),
        ] {
            let e = parse_volume_flag(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tmpfs_and_mount_flags() {
        let m = parse_tmpfs_flag("/run:size=64m,mode=1770,exec").unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(64 << 20), Some(0o1770)));
        assert_eq!(m.tmpfs_options, ["exec"]);
        for bad in [
            "run",
            "/run:size=lots",
            "/run:mode=999",
            "/run:uid=0",
            "/run:size=0",
        ] {
            assert!(parse_tmpfs_flag(bad).is_err(), "{bad}");
        }
        let m = parse_mount_flag("type=bind,source=/h,target=/g,readonly").unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), m.target.as_str(), m.read_only),
            (MountType::Bind, Some("/h"), "/g", true)
        );
        let m = parse_mount_flag("src=data,dst=/d").unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref()),
            (MountType::Volume, Some("data"))
        );
        let m = parse_mount_flag("type=tmpfs,destination=/t,tmpfs-size=1g,tmpfs-mode=700").unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(1 << 30), Some(0o700)));
        let m = parse_mount_flag("type=volume,target=/anon").unwrap();
        assert_eq!(m.source, None);
        for (bad, why) in [
            ("type=bind,target=/g", "needs source"),
            ("type=bind,source=rel,target=/g", "relative"),
            ("type=nfs,target=/g", "unknown type"),
            ("type=volume,source=../x,target=/g", "not a volume name"),
            ("type=volume,source=v", "target= is missing"),
            ("type=volume,source=v,target=g", "absolute"),
            ("type=tmpfs,source=x,target=/t", "no source"),
            ("type=volume,target=/t,tmpfs-size=1m", "need type=tmpfs"),
            (
                "type=bind,source=/h,target=/g,bind-propagation=rshared",
                "unknown field",
            ),
            (
                "type=bind,source=/h,target=/g,readonly=maybe",
                "true or false",
            ),
        ] {
            let e = parse_mount_flag(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
