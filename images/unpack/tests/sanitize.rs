//! `sanitize`: hostile archives are refused naming the entry, and what
//! comes out is a clean archive that unpacks to the same tree.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{names, tar, Sandbox, E};
use mvm_unpack::{
    sanitize, sanitize_into_layer, unpack, DevicePolicy, Error, Existing, Limits, Options,
    Placement, Stats,
};

fn clean(data: &[u8], opts: &Options) -> Result<(Vec<u8>, Stats), Error> {
    let mut stats = Stats::default();
    sanitize(data, Vec::new(), opts, &mut stats).map(|out| (out, stats))
}

/// (name, type byte, mode, link target) of each entry.
fn listing(data: &[u8]) -> Vec<(String, char, u32, Option<String>)> {
    let mut ar = tar::Archive::new(data);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                h.entry_type().as_byte() as char,
                h.mode().unwrap(),
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
            )
        })
        .collect()
}

fn refused(data: &[u8], opts: &Options, entry: &str) -> Error {
    let e = clean(data, opts).unwrap_err();
    assert!(
        e.to_string().contains(&format!("{entry:?}")),
        "error {e} does not name {entry:?}"
    );
    e
}

#[test]
fn hostile_archives_are_refused() {
    for opts in [Options::copy(), Options::layer()] {
        refused(
            &tar(&[
                E::Symlink("link", "/tmp/x"),
                E::File("link/pwned", b"", 0o644),
            ]),
            &opts,
            "link/pwned",
        );
        refused(
            &tar(&[E::Symlink("up", ".."), E::Dir("up/d", 0o755)]),
            &opts,
            "up/d",
        );
        // Deeper: a file made the parent of a later entry.
        refused(
            &tar(&[
                E::Dir("a", 0o755),
                E::File("a/f", b"", 0o644),
                E::File("a/f/g", b"", 0o644),
            ]),
            &opts,
            "a/f/g",
        );
        // Replaced later by a symlink: what was beneath it is gone.
        refused(
            &tar(&[
                E::Dir("d", 0o755),
                E::File("d/f", b"", 0o644),
                E::Symlink("d", "/etc"),
                E::File("d/g", b"", 0o644),
            ]),
            &opts,
            "d/g",
        );
        refused(
            &tar(&[
                E::Dir("d", 0o755),
                E::File("d/f", b"", 0o644),
                E::Symlink("d", "/etc"),
                E::Hardlink("h", "d/f"),
            ]),
            &opts,
            "h",
        );
        // A directory entry over a symlink (extractors disagree).
        refused(
            &tar(&[E::Symlink("s", "/etc"), E::Dir("s", 0o755)]),
            &opts,
            "s",
        );
        refused(&tar(&[E::Hardlink("h", "/etc/passwd")]), &opts, "h");
        refused(&tar(&[E::Hardlink("h", "../x")]), &opts, "h");
        refused(
            &tar(&[E::Hardlink("h", "later"), E::File("later", b"", 0o644)]),
            &opts,
            "h",
        );
        refused(
            &tar(&[E::Dir("d", 0o755), E::Hardlink("h", "d")]),
            &opts,
            "h",
        );
        refused(&tar(&[E::File("../x", b"", 0o644)]), &opts, "../x");
        refused(
            &tar(&[E::File("/etc/passwd", b"", 0o644)]),
            &opts,
            "/etc/passwd",
        );
        refused(&tar(&[E::Raw("m", b'M')]), &opts, "m");
        refused(&tar(&[E::File("./", b"", 0o644)]), &opts, "./");
    }
    let dev = Options {
        devices: DevicePolicy::Refuse,
        ..Options::copy()
    };
    let e = refused(&tar(&[E::Char("null", 1, 3)]), &dev, "null");
    assert!(matches!(e, Error::DeviceRefused { .. }));
    refused(
        &tar(&[E::File("d/.wh.", b"", 0o644)]),
        &Options::layer(),
        "d/.wh.",
    );
}

#[test]
fn clean_output_is_normalised_and_filtered() {
    let data = tar(&[
        E::Dir("./", 0o777),
        E::Dir("./bin//", 0o755),
        E::File("bin/./su", b"suid", 0o4755),
        E::Hardlink("bin/su2", "./bin/su"),
        E::Symlink("bin/sh", "./busybox/../x"),
        E::Char("bin/null", 1, 3),
        E::Fifo("bin/p"),
        E::Owned {
            path: "bin/caps",
            data: b"c",
            mode: 0o755,
            uid: 1000,
            gid: 1000,
            xattrs: &[
                ("user.k", b"v"),
                ("security.capability", b"cap"),
                ("trusted.overlay.opaque", b"y"),
            ],
        },
        E::File(".wh.gone", b"", 0o644),
    ]);
    let (out, st) = clean(&data, &Options::copy()).unwrap();
    let l = listing(&out);
    let expect: Vec<(String, char, u32, Option<String>)> = vec![
        ("bin/".into(), '5', 0o755, None),
        ("bin/su".into(), '0', 0o755, None),
        ("bin/su2".into(), '1', 0o644, Some("bin/su".into())),
        ("bin/sh".into(), '2', 0o777, Some("./busybox/../x".into())),
        ("bin/p".into(), '6', 0o644, None),
        ("bin/caps".into(), '0', 0o755, None),
        (".wh.gone".into(), '0', 0o644, None),
    ];
    assert_eq!(l, expect, "root entry dropped (merge), device skipped, setuid cleared, names normalised, symlink target verbatim");
    assert_eq!(
        (
            st.skipped_devices,
            st.setid_dropped,
            st.xattrs_dropped,
            st.whiteouts
        ),
        (1, 1, 2, 0)
    );
    // Only user.* survives; owners are copied.
    let mut ar = tar::Archive::new(&out[..]);
    let mut caps = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| &*e.path_bytes() == b"bin/caps")
        .unwrap();
    assert_eq!(
        (caps.header().uid().unwrap(), caps.header().gid().unwrap()),
        (1000, 1000)
    );
    let keys: Vec<String> = caps
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|r| r.unwrap().key().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["SCHILY.xattr.user.k"]);
    let mut body = String::new();
    caps.read_to_string(&mut body).unwrap();
    assert_eq!(body, "c");

    // Layer options keep setuid, the root entry, whiteouts and caps.
    let (out, st) = clean(&data, &Options::layer()).unwrap();
    let l = listing(&out);
    assert_eq!(l[0], ("./".into(), '5', 0o777, None));
    assert!(l.contains(&("bin/su".into(), '0', 0o4755, None)));
    assert_eq!(
        (st.whiteouts, st.setid_dropped, st.xattrs_dropped),
        (1, 0, 1)
    );
}

#[test]
fn clean_output_unpacks_like_the_input() {
    let data = tar(&[
        E::Dir("etc", 0o755),
        E::File("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        E::Hardlink("etc/hosts2", "etc/hosts"),
        E::Symlink("etc/mtab", "/proc/self/mounts"),
        E::File("etc/big", &vec![9u8; 70_000], 0o600),
    ]);
    let opts = Options {
        rename_top: Some(b"conf".to_vec()),
        ..Options::copy()
    };
    let (out, _) = clean(&data, &opts).unwrap();
    let a = Sandbox::new();
    unpack(&out[..], &a.root, &Options::copy(), &mut Stats::default()).unwrap();
    let b = Sandbox::new();
    unpack(&data[..], &b.root, &opts, &mut Stats::default()).unwrap();
    for root in [&a.root, &b.root] {
        assert_eq!(names(root), ["conf"]);
        assert_eq!(
            names(&root.join("conf")),
            ["big", "hosts", "hosts2", "mtab"]
        );
        assert_eq!(fs::read(root.join("conf/big")).unwrap(), vec![9u8; 70_000]);
        assert_eq!(fs::metadata(root.join("conf/hosts2")).unwrap().nlink(), 2);
        assert_eq!(
            fs::metadata(root.join("conf/big"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_link(root.join("conf/mtab")).unwrap().to_str(),
            Some("/proc/self/mounts")
        );
    }
    // And sanitising the output again changes nothing.
    let (again, _) = clean(&out, &Options::copy()).unwrap();
    assert_eq!(again, out);
}

#[test]
fn limits_apply() {
    let opts = Options {
        limits: Limits {
            max_entry_size: 100,
            max_total_size: 150,
            max_entries: 3,
            max_path_len: 32,
            max_header_size: 2048,
        },
        ..Options::layer()
    };
    let e = refused(&tar(&[E::Claim("huge", 1 << 50)]), &opts, "huge");
    assert!(matches!(e, Error::EntryTooLarge { .. }));
    let e = refused(
        &tar(&[
            E::File("a", &[0; 100], 0o644),
            E::File("b", &[0; 100], 0o644),
        ]),
        &opts,
        "b",
    );
    assert!(matches!(e, Error::TotalTooLarge { .. }));
    let e = refused(
        &tar(&[
            E::Dir("a", 0o755),
            E::Dir("b", 0o755),
            E::Dir("c", 0o755),
            E::Dir("d", 0o755),
        ]),
        &opts,
        "d",
    );
    assert!(matches!(e, Error::TooManyEntries { .. }));
    refused(
        &tar(&[E::File(&"x".repeat(40), b"", 0o644)]),
        &opts,
        &"x".repeat(40),
    );
    let e = clean(&tar(&[E::LongName(1 << 20)]), &opts).unwrap_err();
    assert!(e.to_string().contains("metadata records"), "{e}");
    // Truncated data is the input's fault, named.
    let data = tar(&[E::File("f", &[1; 3000], 0o644)]);
    let e = clean(&data[..512 + 1000], &Options::copy()).unwrap_err();
    assert!(
        matches!(e, Error::Archive { .. }) && e.to_string().contains("\"f\""),
        "{e}"
    );
}

#[test]
fn merge_existing_only_affects_the_root_entry() {
    let data = tar(&[E::Dir("./", 0o700), E::File("f", b"", 0o644)]);
    let (out, _) = clean(
        &data,
        &Options {
            existing: Existing::Replace,
            ..Options::copy()
        },
    )
    .unwrap();
    assert_eq!(listing(&out).len(), 2);
    let (out, _) = clean(&data, &Options::copy()).unwrap();
    assert_eq!(listing(&out).len(), 1);
}

/// ADD's options: the layer rules, `.wh.` names as plain names, the
/// archive's root entry dropped.
fn add_opts() -> Options {
    Options {
        whiteouts: false,
        existing: Existing::Merge,
        ..Options::layer()
    }
}

fn beneath(dir: &str) -> Placement {
    Placement {
        beneath: dir.as_bytes().to_vec(),
        owner: None,
    }
}

/// A layer with one entry before and one after the archive's, as the
/// builder writes it; returns the whole tar.
fn into_layer(data: &[u8], place: &Placement, opts: &Options) -> Result<Vec<u8>, Error> {
    let before = tar(&[E::Dir("usr", 0o755)]);
    let out = before[..before.len() - 1024].to_vec();
    let mut out = sanitize_into_layer(data, out, place, opts, &mut Stats::default())?;
    out.extend_from_slice(&tar(&[E::File("after", b"a", 0o644)]));
    Ok(out)
}

#[test]
fn into_a_layer_entries_land_beneath_the_directory() {
    let data = tar(&[
        E::Dir("./", 0o700),
        E::Dir("d", 0o750),
        E::File("d/f", b"data", 0o4755),
        E::Hardlink("d/h", "d/f"),
        E::Symlink("d/l", "../f"),
        E::Owned {
            path: "d/o",
            data: b"",
            mode: 0o600,
            uid: 1000,
            gid: 100,
            xattrs: &[("user.k", b"v")],
        },
    ]);
    let out = into_layer(&data, &beneath("usr/./src/"), &add_opts()).unwrap();
    assert_eq!(
        listing(&out),
        [
            ("usr".into(), '5', 0o755, None),
            ("usr/src/d/".into(), '5', 0o750, None),
            ("usr/src/d/f".into(), '0', 0o4755, None),
            ("usr/src/d/h".into(), '1', 0o644, Some("usr/src/d/f".into())),
            ("usr/src/d/l".into(), '2', 0o777, Some("../f".into())),
            ("usr/src/d/o".into(), '0', 0o600, None),
            ("after".into(), '0', 0o644, None),
        ],
        "placed names and hard link targets, symlink targets verbatim, the root entry dropped, no end marker before the caller's next entry"
    );
    let owners = |out: &[u8]| -> Vec<(u64, u64)> {
        tar::Archive::new(out)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.header().uid().unwrap(), e.header().gid().unwrap())
            })
            .collect()
    };
    assert_eq!(owners(&out)[5], (1000, 100), "owners kept");
    let chown = Placement {
        owner: Some((7, 8)),
        ..beneath("usr/src")
    };
    let out = into_layer(&data, &chown, &add_opts()).unwrap();
    assert_eq!(owners(&out)[1..6], [(7, 8); 5], "--chown applies to all");
    // Replace keeps the root entry: it is the directory itself.
    let replace = Options {
        existing: Existing::Replace,
        ..add_opts()
    };
    let out = into_layer(&data, &beneath("usr/src"), &replace).unwrap();
    assert_eq!(listing(&out)[1], ("usr/src/".into(), '5', 0o700, None));
    // At the layer's top, names are the archive's.
    let out = into_layer(&data, &Placement::default(), &add_opts()).unwrap();
    assert_eq!(listing(&out)[3].3.as_deref(), Some("d/f"));
    // The result is a layer the layer rules accept as a whole.
    let s = Sandbox::new();
    unpack(&out[..], &s.root, &Options::layer(), &mut Stats::default()).unwrap();
    assert_eq!(fs::read(s.root.join("d/f")).unwrap(), b"data");
    assert_eq!(fs::metadata(s.root.join("d/h")).unwrap().nlink(), 2);
}

#[test]
fn into_a_layer_hostile_archives_are_refused() {
    let place = beneath("app");
    for (data, entry) in [
        (
            tar(&[E::Symlink("l", "/etc"), E::File("l/passwd", b"", 0o644)]),
            "l/passwd",
        ),
        (
            tar(&[E::Symlink("up", ".."), E::File("up/x", b"", 0o644)]),
            "up/x",
        ),
        (tar(&[E::Hardlink("h", "/etc/shadow")]), "h"),
        (tar(&[E::Hardlink("h", "../app2/f")]), "h"),
        (tar(&[E::Hardlink("h", "etc/passwd")]), "h"),
        (tar(&[E::File("../escape", b"", 0o644)]), "../escape"),
        (
            tar(&[E::File("a/../../escape", b"", 0o644)]),
            "a/../../escape",
        ),
        (tar(&[E::File("/abs", b"", 0o644)]), "/abs"),
        (tar(&[E::File(".wh.etc", b"", 0o644)]), ".wh.etc"),
        (
            tar(&[E::File("d/.wh..wh..opq", b"", 0o644)]),
            "d/.wh..wh..opq",
        ),
    ] {
        let e = into_layer(&data, &place, &add_opts()).unwrap_err();
        assert!(e.to_string().contains(&format!("{entry:?}")), "{e}");
    }
    // Device nodes are left out and counted.
    let data = tar(&[E::Char("null", 1, 3), E::Block("sda", 8, 0), E::Fifo("p")]);
    let mut st = Stats::default();
    let out = sanitize_into_layer(&data[..], Vec::new(), &place, &add_opts(), &mut st).unwrap();
    assert_eq!(st.skipped_devices, 2);
    let mut out = out;
    out.extend_from_slice(&[0; 1024]);
    assert_eq!(listing(&out), [("app/p".into(), '6', 0o644, None)]);
    // With whiteouts on, `.wh.` names are whiteouts of the placed path.
    let wh = Options {
        whiteouts: true,
        ..add_opts()
    };
    let out = into_layer(&tar(&[E::File(".wh.x", b"", 0o644)]), &place, &wh).unwrap();
    assert_eq!(listing(&out)[1].0, "app/.wh.x");
}

#[test]
fn into_a_layer_the_directory_and_placed_names_are_checked() {
    let data = tar(&[E::File("f", b"", 0o644)]);
    for bad in ["../x", "/abs", "a/../../b", "a\0b"] {
        let e = into_layer(&data, &beneath(bad), &add_opts()).unwrap_err();
        assert!(e.to_string().contains("beneath"), "{bad:?}: {e}");
    }
    let opts = Options {
        limits: Limits {
            max_path_len: 16,
            ..Limits::default()
        },
        ..add_opts()
    };
    into_layer(&data, &beneath("0123456789abcd"), &opts).unwrap();
    let e = into_layer(&data, &beneath("0123456789abcde"), &opts).unwrap_err();
    assert!(e.to_string().contains("longer than the limit"), "{e}");
}
