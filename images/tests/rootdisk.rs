//! Root disks: real ext4 files checked with e2fsck, debugfs and a loop
//! mount; the cache; concurrency; scratch disks.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use common::{assert_consistent, debugfs, e2fsck_clean, r, run, tar, E};
use mvm_images::rootdisk::Staging;
use mvm_images::{ArchiveFormat, Digest, LoadOptions, RootDiskOptions, Store};

/// A three-layer OCI image with whiteouts, an opaque dir, links, a setuid
/// file and owners, loaded through an OCI archive.
fn layered_image(store: &Store, name: &str) {
    let l1 = common::gzip(&tar(&[
        E::Dir("etc", 0o755),
        E::File("etc/os-release", b"ID=mvm\n", 0o644),
        E::File("etc/gone", b"x", 0o644),
        E::Dir("opt", 0o755),
        E::File("opt/lower", b"l", 0o644),
        E::Dir("bin", 0o755),
        E::File("bin/tool", b"#!/bin/sh\n", 0o755),
    ]));
    let l2 = tar(&[
        E::File("etc/.wh.gone", b"", 0o644),
        E::File("opt/upper", b"u", 0o644),
        E::File("opt/.wh..wh..opq", b"", 0o644),
        E::FileEx {
            path: "bin/su",
            data: b"setuid",
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: &[],
        },
        E::Hardlink("bin/tool2", "bin/tool"),
        E::Symlink("bin/sh", "/bin/busybox"),
    ]);
    let l3 = common::zstd(&tar(&[E::FileEx {
        path: "home/user/file",
        data: b"mine",
        mode: 0o600,
        uid: 1000,
        gid: 1000,
        mtime: 1_600_000_000,
        xattrs: &[],
    }]));
    let plain = |l: &[u8]| {
        let mut out = Vec::new();
        let (mut rd, _) = mvm_images::layer::decompress(l, None).unwrap();
        std::io::copy(&mut rd, &mut out).unwrap();
        Digest::of(&out)
    };
    let layers = [
        (&l1, mvm_images::manifest::media_type::OCI_LAYER_GZIP),
        (&l2, mvm_images::manifest::media_type::OCI_LAYER_TAR),
        (&l3, mvm_images::manifest::media_type::OCI_LAYER_ZSTD),
    ];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(l, _)| format!("\"{}\"", plain(l)))
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let lease = store.lease().unwrap();
    let cfg = store
        .put_blob_bytes(&lease, None, config.as_bytes())
        .unwrap();
    let mut descs = Vec::new();
    for (l, mt) in layers {
        let info = store.put_blob_bytes(&lease, None, l).unwrap();
        descs.push(format!(
            r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#,
            info.digest, info.size
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        cfg.digest,
        cfg.size,
        descs.join(",")
    );
    let (m, _) = store
        .put_manifest(&lease, None, manifest.as_bytes())
        .unwrap();
    store.tag(&r(name), &m.digest).unwrap();
}

#[test]
fn root_disk_has_the_flattened_tree_and_is_cached() {
    common::require_root();
    let (_d, store) = common::store();
    layered_image(&store, "layered:1");
    let rec = store.resolve("layered:1").unwrap();
    let disk = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
    assert!(!disk.cached);
    let build = disk.build.unwrap();
    assert_eq!(build.attempts, 1, "size estimate should be enough");
    e2fsck_clean(&disk.path);
    let md = fs::metadata(&disk.path).unwrap();
    assert_eq!(
        md.mode() & 0o777,
        0o400,
        "published read-only, the owner's alone"
    );

    // debugfs: files, modes, owners, links, without mounting.
    let ls = debugfs(&disk.path, "ls -p /opt");
    assert!(
        ls.contains("/upper/") && !ls.contains("/lower/"),
        "opaque dir: {ls}"
    );
    let ls = debugfs(&disk.path, "ls -p /etc");
    assert!(
        ls.contains("/os-release/") && !ls.contains("/gone/"),
        "whiteout: {ls}"
    );
    let su = debugfs(&disk.path, "stat /bin/su");
    assert!(su.contains("Mode:  04755"), "setuid: {su}");
    let home = debugfs(&disk.path, "stat /home/user/file");
    assert!(
        home.contains("User:  1000") && home.contains("Group:  1000"),
        "{home}"
    );
    let tool = debugfs(&disk.path, "stat /bin/tool");
    assert!(tool.contains("Links: 2"), "hard link: {tool}");
    let feats = run(Command::new("dumpe2fs").arg("-h").arg(&disk.path));
    assert!(
        !feats.contains("has_journal"),
        "read-only disks need no journal"
    );

    // Loop-mount it read-only and compare contents.
    let mnt = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&disk.path)
        .arg(mnt.path()));
    let check = std::panic::catch_unwind(|| {
        assert_eq!(
            fs::read(mnt.path().join("etc/os-release")).unwrap(),
            b"ID=mvm\n"
        );
        assert_eq!(
            fs::read_link(mnt.path().join("bin/sh")).unwrap().to_str(),
            Some("/bin/busybox")
        );
        let a = fs::metadata(mnt.path().join("bin/tool")).unwrap();
        let b = fs::metadata(mnt.path().join("bin/tool2")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            fs::metadata(mnt.path().join("home/user/file"))
                .unwrap()
                .mtime(),
            1_600_000_000
        );
    });
    let _ = Command::new("umount").arg(mnt.path()).status();
    if let Err(p) = check {
        std::panic::resume_unwind(p);
    }

    // Second call: a cache hit.
    let t = Instant::now();
    let again = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
    let took = t.elapsed();
    assert!(again.cached);
    assert_eq!(again.path, disk.path);
    eprintln!("cached root disk lookup: {took:?}");
    // Unpack temp space is gone (deleted in the background).
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_some()
    {
        assert!(Instant::now() < deadline, "unpacked tree not cleaned up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_consistent(&store);

    // The same layers under another name share the disk; removing the
    // last name removes the disk.
    store.tag(&r("other:1"), &rec.digest).unwrap();
    store.remove("layered:1", false, &|_| false).unwrap();
    assert!(disk.path.exists());
    store.remove("other:1", false, &|_| false).unwrap();
    assert!(!disk.path.exists(), "prune removes the unreferenced disk");
    assert_consistent(&store);
}

#[test]
fn concurrent_conversions_build_one_disk() {
    let (_d, store) = common::store();
    layered_image(&store, "c:1");
    let rec = store.resolve("c:1").unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (store, rec) = (store.clone(), rec.clone());
            std::thread::spawn(move || store.root_disk(&rec, &RootDiskOptions::default()).unwrap())
        })
        .collect();
    let disks: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        disks.iter().filter(|d| !d.cached).count(),
        1,
        "exactly one build"
    );
    assert!(disks.iter().all(|d| d.path == disks[0].path));
    let n = fs::read_dir(store.disks_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".ext4")
        })
        .count();
    assert_eq!(n, 1);
    e2fsck_clean(&disks[0].path);
}

#[test]
fn corrupt_layer_fails_conversion_cleanly() {
    let (_d, store) = common::store();
    // A docker-archive whose config lies about the (gzip) layer's diff_id:
    // only unpacking can notice.
    let layer = common::gzip(&tar(&[E::File("f", b"x", 0o644)]));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Digest::of(b"lie")
    );
    let cd = Digest::of(config.as_bytes());
    let cfg_name = format!("{}.json", cd.hex());
    let manifest =
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":["liar:1"],"Layers":["l/layer.tar"]}}]"#);
    let data = tar(&[
        E::File("l/layer.tar", &layer, 0o644),
        E::File(&cfg_name, config.as_bytes(), 0o644),
        E::File("manifest.json", manifest.as_bytes(), 0o644),
    ]);
    store.load(&data[..], &LoadOptions::default()).unwrap();
    let e = store
        .root_disk_for("liar:1", &RootDiskOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("diff_id"), "{e}");
    assert!(e.to_string().contains("layer 1"), "{e}");
    assert!(fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    let disks: Vec<_> = fs::read_dir(store.disks_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4"))
        .collect();
    assert!(disks.is_empty(), "no disk published: {disks:?}");
    // Saving and loading does not need the layers to be valid tars.
    let mut out = Vec::new();
    store
        .save(&["liar:1"], ArchiveFormat::Oci, &mut out)
        .unwrap();
}

#[test]
fn scratch_disks_are_blank_writable_ext4() {
    let (d, store) = common::store();
    let a = d.path().join("a.ext4");
    let b = d.path().join("b.ext4");
    store.create_scratch_disk(&a, 256 << 20).unwrap();
    let t = Instant::now();
    store.create_scratch_disk(&b, 256 << 20).unwrap();
    eprintln!("scratch disk from template: {:?}", t.elapsed());
    for p in [&a, &b] {
        let md = fs::metadata(p).unwrap();
        assert_eq!(md.len(), 256 << 20);
        assert!(
            md.blocks() * 512 < 32 << 20,
            "sparse: {} bytes allocated",
            md.blocks() * 512
        );
        e2fsck_clean(p);
        let h = run(Command::new("dumpe2fs").arg("-h").arg(p));
        assert!(h.contains("has_journal"), "scratch disks are journaled");
        let ls = debugfs(p, "ls /");
        assert!(ls.contains("lost+found"), "{ls}");
    }
    assert!(
        store.create_scratch_disk(&a, 256 << 20).is_err(),
        "never overwrites"
    );
    assert!(store
        .create_scratch_disk(&d.path().join("tiny"), 4096)
        .is_err());
}

/// Every entry of a mounted tree: path, type and mode, owner, size,
/// mtime (not of directories), links, link target, content hash.
fn walk_tree(root: &std::path::Path) -> Vec<String> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel == "lost+found" {
                continue;
            }
            let extra = if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else if md.is_file() {
                Digest::of(&fs::read(&p).unwrap()).to_string()
            } else {
                String::new()
            };
            // A directory a later layer adds to has the conversion's time
            // as its mtime, whatever the staging: left out.
            out.push(format!(
                "{rel} {:o} {}:{} {} {} {} {extra}",
                md.mode(),
                md.uid(),
                md.gid(),
                if md.is_dir() { 0 } else { md.len() },
                if md.is_dir() { 0 } else { md.mtime() },
                md.nlink()
            ));
            if md.is_dir() {
                walk(&p, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Loop-mounts `img` read-only and walks it.
fn mounted_tree(img: &std::path::Path) -> Vec<String> {
    let mnt = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(mnt.path()));
    let tree = std::panic::catch_unwind(|| walk_tree(mnt.path()));
    let _ = Command::new("umount").arg(mnt.path()).status();
    tree.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[test]
fn staging_on_the_tmpfs_or_in_the_store_makes_the_same_disk() {
    common::require_root();
    if !std::path::Path::new(mvm_images::rootdisk::TMPFS_STAGING).is_dir() {
        eprintln!(
            "no {}: nothing to compare",
            mvm_images::rootdisk::TMPFS_STAGING
        );
        return;
    }
    let mut trees = Vec::new();
    for staging in [Staging::Auto, Staging::Store] {
        let (_d, store) = common::store();
        layered_image(&store, "layered:1");
        let rec = store.resolve("layered:1").unwrap();
        let opts = RootDiskOptions {
            staging,
            ..RootDiskOptions::default()
        };
        let disk = store.root_disk(&rec, &opts).unwrap();
        let build = disk.build.unwrap();
        assert_eq!(build.on_tmpfs, staging == Staging::Auto, "{staging:?}");
        e2fsck_clean(&disk.path);
        trees.push(mounted_tree(&disk.path));
        // The tmpfs copy goes (in the background), with its marker.
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .next()
            .is_some()
        {
            assert!(Instant::now() < deadline, "unpacked tree not cleaned up");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_consistent(&store);
    }
    assert!(trees[0].len() > 10, "{:#?}", trees[0]);
    assert_eq!(trees[0], trees[1]);
}

#[test]
fn prune_removes_the_tmpfs_tree_of_a_dead_conversion_and_nothing_else() {
    let base = std::path::Path::new(mvm_images::rootdisk::TMPFS_STAGING);
    if !base.is_dir() {
        eprintln!("no {}: nothing to test", base.display());
        return;
    }
    let (d, store) = common::store();
    // A conversion that died: its marker names its tree on the tmpfs.
    let tree = base.join(format!("mvm-rootfs-test-{}", std::process::id()));
    fs::create_dir_all(tree.join("rootfs/etc")).unwrap();
    fs::write(tree.join("rootfs/etc/passwd"), b"x").unwrap();
    let marker = store.root().join("tmp/deadbeef.staging");
    fs::write(&marker, tree.as_os_str().as_encoded_bytes()).unwrap();
    // A marker naming something that is not one of ours: left alone.
    let other = d.path().join("mvm-rootfs-not-on-the-tmpfs");
    fs::create_dir_all(&other).unwrap();
    let marker2 = store.root().join("tmp/cafe.staging");
    fs::write(&marker2, other.as_os_str().as_encoded_bytes()).unwrap();
    store.prune(false, &|_| false).unwrap();
    assert!(!tree.exists(), "the dead conversion's tree is removed");
    assert!(!marker.exists() && !marker2.exists(), "markers removed");
    assert!(other.exists(), "only our own tmpfs directories are removed");
}
