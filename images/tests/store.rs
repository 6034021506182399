//! The store: import, names, errors that leave it consistent, concurrency,
//! leases and GC, full disks.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;

use common::{assert_consistent, blob_names, gzip, r, small_rootfs, tar, E};
use mvm_images::manifest::media_type;
use mvm_images::{ArchiveError, Digest, Expected, ImportOptions, LoadOptions, Store, StoreError};

/// Runs this test binary's `child_process` entry with `args`: store
/// operations from another process.
fn child(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_process",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("MVM_IMAGES_CHILD", args.join("\x1f"));
    c
}

/// Not a test on its own: does what `MVM_IMAGES_CHILD` says when started
/// by [`child`], and nothing otherwise.
#[test]
fn child_process() {
    let Ok(cmd) = std::env::var("MVM_IMAGES_CHILD") else {
        return;
    };
    let args: Vec<&str> = cmd.split('\x1f').collect();
    let store = Store::open(args[1]).unwrap();
    match args[0] {
        "prune" => {
            store.prune(true, &|_| false).unwrap();
        }
        "import" => {
            let data = fs::read(args[2]).unwrap();
            store
                .import(
                    &data[..],
                    Some(&r(args[3])),
                    &ImportOptions {
                        created: Some(args[4].to_string()),
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        other => panic!("unknown child command {other}"),
    }
}

fn import(store: &Store, data: &[u8], name: &str) -> mvm_images::LoadedImage {
    store
        .import(data, Some(&r(name)), &ImportOptions::default())
        .unwrap()
}

#[test]
fn import_resolve_list_inspect() {
    let (_d, store) = common::store();
    let mut cfg = oci_spec::image::Config::default();
    cfg.set_cmd(Some(vec!["/bin/sh".into()]));
    cfg.set_env(Some(vec!["PATH=/bin".into()]));
    let loaded = store
        .import(
            &small_rootfs()[..],
            Some(&r("busybox")),
            &ImportOptions {
                config: Some(cfg),
                created: Some("2024-01-02T03:04:05Z".into()),
                message: None,
            },
        )
        .unwrap();
    assert_eq!(loaded.names, ["docker.io/library/busybox:latest"]);
    for spec in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox",
        "index.docker.io/library/busybox:latest",
        &loaded.id.to_string(),
        &loaded.id.hex()[..12],
        &format!("busybox@{}", loaded.digest),
    ] {
        let rec = store
            .resolve(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(rec.id, loaded.id, "{spec}");
    }
    let rec = store.resolve("busybox").unwrap();
    let ic = rec.image_config();
    assert_eq!(ic.cmd, ["/bin/sh"]);
    assert_eq!(ic.env, ["PATH=/bin"]);
    assert_eq!(rec.manifest.layers[0].media_type, media_type::OCI_LAYER_TAR);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(list[0].created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert!(list[0].size > 0);
    let info = store.inspect("busybox").unwrap();
    assert_eq!(info.platform, "linux/amd64");
    assert!(matches!(
        store.resolve("nope"),
        Err(StoreError::ImageNotFound(_))
    ));
    assert!(matches!(
        store.resolve("Bad Name"),
        Err(StoreError::Reference(_))
    ));
    assert_consistent(&store);
}

#[test]
fn compressed_import_keeps_bytes_and_media_type() {
    let (_d, store) = common::store();
    let plain = small_rootfs();
    let gz = gzip(&plain);
    let l = store
        .import(&gz[..], Some(&r("gz")), &ImportOptions::default())
        .unwrap();
    let rec = store.resolve("gz").unwrap();
    assert_eq!(
        rec.manifest.layers[0].media_type,
        media_type::OCI_LAYER_GZIP
    );
    assert_eq!(rec.manifest.layers[0].digest, Digest::of(&gz));
    assert_eq!(rec.diff_ids[0], Digest::of(&plain));
    assert_eq!(rec.id, l.id);
}

#[test]
fn digest_mismatch_and_truncation_publish_nothing() {
    let (_d, store) = common::store();
    let lease = store.lease().unwrap();
    let wrong = Digest::of(b"something else");
    let e = store
        .put_blob(&lease, Some(wrong.into()), &b"content"[..])
        .unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&wrong.to_string()));
    let right = Digest::of(b"content");
    let e = store
        .put_blob(
            &lease,
            Some(Expected {
                digest: right,
                size: Some(100),
            }),
            &b"content"[..],
        )
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(blob_names(&store).is_empty());
    // The right content goes in, once; the second write does not read.
    let info = store
        .put_blob(&lease, Some(right.into()), &b"content"[..])
        .unwrap();
    assert!(info.written);
    let info = store
        .put_blob(&lease, Some(right.into()), std::io::empty())
        .unwrap();
    assert!(!info.written);
    drop(lease);
    assert_consistent(&store);
    assert!(fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

/// An OCI layout tarball with one image whose parts can be tampered with.
fn oci_archive(config: &str, layer: &[u8], layer_mt: &str, ref_name: &str) -> Vec<u8> {
    let ld = Digest::of(layer);
    let cd = Digest::of(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"{layer_mt}","digest":"{ld}","size":{}}}]}}"#,
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        config.len(),
        layer.len()
    );
    let md = Digest::of(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{md}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{ref_name}"}}}}]}}"#,
        media_type::OCI_MANIFEST,
        manifest.len()
    );
    let paths = [
        format!("blobs/sha256/{}", ld.hex()),
        format!("blobs/sha256/{}", cd.hex()),
        format!("blobs/sha256/{}", md.hex()),
    ];
    tar(&[
        E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        E::Dir("blobs", 0o755),
        E::Dir("blobs/sha256", 0o755),
        E::File(&paths[0], layer, 0o644),
        E::File(&paths[1], config.as_bytes(), 0o644),
        E::File(&paths[2], manifest.as_bytes(), 0o644),
        E::File("index.json", index.as_bytes(), 0o644),
    ])
}

fn config_for(layer_plain: &[u8], os: &str, arch: &str) -> String {
    format!(
        r#"{{"architecture":"{arch}","os":"{os}","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Digest::of(layer_plain)
    )
}

#[test]
fn oci_archive_loads_and_bad_ones_leave_store_unchanged() {
    let (_d, store) = common::store();
    // A good image first, so "unchanged" is checked against a non-empty store.
    import(&store, &small_rootfs(), "base:1");
    let before_blobs = blob_names(&store);
    let before_refs = store.references().unwrap();

    let layer = tar(&[E::File("hello", b"world", 0o644)]);
    let good = oci_archive(
        &config_for(&layer, "linux", "amd64"),
        &layer,
        media_type::OCI_LAYER_TAR,
        "localhost:5000/app:1",
    );
    let loaded = store.load(&good[..], &LoadOptions::default()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, ["localhost:5000/app:1"]);
    store
        .remove("localhost:5000/app:1", false, &|_| false)
        .unwrap();
    assert_eq!(
        blob_names(&store),
        before_blobs,
        "remove deletes the image's blobs"
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong platform",
            oci_archive(
                &config_for(&layer, "linux", "arm64"),
                &layer,
                media_type::OCI_LAYER_TAR,
                "x:1",
            ),
            "linux/arm64",
        ),
        (
            "unknown media type",
            oci_archive(
                &config_for(&layer, "linux", "amd64"),
                &layer,
                "application/x-strange",
                "x:1",
            ),
            "application/x-strange",
        ),
        (
            "uncompressed layer not matching diff_id",
            oci_archive(
                &config_for(b"other", "linux", "amd64"),
                &layer,
                media_type::OCI_LAYER_TAR,
                "x:1",
            ),
            "diff_id",
        ),
        ("truncated", good[..good.len() - 2100].to_vec(), "truncated"),
        (
            "not an archive",
            tar(&[E::File("random", b"x", 0o644)]),
            "not an image archive",
        ),
    ];
    for (what, data, needle) in cases {
        let e = store.load(&data[..], &LoadOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "{what}: error {e:?} should mention {needle:?}"
        );
        assert_eq!(
            store.references().unwrap(),
            before_refs,
            "{what}: names changed"
        );
        assert_eq!(
            blob_names(&store),
            before_blobs,
            "{what}: blobs left behind"
        );
        assert_consistent(&store);
    }
    // A blob whose content does not match its file name.
    let mut tampered = good.clone();
    let pos = tampered.windows(5).position(|w| w == b"world").unwrap();
    tampered[pos] = b'W';
    let e = store
        .load(&tampered[..], &LoadOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, ArchiveError::Store(StoreError::DigestMismatch { .. })),
        "{e}"
    );
    assert_eq!(blob_names(&store), before_blobs);
    assert_consistent(&store);
}

#[test]
fn remove_semantics_and_in_use() {
    let (_d, store) = common::store();
    let a = import(&store, &small_rootfs(), "one:1");
    store.tag(&r("two:2"), &a.digest).unwrap();
    let rep = store.remove("one:1", false, &|_| false).unwrap();
    assert!(rep.deleted.is_empty(), "still named two:2");
    assert!(store.resolve("two:2").is_ok());
    store.tag(&r("three:3"), &a.digest).unwrap();
    let e = store
        .remove(&a.id.to_string(), false, &|_| false)
        .unwrap_err();
    assert!(matches!(e, StoreError::MultipleNames { .. }), "{e}");
    store.remove("three:3", false, &|_| false).unwrap();
    let e = store.remove("two:2", false, &|id| *id == a.id).unwrap_err();
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    let rep = store.remove("two:2", true, &|id| *id == a.id).unwrap();
    assert_eq!(rep.deleted, [a.id]);
    assert!(blob_names(&store).is_empty());
    assert_consistent(&store);
}

#[test]
fn untagged_images_survive_gc_until_pruned() {
    let (_d, store) = common::store();
    let l = store
        .import(&small_rootfs()[..], None, &ImportOptions::default())
        .unwrap();
    assert!(l.names.is_empty());
    store.prune(false, &|_| false).unwrap();
    assert!(store.resolve(&l.id.to_string()).is_ok());
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].repo_tags.is_empty());
    let rep = store.prune(true, &|_| false).unwrap();
    assert_eq!(rep.images_removed.len(), 1);
    assert!(rep.blobs_removed >= 3);
    assert!(blob_names(&store).is_empty());
}

#[test]
fn prune_during_import_keeps_leased_blobs() {
    let (_d, store) = common::store();
    let lease = store.lease().unwrap();
    let layer = store.put_blob(&lease, None, &small_rootfs()[..]).unwrap();
    // A lease of a process that died: no flock on it.
    let stale = store.root().join("leases/deadbeef.lease");
    fs::write(&stale, format!("blob {}\n", Digest::of(b"x"))).unwrap();
    fs::create_dir(store.root().join("tmp/deadbeef")).unwrap();
    fs::write(store.root().join("tmp/deadbeef/blob-partial"), b"half").unwrap();

    let rep = store.prune(true, &|_| false).unwrap();
    assert!(store.has_blob(&layer.digest), "leased blob pruned");
    assert_eq!(rep.stale_leases, 1);
    assert!(!stale.exists());
    assert!(!store.root().join("tmp/deadbeef").exists());
    assert!(
        store.root().join("tmp").join(lease.id()).exists(),
        "live lease's tmp kept"
    );

    // Another process's live lease is honoured too: the prune runs in a
    // child process while this one holds the lease.
    let out = child(&["prune", store.root().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        store.has_blob(&layer.digest),
        "blob leased by another process pruned"
    );

    drop(lease);
    store.prune(true, &|_| false).unwrap();
    assert!(
        !store.has_blob(&layer.digest),
        "unleased, unreferenced blob kept"
    );
    assert_consistent(&store);
}

#[test]
fn concurrent_imports_of_the_same_image() {
    let (_d, store) = common::store();
    let data = Arc::new(small_rootfs());
    let created = "2024-01-01T00:00:00Z".to_string();
    // Threads in this process...
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (store, data, created) = (store.clone(), data.clone(), created.clone());
            std::thread::spawn(move || {
                store
                    .import(
                        &data[..],
                        Some(&r("same:1")),
                        &ImportOptions {
                            created: Some(created),
                            ..Default::default()
                        },
                    )
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results[0].digest, results[1].digest);
    // ...and processes, racing a pruner.
    let rootfs = store.root().parent().unwrap().join("rootfs.tar");
    fs::write(&rootfs, &*data).unwrap();
    let root = store.root().to_str().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            child(&["import", root, rootfs.to_str().unwrap(), "same:1", &created])
                .spawn()
                .unwrap()
        })
        .collect();
    children.push(child(&["prune", root]).spawn().unwrap());
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].digest, results[0].digest);
    assert_eq!(blob_names(&store).len(), 3, "manifest, config, layer");
    assert_consistent(&store);
}

#[test]
fn full_disk_gives_a_clear_error_and_stays_consistent() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    common::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&mnt),
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let store = Store::open(mnt.join("images")).unwrap();
    import(&store, &small_rootfs(), "small:1");
    let before = blob_names(&store);
    // 12 MiB of incompressible data does not fit in 8 MiB.
    let mut big = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let data = tar(&[E::File("big", &big, 0o644)]);
    let e = store
        .import(&data[..], Some(&r("big:1")), &ImportOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");
    assert_eq!(blob_names(&store), before);
    assert!(store.resolve("big:1").is_err());
    assert!(store.resolve("small:1").is_ok());
    assert_consistent(&store);
    assert!(fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    // Space is back: a later import works.
    import(&store, &tar(&[E::File("f", b"ok", 0o644)]), "after:1");
    assert_consistent(&store);
}

#[test]
fn truncated_or_invalid_rootfs_import_leaves_nothing() {
    let (_d, store) = common::store();
    import(&store, &small_rootfs(), "keep:1");
    let before = blob_names(&store);
    let full = small_rootfs();
    for (what, data) in [
        ("truncated tar", full[..full.len() / 2].to_vec()),
        ("truncated gzip", gzip(&full)[..400].to_vec()),
        ("not a tar", b"hello, I am not an archive".to_vec()),
    ] {
        let e = store
            .import(&data[..], Some(&r("bad:1")), &ImportOptions::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("corrupt or truncated"),
            "{what}: {e}"
        );
        assert!(store.resolve("bad:1").is_err(), "{what}: tagged anyway");
        assert_eq!(blob_names(&store), before, "{what}: blobs left behind");
        assert_consistent(&store);
    }
}
