//! `mvctl cp` out of a sandbox, local side: the archive the guest sends is
//! hostile, and `docker cp`'s naming rules hold. No VM: the archives are
//! made here, as a compromised guest could make them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mvctl::commands::cp::{extract, is_contents, write_clean};
use mvctl::commands::CmdError;

/// Entries written header by header, so that hostile ones survive.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (path, kind, mode, data, link): (&str, tar::EntryType, u32, &[u8], Option<&str>) =
            match e {
                E::Dir(p, m) => (p, tar::EntryType::Directory, *m, b"", None),
                E::File(p, d, m) => (p, tar::EntryType::Regular, *m, d, None),
                E::Symlink(p, t) => (p, tar::EntryType::Symlink, 0o777, b"", Some(t)),
                E::Hardlink(p, t) => (p, tar::EntryType::Link, 0o644, b"", Some(t)),
                E::Char(p) => (p, tar::EntryType::Char, 0o666, b"", None),
            };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(4321);
        h.set_gid(4321);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// `dest/` to copy into and `outside/` (with a file) that must not change.
struct Dirs {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"original").unwrap();
        Dirs { tmp, dest, outside }
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(names(&self.outside), ["keep"]);
        assert_eq!(fs::read(self.outside.join("keep")).unwrap(), b"original");
        assert_eq!(fs::metadata(self.outside.join("keep")).unwrap().nlink(), 1);
        assert_eq!(names(self.tmp.path()), ["dest", "outside"]);
        assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), 1);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn hostile_archives_write_nothing_outside_dest() {
    let d = Dirs::new();
    let out = d.outside.display().to_string();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            tar(&[E::Symlink("link", &out), E::File("link/pwned", b"x", 0o644)]),
            "link/pwned",
        ),
        (
            tar(&[
                E::Symlink("up", ".."),
                E::File("up/outside/keep", b"x", 0o644),
            ]),
            "up/outside/keep",
        ),
        (tar(&[E::Hardlink("h", "/etc/passwd")]), "\"h\""),
        (tar(&[E::Hardlink("h", "../outside/keep")]), "\"h\""),
        (
            tar(&[E::File("../outside/keep", b"x", 0o644)]),
            "../outside/keep",
        ),
        (tar(&[E::File("/etc/passwd", b"x", 0o644)]), "/etc/passwd"),
    ];
    for (data, entry) in cases {
        let e = extract(&data[..], &d.dest, false, false).unwrap_err();
        assert!(matches!(e, CmdError::Unpack { .. }), "{e}");
        assert!(e.to_string().contains(entry), "{e} does not name {entry}");
        d.assert_outside_untouched();
    }
    // A symlink the user already had in the destination is not followed.
    std::os::unix::fs::symlink(&d.outside, d.dest.join("mine")).unwrap();
    let e = extract(
        &tar(&[E::File("mine/keep", b"x", 0o644)])[..],
        &d.dest,
        false,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("mine/keep"), "{e}");
    d.assert_outside_untouched();
    // Nor is a symlink at the final name: it is replaced.
    std::os::unix::fs::symlink(d.outside.join("keep"), d.dest.join("f")).unwrap();
    extract(
        &tar(&[E::File("f", b"new", 0o644)])[..],
        &d.dest,
        false,
        false,
    )
    .unwrap();
    assert_eq!(fs::read(d.dest.join("f")).unwrap(), b"new");
    d.assert_outside_untouched();
}

#[test]
fn devices_setuid_and_owners() {
    let data = tar(&[
        E::Dir("bin", 0o755),
        E::File("bin/su", b"#!", 0o4755),
        E::Char("bin/null"),
    ]);
    let d = Dirs::new();
    let st = extract(&data[..], &d.dest, false, false).unwrap();
    assert_eq!(names(&d.dest.join("bin")), ["su"], "no device node");
    assert_eq!(st.skipped_devices, 1);
    assert_eq!(mode(&d.dest.join("bin/su")), 0o755, "setuid dropped");
    assert_eq!(st.setid_dropped, 1);
    // The caller's uid: the owner of what the test itself made.
    let me = fs::metadata(d.tmp.path()).unwrap().uid();
    assert_eq!(
        fs::metadata(d.dest.join("bin/su")).unwrap().uid(),
        me,
        "owned by the caller"
    );
    // -a keeps the bits, and the owners when root.
    let d = Dirs::new();
    extract(&data[..], &d.dest, false, true).unwrap();
    assert_eq!(mode(&d.dest.join("bin/su")), 0o4755);
    if me == 0 {
        assert_eq!(fs::metadata(d.dest.join("bin/su")).unwrap().uid(), 4321);
    }
}

#[test]
fn docker_cp_naming() {
    let file = tar(&[E::File("hosts", b"h", 0o644)]);
    let dir = tar(&[
        E::Dir("etc", 0o755),
        E::File("etc/hosts", b"h", 0o644),
        E::Hardlink("etc/h2", "etc/hosts"),
    ]);
    let contents = tar(&[E::File("hosts", b"h", 0o644), E::Dir("sub", 0o755)]);
    // A file into an existing directory keeps its name; to a new path it
    // takes that name; an existing file is replaced.
    let d = Dirs::new();
    extract(&file[..], &d.dest, false, false).unwrap();
    assert_eq!(names(&d.dest), ["hosts"]);
    extract(&file[..], &d.dest.join("renamed"), false, false).unwrap();
    assert_eq!(fs::read(d.dest.join("renamed")).unwrap(), b"h");
    fs::write(d.dest.join("old"), b"old").unwrap();
    extract(&file[..], &d.dest.join("old"), false, false).unwrap();
    assert_eq!(fs::read(d.dest.join("old")).unwrap(), b"h");
    // A directory to a new path becomes that directory (hard links
    // follow the rename).
    extract(&dir[..], &d.dest.join("conf"), false, false).unwrap();
    assert_eq!(names(&d.dest.join("conf")), ["h2", "hosts"]);
    assert_eq!(fs::metadata(d.dest.join("conf/h2")).unwrap().nlink(), 2);
    // ... and cannot replace a file.
    let e = extract(&dir[..], &d.dest.join("old"), false, false).unwrap_err();
    assert!(e.to_string().contains("non-directory"), "{e}");
    assert_eq!(fs::read(d.dest.join("old")).unwrap(), b"h");
    // `path/.`: the contents, into an existing or a new directory, never a file.
    let d2 = Dirs::new();
    extract(&contents[..], &d2.dest, true, false).unwrap();
    assert_eq!(names(&d2.dest), ["hosts", "sub"]);
    extract(&contents[..], &d2.dest.join("new"), true, false).unwrap();
    assert_eq!(names(&d2.dest.join("new")), ["hosts", "sub"]);
    let e = extract(&contents[..], &d2.dest.join("hosts"), true, false).unwrap_err();
    assert!(matches!(e, CmdError::Invalid(_)), "{e}");
    // The parent of a new path must exist.
    let e = extract(&file[..], &d2.dest.join("no/such"), false, false).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Which paths ask for contents, as the guest agent decides.
    for (p, c) in [
        ("/etc/.", true),
        ("/", true),
        ("/etc/..", true),
        ("/etc", false),
        ("/etc/", false),
        ("/etc/./", false),
    ] {
        assert_eq!(is_contents(p), c, "{p}");
    }
}

#[test]
fn stdout_gets_a_clean_archive() {
    let data = tar(&[
        E::Dir("d", 0o755),
        E::File("d/su", b"#!", 0o4755),
        E::Char("d/null"),
        E::Hardlink("d/h", "d/su"),
    ]);
    let (out, st) = write_clean(&data[..], Vec::new(), false).unwrap();
    assert_eq!(st.skipped_devices, 1);
    let mut ar = tar::Archive::new(&out[..]);
    let got: Vec<(String, u32)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("d/".to_string(), 0o755),
            ("d/su".to_string(), 0o755),
            ("d/h".to_string(), 0o644)
        ]
    );
    let hostile = tar(&[E::Symlink("l", "/etc"), E::File("l/passwd", b"x", 0o644)]);
    let e = write_clean(&hostile[..], Vec::new(), false).unwrap_err();
    assert!(e.to_string().contains("l/passwd"), "{e}");
}
