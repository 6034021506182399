//! `unpack` against hostile archives: nothing outside the destination is
//! touched, and every refusal names the entry.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{assert_etc_passwd_untouched, is_root, names, tar, Sandbox, E};
use mvm_unpack::{unpack, DevicePolicy, Error, Existing, Limits, Options, Stats};

fn run(root: &Path, data: &[u8], opts: &Options) -> Result<Stats, Error> {
    let mut stats = Stats::default();
    unpack(data, root, opts, &mut stats).map(|()| stats)
}

/// Both presets refuse `data`, naming `entry`, and nothing outside moved.
fn assert_refused_everywhere(data: &[u8], entry: &str, setup: impl Fn(&Sandbox)) {
    for opts in [Options::copy(), Options::layer()] {
        let s = Sandbox::new();
        setup(&s);
        let e = run(&s.root, data, &opts).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{entry:?}")),
            "error {e} does not name {entry:?} ({:?})",
            opts.existing
        );
        s.assert_outside_untouched();
    }
}

#[test]
fn symlink_entry_then_a_file_beneath_it() {
    let s = Sandbox::new();
    let data = tar(&[
        E::Symlink("link", &s.sentinel_str()),
        E::File("link/pwned", b"pwned", 0o644),
    ]);
    assert_refused_everywhere(&data, "link/pwned", |_| {});
    // The literal /tmp/x of the report: not created, nothing beneath it.
    let tmp_x = format!("/tmp/mvm-unpack-test-{}", std::process::id());
    let data = tar(&[
        E::Symlink("link", &tmp_x),
        E::File("link/pwned", b"pwned", 0o644),
    ]);
    fs::create_dir(&tmp_x).unwrap();
    assert_refused_everywhere(&data, "link/pwned", |_| {});
    assert!(names(Path::new(&tmp_x)).is_empty(), "wrote beneath {tmp_x}");
    fs::remove_dir(&tmp_x).unwrap();
    // A directory entry beneath the link, and a deeper file.
    let data = tar(&[
        E::Symlink("l", &s.sentinel_str()),
        E::Dir("l/sub", 0o755),
        E::File("l/sub/f", b"pwned", 0o644),
    ]);
    assert_refused_everywhere(&data, "l/sub", |_| {});
}

#[test]
fn symlink_to_dot_dot() {
    let data = tar(&[
        E::Symlink("up", ".."),
        E::File("up/escaped", b"pwned", 0o644),
    ]);
    assert_refused_everywhere(&data, "up/escaped", |_| {});
    let data = tar(&[
        E::Symlink("up", "../sentinel"),
        E::File("up/passwd", b"pwned", 0o644),
    ]);
    assert_refused_everywhere(&data, "up/passwd", |_| {});
    // The symlink itself is fine, and stays a symlink.
    let s = Sandbox::new();
    run(&s.root, &tar(&[E::Symlink("up", "..")]), &Options::copy()).unwrap();
    assert_eq!(fs::read_link(s.root.join("up")).unwrap(), Path::new(".."));
}

#[test]
fn hard_links_out_of_the_tree() {
    assert_refused_everywhere(&tar(&[E::Hardlink("h", "/etc/passwd")]), "h", |_| {});
    assert_refused_everywhere(&tar(&[E::Hardlink("h", "../sentinel/passwd")]), "h", |_| {});
    // Through a symlink (in the archive, or already in the destination).
    let s = Sandbox::new();
    let data = tar(&[
        E::Symlink("s", &s.sentinel_str()),
        E::Hardlink("h", "s/passwd"),
    ]);
    assert_refused_everywhere(&data, "h", |_| {});
    let data = tar(&[E::Hardlink("h", "pre/passwd")]);
    assert_refused_everywhere(&data, "h", |s| {
        std::os::unix::fs::symlink(&s.sentinel, s.root.join("pre")).unwrap();
    });
    // To a directory, a missing file, the root.
    assert_refused_everywhere(
        &tar(&[E::Dir("d", 0o755), E::Hardlink("h", "d")]),
        "h",
        |_| {},
    );
    assert_refused_everywhere(&tar(&[E::Hardlink("h", "nope")]), "h", |_| {});
    assert_refused_everywhere(&tar(&[E::Hardlink("h", "./")]), "h", |_| {});
}

#[test]
fn dot_dot_and_absolute_names() {
    assert_refused_everywhere(
        &tar(&[E::File("../sentinel/passwd", b"pwned", 0o644)]),
        "../sentinel/passwd",
        |_| {},
    );
    assert_refused_everywhere(
        &tar(&[E::File("a/../../x", b"pwned", 0o644)]),
        "a/../../x",
        |_| {},
    );
    assert_refused_everywhere(&tar(&[E::Dir("../newdir", 0o755)]), "../newdir", |_| {});
    let s = Sandbox::new();
    let abs = format!("{}/passwd", s.sentinel_str());
    assert_refused_everywhere(&tar(&[E::File(&abs, b"pwned", 0o644)]), &abs, |_| {});
    assert_refused_everywhere(
        &tar(&[E::File("/etc/passwd", b"pwned", 0o644)]),
        "/etc/passwd",
        |_| {},
    );
    let e = run(
        &s.root,
        &tar(&[E::File("/etc/passwd", b"pwned", 0o644)]),
        &Options::copy(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn pre_existing_symlink_in_the_destination() {
    let mk = |s: &Sandbox| {
        std::os::unix::fs::symlink(&s.sentinel, s.root.join("out")).unwrap();
        std::os::unix::fs::symlink(s.sentinel.join("passwd"), s.root.join("f")).unwrap();
    };
    // Beneath it: refused.
    assert_refused_everywhere(
        &tar(&[E::File("out/passwd", b"pwned", 0o644)]),
        "out/passwd",
        mk,
    );
    assert_refused_everywhere(&tar(&[E::Dir("out/new", 0o755)]), "out/new", mk);
    // At it: the link is replaced, never written through.
    for opts in [Options::copy(), Options::layer()] {
        let s = Sandbox::new();
        mk(&s);
        run(&s.root, &tar(&[E::File("f", b"mine", 0o600)]), &opts).unwrap();
        assert_eq!(fs::read(s.root.join("f")).unwrap(), b"mine");
        assert!(!fs::symlink_metadata(s.root.join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
        s.assert_outside_untouched();
    }
    // A directory entry at it: a conflict in merge mode (not followed).
    let s = Sandbox::new();
    mk(&s);
    let e = run(
        &s.root,
        &tar(&[E::Dir("out", 0o755), E::File("out/x", b"", 0o644)]),
        &Options::copy(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("\"out\""), "{e}");
    s.assert_outside_untouched();
}

#[test]
fn device_nodes() {
    let data = tar(&[
        E::Char("null", 1, 3),
        E::Block("sda", 8, 0),
        E::File("f", b"x", 0o644),
    ]);
    // Copies: skipped and counted.
    let s = Sandbox::new();
    let st = run(&s.root, &data, &Options::copy()).unwrap();
    assert_eq!(names(&s.root), ["f"]);
    assert_eq!(st.skipped_devices, 2);
    // Refused on request, before anything else happens to the path.
    let s = Sandbox::new();
    fs::write(s.root.join("null"), b"keep").unwrap();
    let refuse = Options {
        devices: DevicePolicy::Refuse,
        ..Options::copy()
    };
    let e = run(&s.root, &data, &refuse).unwrap_err();
    assert!(matches!(e, Error::DeviceRefused { .. }), "{e}");
    assert!(e.to_string().contains("null"), "{e}");
    assert_eq!(fs::read(s.root.join("null")).unwrap(), b"keep");
    // A skipped device in merge mode leaves the existing file alone.
    let st = run(&s.root, &data, &Options::copy()).unwrap();
    assert_eq!(st.skipped_devices, 2);
    assert_eq!(fs::read(s.root.join("null")).unwrap(), b"keep");
    // Layers may create them (root only).
    if is_root() {
        let s = Sandbox::new();
        let create = Options {
            devices: DevicePolicy::Create,
            ..Options::layer()
        };
        run(&s.root, &data, &create).unwrap();
        let md = fs::symlink_metadata(s.root.join("null")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
        assert!(fs::symlink_metadata(s.root.join("sda"))
            .unwrap()
            .file_type()
            .is_block_device());
    }
}

#[test]
fn setuid_and_setgid_dropped_unless_kept() {
    let data = tar(&[
        E::Dir("d", 0o2775),
        E::File("d/su", b"#!", 0o4755),
        E::File("d/sg", b"#!", 0o2711),
        E::File("d/sticky", b"", 0o1644),
        E::Fifo("d/p"),
    ]);
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let s = Sandbox::new();
    let st = run(&s.root, &data, &Options::copy()).unwrap();
    assert_eq!(mode(&s.root.join("d/su")), 0o755);
    assert_eq!(mode(&s.root.join("d/sg")), 0o711);
    assert_eq!(
        mode(&s.root.join("d/sticky")),
        0o1644,
        "the sticky bit is harmless"
    );
    assert_eq!(mode(&s.root.join("d")), 0o775);
    assert_eq!(st.setid_dropped, 3);
    let s = Sandbox::new();
    let keep = Options {
        keep_setid: true,
        ..Options::copy()
    };
    let st = run(&s.root, &data, &keep).unwrap();
    assert_eq!(mode(&s.root.join("d/su")), 0o4755);
    assert_eq!(mode(&s.root.join("d/sg")), 0o2711);
    assert_eq!(mode(&s.root.join("d")), 0o2775);
    assert_eq!(st.setid_dropped, 0);
    // Layers keep them (`RUN chmod u+s` is legitimate).
    let s = Sandbox::new();
    run(&s.root, &data, &Options::layer()).unwrap();
    assert_eq!(mode(&s.root.join("d/su")), 0o4755);
}

#[test]
fn owners_kept_only_when_asked_and_root() {
    let data = tar(&[E::Owned {
        path: "f",
        data: b"x",
        mode: 0o644,
        uid: 1234,
        gid: 5678,
        xattrs: &[],
    }]);
    let s = Sandbox::new();
    run(&s.root, &data, &Options::copy()).unwrap();
    let md = fs::metadata(s.root.join("f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw()
        )
    );
    if is_root() {
        let s = Sandbox::new();
        let keep = Options {
            preserve_ownership: true,
            ..Options::copy()
        };
        run(&s.root, &data, &keep).unwrap();
        let md = fs::metadata(s.root.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
}

#[test]
fn xattrs_follow_the_policy() {
    if !is_root() {
        return; // security.* and trusted.* need root.
    }
    let data = tar(&[E::Owned {
        path: "f",
        data: b"x",
        mode: 0o755,
        uid: 0,
        gid: 0,
        xattrs: &[
            ("user.note", b"kept"),
            (
                "security.capability",
                b"\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("trusted.overlay.opaque", b"y"),
        ],
    }]);
    let get = |p: &Path, n: &str| rustix::fs::getxattr(p, n, &mut [0u8; 64][..]).ok();
    let s = Sandbox::new();
    let st = run(&s.root, &data, &Options::copy()).unwrap();
    let f = s.root.join("f");
    assert_eq!(get(&f, "user.note"), Some(4));
    assert_eq!(
        get(&f, "security.capability"),
        None,
        "file capabilities are dropped like setuid"
    );
    assert_eq!(get(&f, "trusted.overlay.opaque"), None);
    assert_eq!(st.xattrs_dropped, 2);
}

#[test]
fn size_count_name_and_header_limits() {
    let limits = Limits {
        max_entry_size: 1024,
        max_total_size: 3000,
        max_entries: 5,
        max_path_len: 64,
        max_header_size: 4096,
    };
    let opts = Options {
        limits,
        ..Options::copy()
    };
    let s = Sandbox::new();
    let e = run(&s.root, &tar(&[E::Claim("huge", 1 << 40)]), &opts).unwrap_err();
    assert!(matches!(e, Error::EntryTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("huge"), "{e}");
    assert!(!s.root.join("huge").exists(), "checked before creating");
    let big = vec![7u8; 1000];
    let data = tar(&[
        E::File("a", &big, 0o644),
        E::File("b", &big, 0o644),
        E::File("c", &big, 0o644),
        E::File("d", &big, 0o644),
    ]);
    let e = run(&s.root, &data, &opts).unwrap_err();
    assert!(matches!(e, Error::TotalTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("\"d\""), "{e}");
    let s = Sandbox::new();
    let many: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = many.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let e = run(&s.root, &tar(&entries), &opts).unwrap_err();
    assert!(matches!(e, Error::TooManyEntries { .. }), "{e}");
    let long = "x".repeat(70);
    let e = run(&s.root, &tar(&[E::File(&long, b"", 0o644)]), &opts).unwrap_err();
    assert!(e.to_string().contains("longer than the limit"), "{e}");
    let e = run(&s.root, &tar(&[E::Symlink("l", &long)]), &opts).unwrap_err();
    assert!(e.to_string().contains("\"l\""), "{e}");
    // A long name record over the header limit fails before it is read
    // whole into memory; one under it is fine (then refused as too long).
    let e = run(&s.root, &tar(&[E::LongName(64 * 1024)]), &opts).unwrap_err();
    assert!(matches!(e, Error::Archive { .. }), "{e}");
    assert!(e.to_string().contains("metadata records"), "{e}");
    let e = run(&s.root, &tar(&[E::LongName(2000)]), &opts).unwrap_err();
    assert!(e.to_string().contains("longer than the limit"), "{e}");
    // Stats carry over: a second archive counts against the same totals.
    let s = Sandbox::new();
    let mut stats = Stats::default();
    unpack(
        &tar(&[E::File("a", &big, 0o644), E::File("b", &big, 0o644)])[..],
        &s.root,
        &opts,
        &mut stats,
    )
    .unwrap();
    let e = unpack(
        &tar(&[E::File("c", &big, 0o644), E::File("d", &big, 0o644)])[..],
        &s.root,
        &opts,
        &mut stats,
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"d\""), "{e}");
}

#[test]
fn whiteouts_only_in_layer_mode() {
    let setup = |s: &Sandbox| {
        fs::write(s.root.join("victim"), b"lower").unwrap();
        fs::create_dir(s.root.join("d")).unwrap();
        fs::write(s.root.join("d/lower"), b"lower").unwrap();
    };
    let data = tar(&[
        E::File(".wh.victim", b"", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/upper", b"", 0o644),
    ]);
    let s = Sandbox::new();
    setup(&s);
    let st = run(&s.root, &data, &Options::layer()).unwrap();
    assert_eq!(names(&s.root), ["d"]);
    assert_eq!(names(&s.root.join("d")), ["upper"]);
    assert_eq!(st.whiteouts, 2);
    let s = Sandbox::new();
    setup(&s);
    let st = run(&s.root, &data, &Options::copy()).unwrap();
    assert_eq!(names(&s.root), [".wh.victim", "d", "victim"], "plain names");
    assert_eq!(names(&s.root.join("d")), [".wh..wh..opq", "lower", "upper"]);
    assert_eq!(st.whiteouts, 0);
    // A whiteout that names nothing is refused in layer mode only.
    let bad = tar(&[E::File(".wh.", b"", 0o644)]);
    assert!(run(&Sandbox::new().root, &bad, &Options::layer()).is_err());
    run(&Sandbox::new().root, &bad, &Options::copy()).unwrap();
    // A whiteout cannot reach outside either.
    let s = Sandbox::new();
    std::os::unix::fs::symlink(&s.sentinel, s.root.join("out")).unwrap();
    let e = run(
        &s.root,
        &tar(&[E::File("out/.wh.passwd", b"", 0o644)]),
        &Options::layer(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("out/.wh.passwd"), "{e}");
    s.assert_outside_untouched();
}

#[test]
fn merge_keeps_existing_directories_and_kinds() {
    let s = Sandbox::new();
    fs::set_permissions(&s.root, fs::Permissions::from_mode(0o750)).unwrap();
    fs::create_dir(s.root.join("dir")).unwrap();
    fs::set_permissions(s.root.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(s.root.join("dir/keep"), b"k").unwrap();
    fs::write(s.root.join("file"), b"f").unwrap();
    // The root entry and an existing directory keep their modes; new
    // content merges in.
    let data = tar(&[
        E::Dir("./", 0o777),
        E::Dir("dir", 0o777),
        E::File("dir/new", b"n", 0o644),
    ]);
    run(&s.root, &data, &Options::copy()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&s.root), 0o750);
    assert_eq!(mode(&s.root.join("dir")), 0o700);
    assert_eq!(names(&s.root.join("dir")), ["keep", "new"]);
    // A directory is not replaced by a file, nor a file by a directory.
    let e = run(
        &s.root,
        &tar(&[E::File("dir", b"x", 0o644)]),
        &Options::copy(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Conflict { .. }) && e.to_string().contains("\"dir\""),
        "{e}"
    );
    assert_eq!(names(&s.root.join("dir")), ["keep", "new"]);
    let e = run(&s.root, &tar(&[E::Dir("file", 0o755)]), &Options::copy()).unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert_eq!(fs::read(s.root.join("file")).unwrap(), b"f");
    // Layers replace both ways.
    run(
        &s.root,
        &tar(&[E::File("dir", b"x", 0o644), E::Dir("file", 0o755)]),
        &Options::layer(),
    )
    .unwrap();
    assert!(s.root.join("dir").is_file() && s.root.join("file").is_dir());
    // A directory this archive made takes its later metadata, even when
    // it was first made as a missing parent.
    let s = Sandbox::new();
    run(
        &s.root,
        &tar(&[E::File("p/f", b"", 0o644), E::Dir("p", 0o711)]),
        &Options::copy(),
    )
    .unwrap();
    assert_eq!(mode(&s.root.join("p")), 0o711);
}

#[test]
fn merge_hard_links_only_to_this_archives_files() {
    let s = Sandbox::new();
    fs::write(s.root.join("secret"), b"s").unwrap();
    let e = run(
        &s.root,
        &tar(&[E::Hardlink("h", "secret")]),
        &Options::copy(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"h\""), "{e}");
    assert_eq!(fs::metadata(s.root.join("secret")).unwrap().nlink(), 1);
    // Earlier entries are fine, and so is a lower layer's file.
    run(
        &s.root,
        &tar(&[E::File("a", b"a", 0o644), E::Hardlink("b", "a")]),
        &Options::copy(),
    )
    .unwrap();
    assert_eq!(fs::metadata(s.root.join("b")).unwrap().nlink(), 2);
    run(
        &s.root,
        &tar(&[E::Hardlink("h", "secret")]),
        &Options::layer(),
    )
    .unwrap();
    assert_eq!(fs::metadata(s.root.join("secret")).unwrap().nlink(), 2);
}

#[test]
fn rename_top_level_name_as_docker_cp() {
    let s = Sandbox::new();
    let opts = Options {
        rename_top: Some(b"copy".to_vec()),
        ..Options::copy()
    };
    let data = tar(&[
        E::Dir("etc", 0o755),
        E::File("etc/hosts", b"h", 0o644),
        E::Hardlink("etc/h2", "etc/hosts"),
    ]);
    run(&s.root, &data, &opts).unwrap();
    assert_eq!(names(&s.root), ["copy"]);
    assert_eq!(names(&s.root.join("copy")), ["h2", "hosts"]);
    assert_eq!(fs::metadata(s.root.join("copy/h2")).unwrap().nlink(), 2);
    // An entry outside the first entry's top-level name is refused.
    let s = Sandbox::new();
    let data = tar(&[E::File("etc", b"f", 0o644), E::File("other", b"o", 0o644)]);
    let e = run(&s.root, &data, &opts).unwrap_err();
    assert!(e.to_string().contains("\"other\""), "{e}");
    assert_eq!(names(&s.root), ["copy"]);
    // The new name must be one component.
    for bad in [&b"a/b"[..], b"..", b""] {
        let o = Options {
            rename_top: Some(bad.to_vec()),
            ..Options::copy()
        };
        assert!(run(&s.root, &tar(&[E::File("x", b"", 0o644)]), &o).is_err());
    }
}

#[test]
fn odd_types_truncation_and_garbage() {
    let s = Sandbox::new();
    let e = run(&s.root, &tar(&[E::Raw("m", b'M')]), &Options::copy()).unwrap_err();
    assert!(matches!(e, Error::UnsupportedType { .. }), "{e}");
    // '7' (contiguous file) is a regular file.
    run(&s.root, &tar(&[E::Raw("c", b'7')]), &Options::copy()).unwrap();
    assert!(s.root.join("c").is_file());
    let e = run(&s.root, &tar(&[E::Raw("v", b'V')]), &Options::copy()).unwrap_err();
    assert!(e.to_string().contains("\"v\""), "{e}");
    let data = tar(&[
        E::File("first", b"ok", 0o644),
        E::File("second", &[1u8; 4000], 0o644),
    ]);
    let e = run(&s.root, &data[..512 * 3 + 1000], &Options::copy()).unwrap_err();
    assert!(
        matches!(e, Error::Archive { .. }) && e.to_string().contains("second"),
        "{e}"
    );
    let e = run(&s.root, &[0x42u8; 2048], &Options::copy()).unwrap_err();
    assert!(matches!(e, Error::Archive { .. }), "{e}");
    // The root entry must be a directory.
    let e = run(
        &s.root,
        &tar(&[E::File("./", b"", 0o644)]),
        &Options::copy(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unsafe { .. }), "{e}");
    assert_etc_passwd_untouched();
}

#[test]
fn read_only_directories_are_filled_before_their_mode_is_set() {
    let s = Sandbox::new();
    let data = tar(&[
        E::Dir("ro", 0o555),
        E::File("ro/f", b"x", 0o444),
        E::Dir("ro/sub", 0o500),
        E::File("ro/sub/g", b"y", 0o444),
    ]);
    run(
        &s.root,
        &data,
        &Options {
            existing: Existing::Merge,
            ..Options::copy()
        },
    )
    .unwrap();
    assert_eq!(fs::read(s.root.join("ro/sub/g")).unwrap(), b"y");
    assert_eq!(
        fs::metadata(s.root.join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    assert_eq!(
        fs::metadata(s.root.join("ro/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o500
    );
    assert_eq!(
        fs::metadata(s.root.join("ro")).unwrap().mtime(),
        1_600_000_000
    );
}
