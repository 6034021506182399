//! Resolving Docker's `--user` against the image's /etc/passwd and
//! /etc/group, with runc's semantics (`libcontainer/user.GetExecUser`):
//!
//! * `""`: uid 0; gid and home from passwd's uid-0 entry if there is one.
//! * `uid` / `name`: a numeric uid need not exist in passwd; a name must.
//!   A passwd match gives the primary gid and home.
//! * `user:group`: the group is a gid (need not exist) or a name (must
//!   exist); it replaces the primary gid and there are no supplementary
//!   groups.
//! * Without an explicit group, a user found in passwd gets as
//!   supplementary groups every group that lists it as a member.
//!
//! Both files come from the image and are hostile: lines that do not parse
//! are ignored, as are ids out of range, and the files are read with a size
//! limit.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Largest /etc/passwd or /etc/group init reads.
pub const MAX_DB_SIZE: u64 = 16 << 20;
/// Largest id runc accepts (ids are signed 32-bit in much of userspace).
pub const MAX_ID: u32 = i32::MAX as u32;

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`setgroups`); may be empty.
    pub sgids: Vec<u32>,
    /// Home directory, for `HOME` when the environment has none.
    pub home: String,
}

/// Why a user spec cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("{what} id {value} is out of range (0 to {MAX_ID})")]
    Range { what: &'static str, value: String },
    #[error("user spec {0:?} has more than one ':'")]
    Syntax(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// One parsed /etc/passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One parsed /etc/group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

fn parse_id(s: &str) -> Option<u32> {
    // Only plain decimal digits: `+5`, ` 5` or `0x5` are not ids.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&id| id <= MAX_ID)
}

/// Parse /etc/passwd (`name:password:uid:gid:gecos:home:shell`). Comment,
/// blank and malformed lines are skipped; missing trailing fields are empty.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = parse_id(f.next()?)?;
            let gid = parse_id(f.next()?)?;
            let _gecos = f.next();
            let home = f.next().unwrap_or("");
            if name.is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: name.into(),
                uid,
                gid,
                home: home.into(),
            })
        })
        .collect()
}

/// Parse /etc/group (`name:password:gid:member,member`). Comment, blank and
/// malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let gid = parse_id(f.next()?)?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            if name.is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: name.into(),
                gid,
                members,
            })
        })
        .collect()
}

/// Resolve a Docker user spec against already-parsed databases (`None`:
/// the file does not exist in the image).
pub fn resolve(
    spec: &str,
    passwd: Option<&[PasswdEntry]>,
    group: Option<&[GroupEntry]>,
) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((_, g)) if g.contains(':') => return Err(UserError::Syntax(spec.into())),
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());

    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        sgids: Vec::new(),
        home: "/".into(),
    };
    let passwd = passwd.unwrap_or(&[]);
    let found = if user_arg.is_empty() {
        passwd.iter().find(|p| p.uid == 0)
    } else if numeric(user_arg) {
        let uid = parse_id(user_arg).ok_or_else(|| UserError::Range {
            what: "user",
            value: user_arg.into(),
        })?;
        user.uid = uid;
        passwd.iter().find(|p| p.uid == uid)
    } else {
        Some(
            passwd
                .iter()
                .find(|p| p.name == user_arg)
                .ok_or_else(|| UserError::NoUser(user_arg.into()))?,
        )
    };
    if let Some(p) = found {
        user.uid = p.uid;
        user.gid = p.gid;
        user.home = p.home.clone();
    }

    let group = group.unwrap_or(&[]);
    match group_arg {
        Some(g) if numeric(g) => {
            user.gid = parse_id(g).ok_or_else(|| UserError::Range {
                what: "group",
                value: g.into(),
            })?;
        }
        Some(g) => {
            user.gid = group
                .iter()
                .find(|e| e.name == g)
                .ok_or_else(|| UserError::NoGroup(g.into()))?
                .gid;
        }
        None => {
            if let Some(p) = found {
                for e in group.iter().filter(|e| e.members.contains(&p.name)) {
                    if !user.sgids.contains(&e.gid) {
                        user.sgids.push(e.gid);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// Read a database file from the image; `Ok(None)` if it does not exist.
pub fn read_db(path: &Path) -> Result<Option<String>, UserError> {
    let err = |reason: String| UserError::Read {
        path: path.display().to_string(),
        reason,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DB_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_DB_SIZE {
        return Err(err(format!("larger than {MAX_DB_SIZE} bytes")));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Resolve `spec` against `<root>/etc/passwd` and `<root>/etc/group`.
pub fn resolve_in_root(spec: &str, root: &Path) -> Result<ExecUser, UserError> {
    let passwd = read_db(&root.join("etc/passwd"))?.map(|t| parse_passwd(&t));
    let group = read_db(&root.join("etc/group"))?.map(|t| parse_group(&t));
    resolve(spec, passwd.as_deref(), group.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment:x:5:5::/nope:
broken line without colons
bad:x:notanumber:1::/bad:/bin/sh
huge:x:4294967296:1::/huge:/bin/sh
neg:x:-1:1::/neg:/bin/sh
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
short:x:1001:1001
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
dup:x:2000:2000::/first:/bin/sh
dup:x:2001:2001::/second:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:alice, root
audio:x:29:bob,alice
alice:x:1000:
garbage
nogroup:x:65534:
weird:x:abc:alice
staff:x:50:alice
staff2:x:50:alice
";

    fn r(spec: &str) -> Result<ExecUser, UserError> {
        resolve(spec, Some(&parse_passwd(PASSWD)), Some(&parse_group(GROUP)))
    }

    #[test]
    fn passwd_parsing_skips_malformed_lines() {
        let p = parse_passwd(PASSWD);
        let names: Vec<_> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["root", "daemon", "alice", "short", "nobody", "dup", "dup"]
        );
        assert_eq!(
            p[3],
            PasswdEntry {
                name: "short".into(),
                uid: 1001,
                gid: 1001,
                home: String::new()
            }
        );
    }

    #[test]
    fn group_parsing_trims_members_and_skips_malformed_lines() {
        let g = parse_group(GROUP);
        let wheel = g.iter().find(|e| e.name == "wheel").unwrap();
        assert_eq!(wheel.members, ["alice", "root"]);
        assert!(g.iter().all(|e| e.name != "garbage" && e.name != "weird"));
        assert!(g
            .iter()
            .find(|e| e.name == "root")
            .unwrap()
            .members
            .is_empty());
    }

    #[test]
    fn empty_spec_is_root_with_its_home() {
        assert_eq!(
            r("").unwrap(),
            ExecUser {
                uid: 0,
                gid: 0,
                sgids: vec![10],
                home: "/root".into()
            }
        );
        // No passwd at all: root with "/" as home.
        assert_eq!(
            resolve("", None, None).unwrap(),
            ExecUser {
                uid: 0,
                gid: 0,
                sgids: vec![],
                home: "/".into()
            }
        );
    }

    #[test]
    fn name_gets_primary_group_home_and_memberships() {
        let u = r("alice").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        // Groups listing alice, once each, in file order.
        assert_eq!(u.sgids, vec![10, 29, 50]);
        // First entry wins for duplicate names.
        assert_eq!(r("dup").unwrap().home, "/first");
    }

    #[test]
    fn numeric_uid_need_not_exist() {
        assert_eq!(
            r("4242").unwrap(),
            ExecUser {
                uid: 4242,
                gid: 0,
                sgids: vec![],
                home: "/".into()
            }
        );
        // A numeric uid that exists takes the entry's gid, home and groups.
        assert_eq!(r("1000").unwrap(), r("alice").unwrap());
        assert_eq!(r("65534").unwrap().home, "/nonexistent");
    }

    #[test]
    fn explicit_group_replaces_gid_and_drops_memberships() {
        assert_eq!(
            r("1000:1000").unwrap(),
            ExecUser {
                uid: 1000,
                gid: 1000,
                sgids: vec![],
                home: "/home/alice".into()
            }
        );
        assert_eq!(r("alice:audio").unwrap().gid, 29);
        assert_eq!(r("alice:audio").unwrap().sgids, Vec::<u32>::new());
        assert_eq!(
            r("4242:4343").unwrap(),
            ExecUser {
                uid: 4242,
                gid: 4343,
                sgids: vec![],
                home: "/".into()
            }
        );
        assert_eq!(r("nobody:nogroup").unwrap().gid, 65534);
        // Trailing colon: no group given.
        assert_eq!(r("alice:").unwrap(), r("alice").unwrap());
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(r("mallory"), Err(UserError::NoUser("mallory".into())));
        assert_eq!(r("alice:nosuch"), Err(UserError::NoGroup("nosuch".into())));
        assert_eq!(
            resolve("alice", None, None),
            Err(UserError::NoUser("alice".into()))
        );
        assert_eq!(
            resolve("1:staff", None, None),
            Err(UserError::NoGroup("staff".into()))
        );
        // A name from a malformed line is not found either.
        assert_eq!(r("bad"), Err(UserError::NoUser("bad".into())));
    }

    #[test]
    fn out_of_range_and_odd_syntax() {
        assert!(matches!(
            r("4294967296"),
            Err(UserError::Range { what: "user", .. })
        ));
        assert!(matches!(
            r("2147483648"),
            Err(UserError::Range { what: "user", .. })
        ));
        assert!(matches!(
            r("0:99999999999"),
            Err(UserError::Range { what: "group", .. })
        ));
        assert!(matches!(r("a:b:c"), Err(UserError::Syntax(_))));
        // `-1` is not numeric, so it is looked up as a name.
        assert_eq!(r("-1"), Err(UserError::NoUser("-1".into())));
        assert_eq!(r("2147483647").unwrap().uid, MAX_ID);
    }

    #[test]
    fn reads_files_from_a_root_with_limits() {
        let dir = tempfile::tempdir().unwrap();
        // No /etc at all: numeric users still work.
        assert_eq!(resolve_in_root("7:8", dir.path()).unwrap().gid, 8);
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            b"app:x:10:20::/srv/app:\n\xff\xfe:x:1:1::/:\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "grp:x:30:app\n").unwrap();
        assert_eq!(
            resolve_in_root("app", dir.path()).unwrap(),
            ExecUser {
                uid: 10,
                gid: 20,
                sgids: vec![30],
                home: "/srv/app".into()
            }
        );
        let big = std::fs::File::create(dir.path().join("etc/group")).unwrap();
        big.set_len(MAX_DB_SIZE + 1).unwrap();
        assert!(matches!(
            resolve_in_root("app", dir.path()),
            Err(UserError::Read { .. })
        ));
    }
}
