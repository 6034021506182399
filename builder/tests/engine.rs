//! Builds without RUN steps, on the host: every metadata instruction's
//! effect on the image config, COPY/ADD semantics, the cache, and
//! `.dockerignore`, against a real image store in a temp dir. (RUN steps
//! boot microVMs: tests/tests/build.rs covers them on real KVM.)

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use mvm_builder::context::Context;
use mvm_builder::progress::Event;
use mvm_builder::{BuildError, BuildOptions, BuildResult, Builder};
use mvm_images::Store;
use serde_json::Value;

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    ctx: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    Env {
        _dir: dir,
        store,
        ctx,
    }
}

impl Env {
    fn write(&self, rel: &str, content: &str) {
        let p = self.ctx.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn build(&self, opts: &BuildOptions) -> (Result<BuildResult, BuildError>, Vec<Event>) {
        let events = Mutex::new(Vec::new());
        let sink = |e: &Event| events.lock().unwrap().push(e.clone());
        let b = Builder::new(self.store.clone(), None, &sink).unwrap();
        let ctx = Context::from_dir(&self.ctx).unwrap();
        let r = b.build(&ctx, opts);
        (r, events.into_inner().unwrap())
    }

    fn ok(&self, opts: &BuildOptions) -> (BuildResult, Vec<Event>) {
        let (r, ev) = self.build(opts);
        (r.unwrap_or_else(|e| panic!("build failed: {e}")), ev)
    }

    fn config(&self, r: &BuildResult) -> Value {
        let rec = self.store.image_at(&r.digest).unwrap();
        let b = self
            .store
            .read_blob(&rec.manifest.config.digest, 1 << 20)
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    /// The image's filesystem, unpacked.
    fn rootfs(&self, r: &BuildResult) -> tempfile::TempDir {
        let rec = self.store.image_at(&r.digest).unwrap();
        let d = tempfile::tempdir().unwrap();
        mvm_builder::tarlayer::unpack_layers(&self.store, &rec.manifest.layers, d.path()).unwrap();
        d
    }
}

fn tags(t: &[&str]) -> BuildOptions {
    BuildOptions {
        tags: t.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn every_metadata_instruction_reaches_the_config() {
    let e = env();
    e.write(
        "Dockerfile",
        r#"# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE} AS final
ARG VERSION=0.1
ARG FROM_CLI
ENV APP_HOME=/srv/app \
    GREETING="hello world"
ENV LEGACY value with spaces
LABEL version="${VERSION}" "com.example.cli"=$FROM_CLI
EXPOSE 80 53/udp 8000-8010
VOLUME ["/data"]
VOLUME /cache /logs
USER 1000:1000
WORKDIR ${APP_HOME}
WORKDIR sub/../bin
STOPSIGNAL SIGINT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD curl -f http://localhost/ || exit 1
ONBUILD RUN echo child build
MAINTAINER someone@example.com
ENTRYPOINT ["/bin/app"]
CMD serve --port 80
"#,
    );
    let mut opts = tags(&["example/app:1", "example/app:latest"]);
    opts.build_args.insert("FROM_CLI".into(), "given".into());
    opts.labels.insert("extra".into(), "from-flag".into());
    let (r, events) = e.ok(&opts);
    let cfg = e.config(&r);
    let c = &cfg["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "APP_HOME=/srv/app",
            "GREETING=hello world",
            "LEGACY=value with spaces"
        ]
    );
    assert_eq!(c["Labels"]["version"], "0.1");
    assert_eq!(c["Labels"]["com.example.cli"], "given");
    assert_eq!(c["Labels"]["extra"], "from-flag");
    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000-8010/tcp"]);
    let vols: Vec<&String> = c["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(vols, ["/cache", "/data", "/logs"]);
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["WorkingDir"], "/srv/app/bin");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(
        c["Shell"],
        serde_json::json!(["/bin/bash", "-o", "pipefail", "-c"])
    );
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
            "Interval": 5_000_000_000u64, "Timeout": 2_000_000_000u64, "Retries": 4})
    );
    assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo child build"]));
    assert_eq!(cfg["author"], "someone@example.com");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/app"]));
    // Shell-form CMD goes through the SHELL in effect.
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/bash", "-o", "pipefail", "-c", "serve --port 80"])
    );
    assert!(cfg["history"].as_array().unwrap().len() >= 15);
    // Both tags name the image; the store's own view agrees.
    for t in ["example/app:1", "example/app:latest"] {
        let rec = e.store.resolve(t).unwrap();
        assert_eq!(rec.manifest_digest, r.digest);
        assert_eq!(rec.image_config().user, "1000:1000");
    }
    // Progress: one step event per instruction, BuildKit numbering.
    let steps: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step {
                index, total, text, ..
            } => Some(format!("{index}/{total} {text}")),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 19, "{steps:?}");
    assert_eq!(steps[0], "1/19 FROM ${BASE} AS final");
    assert!(matches!(events.last(), Some(Event::Result { .. })));
}

#[test]
fn entrypoint_resets_an_inherited_cmd_and_onbuild_triggers_run_in_children() {
    let e = env();
    e.write("f", "x");
    e.write(
        "Dockerfile",
        "FROM scratch\nCMD [\"base-cmd\"]\nONBUILD COPY f /from-trigger\nONBUILD ENV TRIGGERED=yes\n",
    );
    e.ok(&tags(&["base:1"]));
    e.write("Dockerfile", "FROM base:1\nENTRYPOINT [\"/x\"]\n");
    let (r, _) = e.ok(&tags(&["child:1"]));
    let cfg = e.config(&r);
    assert_eq!(cfg["config"]["Entrypoint"], serde_json::json!(["/x"]));
    assert!(cfg["config"]["Cmd"].is_null(), "{cfg}");
    assert!(
        cfg["config"].get("OnBuild").is_none(),
        "triggers are not inherited twice"
    );
    assert!(cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("TRIGGERED=yes")));
    let fs = e.rootfs(&r);
    assert_eq!(
        fs::read_to_string(fs.path().join("from-trigger")).unwrap(),
        "x"
    );
}

#[test]
fn copy_and_add_semantics() {
    let e = env();
    e.write(
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n",
    );
    e.write("etc/group", "root:x:0:\nstaff:x:50:\n");
    e.write("one.txt", "one");
    e.write("two.py", "two");
    e.write("three.py", "three");
    e.write("dir/a", "a");
    e.write("dir/sub/b", "b");
    symlink("a", e.ctx.join("dir/link")).unwrap();
    fs::set_permissions(e.ctx.join("dir/a"), fs::Permissions::from_mode(0o750)).unwrap();
    // A local archive for ADD.
    {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, "inner/file", &b"tar"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        fs::write(e.ctx.join("bundle.tar.gz"), gz.finish().unwrap()).unwrap();
    }
    e.write(
        "Dockerfile",
        r#"FROM scratch
COPY etc/ /etc/
WORKDIR /app
COPY one.txt .
COPY one.txt /renamed.txt
COPY *.py /py/
COPY dir /copied
COPY --chown=app:staff --chmod=640 one.txt /owned
COPY --chown=7 one.txt /numeric
COPY <<EOF /etc/heredoc.conf
value=$HOME_DIR
EOF
ADD bundle.tar.gz /unpacked/
ADD one.txt /added
"#,
    );
    let (r, _) = e.ok(&tags(&["copy:1"]));
    let root = e.rootfs(&r);
    let p = |s: &str| root.path().join(s);
    assert_eq!(fs::read_to_string(p("app/one.txt")).unwrap(), "one");
    assert_eq!(fs::read_to_string(p("renamed.txt")).unwrap(), "one");
    assert_eq!(fs::read_to_string(p("py/two.py")).unwrap(), "two");
    assert_eq!(fs::read_to_string(p("py/three.py")).unwrap(), "three");
    assert!(!p("py/one.txt").exists());
    // A directory source copies its contents, not itself.
    assert_eq!(fs::read_to_string(p("copied/a")).unwrap(), "a");
    assert_eq!(fs::read_to_string(p("copied/sub/b")).unwrap(), "b");
    assert!(!p("copied/dir").exists());
    assert_eq!(fs::metadata(p("copied/a")).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::read_link(p("copied/link")).unwrap(), Path::new("a"));
    let owned = fs::metadata(p("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 50, 0o640)
    );
    let numeric = fs::metadata(p("numeric")).unwrap();
    assert_eq!((numeric.uid(), numeric.gid()), (7, 7));
    assert_eq!(
        fs::read_to_string(p("etc/heredoc.conf")).unwrap(),
        "value=\n"
    );
    assert_eq!(fs::read_to_string(p("unpacked/inner/file")).unwrap(), "tar");
    assert_eq!(fs::read_to_string(p("added")).unwrap(), "one");
    // Each COPY/ADD is one layer; metadata steps add none.
    let rec = e.store.image_at(&r.digest).unwrap();
    assert_eq!(rec.manifest.layers.len(), 10);
}

#[test]
fn cache_hits_and_invalidation() {
    let e = env();
    e.write("a", "1");
    e.write("b", "1");
    e.write(
        "Dockerfile",
        "FROM scratch\nENV X=1\nCOPY a /a\nCOPY b /b\nLABEL done=yes\n",
    );
    let (first, _) = e.ok(&tags(&["c:1"]));
    assert_eq!(first.cached, 0);
    let t = std::time::Instant::now();
    let (again, ev) = e.ok(&tags(&["c:1"]));
    let cached_rebuild = t.elapsed();
    assert_eq!(again.cached, 2, "both COPY steps come from the cache");
    assert_eq!(
        again.digest, first.digest,
        "a fully cached rebuild gives the same image"
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Cached { .. }))
            .count(),
        2
    );
    eprintln!("fully cached rebuild: {cached_rebuild:?}");
    // Changing b invalidates its step (and what follows), not a's.
    e.write("b", "2");
    let (changed, _) = e.ok(&tags(&["c:1"]));
    assert_eq!(changed.cached, 1);
    assert_ne!(changed.id, first.id);
    let root = e.rootfs(&changed);
    assert_eq!(fs::read_to_string(root.path().join("b")).unwrap(), "2");
    // Back to the old content: the old layer is found again.
    e.write("b", "1");
    let (back, _) = e.ok(&tags(&["c:1"]));
    assert_eq!(back.cached, 2);
    assert_eq!(back.digest, first.digest);
    // --no-cache rebuilds everything.
    let (nc, _) = e.ok(&BuildOptions {
        no_cache: true,
        ..tags(&["c:1"])
    });
    assert_eq!(nc.cached, 0);
    // A build arg in use changes the key of later steps.
    e.write("Dockerfile", "FROM scratch\nARG V=1\nCOPY a /a-$V\n");
    let (v1, _) = e.ok(&tags(&["c:2"]));
    let mut o = tags(&["c:2"]);
    o.build_args.insert("V".into(), "2".into());
    let (v2, _) = e.ok(&o);
    assert_eq!(v2.cached, 0);
    assert!(e.rootfs(&v2).path().join("a-2").exists());
    let (v1b, _) = e.ok(&tags(&["c:2"]));
    assert_eq!((v1b.cached, v1b.digest), (1, v1.digest));
}

#[test]
fn dockerignore_exclusions_and_exceptions() {
    let e = env();
    e.write("keep.txt", "k");
    e.write("secret.env", "s");
    e.write("logs/a.log", "a");
    e.write("logs/important.log", "i");
    e.write("node_modules/x/index.js", "x");
    e.write("src/main.py", "m");
    e.write("src/cache.pyc", "c");
    e.write(
        ".dockerignore",
        "# build junk\n*.env\nlogs\n!logs/important.log\nnode_modules\n**/*.pyc\n",
    );
    e.write("Dockerfile", "FROM scratch\nCOPY . /ctx/\n");
    let (r, _) = e.ok(&tags(&["ignore:1"]));
    let root = e.rootfs(&r);
    let p = |s: &str| root.path().join("ctx").join(s);
    assert!(p("keep.txt").exists());
    assert!(p("src/main.py").exists());
    assert!(!p("secret.env").exists());
    assert!(!p("logs/a.log").exists());
    assert!(
        p("logs/important.log").exists(),
        "the exception re-includes it"
    );
    assert!(!p("node_modules").exists());
    assert!(!p("src/cache.pyc").exists());
    // Naming an excluded file is an error that says why.
    e.write("Dockerfile", "FROM scratch\nCOPY secret.env /x\n");
    let err = e.build(&tags(&["ignore:2"])).0.unwrap_err().to_string();
    assert!(err.contains("excluded by .dockerignore"), "{err}");
}

#[test]
fn copies_from_outside_the_context_are_refused() {
    let e = env();
    fs::write(e.ctx.parent().unwrap().join("outside"), "secret").unwrap();
    symlink(e.ctx.parent().unwrap().join("outside"), e.ctx.join("leak")).unwrap();
    symlink("/etc", e.ctx.join("etcdir")).unwrap();
    for (df, want) in [
        (
            "FROM scratch\nCOPY ../outside /x\n",
            "outside the build context",
        ),
        ("FROM scratch\nCOPY leak /x\n", "symlink pointing outside"),
        (
            "FROM scratch\nCOPY etcdir/passwd /x\n",
            "symlink pointing outside",
        ),
        (
            "FROM scratch\nADD ../outside /x\n",
            "outside the build context",
        ),
    ] {
        e.write("Dockerfile", df);
        let err = e.build(&tags(&["escape:1"])).0.unwrap_err().to_string();
        assert!(err.contains(want), "{df:?}: {err}");
    }
    assert!(e.store.resolve("escape:1").is_err(), "nothing was tagged");
}

#[test]
fn malformed_dockerfiles_report_file_and_line() {
    let e = env();
    for (df, want) in [
        ("FROM scratch\n\nCOPY onlyone\n", "Dockerfile:3: COPY requires"),
        ("FROM scratch\nRUN <<EOF\necho\n", "Dockerfile:2: heredoc <<EOF is not terminated"),
        ("FROM scratch\nFROBNICATE x\n", "Dockerfile:2: unknown instruction FROBNICATE"),
        ("FROM scratch\nEXPOSE 99999\n", "Dockerfile:2: step 2/2 `EXPOSE 99999`: invalid port"),
        ("FROM scratch\nENV A=${B\n", "Dockerfile:2: step 2/2"),
        ("FROM missing-image:1\n", "Dockerfile:1: step 1/1 `FROM missing-image:1`: base image missing-image:1 is not in the image store"),
        ("FROM scratch\nRUN true\n", "Dockerfile:2: step 2/2 `RUN true`: RUN needs microVMs"),
    ] {
        e.write("Dockerfile", df);
        let err = e.build(&tags(&["bad:1"])).0.unwrap_err().to_string();
        assert!(err.starts_with(want), "{df:?}:\n{err}\nwanted: {want}");
    }
    let err = e
        .build(&BuildOptions {
            dockerfile: Some("Nope.Dockerfile".into()),
            ..Default::default()
        })
        .0
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Dockerfile \"Nope.Dockerfile\""), "{err}");
}

#[test]
fn multi_stage_copy_from_a_stage_and_target() {
    let e = env();
    e.write("tool.sh", "#!/bin/sh\necho tool\n");
    e.write(
        "Dockerfile",
        "FROM scratch AS builder\nCOPY tool.sh /out/tool\nCOPY tool.sh /out/unused\n\
         FROM scratch AS unused\nCOPY missing-file /never\n\
         FROM scratch\nCOPY --from=builder /out/tool /usr/bin/tool\nCOPY --from=0 /out/unused /also\n",
    );
    let (r, ev) = e.ok(&tags(&["ms:1"]));
    let root = e.rootfs(&r);
    assert_eq!(
        fs::read_to_string(root.path().join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho tool\n"
    );
    assert!(root.path().join("also").exists());
    assert!(
        !root.path().join("out").exists(),
        "only the copied file crosses stages"
    );
    // The unused stage (whose COPY would fail) is skipped.
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::Step { text, .. } if text.contains("missing-file"))));
    // --target stops at a stage.
    let (t, _) = e.ok(&BuildOptions {
        target: Some("builder".into()),
        ..tags(&["ms:builder"])
    });
    assert!(e.rootfs(&t).path().join("out/tool").exists());
    let err = e
        .build(&BuildOptions {
            target: Some("nope".into()),
            ..Default::default()
        })
        .0
        .unwrap_err()
        .to_string();
    assert!(err.contains("target stage \"nope\" not found"), "{err}");
    let _ = BTreeMap::<String, String>::new();
}

/// Path -> (body, Last-Modified).
type Served = std::sync::Arc<Mutex<BTreeMap<String, (Vec<u8>, Option<&'static str>)>>>;

/// A tiny HTTP/1.1 server on 127.0.0.1 for `ADD <url>`: serves the files
/// in its table (with `Last-Modified` when given), 404 otherwise, and
/// counts the requests per path.
struct HttpServer {
    port: u16,
    files: Served,
    hits: std::sync::Arc<Mutex<BTreeMap<String, usize>>>,
}

impl HttpServer {
    fn start() -> HttpServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Served = Default::default();
        let hits: std::sync::Arc<Mutex<BTreeMap<String, usize>>> = Default::default();
        let (f, h) = (files.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                }
                let path = first.split(' ').nth(1).unwrap_or("/").to_string();
                *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                let found = f.lock().unwrap().get(&path).cloned();
                let _ = match found {
                    Some((body, lm)) => {
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        if let Some(lm) = lm {
                            head.push_str(&format!("Last-Modified: {lm}\r\n"));
                        }
                        head.push_str("\r\n");
                        conn.write_all(head.as_bytes())
                            .and_then(|_| conn.write_all(&body))
                    }
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        HttpServer { port, files, hits }
    }

    fn serve(&self, path: &str, body: &[u8], last_modified: Option<&'static str>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (body.to_vec(), last_modified));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A layer's entries: path -> (mode, uid, gid, mtime).
fn layer_headers(e: &Env, layer: &mvm_images::Digest) -> BTreeMap<String, (u32, u64, u64, u64)> {
    let blob = e.store.blob_path(layer);
    let mut ar = tar::Archive::new(fs::File::open(blob).unwrap());
    ar.entries()
        .unwrap()
        .map(|en| {
            let en = en.unwrap();
            let h = en.header();
            (
                en.path().unwrap().to_string_lossy().into_owned(),
                (
                    h.mode().unwrap() & 0o7777,
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn add_from_a_url_downloads_without_extracting() {
    let srv = HttpServer::start();
    srv.serve(
        "/files/tool.sh",
        b"#!/bin/sh\necho tool\n",
        Some("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    srv.serve("/nolm/data.bin", b"data v1", None);
    // An archive is stored as downloaded, not unpacked (unlike a local ADD).
    let archive = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "inner", &b"tar"[..]).unwrap();
        b.into_inner().unwrap()
    };
    srv.serve("/dl/bundle.tar", &archive, None);
    let e = env();
    e.write(
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n",
    );
    e.write("etc/group", "root:x:0:\nstaff:x:50:\n");
    let df = format!(
        "FROM scratch\n\
         COPY etc/ /etc/\n\
         ADD {tool} /opt/\n\
         ADD --chown=app:staff {data} /data/renamed.bin\n\
         ADD {bundle} /arch/\n\
         WORKDIR /w\n\
         ADD --chmod=755 {tool} tool\n",
        tool = srv.url("/files/tool.sh"),
        data = srv.url("/nolm/data.bin"),
        bundle = srv.url("/dl/bundle.tar"),
    );
    e.write("Dockerfile", &df);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (r, _) = e.ok(&tags(&["url:1"]));
    let root = e.rootfs(&r);
    let p = |s: &str| root.path().join(s);
    assert_eq!(
        fs::read(p("opt/tool.sh")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    assert_eq!(fs::read(p("data/renamed.bin")).unwrap(), b"data v1");
    assert_eq!(fs::read(p("arch/bundle.tar")).unwrap(), archive);
    assert!(
        !p("arch/inner").exists(),
        "a downloaded archive is not extracted"
    );
    assert_eq!(fs::read(p("w/tool")).unwrap(), b"#!/bin/sh\necho tool\n");
    // Modes, owners and mtimes as the layers record them.
    let rec = e.store.image_at(&r.digest).unwrap();
    let layer = |i: usize| layer_headers(&e, &rec.manifest.layers[i].digest);
    assert_eq!(
        layer(1).get("opt/tool.sh"),
        Some(&(0o600, 0, 0, 1_445_412_480)),
        "mode 0600 and the mtime of Last-Modified: {:?}",
        layer(1)
    );
    let (mode, uid, gid, mtime) = layer(2)["data/renamed.bin"];
    assert_eq!((mode, uid, gid), (0o600, 1234, 50), "--chown applies");
    assert!(
        mtime >= started && mtime <= started + 600,
        "without Last-Modified the mtime is the download time: {mtime}"
    );
    assert_eq!(layer(4)["w/tool"].0, 0o755, "--chmod applies");
    assert_eq!(rec.manifest.layers.len(), 5);

    // Same content: cached, but downloaded again to know that.
    assert_eq!(srv.hits("/nolm/data.bin"), 1);
    let (again, ev) = e.ok(&tags(&["url:1"]));
    assert_eq!((again.cached, again.digest), (5, r.digest));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Cached { .. }))
            .count(),
        5
    );
    assert_eq!(srv.hits("/nolm/data.bin"), 2);
    // New content behind the same URL: that step and the ones after it
    // rebuild.
    srv.serve("/nolm/data.bin", b"data v2", None);
    let (changed, _) = e.ok(&tags(&["url:1"]));
    assert_eq!(changed.cached, 2, "COPY and the first ADD stay cached");
    assert_eq!(
        fs::read(e.rootfs(&changed).path().join("data/renamed.bin")).unwrap(),
        b"data v2"
    );
}

#[test]
fn add_from_a_url_errors_name_the_url() {
    let srv = HttpServer::start();
    srv.serve("/ok/file.txt", b"content", None);
    let e = env();
    let fail = |df: String| -> String {
        e.write("Dockerfile", &df);
        let (r, _) = e.build(&tags(&["bad:1"]));
        r.unwrap_err().to_string()
    };
    let missing = srv.url("/nothing/here.txt");
    let msg = fail(format!("FROM scratch\nADD {missing} /x\n"));
    assert!(
        msg.contains(&missing) && msg.contains("404 Not Found") && msg.starts_with("Dockerfile:2:"),
        "{msg}"
    );
    let dir_url = srv.url("/ok/");
    let msg = fail(format!("FROM scratch\nADD {dir_url} /dest/\n"));
    assert!(msg.contains("cannot tell a file name"), "{msg}");
    let ok = srv.url("/ok/file.txt");
    let msg = fail(format!(
        "FROM scratch\nADD --checksum=sha256:{} {ok} /x\n",
        "0".repeat(64)
    ));
    assert!(msg.contains(&ok) && msg.contains("--checksum"), "{msg}");
    // The right checksum passes.
    let good = format!("{}", mvm_images::Digest::of(b"content"));
    e.write(
        "Dockerfile",
        &format!("FROM scratch\nADD --checksum={good} {ok} /x\n"),
    );
    e.ok(&tags(&["good:1"]));
    // Nothing listens on port 1.
    let msg = fail("FROM scratch\nADD http://127.0.0.1:1/f /x\n".into());
    assert!(msg.contains("http://127.0.0.1:1/f"), "{msg}");
}

/// One entry of a hand-made archive for ADD, written header by header so
/// that names the `tar` crate's builder refuses (`..`, absolute) survive.
enum A<'a> {
    Dir(&'a str, u32),
    /// Name, data, mode, uid, gid.
    File(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Block(&'a str),
}

fn raw_tar(entries: &[A]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, mode, data, link, owner): (&str, T, u32, &[u8], &str, (u64, u64)) = match e
        {
            A::Dir(n, m) => (n, T::Directory, *m, b"", "", (0, 0)),
            A::File(n, d, m, u, g) => (n, T::Regular, *m, d, "", (*u, *g)),
            A::Symlink(n, t) => (n, T::Symlink, 0o777, b"", t, (0, 0)),
            A::Hardlink(n, t) => (n, T::Link, 0o644, b"", t, (0, 0)),
            A::Char(n) => (n, T::Char, 0o666, b"", "", (0, 0)),
            A::Block(n) => (n, T::Block, 0o660, b"", "", (0, 0)),
        };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if matches!(e, A::Char(_) | A::Block(_)) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn add_of_a_local_archive_keeps_modes_owners_and_links() {
    let e = env();
    fs::write(
        e.ctx.join("bundle.tar"),
        raw_tar(&[
            A::Dir("./", 0o777),
            A::Dir("app", 0o750),
            A::File("app/run", b"#!/bin/sh\n", 0o4755, 1000, 1001),
            A::Hardlink("app/run2", "app/run"),
            A::Symlink("app/latest", "run"),
            A::Symlink("passwd", "/etc/passwd"),
            A::Char("app/null"),
            A::Block("app/sda"),
        ]),
    )
    .unwrap();
    e.write(
        "Dockerfile",
        "FROM scratch\nADD bundle.tar /opt/\nADD --chown=7:8 bundle.tar /owned/\n",
    );
    let (r, ev) = e.ok(&tags(&["add:1"]));
    let rec = e.store.image_at(&r.digest).unwrap();
    let layer = layer_headers(&e, &rec.manifest.layers[0].digest);
    let names: Vec<&str> = layer.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "opt/app/",
            "opt/app/latest",
            "opt/app/run",
            "opt/app/run2",
            "opt/passwd"
        ],
        "no entry for the destination itself (the archive's ./ is skipped), devices left out"
    );
    assert_eq!(layer["opt/app/"].0, 0o750);
    assert_eq!(
        layer["opt/app/run"],
        (0o4755, 1000, 1001, 1_600_000_000),
        "modes (setuid included), owners and times as in the archive"
    );
    let owned = layer_headers(&e, &rec.manifest.layers[1].digest);
    assert!(
        owned.values().all(|&(_, uid, gid, _)| (uid, gid) == (7, 8)),
        "--chown applies to every entry: {owned:?}"
    );
    assert_eq!(owned["owned/app/run"].0, 0o4755);

    let root = e.rootfs(&r);
    let p = |s: &str| root.path().join(s);
    assert_eq!(fs::read(p("opt/app/run")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(p("opt/app/run")).unwrap().nlink(), 2);
    assert_eq!(fs::read(p("opt/app/run2")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::read_link(p("opt/app/latest")).unwrap(),
        Path::new("run")
    );
    assert_eq!(
        fs::read_link(p("opt/passwd")).unwrap(),
        Path::new("/etc/passwd"),
        "symlink targets are kept as they are (they resolve in the image)"
    );
    assert!(fs::symlink_metadata(p("opt/app/null")).is_err());
    let warnings: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("bundle.tar: 2 device node(s) left out"))
            .count(),
        2,
        "{warnings:?}"
    );
}

#[test]
fn add_refuses_hostile_local_archives() {
    let e = env();
    let f = |n| A::File(n, b"pwned", 0o644, 0, 0);
    for (entries, entry, why) in [
        (
            vec![A::Symlink("l", "/etc"), f("l/passwd")],
            "l/passwd",
            "earlier entry that is a symlink",
        ),
        (
            vec![A::Symlink("up", ".."), A::Dir("up/x", 0o755)],
            "up/x",
            "earlier entry that is a symlink",
        ),
        (
            vec![f("file"), f("file/beneath")],
            "file/beneath",
            "earlier entry",
        ),
        (vec![A::Hardlink("h", "/etc/passwd")], "h", "absolute path"),
        (vec![A::Hardlink("h", "../../etc/passwd")], "h", "'..'"),
        (
            vec![A::Hardlink("h", "etc/shadow")],
            "h",
            "not an earlier entry of the archive",
        ),
        (vec![f("../escape")], "../escape", "'..'"),
        (vec![f("a/../../escape")], "a/../../escape", "'..'"),
        (vec![f("/etc/cron.d/x")], "/etc/cron.d/x", "absolute path"),
        (vec![f("etc/.wh.passwd")], "etc/.wh.passwd", "whiteout"),
    ] {
        fs::write(e.ctx.join("hostile.tar"), raw_tar(&entries)).unwrap();
        e.write("Dockerfile", "FROM scratch\nADD hostile.tar /dest/\n");
        let err = e.build(&tags(&["hostile:1"])).0.unwrap_err().to_string();
        assert!(
            err.starts_with("Dockerfile:2: ")
                && err.contains("archive hostile.tar: ")
                && err.contains(&format!("{entry:?}"))
                && err.contains(why),
            "{entry}: {err}"
        );
    }
    assert!(e.store.resolve("hostile:1").is_err(), "nothing was tagged");
}
