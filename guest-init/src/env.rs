//! The workload's environment and where its executable is looked for.
//!
//! Docker semantics: the daemon's defaults (`PATH`, `HOSTNAME`) come first
//! and the image/user environment replaces or extends them; runc then adds
//! `HOME` from passwd if it is still missing. For duplicate keys the last
//! value wins, in the position of the first.

use std::path::{Path, PathBuf};

/// Docker's default `PATH` on Linux.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build the final `KEY=VALUE` list. `spec_env` has been validated
/// (`KEY=VALUE`, key non-empty) by `LaunchSpec::validate`; anything else is
/// skipped here rather than trusted.
pub fn build(spec_env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.into()),
    ];
    for entry in spec_env {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.into(),
            None => env.push((key.into(), value.into())),
        }
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push((
            "HOME".into(),
            if home.is_empty() {
                "/".into()
            } else {
                home.into()
            },
        ));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The value of `key` in a `KEY=VALUE` list.
pub fn get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

/// The paths `execvp` would try for `arg0`, in order: `arg0` itself if it
/// contains a `/`, else each `PATH` entry joined with it (an empty entry
/// means the working directory, as in glibc and Go). `None` for `PATH`
/// means Docker's default.
pub fn candidates(arg0: &str, path: Option<&str>) -> Vec<PathBuf> {
    if arg0.contains('/') {
        return vec![PathBuf::from(arg0)];
    }
    if arg0.is_empty() {
        return Vec::new();
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                Path::new(".")
            } else {
                Path::new(dir)
            }
            .join(arg0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn defaults_when_spec_is_empty() {
        assert_eq!(
            build(&[], "box", "/root"),
            s(&[
                &format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box",
                "HOME=/root"
            ])
        );
        assert_eq!(build(&[], "box", "")[2], "HOME=/");
    }

    #[test]
    fn spec_overrides_in_place_and_last_wins() {
        let env = build(
            &s(&["A=1", "PATH=/opt/bin", "A=2", "HOME=/h", "EMPTY=", "EQ=a=b"]),
            "box",
            "/root",
        );
        assert_eq!(
            env,
            s(&[
                "PATH=/opt/bin",
                "HOSTNAME=box",
                "A=2",
                "HOME=/h",
                "EMPTY=",
                "EQ=a=b"
            ])
        );
    }

    #[test]
    fn hostile_entries_are_skipped() {
        let env = build(&s(&["NOEQ", "=x"]), "h", "/");
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn get_matches_whole_keys() {
        let env = s(&["PATHX=1", "PATH=/bin", "P=2"]);
        assert_eq!(get(&env, "PATH"), Some("/bin"));
        assert_eq!(get(&env, "P"), Some("2"));
        assert_eq!(get(&env, "Q"), None);
    }

    #[test]
    fn path_lookup_candidates() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(candidates("sh", Some("/a:/b")), p(&["/a/sh", "/b/sh"]));
        assert_eq!(
            candidates("sh", Some("/a::/b")),
            p(&["/a/sh", "./sh", "/b/sh"])
        );
        assert_eq!(candidates("sh", Some("")), p(&["./sh"]));
        assert_eq!(candidates("./run", Some("/a")), p(&["./run"]));
        assert_eq!(candidates("/bin/sh", None), p(&["/bin/sh"]));
        assert_eq!(candidates("x", None).len(), 6);
        assert_eq!(candidates("x", None)[5], PathBuf::from("/bin/x"));
        assert!(candidates("", None).is_empty());
    }
}
