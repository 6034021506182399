//! Registry pull/push/login against a real `docker-registry` (Debian's
//! CNCF distribution 2.8), cross-checked with `skopeo`, with a
//! fault-injecting proxy for the failure cases.

mod registry_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mvm_images::manifest::media_type as mt;
use mvm_images::registry::{
    self, AuthFile, CredentialSource, Credentials, LoginOptions, ProgressEvent, PullOptions,
    PushOptions, Recorder, RegistryError, RetryPolicy,
};
use mvm_images::rootdisk::RootDiskOptions;
use mvm_images::{Digest, Reference};
use registry_support::*;

/// Fast retries, so the failure tests do not wait for real back-off.
fn retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(20),
    }
}

fn pull_opts() -> PullOptions {
    PullOptions {
        insecure: true,
        credentials: CredentialSource::Anonymous,
        retry: retry(),
        ..Default::default()
    }
}

fn push_opts() -> PushOptions {
    PushOptions {
        insecure: true,
        credentials: CredentialSource::Anonymous,
        retry: retry(),
        ..Default::default()
    }
}

async fn pull(
    store: &mvm_images::Store,
    r: &Reference,
) -> Result<mvm_images::ImageRecord, RegistryError> {
    registry::pull(store, r, &pull_opts(), &registry::NoProgress).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_round_trip_and_skopeo_agrees() {
    let reg = Registry::start();
    let (_d1, a) = store();
    let img = Image::simple("round-trip");
    let r = reg.reference("rt/app:1");
    img.load(&a, &r);

    let rep = registry::push(&a, &r, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rep.digest, img.digest());
    assert_eq!((rep.uploaded, rep.skipped, rep.mounted), (3, 0, 0));
    // Everything is there now: a second push uploads nothing.
    let rep = registry::push(&a, &r, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!((rep.uploaded, rep.skipped), (0, 3));

    // skopeo, an independent client, sees the exact manifest we pushed.
    let raw = skopeo_raw_manifest(&r.to_string());
    assert_eq!(Digest::of(&raw), img.digest());
    let layout = tempfile::tempdir().unwrap();
    assert_eq!(
        skopeo_pull_to_layout(&r.to_string(), layout.path()),
        img.digest()
    );

    let (_d2, b) = store();
    let progress = Recorder::new();
    let rec = registry::pull(&b, &r, &pull_opts(), &progress)
        .await
        .unwrap();
    assert_eq!(rec.digest, img.digest());
    assert_eq!(rec.manifest_digest, img.digest());
    assert_eq!(rec.id, img.config_digest());
    assert_eq!(rec.manifest_media_type, mt::OCI_MANIFEST);
    assert_eq!(b.resolve(&r.to_string()).unwrap().id, img.config_digest());
    for (d, bytes) in img.blobs() {
        assert_eq!(std::fs::read(b.blob_path(&d)).unwrap(), bytes);
    }
    assert_clean(&b);
    let events = progress.events();
    assert!(matches!(
        events.first(),
        Some(ProgressEvent::Resolving { .. })
    ));
    assert!(
        matches!(events.last(), Some(ProgressEvent::Done { digest, .. }) if *digest == img.digest())
    );
    let done: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::BlobDone {
                index, count: 2, ..
            } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 2, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_docker_and_oci_images_pushed_by_skopeo() {
    let reg = Registry::start();
    for (name, docker) in [("sk/docker:1", true), ("sk/oci:1", false)] {
        let img = Image::new(
            vec![layer(&[("a", b"docker or oci")], Comp::Gzip, docker)],
            "amd64",
            docker,
        );
        let dir = tempfile::tempdir().unwrap();
        write_oci_layout(
            dir.path(),
            "t",
            &img.manifest,
            img.media_type(),
            &img.blobs(),
        );
        let r = reg.reference(name);
        skopeo_push_layout(dir.path(), "t", &r.to_string(), None);
        let (_d, s) = store();
        let rec = pull(&s, &r).await.unwrap();
        assert_eq!(rec.manifest_digest, img.digest(), "{name}");
        assert_eq!(rec.manifest_media_type, img.media_type());
        assert_clean(&s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_zstd_and_uncompressed_layers_pull_and_make_a_root_disk() {
    let reg = Registry::start();
    let img = Image::new(
        vec![
            layer(
                &[("plain.txt", b"from the plain layer\n")],
                Comp::None,
                false,
            ),
            layer(&[("gzip.txt", b"from the gzip layer\n")], Comp::Gzip, false),
            layer(&[("zstd.txt", b"from the zstd layer\n")], Comp::Zstd, false),
        ],
        "amd64",
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(
        dir.path(),
        "t",
        &img.manifest,
        img.media_type(),
        &img.blobs(),
    );
    let r = reg.reference("comp/all:1");
    skopeo_push_layout(dir.path(), "t", &r.to_string(), None);
    let (_d, s) = store();
    let rec = pull(&s, &r).await.unwrap();
    let types: Vec<&str> = rec
        .manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(
        types,
        [mt::OCI_LAYER_TAR, mt::OCI_LAYER_GZIP, mt::OCI_LAYER_ZSTD]
    );
    let disk = s.root_disk(&rec, &RootDiskOptions::default()).unwrap();
    for (f, want) in [
        ("/plain.txt", "from the plain layer\n"),
        ("/gzip.txt", "from the gzip layer\n"),
        ("/zstd.txt", "from the zstd layer\n"),
    ] {
        assert_eq!(ext4_cat(&disk.path, f), want.as_bytes(), "{f}");
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_list_selects_amd64_and_lists_platforms_when_absent() {
    let reg = Registry::start();
    let amd = Image::new(
        vec![layer(&[("arch", b"amd64")], Comp::Gzip, true)],
        "amd64",
        true,
    );
    let arm = Image::new(
        vec![layer(&[("arch", b"arm64")], Comp::Gzip, true)],
        "arm64",
        true,
    );
    // The children go in with skopeo, the Docker manifest list with a
    // plain PUT (skopeo 1.9 will not copy a Docker list out of an OCI
    // layout unchanged).
    for (img, tag) in [(&amd, "amd"), (&arm, "arm")] {
        let dir = tempfile::tempdir().unwrap();
        write_oci_layout(
            dir.path(),
            "t",
            &img.manifest,
            img.media_type(),
            &img.blobs(),
        );
        skopeo_push_layout(
            dir.path(),
            "t",
            &format!("{}/multi/app:{tag}", reg.host()),
            None,
        );
    }
    let list = index(&[&arm, &amd], true);
    let r = reg.reference("multi/app:1");
    let resp = reqwest::Client::new()
        .put(format!("http://{}/v2/multi/app/manifests/1", reg.host()))
        .header("content-type", mt::DOCKER_MANIFEST_LIST)
        .body(list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    let (_d, s) = store();
    let rec = pull(&s, &r).await.unwrap();
    assert_eq!(rec.digest, Digest::of(&list));
    assert_eq!(rec.manifest_digest, amd.digest());
    // Only the amd64 content was downloaded.
    assert!(!s.has_blob(&arm.layers[0].digest()));
    assert!(!s.has_blob(&arm.config_digest()));
    assert_clean(&s);

    // Pushing the pulled multi-platform image pushes its amd64 manifest.
    let r2 = reg.reference("multi/copy:1");
    s.tag(&r2, &rec.digest).unwrap();
    let rep = registry::push(&s, &r2, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rep.digest, amd.digest());
    assert_eq!(
        Digest::of(&skopeo_raw_manifest(&r2.to_string())),
        amd.digest()
    );

    // An OCI index with arm64 only: a clear error, nothing stored.
    let only_arm = index(&[&arm], false);
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path(), "t", &only_arm, mt::OCI_INDEX, &arm.blobs());
    let r = reg.reference("multi/armonly:1");
    skopeo_push_layout(dir.path(), "t", &r.to_string(), None);
    let (_d, s) = store();
    let e = pull(&s, &r).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::NoMatchingPlatform { .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("image {r} has no linux/amd64 variant; available: linux/arm64")
    );
    assert!(names(&s).is_empty());
    assert_clean(&s);

    // A single-platform arm64 image: refused by its config.
    let r = reg.reference("multi/armimage:1");
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(
        dir.path(),
        "t",
        &arm.manifest,
        arm.media_type(),
        &arm.blobs(),
    );
    skopeo_push_layout(dir.path(), "t", &r.to_string(), None);
    let e = pull(&s, &r).await.unwrap_err();
    assert!(e.to_string().contains("linux/arm64"), "{e}");
    assert!(e.to_string().contains("linux/amd64"), "{e}");
    assert!(names(&s).is_empty());
    assert_eq!(s.fsck(true).unwrap().blobs, 0, "failed pull left blobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_auth_login_pull_push_logout() {
    let reg = Registry::start_with_user("alice", "wonderland");
    let img = Image::simple("auth");
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(
        dir.path(),
        "t",
        &img.manifest,
        img.media_type(),
        &img.blobs(),
    );
    let r = reg.reference("private/app:1");
    skopeo_push_layout(dir.path(), "t", &r.to_string(), Some("alice:wonderland"));
    let host = reg.host();
    let (_d, s) = store();

    // No credentials: 401 with advice.
    let e = pull(&s, &r).await.unwrap_err();
    assert!(matches!(e, RegistryError::AuthRequired { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("authentication required: run mvctl login {host}")
    );

    // Wrong password: refused, nothing saved.
    let cfg = tempfile::tempdir().unwrap();
    let auth = AuthFile::at(cfg.path().join("mvm/auth.json"));
    let lopts = LoginOptions {
        insecure: true,
        retry: retry(),
        ..Default::default()
    };
    let e = registry::login(&host, &Credentials::new("alice", "queen"), &lopts, &auth)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::CredentialsRefused { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    assert!(!auth.path().exists());
    // Wrong credentials given directly to pull: refused too.
    let opts = PullOptions {
        credentials: CredentialSource::Explicit(Credentials::new("alice", "queen")),
        ..pull_opts()
    };
    let e = registry::pull(&s, &r, &opts, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::CredentialsRefused { .. }),
        "{e:?}"
    );

    // Login works, is saved in Docker's format with mode 0600.
    let saved = registry::login(
        &host,
        &Credentials::new("alice", "wonderland"),
        &lopts,
        &auth,
    )
    .await
    .unwrap();
    assert_eq!(saved, host);
    let md = std::fs::metadata(auth.path()).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(auth.path()).unwrap()).unwrap();
    assert!(doc["auths"][&host]["auth"].is_string(), "{doc}");

    let opts = PullOptions {
        credentials: CredentialSource::File(auth.clone()),
        ..pull_opts()
    };
    let rec = registry::pull(&s, &r, &opts, &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.manifest_digest, img.digest());

    // Push with the saved credentials.
    let r2 = reg.reference("private/copy:2");
    s.tag(&r2, &rec.digest).unwrap();
    let popts = PushOptions {
        credentials: CredentialSource::File(auth.clone()),
        ..push_opts()
    };
    let rep = registry::push(&s, &r2, &popts, &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rep.digest, img.digest());
    // ... and anonymous push is refused.
    let e = registry::push(&s, &r2, &push_opts(), &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::AuthRequired { .. }), "{e:?}");

    assert!(registry::logout(&host, &auth).unwrap());
    assert!(!registry::logout(&host, &auth).unwrap());
    let (_d, s2) = store();
    let e = registry::pull(&s2, &r, &opts, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::AuthRequired { .. }), "{e:?}");
    assert_clean(&s);
    assert_clean(&s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_and_repository_are_manifest_unknown() {
    let reg = Registry::start();
    let (_d, s) = store();
    let img = Image::simple("404");
    let r = reg.reference("exists/app:1");
    img.load(&s, &r);
    registry::push(&s, &r, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    for missing in ["exists/app:nope", "missing/repo:1"] {
        let r = reg.reference(missing);
        let e = pull(&s, &r).await.unwrap_err();
        assert!(matches!(e, RegistryError::ManifestUnknown { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("manifest unknown: check the name and tag"),
            "{e}"
        );
    }
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported_and_leave_the_store_clean() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let img = Image::simple("5xx");
    let r = proxy.reference("flaky/app:1");
    {
        let (_d, s) = store();
        img.load(&s, &r);
        registry::push(&s, &r, &push_opts(), &registry::NoProgress)
            .await
            .unwrap();
    }
    // Always 500: three attempts, then the status.
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Action::Status(500, "boom".into()),
    ));
    proxy.clear_log();
    let (_d, s) = store();
    let e = pull(&s, &r).await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Status {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    assert_eq!(proxy.count("GET /v2/flaky/app/manifests/"), 3);
    assert!(names(&s).is_empty());
    assert_clean(&s);

    // Two failures on a layer, then success: the pull goes through.
    proxy.clear_rules();
    let layer = img.layers[1].digest();
    proxy.add_rule(
        Rule::new(
            "GET",
            &format!("/blobs/{layer}"),
            Action::Status(503, "later".into()),
        )
        .times(2),
    );
    let rec = pull(&s, &r).await.unwrap();
    assert_eq!(rec.manifest_digest, img.digest());
    assert_clean(&s);

    // 403 (e.g. a token without pull rights) is reported as such.
    proxy.clear_rules();
    let (_d, s) = store();
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Action::Respond(
            403,
            "application/json".into(),
            br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#.to_vec(),
        ),
    ));
    let e = pull(&s, &r).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Denied { status: 403, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("DENIED"), "{e}");
    assert!(names(&s).is_empty());
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blobs_and_documents_are_refused() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let img = Image::simple("corrupt");
    let r = proxy.reference("bad/app:1");
    {
        let (_d, s) = store();
        img.load(&s, &r);
        registry::push(&s, &r, &push_opts(), &registry::NoProgress)
            .await
            .unwrap();
    }
    let (_d, s) = store();
    let layer = img.layers[0].digest();
    proxy.add_rule(Rule::new(
        "GET",
        &format!("/blobs/{layer}"),
        Action::Corrupt,
    ));
    let e = pull(&s, &r).await.unwrap_err();
    match &e {
        RegistryError::DigestMismatch { expected, .. } => assert_eq!(*expected, layer),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(e.to_string().contains("corrupt or tampered"), "{e}");
    assert!(names(&s).is_empty());
    assert!(!s.has_blob(&layer));
    assert_clean(&s);
    assert_eq!(s.fsck(true).unwrap().blobs, 0, "failed pull left blobs");

    // A corrupt manifest served for a digest reference.
    proxy.clear_rules();
    proxy.add_rule(Rule::new("GET", "/manifests/", Action::Corrupt));
    let pinned = r.with_digest(img.digest());
    let e = pull(&s, &pinned).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");

    // A manifest with a layer media type the store cannot unpack.
    proxy.clear_rules();
    let odd = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::OCI_MANIFEST,
        "config": {"mediaType": mt::OCI_CONFIG, "digest": img.config_digest().to_string(), "size": img.config.len()},
        "layers": [{"mediaType": "application/vnd.example.weird", "digest": layer.to_string(), "size": 1}],
    });
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/weird",
        Action::Respond(
            200,
            mt::OCI_MANIFEST.into(),
            serde_json::to_vec(&odd).unwrap(),
        ),
    ));
    let e = pull(&s, &proxy.reference("bad/app:weird"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Manifest { .. }), "{e:?}");
    assert!(
        e.to_string().contains("application/vnd.example.weird"),
        "{e}"
    );

    // A manifest larger than any real one.
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/huge",
        Action::Respond(200, mt::OCI_MANIFEST.into(), vec![b' '; 5 << 20]),
    ));
    let e = pull(&s, &proxy.reference("bad/app:huge"))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
    assert!(names(&s).is_empty());
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_already_present_are_not_downloaded() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let base = layer(&[("base", b"shared base layer")], Comp::Gzip, false);
    let one = Image::new(
        vec![base.clone(), layer(&[("one", b"1")], Comp::Gzip, false)],
        "amd64",
        false,
    );
    let two = Image::new(
        vec![base.clone(), layer(&[("two", b"2")], Comp::Gzip, false)],
        "amd64",
        false,
    );
    let (r1, r2) = (
        proxy.reference("share/one:1"),
        proxy.reference("share/two:1"),
    );
    {
        let (_d, s) = store();
        one.load(&s, &r1);
        two.load(&s, &r2);
        for r in [&r1, &r2] {
            registry::push(&s, r, &push_opts(), &registry::NoProgress)
                .await
                .unwrap();
        }
    }
    let (_d, s) = store();
    proxy.clear_log();
    pull(&s, &r1).await.unwrap();
    assert_eq!(proxy.count("GET /v2/share/one/blobs/"), 3); // config + 2 layers
    proxy.clear_log();
    let progress = Recorder::new();
    registry::pull(&s, &r2, &pull_opts(), &progress)
        .await
        .unwrap();
    let gets = proxy.requests();
    assert!(
        !gets.iter().any(|g| g.contains(&base.digest().to_string())),
        "shared layer downloaded again: {gets:?}"
    );
    assert_eq!(proxy.count("GET /v2/share/two/blobs/"), 2); // config + new layer
    assert!(progress.events().iter().any(|e| matches!(
        e,
        ProgressEvent::BlobExists { index: 1, digest, .. } if *digest == base.digest()
    )));
    // Pulling again downloads no blob at all.
    proxy.clear_log();
    pull(&s, &r1).await.unwrap();
    assert_eq!(proxy.count("GET /v2/share/one/blobs/"), 0);
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_the_same_image_both_succeed() {
    let reg = Registry::start();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let img = Image::new(
        vec![
            layer(&[("big", &big)], Comp::Gzip, false),
            layer(&[("small", b"x")], Comp::None, false),
        ],
        "amd64",
        false,
    );
    let r = reg.reference("conc/app:1");
    {
        let (_d, s) = store();
        img.load(&s, &r);
        registry::push(&s, &r, &push_opts(), &registry::NoProgress)
            .await
            .unwrap();
    }
    let (_d, s) = store();
    let (a, b) = tokio::join!(pull(&s, &r), pull(&s, &r));
    assert_eq!(a.unwrap().manifest_digest, img.digest());
    assert_eq!(b.unwrap().manifest_digest, img.digest());
    assert_clean(&s);
    // And with a prune racing them, nothing breaks either.
    let (_d, s) = store();
    let s2 = s.clone();
    let prune = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            s2.prune(true, &|_| false).unwrap();
        }
    });
    let (a, b) = tokio::join!(pull(&s, &r), pull(&s, &r));
    prune.await.unwrap();
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(s.resolve(&r.to_string()).unwrap().id, img.config_digest());
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_blobs_are_mounted_on_push() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let (_d, s) = store();
    let img = Image::simple("mount");
    let (a, b) = (proxy.reference("team/a:1"), proxy.reference("team/b:1"));
    img.load(&s, &a);
    registry::push(&s, &a, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    s.tag(&b, &img.digest()).unwrap();
    proxy.clear_log();
    let rep = registry::push(&s, &b, &push_opts(), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (rep.mounted, rep.uploaded),
        (3, 0),
        "{:?}",
        proxy.requests()
    );
    assert_eq!(proxy.count("PUT /v2/team/b/blobs/"), 0);
    assert_eq!(
        Digest::of(&skopeo_raw_manifest(&b.to_string())),
        img.digest()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_insecure_remote_registries_are_explained() {
    let port = free_port();
    let (_d, s) = store();
    let r = Reference::parse(&format!("127.0.0.1:{port}/x:1")).unwrap();
    let e = pull(&s, &r).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::ConnectionRefused { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains(&format!("is the registry running at 127.0.0.1:{port}?")),
        "{e}"
    );
    // Plain HTTP to a non-loopback host is refused before any traffic.
    let r = Reference::parse("registry.example.com/x:1").unwrap();
    let e = pull(&s, &r).await.unwrap_err();
    assert!(matches!(e, RegistryError::Host(_)), "{e:?}");
    assert!(e.to_string().contains("only allowed for loopback"), "{e}");
    // HTTPS to a plain-HTTP registry: a network error suggesting --insecure.
    let reg = Registry::start();
    let opts = PullOptions {
        insecure: false,
        ..pull_opts()
    };
    let e = registry::pull(&s, &reg.reference("x:1"), &opts, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Network { .. }), "{e:?}");
    assert!(e.to_string().contains("--insecure"), "{e}");
    assert_clean(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_through_a_token_server() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    proxy.require_bearer("bob", "builder", "tok-123");
    let host = proxy.host();
    let cfg = tempfile::tempdir().unwrap();
    let auth = AuthFile::at(cfg.path().join("auth.json"));
    let lopts = LoginOptions {
        insecure: true,
        retry: retry(),
        ..Default::default()
    };
    // The token server refuses wrong credentials: nothing saved.
    let e = registry::login(&host, &Credentials::new("bob", "nope"), &lopts, &auth)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::CredentialsRefused { .. }),
        "{e:?}"
    );
    assert!(!auth.path().exists());
    registry::login(&host, &Credentials::new("bob", "builder"), &lopts, &auth)
        .await
        .unwrap();

    let (_d, s) = store();
    let img = Image::simple("bearer");
    let r = proxy.reference("tok/app:1");
    img.load(&s, &r);
    let e = registry::push(&s, &r, &push_opts(), &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::AuthRequired { .. }), "{e:?}");
    let popts = PushOptions {
        credentials: CredentialSource::File(auth.clone()),
        ..push_opts()
    };
    registry::push(&s, &r, &popts, &registry::NoProgress)
        .await
        .unwrap();

    let (_d2, s2) = store();
    let e = pull(&s2, &r).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("authentication required: run mvctl login {host}")
    );
    proxy.clear_log();
    let opts = PullOptions {
        credentials: CredentialSource::File(auth.clone()),
        ..pull_opts()
    };
    let rec = registry::pull(&s2, &r, &opts, &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.manifest_digest, img.digest());
    // One token for the pull scope, reused by every request.
    assert_eq!(proxy.count("GET /token"), 1, "{:?}", proxy.requests());
    assert_clean(&s2);

    // A token that is not a valid header value is refused, not a panic.
    proxy.require_bearer("bob", "builder", "evil\r\nX-Injected: 1");
    let (_d3, s3) = store();
    let e = registry::pull(&s3, &r, &opts, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Protocol { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid characters"), "{e}");
    assert!(names(&s3).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_are_exchanged_at_the_token_server() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    proxy.require_bearer("carol", "secret", "tok-456");
    let (_d, s) = store();
    let img = Image::simple("identity");
    let r = proxy.reference("id/app:1");
    img.load(&s, &r);
    let with = |c: Credentials| PushOptions {
        credentials: CredentialSource::Explicit(c),
        ..push_opts()
    };
    // A wrong identity token is refused by the token server.
    let e = registry::push(
        &s,
        &r,
        &with(Credentials::with_identity_token("", "identity-mallory")),
        &registry::NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, RegistryError::CredentialsRefused { .. }),
        "{e:?}"
    );
    // The right one is exchanged with a POST (no basic auth) and works.
    proxy.clear_log();
    registry::push(
        &s,
        &r,
        &with(Credentials::with_identity_token("", "identity-carol")),
        &registry::NoProgress,
    )
    .await
    .unwrap();
    assert!(proxy.count("POST /token") >= 1, "{:?}", proxy.requests());
    assert_eq!(proxy.count("GET /token"), 0, "{:?}", proxy.requests());
    let (_d2, s2) = store();
    let opts = PullOptions {
        credentials: CredentialSource::Explicit(Credentials::with_identity_token(
            "",
            "identity-carol",
        )),
        ..pull_opts()
    };
    let rec = registry::pull(&s2, &r, &opts, &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.manifest_digest, img.digest());

    // An htpasswd registry (basic auth) cannot take an identity token.
    let basic = Registry::start_with_user("dave", "pw");
    let r = basic.reference("b/app:1");
    let opts = PullOptions {
        credentials: CredentialSource::Explicit(Credentials::with_identity_token("", "x")),
        ..pull_opts()
    };
    let e = registry::pull(&s2, &r, &opts, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TokenNotAccepted { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amd64_variants_are_selected_from_an_index() {
    let reg = Registry::start();
    let base = Image::new(
        vec![layer(&[("level", b"v1")], Comp::Gzip, false)],
        "amd64",
        false,
    );
    let v3 = Image::new(
        vec![layer(&[("level", b"v3")], Comp::Gzip, false)],
        "amd64",
        false,
    );
    for (img, tag) in [(&base, "base"), (&v3, "v3")] {
        let dir = tempfile::tempdir().unwrap();
        write_oci_layout(
            dir.path(),
            "t",
            &img.manifest,
            img.media_type(),
            &img.blobs(),
        );
        skopeo_push_layout(
            dir.path(),
            "t",
            &format!("{}/var/app:{tag}", reg.host()),
            None,
        );
    }
    let entry = |img: &Image, variant: Option<&str>| {
        let mut p = serde_json::json!({"architecture": "amd64", "os": "linux"});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({"mediaType": mt::OCI_MANIFEST, "digest": img.digest().to_string(),
            "size": img.manifest.len(), "platform": p})
    };
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt::OCI_INDEX,
        "manifests": [entry(&base, None), entry(&v3, Some("v3"))],
    }))
    .unwrap();
    let resp = reqwest::Client::new()
        .put(format!("http://{}/v2/var/app/manifests/1", reg.host()))
        .header("content-type", mt::OCI_INDEX)
        .body(list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let r = reg.reference("var/app:1");
    let with = |variant: &str| PullOptions {
        platform: mvm_images::manifest::Platform {
            variant: Some(variant.into()),
            ..registry::linux_amd64()
        },
        ..pull_opts()
    };
    // v2: the baseline entry, which is what the index resolves to: the
    // name points at the index.
    let (_d, s) = store();
    let rec = registry::pull(&s, &r, &with("v2"), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.digest, Digest::of(&list));
    assert_eq!(rec.manifest_digest, base.digest());
    // v3: the v3 entry, which the index does not resolve to: the name
    // points at that manifest, and the index is not kept.
    let (_d, s) = store();
    let rec = registry::pull(&s, &r, &with("v3"), &registry::NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.digest, v3.digest());
    assert!(!s.has_blob(&Digest::of(&list)));
    assert!(!s.has_blob(&base.layers[0].digest()));
    assert_clean(&s);
    // Another platform: refused, naming what the index offers.
    let (_d, s) = store();
    let arm = PullOptions {
        platform: mvm_images::manifest::Platform {
            architecture: "arm64".into(),
            ..registry::linux_amd64()
        },
        ..pull_opts()
    };
    let e = registry::pull(&s, &r, &arm, &registry::NoProgress)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("offers: linux/amd64, linux/amd64/v3"),
        "{e}"
    );
    assert!(names(&s).is_empty());
    assert_eq!(s.fsck(true).unwrap().blobs, 0);
}
