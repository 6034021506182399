//! Registry operations through the installed product: the `mvctl` binary
//! talking to a real `mvmd` process, against Debian's `docker-registry` on
//! loopback (cross-checked with `skopeo`), a fault-injecting proxy and a
//! fake registry serving an oversized manifest. No microVM boots in a pull
//! or a create, so mvmd runs with placeholder kernel, init and VMM files
//! and the tests need no KVM.
//!
//! `mvctl` is taken from next to the `mvmd` test binary's target dir
//! (`target/debug/mvctl`): `cargo build -p mvctl` first (`cargo test
//! --workspace` builds it).

#[path = "../../images/tests/registry_support/mod.rs"]
mod registry_support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use registry_support::{
    free_port, skopeo, skopeo_push_layout, write_oci_layout, Action, FaultProxy, Image, Registry,
    Rule,
};
use serde_json::Value;

mod common;

use common::{api, Mvmd};

impl Mvmd {
    /// `mvctl images --format json`, one object per image.
    fn images(&self) -> Vec<Value> {
        self.mvctl(&["images", "--format", "json"])
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Everything that says what the store holds: the image list and
    /// every file of the store (blobs, index, disks), with sizes.
    fn store_state(&self) -> (Vec<Value>, BTreeMap<String, u64>) {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, u64>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    walk(&p, base, out);
                } else {
                    let rel = p.strip_prefix(base).unwrap().display().to_string();
                    out.insert(rel, md.len());
                }
            }
        }
        let mut files = BTreeMap::new();
        let images = self.root().join("images");
        walk(&images, &images, &mut files);
        (self.images(), files)
    }

    /// Files of the daemon's root and home that contain `needle`.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(md) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if md.is_dir() {
                    walk(&p, needle, out);
                } else if md.is_file() && md.len() < (64 << 20) {
                    if let Ok(b) = std::fs::read(&p) {
                        if b.windows(needle.len()).any(|w| w == needle) {
                            out.push(p);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root(), needle.as_bytes(), &mut out);
        walk(&self.dir.path().join("run"), needle.as_bytes(), &mut out);
        walk(
            &self.dir.path().join("daemon-home"),
            needle.as_bytes(),
            &mut out,
        );
        out
    }
}

/// The last NDJSON line of a pull or push answer.
fn last_line(body: &str) -> Value {
    let line = body.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad NDJSON {line:?}: {e}"))
}

/// Pushes `img` to `dest` (`HOST/repo:tag`) with skopeo, as an OCI layout.
fn skopeo_push(img: &Image, dest: &str, creds: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(
        dir.path(),
        "t",
        &img.manifest,
        img.media_type(),
        &img.blobs(),
    );
    skopeo_push_layout(dir.path(), "t", dest, creds);
}

/// Short layer ids (12 hex digits) of an image, as progress shows them.
fn layer_ids(img: &Image) -> Vec<String> {
    img.layers
        .iter()
        .map(|l| l.digest().hex()[..12].to_string())
        .collect()
}

#[test]
fn pull_by_tag_and_digest_with_progress_then_push_and_skopeo_reads_it_back() {
    let reg = Registry::start();
    let host = reg.host();
    let img = Image::simple("api-pull");
    skopeo_push(&img, &format!("{host}/skopeo/app:1"), None);
    let d = Mvmd::start();
    let name = format!("{host}/skopeo/app:1");

    // By tag: per-layer progress (plain lines without a terminal), then
    // Docker's lines, then the name; the image is listed after.
    let out = d.mvctl(&["pull", "--insecure", &name]).ok();
    for id in layer_ids(&img) {
        assert!(
            out.stderr.contains(&format!("{id}: Downloading")),
            "{out:#?}"
        );
        assert!(
            out.stderr.contains(&format!("{id}: Pull complete")),
            "{out:#?}"
        );
    }
    assert_eq!(
        out.stdout,
        format!(
            "Digest: {}\nStatus: Downloaded newer image for {name}\n{name}\n",
            img.digest()
        )
    );
    let images = d.images();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["repo_tags"][0], name.as_str());
    assert_eq!(images[0]["id"], img.config_digest().to_string());

    // Again: nothing to download.
    let out = d.mvctl(&["pull", "--insecure", &name]).ok();
    assert!(out
        .stdout
        .contains(&format!("Status: Image is up to date for {name}")));
    for id in layer_ids(&img) {
        assert!(
            out.stderr.contains(&format!("{id}: Already exists")),
            "{out:#?}"
        );
    }

    // By digest, into a fresh daemon; -q prints the name only.
    let d2 = Mvmd::start();
    let by_digest = format!("{host}/skopeo/app@{}", img.digest());
    let out = d2.mvctl(&["pull", "-q", "--insecure", &by_digest]).ok();
    assert_eq!(out.stdout, format!("{by_digest}\n"));
    assert_eq!(out.stderr, "");
    let images = d2.images();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["repo_digests"][0], by_digest.as_str());

    // Through the API, into a third: bytes per layer, and the result line
    // carries what the CLI prints.
    let d3 = Mvmd::start();
    let (status, body) = api(
        &d3.sock,
        "POST",
        "/v1/images/pull",
        &[],
        &format!(r#"{{"reference":"{name}","insecure":true}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let last = last_line(&body);
    assert_eq!(last["type"], "result", "{body}");
    assert_eq!(last["value"]["digest"], img.digest().to_string());
    assert_eq!(last["value"]["updated"], true);
    assert_eq!(
        last["value"]["status"],
        format!("Downloaded newer image for {name}")
    );
    for id in layer_ids(&img) {
        assert!(
            body.contains(&format!(r#"{{"type":"bytes","id":"{id}","#)),
            "{body}"
        );
    }

    // Push under another name; skopeo reads back what mvm pushed.
    let pushed = format!("{host}/pushed/app:2");
    d.mvctl(&["tag", &name, &pushed]).ok();
    let out = d.mvctl(&["push", "--insecure", &pushed]).ok();
    assert!(
        out.stderr.contains(&format!(
            "The push refers to repository [{host}/pushed/app]"
        )),
        "{out:#?}"
    );
    // Its layers are in the registry under the repository they were
    // pulled from: linked, not uploaded again.
    for id in layer_ids(&img) {
        assert!(
            out.stderr
                .contains(&format!("{id}: Mounted from skopeo/app")),
            "{out:#?}"
        );
    }
    let digest = out
        .stdout
        .trim()
        .strip_prefix("2: digest: ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{out:#?}"))
        .to_string();
    let inspect: Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{pushed}"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());

    // A loaded image (docker-archive made by skopeo) pushed and read back.
    let archive = d.dir.path().join("loaded.tar");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("docker-archive:{}:loaded/app:1", archive.display()),
    ]);
    let out = d.mvctl(&["load", "-i", archive.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("loaded/app:1"), "{out:#?}");
    let target = format!("{host}/loaded/app:1");
    d.mvctl(&["tag", "loaded/app:1", &target]).ok();
    let out = d.mvctl(&["push", "--insecure", &target]).ok();
    let inspect: Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ]))
    .unwrap();
    assert!(
        out.stdout.contains(inspect["Digest"].as_str().unwrap()),
        "{out:#?} vs {inspect}"
    );
    assert_eq!(inspect["Architecture"], "amd64");

    // Pushing what is not here is a plain not-found, before any stream.
    d.mvctl(&["push", "--insecure", &format!("{host}/absent/app:1")])
        .fails_with("no such image");
}

/// A fake `docker-credential-test` keeping `server user secret` lines in
/// `dir/helper-store`.
fn fake_helper(bin: &Path) {
    let store = bin.join("helper-store");
    let script = format!(
        r#"#!/bin/sh
store="{store}"
touch "$store"
case "$1" in
get)
  server=$(cat)
  line=$(grep -F "$server " "$store" | head -n1)
  [ -n "$line" ] || {{ echo "credentials not found in native keychain"; exit 1; }}
  set -- $line
  printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}' "$1" "$2" "$3" ;;
store)
  json=$(cat)
  server=$(echo "$json" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/')
  user=$(echo "$json" | sed 's/.*"Username":"\([^"]*\)".*/\1/')
  secret=$(echo "$json" | sed 's/.*"Secret":"\([^"]*\)".*/\1/')
  grep -vF "$server " "$store" > "$store.new"; mv "$store.new" "$store"
  echo "$server $user $secret" >> "$store" ;;
erase)
  server=$(cat)
  grep -qF "$server " "$store" || {{ echo "credentials not found in native keychain"; exit 1; }}
  grep -vF "$server " "$store" > "$store.new"; mv "$store.new" "$store" ;;
esac
"#,
        store = store.display()
    );
    let p = bin.join("docker-credential-test");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn login_with_htpasswd_stores_0600_credentials_that_pull_and_push_use() {
    let reg = Registry::start_with_user("alice", "wonderland");
    let host = reg.host();
    let img = Image::simple("api-login");
    let name = format!("{host}/private/app:1");
    skopeo_push(&img, &name, Some("alice:wonderland"));
    let d = Mvmd::start();
    let auth_file = d.home().join(".config/mvm/auth.json");

    // Anonymous: the registry wants credentials.
    d.mvctl(&["pull", "--insecure", &name])
        .fails_with(&format!("authentication required: run mvctl login {host}"));
    assert!(d.images().is_empty());
    let (_, body) = api(
        &d.sock,
        "POST",
        "/v1/images/pull",
        &[],
        &format!(r#"{{"reference":"{name}","insecure":true}}"#),
    );
    assert_eq!(last_line(&body)["code"], "registry_auth", "{body}");

    // A wrong password: a clear error, nothing stored.
    d.mvctl_with(
        &[
            "login",
            "--insecure",
            "-u",
            "alice",
            "--password-stdin",
            &host,
        ],
        &[],
        Some("queen\n"),
    )
    .fails_with("refused the credentials of user \"alice\"");
    assert!(!auth_file.exists());

    // The right one: stored 0600 in Docker's format.
    let out = d
        .mvctl_with(
            &[
                "login",
                "--insecure",
                "-u",
                "alice",
                "--password-stdin",
                &host,
            ],
            &[],
            Some("wonderland\n"),
        )
        .ok();
    assert_eq!(out.stdout, "Login Succeeded\n");
    assert!(out.stderr.contains("stored unencrypted"), "{out:#?}");
    let md = std::fs::metadata(&auth_file).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let doc: Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert_eq!(
        doc["auths"][host.as_str()]["auth"],
        base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
    );
    // The daemon kept nothing.
    assert_eq!(d.files_containing("wonderland"), Vec::<PathBuf>::new());

    // Pull and push use them.
    d.mvctl(&["pull", "--insecure", &name]).ok();
    assert_eq!(d.images().len(), 1);
    let copy = format!("{host}/private/copy:1");
    d.mvctl(&["tag", &name, &copy]).ok();
    d.mvctl(&["push", "--insecure", &copy]).ok();
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:wonderland",
        &format!("docker://{copy}"),
    ]);

    // Credentials for another registry are not sent to this one.
    let other = mvm_api::auth::RegistryAuth::password("other.example:5000", "alice", "wonderland");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/images/pull",
        &[("X-Registry-Auth", &other.encode())],
        &format!(r#"{{"reference":"{name}","insecure":true}}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("are for other.example:5000"), "{body}");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/images/pull",
        &[("X-Registry-Auth", "%%%")],
        &format!(r#"{{"reference":"{name}","insecure":true}}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid X-Registry-Auth header"), "{body}");

    // Logout removes them: pulls are anonymous again.
    let out = d.mvctl(&["logout", &host]).ok();
    assert_eq!(
        out.stdout,
        format!("Removing login credentials for {host}\n")
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert!(doc["auths"].get(host.as_str()).is_none(), "{doc}");
    let out = d.mvctl(&["logout", &host]).ok();
    assert_eq!(out.stdout, format!("Not logged in to {host}\n"));
    d.mvctl(&["rmi", &name]).ok();
    d.mvctl(&["pull", "--insecure", &name])
        .fails_with("authentication required");
}

#[test]
fn docker_cred_helpers_are_used_for_login_pull_and_logout() {
    let reg = Registry::start_with_user("bob", "builder");
    let host = reg.host();
    let img = Image::simple("api-helper");
    let name = format!("{host}/helped/app:1");
    skopeo_push(&img, &name, Some("bob:builder"));
    let d = Mvmd::start();
    let bin = d.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    fake_helper(&bin);
    let docker = d.dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{}},"credHelpers":{{"{host}":"test"}}}}"#),
    )
    .unwrap();
    let mut path = OsString::from(&bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let env = [
        ("PATH", path),
        ("DOCKER_CONFIG", docker.clone().into_os_string()),
    ];

    let out = d
        .mvctl_with(
            &[
                "login",
                "--insecure",
                "-u",
                "bob",
                "--password-stdin",
                &host,
            ],
            &env,
            Some("builder"),
        )
        .ok();
    assert_eq!(out.stdout, "Login Succeeded\n");
    assert!(!out.stderr.contains("unencrypted"), "{out:#?}");
    // The secret is with the helper, in neither file.
    assert_eq!(
        std::fs::read_to_string(bin.join("helper-store")).unwrap(),
        format!("{host} bob builder\n")
    );
    assert!(!d.home().join(".config/mvm/auth.json").exists());
    assert!(!std::fs::read_to_string(docker.join("config.json"))
        .unwrap()
        .contains("builder"));

    d.mvctl_with(&["pull", "--insecure", &name], &env, None)
        .ok();
    assert_eq!(d.images().len(), 1);

    let out = d.mvctl_with(&["logout", &host], &env, None).ok();
    assert_eq!(
        out.stdout,
        format!("Removing login credentials for {host}\n")
    );
    assert_eq!(
        std::fs::read_to_string(bin.join("helper-store")).unwrap(),
        ""
    );
    d.mvctl_with(&["rmi", &name], &env, None).ok();
    d.mvctl_with(&["pull", "--insecure", &name], &env, None)
        .fails_with("authentication required");

    // A configured helper that is not installed: a warning, then an
    // anonymous pull (which this registry refuses).
    std::fs::write(
        docker.join("config.json"),
        r#"{"credsStore":"not-installed"}"#,
    )
    .unwrap();
    d.mvctl_with(&["pull", "--insecure", &name], &env, None)
        .fails_with("docker-credential-not-installed is not installed");
}

/// A registry whose manifests are `size` bytes of JSON-ish filler, sent
/// without a Content-Length (the client must stop reading by itself).
fn huge_manifest_registry(size: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                if path.contains("/manifests/") {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n{\"schemaVersion\":2,\"x\":\"");
                    let chunk = vec![b'a'; 64 << 10];
                    let mut sent = 0;
                    while sent < size {
                        if conn.write_all(&chunk).is_err() {
                            return;
                        }
                        sent += chunk.len();
                    }
                    let _ = conn.write_all(b"\"}");
                } else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                }
            });
        }
    });
    host
}

#[test]
fn failed_pulls_explain_themselves_and_leave_the_store_as_it_was() {
    let reg = Registry::start();
    let host = reg.host();
    let present = Image::simple("api-present");
    skopeo_push(&present, &format!("{host}/ok/app:1"), None);
    let victim = Image::simple("api-victim");
    skopeo_push(&victim, &format!("{host}/victim/app:1"), None);
    let d = Mvmd::start();
    d.mvctl(&["pull", "--insecure", &format!("{host}/ok/app:1")])
        .ok();
    let before = d.store_state();
    assert_eq!(before.0.len(), 1);
    let unchanged = |what: &str| {
        assert_eq!(d.store_state(), before, "the store changed after {what}");
    };
    let pull_code = |name: &str| {
        let (status, body) = api(
            &d.sock,
            "POST",
            "/v1/images/pull",
            &[],
            &format!(r#"{{"reference":"{name}","insecure":true}}"#),
        );
        assert_eq!(status, 200, "{body}");
        let last = last_line(&body);
        assert_eq!(last["type"], "error", "{body}");
        last["code"].as_str().unwrap().to_string()
    };

    // Nothing listens.
    let dead = format!("127.0.0.1:{}/x/app:1", free_port());
    d.mvctl(&["pull", "--insecure", &dead])
        .fails_with("connection refused; is the registry running at");
    assert_eq!(pull_code(&dead), "upstream");
    unchanged("an unreachable registry");

    // No such tag.
    let missing = format!("{host}/ok/app:nope");
    d.mvctl(&["pull", "--insecure", &missing])
        .fails_with("manifest unknown: check the name and tag");
    assert_eq!(pull_code(&missing), "not_found");
    unchanged("an unknown tag");

    // A manifest over the limit.
    let big = huge_manifest_registry(5 << 20);
    let name = format!("{big}/big/app:1");
    d.mvctl(&["pull", "--insecure", &name])
        .fails_with("exceeds the limit of 4194304 bytes");
    assert_eq!(pull_code(&name), "upstream");
    unchanged("an oversized manifest");

    // Corrupt layers: the digest check refuses them, nothing is kept.
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("GET", "/blobs/", Action::Corrupt));
    let name = format!("{}/victim/app:1", proxy.host());
    d.mvctl(&["pull", "--insecure", &name])
        .fails_with("the registry served corrupt or tampered content (nothing was stored)");
    assert_eq!(pull_code(&name), "upstream");
    unchanged("corrupt layers");

    // 403.
    proxy.clear_rules();
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Action::Respond(
            403,
            "application/json".into(),
            br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#
                .to_vec(),
        ),
    ));
    d.mvctl(&["pull", "--insecure", &name])
        .fails_with("access denied");
    assert_eq!(pull_code(&name), "forbidden");
    unchanged("a 403");

    // Plain HTTP without --insecure, and --insecure for a remote host.
    d.mvctl(&["pull", &format!("{host}/ok/app:1")])
        .fails_with("pass --insecure");
    d.mvctl(&["pull", "--insecure", "registry.example.com/x:1"])
        .fails_with("only allowed for loopback registries");
    // A platform mvm cannot run: refused naming what the image offers.
    d.mvctl(&[
        "pull",
        "--insecure",
        "--platform",
        "linux/arm64",
        &format!("{host}/ok/app:1"),
    ])
    .fails_with("mvm runs linux/amd64 images only");
    d.mvctl(&["pull", "--platform", "linux//x", "busybox"])
        .fails_with("invalid platform");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/images/pull",
        &[],
        r#"{"reference":"a","platform":"linux/../x"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(
        &d.sock,
        "POST",
        "/v1/images/pull",
        &[],
        r#"{"reference":"Not A Reference"}"#,
    );
    assert_eq!(status, 400, "{body}");
    unchanged("refused requests");
    assert!(d.log().contains("mvmd ready"));
}

#[test]
fn run_and_create_pull_policies() {
    let reg = Registry::start();
    let host = reg.host();
    let img = Image::simple("api-policy");
    let name = format!("{host}/policy/app:1");
    skopeo_push(&img, &name, None);
    let d = Mvmd::start();

    // never: the not-found error, nothing pulled.
    d.mvctl(&["create", "--pull", "never", &name])
        .fails_with("no such image");
    assert!(d.images().is_empty());

    // missing (the default): create says no such image, mvctl pulls and
    // creates again.
    let out = d.mvctl(&["create", "--insecure", &name]).ok();
    assert!(
        out.stderr
            .contains(&format!("Unable to find image '{name}' locally")),
        "{out:#?}"
    );
    assert!(out.stderr.contains(&format!("Digest: {}", img.digest())));
    assert!(out.stderr.contains("Status: Downloaded newer image"));
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{out:#?}");
    assert_eq!(d.images().len(), 1);

    // missing with the image here: no pull at all.
    let out = d.mvctl(&["create", "--insecure", &name]).ok();
    assert!(!out.stderr.contains("Pulling"), "{out:#?}");

    // always: pulls first (up to date), then creates.
    let out = d
        .mvctl(&["create", "--pull", "always", "--insecure", &name])
        .ok();
    assert!(
        out.stderr
            .contains(&format!("Status: Image is up to date for {name}")),
        "{out:#?}"
    );
    assert_eq!(out.stdout.trim().len(), 64);

    // A platform mvm cannot run goes to the registry, which says what the
    // image offers; nothing is created.
    let before = d.mvctl(&["ps", "-a", "-q"]).ok().stdout;
    d.mvctl(&["create", "--platform", "linux/arm64", "--insecure", &name])
        .fails_with("mvm runs linux/amd64 images only");
    // Same with run (the pull comes before any microVM).
    d.mvctl(&["run", "--platform", "linux/arm64", "--insecure", &name])
        .fails_with("mvm runs linux/amd64 images only");
    // An unreachable registry with --pull always: the pull's error.
    d.mvctl(&[
        "run",
        "--pull",
        "always",
        "--insecure",
        &format!("127.0.0.1:{}/x/app:1", free_port()),
    ])
    .fails_with("connection refused");
    assert_eq!(d.mvctl(&["ps", "-a", "-q"]).ok().stdout, before);
}
