//! docker-archive / OCI archives: legacy fixtures, round trips, and
//! interoperability with skopeo.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{assert_consistent, r, run, small_rootfs, tar, E};
use mvm_images::manifest::media_type;
use mvm_images::{ArchiveFormat, Digest, ImportOptions, LoadOptions};

/// A legacy `docker save` archive (Docker < 25): `<id>/layer.tar`,
/// `<config>.json`, `manifest.json`, `repositories`, with the second
/// image's layer a symlink to the first's, as Docker writes duplicates.
fn legacy_docker_archive() -> (Vec<u8>, Digest, Digest) {
    let l1 = tar(&[
        E::Dir("etc", 0o755),
        E::File("etc/hostname", b"legacy\n", 0o644),
    ]);
    let l2 = tar(&[
        E::File("etc/.wh.hostname", b"", 0o644),
        E::File("added", b"2", 0o644),
    ]);
    let (d1, d2) = (Digest::of(&l1), Digest::of(&l2));
    let cfg_a = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/added"]}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}"]}}}}"#
    );
    let cfg_b = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{d1}"]}}}}"#
    );
    let (ca, cb) = (Digest::of(cfg_a.as_bytes()), Digest::of(cfg_b.as_bytes()));
    let manifest = format!(
        r#"[{{"Config":"{a}.json","RepoTags":["legacy:2"],"Layers":["id1/layer.tar","id2/layer.tar"]}},
            {{"Config":"{b}.json","RepoTags":null,"Layers":["id3/layer.tar"]}}]"#,
        a = ca.hex(),
        b = cb.hex()
    );
    let repositories = r#"{"old/style":{"v1":"id3"}}"#;
    let (ja, jb) = (format!("{}.json", ca.hex()), format!("{}.json", cb.hex()));
    let data = tar(&[
        E::Dir("id1", 0o755),
        E::File("id1/layer.tar", &l1, 0o644),
        E::File("id1/json", b"{}", 0o644),
        E::File("id1/VERSION", b"1.0", 0o644),
        E::Dir("id2", 0o755),
        E::File("id2/layer.tar", &l2, 0o644),
        E::Dir("id3", 0o755),
        E::Symlink("id3/layer.tar", "../id1/layer.tar"),
        E::File(&ja, cfg_a.as_bytes(), 0o644),
        E::File(&jb, cfg_b.as_bytes(), 0o644),
        E::File("repositories", repositories.as_bytes(), 0o644),
        E::File("manifest.json", manifest.as_bytes(), 0o644),
    ]);
    (data, ca, cb)
}

#[test]
fn legacy_docker_archive_loads_with_names_and_right_digests() {
    let (_d, store) = common::store();
    let (data, ca, cb) = legacy_docker_archive();
    let loaded = store.load(&data[..], &LoadOptions::default()).unwrap();
    assert_eq!(loaded.len(), 2);
    let a = store.resolve("legacy:2").unwrap();
    assert_eq!(a.id, ca, "image ID is the config digest, as Docker's");
    assert_eq!(a.manifest.layers.len(), 2);
    for (l, d) in a.manifest.layers.iter().zip(&a.diff_ids) {
        assert_eq!(l.media_type, media_type::OCI_LAYER_TAR);
        assert_eq!(l.digest, *d, "uncompressed layers are their diff_ids");
    }
    assert_eq!(a.image_config().entrypoint, ["/added"]);
    let b = store.resolve("old/style:v1").unwrap();
    assert_eq!(b.id, cb, "name from `repositories`");
    // Layer 1 is stored once; `id1/json` and `VERSION` were by-products.
    assert_eq!(common::blob_names(&store).len(), 2 + 2 + 2);
    assert_consistent(&store);
}

#[test]
fn save_load_round_trip_keeps_digests_in_both_formats() {
    let (_d, store) = common::store();
    let a = store
        .import(
            &small_rootfs()[..],
            Some(&r("rt/a:1")),
            &ImportOptions::default(),
        )
        .unwrap();
    store
        .tag(&r("localhost:5000/rt/a:also"), &a.digest)
        .unwrap();
    let (legacy, _, _) = legacy_docker_archive();
    store.load(&legacy[..], &LoadOptions::default()).unwrap();
    let legacy_digest = store.resolve("legacy:2").unwrap().digest;
    for format in [ArchiveFormat::Docker, ArchiveFormat::Oci] {
        let mut out = Vec::new();
        store
            .save(&[&a.id.to_string(), "legacy:2"], format, &mut out)
            .unwrap();
        let (_d2, other) = common::store();
        let loaded = other.load(&out[..], &LoadOptions::default()).unwrap();
        assert_eq!(loaded.len(), 2, "{format:?}");
        for name in ["rt/a:1", "localhost:5000/rt/a:also"] {
            let rec = other
                .resolve(name)
                .unwrap_or_else(|e| panic!("{format:?} {name}: {e}"));
            assert_eq!(rec.digest, a.digest, "{format:?}: manifest digest changed");
            assert_eq!(rec.id, a.id);
        }
        assert_eq!(other.resolve("legacy:2").unwrap().digest, legacy_digest);
        // Saving again from the new store gives the same bytes.
        let mut again = Vec::new();
        other
            .save(&[&a.id.to_string(), "legacy:2"], format, &mut again)
            .unwrap();
        assert_eq!(
            Digest::of(&out),
            Digest::of(&again),
            "{format:?}: save is not deterministic"
        );
        assert_consistent(&other);
    }
}

#[test]
fn oci_bare_tag_ref_name_needs_a_repository() {
    let (_d, store) = common::store();
    let a = store
        .import(
            &small_rootfs()[..],
            Some(&r("x:1")),
            &ImportOptions::default(),
        )
        .unwrap();
    let mut out = Vec::new();
    store.save(&["x:1"], ArchiveFormat::Oci, &mut out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    tar::Archive::new(&out[..]).unpack(&layout).unwrap();
    // Rewrite index.json the way skopeo writes it: ref.name = bare tag.
    let idx = fs::read_to_string(layout.join("index.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&idx).unwrap();
    v["manifests"][0]["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "v9"});
    fs::write(layout.join("index.json"), v.to_string()).unwrap();
    let retarred = tar_dir(&layout);
    let (_d2, other) = common::store();
    let loaded = other.load(&retarred[..], &LoadOptions::default()).unwrap();
    assert!(loaded[0].names.is_empty(), "a bare tag names no repository");
    assert!(other.resolve(&a.id.to_string()).is_ok(), "kept untagged");
    let loaded = other
        .load(
            &retarred[..],
            &LoadOptions {
                default_repository: Some(r("myrepo")),
                tag_as: Some(r("extra:1")),
            },
        )
        .unwrap();
    assert_eq!(
        loaded[0].names,
        ["docker.io/library/myrepo:v9", "docker.io/library/extra:1"]
    );
}

fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

fn skopeo() -> Command {
    let c = Command::new("skopeo");
    assert!(
        Command::new("skopeo").arg("--version").output().is_ok(),
        "skopeo is not installed: `make deps` (resources/deps.sh) installs it"
    );
    c
}

/// skopeo reads what we save, and we load what skopeo writes, in every
/// format, with the same image ID.
#[test]
fn skopeo_interoperability() {
    let (_d, store) = common::store();
    let a = store
        .import(
            &common::gzip(&small_rootfs())[..],
            Some(&r("interop:1")),
            &ImportOptions::default(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ours_oci = dir.path().join("ours-oci.tar");
    let ours_docker = dir.path().join("ours-docker.tar");
    store
        .save(
            &["interop:1"],
            ArchiveFormat::Oci,
            fs::File::create(&ours_oci).unwrap(),
        )
        .unwrap();
    store
        .save(
            &["interop:1"],
            ArchiveFormat::Docker,
            fs::File::create(&ours_docker).unwrap(),
        )
        .unwrap();
    // skopeo reads both of ours.
    let inspect = run(skopeo()
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", ours_oci.display())));
    assert_eq!(
        Digest::of(inspect.as_bytes()),
        a.digest,
        "skopeo sees our manifest bytes"
    );
    let cfg = run(skopeo()
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", ours_docker.display())));
    assert!(cfg.contains("amd64"), "{cfg}");
    // An oci: directory, then skopeo writes every archive kind from it.
    let oci_dir = dir.path().join("oci-dir");
    fs::create_dir(&oci_dir).unwrap();
    tar::Archive::new(fs::File::open(&ours_oci).unwrap())
        .unpack(&oci_dir)
        .unwrap();
    let src = format!("oci:{}:docker.io/library/interop:1", oci_dir.display());
    let theirs_docker = dir.path().join("theirs-docker.tar");
    let theirs_oci = dir.path().join("theirs-oci.tar");
    run(skopeo().args(["copy", "-q", &src]).arg(format!(
        "docker-archive:{}:skopeo/made:latest",
        theirs_docker.display()
    )));
    run(skopeo().args(["copy", "-q", &src]).arg(format!(
        "oci-archive:{}:localhost:5000/skopeo/oci:2",
        theirs_oci.display()
    )));
    let (_d2, other) = common::store();
    other
        .load(
            fs::File::open(&theirs_docker).unwrap(),
            &LoadOptions::default(),
        )
        .unwrap();
    other
        .load(
            fs::File::open(&theirs_oci).unwrap(),
            &LoadOptions::default(),
        )
        .unwrap();
    let d = other.resolve("skopeo/made:latest").unwrap();
    let o = other.resolve("localhost:5000/skopeo/oci:2").unwrap();
    assert_eq!(d.id, a.id, "docker-archive via skopeo keeps the image ID");
    assert_eq!(o.id, a.id);
    assert_eq!(
        o.digest, a.digest,
        "oci-archive via skopeo keeps the manifest digest"
    );
    assert_eq!(d.diff_ids, store.resolve("interop:1").unwrap().diff_ids);
    assert_consistent(&other);
}

#[test]
fn import_refuses_rootfs_tarballs_the_layer_unpacker_would_refuse() {
    let (_d, store) = common::store();
    let cases: [(Vec<u8>, &str); 3] = [
        (
            tar(&[
                E::Symlink("link", "/etc"),
                E::File("link/passwd", b"pwned", 0o644),
            ]),
            "link/passwd",
        ),
        (
            tar(&[E::File("/etc/passwd", b"pwned", 0o644)]),
            "/etc/passwd",
        ),
        (tar(&[E::Hardlink("h", "../outside")]), "\"h\""),
    ];
    for (data, entry) in cases {
        let e = store
            .import(&data[..], Some(&r("bad:1")), &ImportOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains(entry), "{e} does not name {entry}");
        assert!(store.resolve("bad:1").is_err(), "nothing is tagged");
    }
    assert!(
        common::blob_names(&store).is_empty(),
        "the refused blobs are removed"
    );
    assert_consistent(&store);
    // A rootfs with setuid files, devices and hard links imports as is.
    let ok = tar(&[
        E::Dir("bin", 0o755),
        E::File("bin/su", b"su", 0o4755),
        E::Hardlink("bin/su2", "bin/su"),
        E::Char("dev/null", 1, 3),
    ]);
    store
        .import(&ok[..], Some(&r("good:1")), &ImportOptions::default())
        .unwrap();
}
