//! Volume backup and restore, and `volumes_from` refusals, through the
//! installed product: the `mvctl` binary and raw requests against a real
//! `mvmd` process. The volumes are host directories, so no microVM boots
//! and the test needs no KVM (the e2e suite, tests/tests/volumes.rs, has
//! guests write and read them).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{api, Mvmd};

/// Every path below `dir` (relative) with its kind, mode, owner, size,
/// mtime and content or link target; symlinks not followed.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let what = if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            String::new()
        } else if md.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(&p).unwrap())
        } else {
            format!("{:?} nlink {}", fs::read(&p).unwrap(), md.nlink())
        };
        let rel = p.strip_prefix(dir).unwrap().to_path_buf();
        let mtime = if md.file_type().is_symlink() {
            0
        } else {
            md.mtime()
        };
        out.push((
            rel,
            format!("{:o} {}:{} {} {what}", md.mode(), md.uid(), md.gid(), mtime),
        ));
    }
    out.sort();
    out
}

fn names(d: &Mvmd) -> Vec<String> {
    d.mvctl(&["volume", "ls", "-q"])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn export_and_import_round_trip_refuse_hostile_archives_and_keep_stored_data() {
    let d = Mvmd::start();
    let root = is_root();
    d.mvctl(&["volume", "create", "src"]).ok();
    let data = d.root().join("volumes/src/_data");
    let outside = d.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "host secret").unwrap();
    fs::create_dir_all(data.join("etc/app")).unwrap();
    fs::write(data.join("etc/app/conf"), "key=value\n").unwrap();
    fs::write(data.join("blob"), vec![b'z'; 700_000]).unwrap();
    fs::hard_link(data.join("blob"), data.join("blob2")).unwrap();
    symlink(outside.join("secret"), data.join("secret-link")).unwrap();
    symlink(&outside, data.join("outside-dir")).unwrap();
    symlink("etc/app/conf", data.join("conf")).unwrap();
    fs::set_permissions(data.join("etc/app/conf"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(data.join("etc"), fs::Permissions::from_mode(0o1777)).unwrap();
    if root {
        std::os::unix::fs::chown(data.join("etc/app/conf"), Some(1234), Some(4321)).unwrap();
    }

    // To a file: no progress drawn without a terminal.
    let a = d.dir.path().join("a.tar");
    let out = d
        .mvctl(&["volume", "export", "src", "-o", a.to_str().unwrap()])
        .ok();
    assert_eq!(out.stderr, "", "{out:?}");
    let a_bytes = fs::read(&a).unwrap();
    assert!(
        !a_bytes.windows(11).any(|w| w == b"host secret"),
        "a symlink was followed"
    );
    // To stdout (not a terminal here): the same bytes (the archive is
    // ASCII apart from NULs, so the captured text is exact).
    let out = d.mvctl(&["volume", "export", "src"]).ok();
    assert!(out.stdout.as_bytes() == &a_bytes[..]);

    let out = d
        .mvctl(&["volume", "import", "copy", a.to_str().unwrap()])
        .ok();
    assert_eq!(out.stdout.trim(), "copy");
    assert!(names(&d).contains(&"copy".to_string()));
    let copy = d.root().join("volumes/copy/_data");
    let (t1, t2) = (tree(&data), tree(&copy));
    if root {
        assert_eq!(t1, t2);
    } else {
        // Owners are only restored by root.
        assert_eq!(t1.len(), t2.len());
    }
    let b = d.dir.path().join("b.tar");
    d.mvctl(&["volume", "export", "copy", "-o", b.to_str().unwrap()])
        .ok();
    if root {
        assert!(fs::read(&b).unwrap() == a_bytes, "re-export differs");
    }

    // Nothing stored is lost: a volume with content is refused without
    // --force; --force replaces it whole.
    fs::write(copy.join("extra"), "mine").unwrap();
    d.mvctl(&["volume", "import", "copy", a.to_str().unwrap()])
        .fails_with("not empty");
    assert_eq!(fs::read_to_string(copy.join("extra")).unwrap(), "mine");
    d.mvctl(&["volume", "import", "-f", "copy", a.to_str().unwrap()])
        .ok();
    assert!(!copy.join("extra").exists());
    // An existing, empty volume is filled; its labels stay.
    d.mvctl(&["volume", "create", "--label", "k=v", "empty"])
        .ok();
    d.mvctl(&["volume", "import", "empty", a.to_str().unwrap()])
        .ok();
    let v: serde_json::Value =
        serde_json::from_str(&d.mvctl(&["volume", "inspect", "empty"]).ok().stdout).unwrap();
    assert_eq!(v[0]["labels"]["k"], "v");

    // A hostile archive: a symlink out, then a file beneath it.
    let evil = d.dir.path().join("evil.tar");
    let mut t = Vec::new();
    for (name, kind, link, body) in [
        (
            &b"x"[..],
            tar::EntryType::Symlink,
            Some(outside.to_str().unwrap().as_bytes()),
            &b""[..],
        ),
        (
            &b"x/secret"[..],
            tar::EntryType::Regular,
            None,
            &b"evil"[..],
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.extend_from_slice(h.as_bytes());
        t.extend_from_slice(body);
        t.resize(t.len().div_ceil(512) * 512, 0);
    }
    t.extend_from_slice(&[0u8; 1024]);
    fs::write(&evil, t).unwrap();
    d.mvctl(&["volume", "import", "evil", evil.to_str().unwrap()])
        .fails_with("x/secret");
    assert_eq!(
        fs::read_to_string(outside.join("secret")).unwrap(),
        "host secret"
    );
    assert!(!names(&d).contains(&"evil".to_string()));
    let left: Vec<_> = fs::read_dir(d.root().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n == "evil")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Bad input gets clear errors.
    d.mvctl(&["volume", "import", "copy2", "/nonexistent.tar"])
        .fails_with("/nonexistent.tar");
    d.mvctl(&["volume", "export", "nope", "-o", "/dev/null"])
        .fails_with("no such volume");
    let (status, body) = api(&d.sock, "GET", "/v1/volumes/nope/export", &[], "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(&d.sock, "POST", "/v1/volumes/-bad/import", &[], "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid volume name"), "{body}");
    // The check mvctl makes before sending an archive: the refusal an
    // import would get, or 204, and nothing changes either way.
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/volumes/copy/import?check=true",
        &[],
        "",
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not empty"), "{body}");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/volumes/copy/import?check=true&force=true",
        &[],
        "",
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/volumes/fresh/import?check=true",
        &[],
        "",
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = api(&d.sock, "GET", "/v1/volumes/fresh", &[], "");
    assert_eq!(status, 404, "the check made a volume: {body}");
}

#[test]
fn volumes_from_an_unknown_sandbox_or_with_a_bad_mode_is_refused() {
    let d = Mvmd::start();
    for (from, why) in [
        ("ghost", "--volumes-from ghost: no such sandbox"),
        ("ghost:rx", "unknown mode"),
    ] {
        let body = format!(r#"{{"image":"busybox","volumes_from":["{from}"]}}"#);
        let (status, text) = api(&d.sock, "POST", "/v1/sandboxes", &[], &body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(why), "{text}");
    }
    // mvctl refuses a bad mode itself, before any request.
    let out = d.mvctl(&["create", "--volumes-from", "x:rx", "busybox"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unknown mode"), "{out:?}");
}

#[test]
fn block_volumes_are_made_listed_sized_refused_export_and_counted_by_system_df() {
    let d = Mvmd::start();
    d.mvctl(&["volume", "create", "-d", "block", "-o", "size=32m", "blk"])
        .ok();
    d.mvctl(&["volume", "create", "-d", "block", "blk2"])
        .fails_with("needs a size");
    d.mvctl(&["volume", "create", "-d", "block", "-o", "size=1m", "blk2"])
        .fails_with("16m to 16t");
    d.mvctl(&["volume", "create", "-d", "zfs", "blk2"])
        .fails_with("unknown volume driver");
    // The same name again: returned as it is; another driver: conflict.
    d.mvctl(&["volume", "create", "-d", "block", "-o", "size=64m", "blk"])
        .ok();
    d.mvctl(&["volume", "create", "blk"])
        .fails_with("exists with driver block");
    let ls = d.mvctl(&["volume", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .any(|l| l.starts_with("block") && l.contains(" blk ") && l.ends_with("32m")),
        "{ls}"
    );
    let (status, body) = api(&d.sock, "GET", "/v1/volumes/blk", &[], "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["driver"], "block");
    assert_eq!(v["usage_data"]["capacity"], 32u64 << 20);
    let image = PathBuf::from(v["mountpoint"].as_str().unwrap());
    assert_eq!(fs::metadata(&image).unwrap().len(), 32 << 20);
    // No host export or import: refused before any stream, saying how.
    let (status, body) = api(&d.sock, "GET", "/v1/volumes/blk/export", &[], "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("from a sandbox"), "{body}");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/volumes/blk/import?check=true",
        &[],
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tar -x"), "{body}");

    // system df counts both drivers; nothing uses them, so all of their
    // size is reclaimable.
    d.mvctl(&["volume", "create", "dir"]).ok();
    fs::write(d.root().join("volumes/dir/_data/f"), vec![1u8; 100_000]).unwrap();
    let (status, body) = api(&d.sock, "GET", "/v1/system/df", &[], "");
    assert_eq!(status, 200, "{body}");
    let u: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(u["volumes"]["total"], 2, "{u}");
    assert_eq!(u["volumes"]["active"], 0, "{u}");
    let size = u["volumes"]["size"].as_u64().unwrap();
    assert!(size >= 100_000, "{u}");
    assert_eq!(u["volumes"]["reclaimable"].as_u64(), Some(size));
    let drivers: Vec<&str> = u["volume_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["driver"].as_str().unwrap())
        .collect();
    assert_eq!(drivers, ["block", "local"]);
    assert_eq!(u["sandboxes"]["total"], 0);
    let out = d.mvctl(&["system", "df"]).ok().stdout;
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("TYPE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Volumes") && l.contains("(100%)")),
        "{out}"
    );
    let out = d.mvctl(&["system", "df", "-v"]).ok().stdout;
    assert!(out.contains("Local Volumes space usage"), "{out}");

    d.mvctl(&["volume", "rm", "blk"]).ok();
    assert!(!image.exists());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
