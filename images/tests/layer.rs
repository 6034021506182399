//! Layer application on real directories: OCI semantics and hostile input.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{gzip, tar, zstd, E};
use mvm_images::layer::{
    apply_layer, DevicePolicy, LayerError, Limits, UnpackOptions, UnpackStats,
};
use mvm_images::Digest;

fn apply(root: &Path, data: &[u8]) -> Result<Digest, LayerError> {
    apply_opts(root, data, &UnpackOptions::default())
}

fn apply_opts(root: &Path, data: &[u8], opts: &UnpackOptions) -> Result<Digest, LayerError> {
    let mut stats = UnpackStats::default();
    apply_layer(root, data, None, None, opts, &mut stats)
}

/// A temp dir holding `root/` (the unpack target) and `sentinel/` (must
/// never change).
struct Sandbox {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    sentinel: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let sentinel = dir.path().join("sentinel");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("passwd"), b"original").unwrap();
        Sandbox {
            _dir: dir,
            root,
            sentinel,
        }
    }

    fn assert_sentinel_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(&self.sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["passwd"], "something was written outside the root");
        assert_eq!(fs::read(self.sentinel.join("passwd")).unwrap(), b"original");
        let parent = self.root.parent().unwrap();
        let mut top: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["root", "sentinel"],
            "something was created next to the root"
        );
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

#[test]
fn whiteout_deletes_lower_file_and_dir() {
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[
            E::Dir("a", 0o755),
            E::File("a/f1", b"1", 0o644),
            E::File("a/f2", b"2", 0o644),
            E::Dir("a/sub", 0o755),
            E::File("a/sub/deep", b"d", 0o644),
        ]),
    )
    .unwrap();
    apply(
        &s.root,
        &tar(&[
            E::File("a/.wh.f1", b"", 0o644),
            E::File("a/.wh.sub", b"", 0o644),
        ]),
    )
    .unwrap();
    assert_eq!(names(&s.root.join("a")), ["f2"]);
}

#[test]
fn whiteout_does_not_hide_same_layer_file() {
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[E::File("x", b"new", 0o644), E::File(".wh.x", b"", 0o644)]),
    )
    .unwrap();
    assert_eq!(fs::read(s.root.join("x")).unwrap(), b"new");
}

#[test]
fn opaque_dir_hides_lower_content_only_with_marker_anywhere_in_layer() {
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[
            E::Dir("d", 0o755),
            E::File("d/old", b"o", 0o644),
            E::Dir("d/sub", 0o755),
            E::File("d/sub/lower", b"l", 0o644),
            E::File("keep", b"k", 0o644),
        ]),
    )
    .unwrap();
    // Entries of the same layer both before and after the marker survive;
    // lower content of d (including inside d/sub, which this layer also
    // writes into) is hidden.
    apply(
        &s.root,
        &tar(&[
            E::Dir("d", 0o755),
            E::File("d/before", b"b", 0o644),
            E::File("d/sub/upper", b"u", 0o644),
            E::File("d/.wh..wh..opq", b"", 0o644),
            E::File("d/after", b"a", 0o644),
        ]),
    )
    .unwrap();
    assert_eq!(names(&s.root.join("d")), ["after", "before", "sub"]);
    assert_eq!(names(&s.root.join("d/sub")), ["upper"]);
    assert_eq!(names(&s.root), ["d", "keep"]);
}

#[test]
fn hard_links_symlinks_modes_owners_times_xattrs() {
    common::require_root();
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[
            E::Dir("bin", 0o755),
            E::FileEx {
                path: "bin/su",
                data: b"suid",
                mode: 0o4755,
                uid: 1000,
                gid: 1001,
                mtime: 1_600_000_000,
                xattrs: &[("user.mvm", b"yes"), ("trusted.overlay.opaque", b"y")],
            },
            E::Hardlink("bin/su2", "bin/su"),
            E::Symlink("bin/abs", "/etc/passwd"),
            E::Symlink("bin/rel", "../etc/shadow"),
            E::Fifo("bin/pipe"),
        ]),
    )
    .unwrap();
    let su = fs::symlink_metadata(s.root.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!((su.uid(), su.gid()), (1000, 1001));
    assert_eq!(su.mtime(), 1_600_000_000);
    let su2 = fs::symlink_metadata(s.root.join("bin/su2")).unwrap();
    assert_eq!(su.ino(), su2.ino(), "hard link shares the inode");
    assert_eq!(su.nlink(), 2);
    assert_eq!(
        fs::read_link(s.root.join("bin/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(s.root.join("bin/rel")).unwrap(),
        Path::new("../etc/shadow")
    );
    assert!(fs::symlink_metadata(s.root.join("bin/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    let x = rustix::fs::getxattr(s.root.join("bin/su"), "user.mvm", &mut [0u8; 16][..]).unwrap();
    assert_eq!(x, 3);
    assert!(
        rustix::fs::getxattr(
            s.root.join("bin/su"),
            "trusted.overlay.opaque",
            &mut [0u8; 16][..]
        )
        .is_err(),
        "overlay xattrs must be dropped"
    );
}

#[test]
fn replacing_dir_with_file_and_file_with_dir() {
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[
            E::Dir("x", 0o755),
            E::File("x/in", b"1", 0o644),
            E::File("y", b"f", 0o644),
        ]),
    )
    .unwrap();
    apply(
        &s.root,
        &tar(&[
            E::File("x", b"now a file", 0o644),
            E::Dir("y", 0o755),
            E::File("y/z", b"", 0o644),
        ]),
    )
    .unwrap();
    assert_eq!(fs::read(s.root.join("x")).unwrap(), b"now a file");
    assert!(s.root.join("y/z").is_file());
}

#[test]
fn gzip_and_zstd_layers_and_diff_id() {
    let s = Sandbox::new();
    let plain = tar(&[E::File("g", b"gzip", 0o644)]);
    let d = apply(&s.root, &gzip(&plain)).unwrap();
    assert_eq!(
        d,
        Digest::of(&plain),
        "diff_id is the digest of the uncompressed tar"
    );
    let plain2 = tar(&[E::File("z", b"zstd", 0o644)]);
    let mut stats = UnpackStats::default();
    let wrong = Digest::of(b"nope");
    let e = apply_layer(
        &s.root,
        &zstd(&plain2)[..],
        None,
        Some(&wrong),
        &UnpackOptions::default(),
        &mut stats,
    )
    .unwrap_err();
    assert!(matches!(e, LayerError::DiffIdMismatch { .. }), "{e}");
    assert_eq!(fs::read(s.root.join("g")).unwrap(), b"gzip");
}

fn assert_refused(data: &[u8], entry: &str) {
    let s = Sandbox::new();
    let e = apply(&s.root, data).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(entry),
        "error {msg:?} does not name entry {entry:?}"
    );
    s.assert_sentinel_untouched();
}

#[test]
fn path_traversal_refused() {
    assert_refused(
        &tar(&[E::File("../sentinel/passwd", b"pwned", 0o644)]),
        "../sentinel/passwd",
    );
    assert_refused(
        &tar(&[E::File("a/../../sentinel/x", b"pwned", 0o644)]),
        "a/../../sentinel/x",
    );
}

#[test]
fn absolute_path_refused() {
    let s = Sandbox::new();
    let target = format!("{}/passwd", s.sentinel.display());
    let e = apply(&s.root, &tar(&[E::File(&target, b"pwned", 0o644)])).unwrap_err();
    assert!(e.to_string().contains(&target), "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");
    s.assert_sentinel_untouched();
}

#[test]
fn symlink_escape_refused() {
    let s = Sandbox::new();
    let sentinel = s.sentinel.display().to_string();
    // a -> /abs/sentinel, then a/passwd: must not write through the link.
    let data = tar(&[
        E::Symlink("a", &sentinel),
        E::File("a/passwd", b"pwned", 0o644),
    ]);
    let e = apply(&s.root, &data).unwrap_err();
    assert!(e.to_string().contains("a/passwd"), "{e}");
    assert!(e.to_string().contains("symlink"), "{e}");
    s.assert_sentinel_untouched();
    // Relative escape through a link and a nested dir.
    let s = Sandbox::new();
    let data = tar(&[E::Symlink("up", "../sentinel"), E::Dir("up/new", 0o755)]);
    let e = apply(&s.root, &data).unwrap_err();
    assert!(e.to_string().contains("up/new"), "{e}");
    s.assert_sentinel_untouched();
    // The link itself may be replaced by a later entry (no escape).
    let s = Sandbox::new();
    apply(
        &s.root,
        &tar(&[E::Symlink("l", &sentinel), E::File("l", b"file", 0o644)]),
    )
    .unwrap();
    assert_eq!(fs::read(s.root.join("l")).unwrap(), b"file");
    s.assert_sentinel_untouched();
}

#[test]
fn hard_link_escape_refused() {
    assert_refused(&tar(&[E::Hardlink("h", "../sentinel/passwd")]), "\"h\"");
    let s = Sandbox::new();
    let abs = format!("{}/passwd", s.sentinel.display());
    let e = apply(&s.root, &tar(&[E::Hardlink("h", &abs)])).unwrap_err();
    assert!(e.to_string().contains("\"h\""), "{e}");
    s.assert_sentinel_untouched();
    // Through a symlinked directory inside the tree.
    let s = Sandbox::new();
    let sentinel = s.sentinel.display().to_string();
    let e = apply(
        &s.root,
        &tar(&[E::Symlink("s", &sentinel), E::Hardlink("h", "s/passwd")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"h\""), "{e}");
    s.assert_sentinel_untouched();
    assert!(!s.root.join("h").exists());
    // To a missing target or a directory.
    assert_refused(&tar(&[E::Hardlink("h", "nope")]), "\"h\"");
    assert_refused(&tar(&[E::Dir("d", 0o755), E::Hardlink("h", "d")]), "\"h\"");
}

#[test]
fn size_and_count_limits() {
    let opts = UnpackOptions {
        limits: Limits {
            max_entry_size: 1024,
            max_total_size: 3000,
            max_entries: 5,
            max_path_len: 4096,
        },
        ..UnpackOptions::default()
    };
    let s = Sandbox::new();
    let e = apply_opts(&s.root, &tar(&[E::Claim("huge", 1 << 40)]), &opts).unwrap_err();
    assert!(matches!(e, LayerError::EntryTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("huge"));
    assert!(!s.root.join("huge").exists());
    let big = vec![7u8; 1000];
    let e = apply_opts(
        &s.root,
        &tar(&[
            E::File("a", &big, 0o644),
            E::File("b", &big, 0o644),
            E::File("c", &big, 0o644),
            E::File("d", &big, 0o644),
        ]),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, LayerError::TotalTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("\"d\""), "{e}");
    let s = Sandbox::new();
    let many: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = many.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let e = apply_opts(&s.root, &tar(&entries), &opts).unwrap_err();
    assert!(matches!(e, LayerError::TooManyEntries { .. }), "{e}");
}

#[test]
fn device_policy() {
    common::require_root();
    let data = tar(&[E::Char("null", 1, 3), E::File("f", b"x", 0o644)]);
    let s = Sandbox::new();
    let mut stats = UnpackStats::default();
    apply_layer(
        &s.root,
        &data[..],
        None,
        None,
        &UnpackOptions::default(),
        &mut stats,
    )
    .unwrap();
    assert!(
        !s.root.join("null").exists(),
        "devices are skipped by default"
    );
    assert_eq!(stats.skipped_devices, 1);
    let refuse = UnpackOptions {
        devices: DevicePolicy::Refuse,
        ..UnpackOptions::default()
    };
    let e = apply_opts(&s.root, &data, &refuse).unwrap_err();
    assert!(e.to_string().contains("null"), "{e}");
    let create = UnpackOptions {
        devices: DevicePolicy::Create,
        ..UnpackOptions::default()
    };
    let s = Sandbox::new();
    apply_opts(&s.root, &data, &create).unwrap();
    let md = fs::symlink_metadata(s.root.join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
}

#[test]
fn truncated_layer_is_an_error_naming_the_entry() {
    let s = Sandbox::new();
    let data = tar(&[
        E::File("first", b"ok", 0o644),
        E::File("second", &[1u8; 4000], 0o644),
    ]);
    let cut = &data[..512 + 512 + 512 + 1000];
    let e = apply(&s.root, cut).unwrap_err();
    assert!(matches!(e, LayerError::Archive { .. }), "{e}");
    assert!(e.to_string().contains("second"), "{e}");
    // Garbage is not a layer either.
    let e = apply(&s.root, &gzip(b"definitely not a tar archive, but long enough to have a header ................................................................................................................................................................................................................................................................................................................................................................................................................................................................")).unwrap_err();
    assert!(matches!(e, LayerError::Archive { .. }), "{e}");
}

#[test]
fn user_xattr_on_symlink_is_skipped_not_fatal() {
    common::require_root();
    let s = Sandbox::new();
    // PAX xattrs apply to the next entry; user.* cannot be set on a link.
    let mut data = Vec::new();
    let mut pax = tar::Header::new_ustar();
    let rec = b"25 SCHILY.xattr.user.a=b\n";
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(rec.len() as u64);
    pax.set_path("PaxHeaders/l").unwrap();
    pax.set_cksum();
    data.extend_from_slice(pax.as_bytes());
    data.extend_from_slice(rec);
    data.extend(std::iter::repeat_n(0u8, 512 - rec.len()));
    let link = tar(&[E::Symlink("l", "target")]);
    data.extend_from_slice(&link);
    apply(&s.root, &data).unwrap();
    assert_eq!(
        fs::read_link(s.root.join("l")).unwrap(),
        Path::new("target")
    );
}
