//! Fixtures for the registry tests: a real `docker-registry` per test on
//! a random loopback port, a fault-injecting HTTP proxy in front of it,
//! image builders and `skopeo` helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvm_images::manifest::media_type as mt;
use mvm_images::{Digest, Reference, Store};
use serde_json::json;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Fails loudly (never skips) when a tool the tests need is missing.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (`make deps` does, via resources/deps.sh)"
    );
}

/// A free loopback port (bound then released; the caller retries if
/// someone takes it in between).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` process with its storage in a temp dir;
/// killed when dropped.
pub struct Registry {
    child: Child,
    port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// A registry with htpasswd (bcrypt) authentication for one user.
    pub fn start_with_user(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(user: Option<(&str, &str)>) -> Registry {
        require_tool(REGISTRY_BIN, "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((u, p)) = user {
            require_tool("/usr/bin/htpasswd", "apache2-utils");
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: mvm-test\n    path: {}\n",
                path.display()
            );
        }
        for _ in 0..5 {
            let port = free_port();
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken, try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; log: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A reference on this registry.
    pub fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to a matching request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status and body, without asking the registry.
    Status(u16, String),
    /// Answer with this status, content type and body.
    Respond(u16, String, Vec<u8>),
    /// Forward, then flip one byte in the middle of the response body.
    Corrupt,
}

/// A proxy rule: requests whose method matches (empty: any) and whose
/// path contains `path` get `action`, `times` times (None: always).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: String,
    pub path: String,
    pub action: Action,
    pub times: Option<usize>,
}

impl Rule {
    pub fn new(method: &str, path: &str, action: Action) -> Rule {
        Rule {
            method: method.into(),
            path: path.into(),
            action,
            times: None,
        }
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

struct ProxyState {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<String>>,
    /// Token auth in front of the registry: (user, password, token).
    bearer: Mutex<Option<(String, String, String)>>,
    own: Mutex<String>,
}

/// A tiny HTTP/1.1 proxy in front of the registry: logs every request
/// (`"GET /v2/..."`), and injects failures per its rules. One request per
/// connection (`Connection: close`), which clients handle transparently.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            bearer: Mutex::new(None),
            own: Mutex::new(format!("127.0.0.1:{}", addr.port())),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = handle(conn, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { addr, state, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    pub fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }

    /// Puts Docker-style token auth in front of the registry: `/v2/`
    /// requests need `Authorization: Bearer TOKEN`, which `/token` hands
    /// out for basic auth `user:password` (an anonymous request gets a
    /// useless token, as Docker Hub does for private repositories).
    pub fn require_bearer(&self, user: &str, password: &str, token: &str) {
        *self.state.bearer.lock().unwrap() = Some((user.into(), password.into(), token.into()));
    }

    pub fn add_rule(&self, r: Rule) {
        self.state.rules.lock().unwrap().push(r);
    }

    pub fn clear_rules(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Requests seen so far, as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// How many requests start with `prefix` (e.g. `"GET /v2/x/blobs/"`).
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(mut conn: TcpStream, st: &ProxyState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    let mut line = String::new();
    let mut content_length = 0usize;
    let mut authorization = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if lower.starts_with("authorization:") {
            authorization = line["authorization:".len()..].trim().to_string();
            continue; // the registry itself is open
        }
        head.push(line.clone());
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let request_line = head.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    st.log.lock().unwrap().push(format!("{method} {path}"));
    let action = {
        let mut rules = st.rules.lock().unwrap();
        let mut found = None;
        for r in rules.iter_mut() {
            if (r.method.is_empty() || r.method == method) && path.contains(&r.path) {
                match &mut r.times {
                    Some(0) => continue,
                    Some(n) => *n -= 1,
                    None => {}
                }
                found = Some(r.action.clone());
                break;
            }
        }
        found
    };
    let respond = |conn: &mut TcpStream, status: u16, ctype: &str, body: &[u8]| {
        respond_with(conn, status, ctype, "", body)
    };
    let bearer = st.bearer.lock().unwrap().clone();
    if let Some((user, password, token)) = bearer {
        use base64::Engine as _;
        if path.starts_with("/token") && method == "POST" {
            // OAuth2 refresh-token grant (identity tokens): the one
            // accepted is `identity-USER`.
            let form = String::from_utf8_lossy(&body).into_owned();
            let ok = form.contains("grant_type=refresh_token")
                && form.contains(&format!("refresh_token=identity-{user}&"));
            return if ok {
                let body =
                    serde_json::to_vec(&json!({"access_token": token, "expires_in": 300})).unwrap();
                respond(&mut conn, 200, "application/json", &body)
            } else {
                respond(
                    &mut conn,
                    400,
                    "application/json",
                    br#"{"error":"invalid_grant"}"#,
                )
            };
        }
        if path.starts_with("/token") {
            let good = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            return if authorization.is_empty() {
                respond(
                    &mut conn,
                    200,
                    "application/json",
                    br#"{"token":"anonymous"}"#,
                )
            } else if authorization == good {
                let body = serde_json::to_vec(&json!({"token": token, "expires_in": 300})).unwrap();
                respond(&mut conn, 200, "application/json", &body)
            } else {
                respond(
                    &mut conn,
                    401,
                    "application/json",
                    br#"{"details":"incorrect username or password"}"#,
                )
            };
        }
        if authorization != format!("Bearer {token}") {
            let own = st.own.lock().unwrap().clone();
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{own}/token\",service=\"mvm-test\"\r\n"
            );
            return respond_with(
                &mut conn,
                401,
                "application/json",
                &challenge,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
    }
    match &action {
        Some(Action::Status(code, msg)) => {
            return respond(&mut conn, *code, "text/plain", msg.as_bytes())
        }
        Some(Action::Respond(code, ctype, body)) => return respond(&mut conn, *code, ctype, body),
        _ => {}
    }
    let mut up = TcpStream::connect(st.upstream)?;
    for h in &head {
        up.write_all(h.as_bytes())?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    if matches!(action, Some(Action::Corrupt)) {
        if let Some(pos) = find(&resp, b"\r\n\r\n") {
            let start = pos + 4;
            if resp.len() > start {
                let mid = start + (resp.len() - start) / 2;
                resp[mid] ^= 0xff;
            }
        }
    }
    // Pass the answer through, announcing the close we are about to do.
    if let Some(pos) = find(&resp, b"\r\n") {
        conn.write_all(&resp[..pos + 2])?;
        conn.write_all(b"Connection: close\r\n")?;
        conn.write_all(&resp[pos + 2..])?;
    } else {
        conn.write_all(&resp)?;
    }
    conn.shutdown(Shutdown::Both)
}

fn respond_with(
    conn: &mut TcpStream,
    status: u16,
    ctype: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.shutdown(Shutdown::Both)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A built layer.
#[derive(Clone, Debug)]
pub struct Layer {
    pub media_type: String,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
}

impl Layer {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.blob)
    }
}

/// A tar of regular files (deterministic: mtime 0, root-owned).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A layer of `files`, compressed as asked, with OCI or Docker media type.
pub fn layer(files: &[(&str, &[u8])], comp: Comp, docker: bool) -> Layer {
    let raw = tar_of(files);
    let diff_id = Digest::of(&raw);
    let (blob, media_type) = match comp {
        Comp::None => (
            raw,
            if docker {
                mt::DOCKER_LAYER_TAR
            } else {
                mt::OCI_LAYER_TAR
            },
        ),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            (
                e.finish().unwrap(),
                if docker {
                    mt::DOCKER_LAYER_GZIP
                } else {
                    mt::OCI_LAYER_GZIP
                },
            )
        }
        Comp::Zstd => {
            assert!(!docker, "Docker has no zstd layer type");
            (zstd::encode_all(&raw[..], 3).unwrap(), mt::OCI_LAYER_ZSTD)
        }
    };
    Layer {
        media_type: media_type.into(),
        blob,
        diff_id,
    }
}

/// A built single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub arch: String,
    pub docker: bool,
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn new(layers: Vec<Layer>, arch: &str, docker: bool) -> Image {
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
            "history": [],
        }))
        .unwrap();
        let (mtype, ctype) = if docker {
            (mt::DOCKER_MANIFEST, mt::DOCKER_CONFIG)
        } else {
            (mt::OCI_MANIFEST, mt::OCI_CONFIG)
        };
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": {"mediaType": ctype, "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest().to_string(), "size": l.blob.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        Image {
            arch: arch.into(),
            docker,
            config,
            layers,
            manifest,
        }
    }

    /// A small amd64 OCI image with gzip layers whose content depends on
    /// `seed` (distinct images get distinct blobs).
    pub fn simple(seed: &str) -> Image {
        Image::new(
            vec![
                layer(
                    &[("base.txt", format!("base {seed}").as_bytes())],
                    Comp::Gzip,
                    false,
                ),
                layer(
                    &[("app.txt", format!("app {seed}").as_bytes())],
                    Comp::Gzip,
                    false,
                ),
            ],
            "amd64",
            false,
        )
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    pub fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }

    pub fn media_type(&self) -> &'static str {
        if self.docker {
            mt::DOCKER_MANIFEST
        } else {
            mt::OCI_MANIFEST
        }
    }

    /// All blobs including the manifest.
    pub fn blobs(&self) -> Vec<(Digest, Vec<u8>)> {
        let mut v = vec![
            (self.digest(), self.manifest.clone()),
            (self.config_digest(), self.config.clone()),
        ];
        v.extend(self.layers.iter().map(|l| (l.digest(), l.blob.clone())));
        v
    }

    /// Puts the image into `store` and tags it.
    pub fn load(&self, store: &Store, reference: &Reference) {
        let lease = store.lease().unwrap();
        for (d, b) in self.blobs().iter().skip(1) {
            store.put_blob_bytes(&lease, Some((*d).into()), b).unwrap();
        }
        store
            .put_manifest(&lease, Some(self.digest().into()), &self.manifest)
            .unwrap();
        store.tag(reference, &self.digest()).unwrap();
    }
}

/// An index over `images` (their arch as platform).
pub fn index(images: &[&Image], docker: bool) -> Vec<u8> {
    let mtype = if docker {
        mt::DOCKER_MANIFEST_LIST
    } else {
        mt::OCI_INDEX
    };
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": mtype,
        "manifests": images.iter().map(|i| json!({
            "mediaType": i.media_type(),
            "digest": i.digest().to_string(),
            "size": i.manifest.len(),
            "platform": {"architecture": i.arch, "os": "linux"},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Writes an OCI layout at `dir` whose `tag` names `root` (a manifest or
/// index of media type `root_type`), with all `blobs`.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    root: &[u8],
    root_type: &str,
    blobs: &[(Digest, Vec<u8>)],
) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for (d, b) in blobs {
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), b).unwrap();
    }
    std::fs::write(dir.join("blobs/sha256").join(Digest::of(root).hex()), root).unwrap();
    // skopeo 1.9 only looks at OCI-typed entries of index.json; the
    // document itself keeps its own (possibly Docker) media type.
    let entry_type = if root_type == mt::DOCKER_MANIFEST_LIST || root_type == mt::OCI_INDEX {
        mt::OCI_INDEX
    } else {
        mt::OCI_MANIFEST
    };
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": entry_type,
            "digest": Digest::of(root).to_string(),
            "size": root.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Runs skopeo with `args`, panicking with its output on failure.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    require_tool("/usr/bin/skopeo", "skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `skopeo copy --all --preserve-digests oci:DIR:TAG docker://DEST`.
pub fn skopeo_push_layout(dir: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let src = format!("oci:{}:{tag}", dir.display());
    let dst = format!("docker://{dest}");
    let mut args = vec![
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    skopeo(&args);
}

/// Digest of the manifest `skopeo inspect --raw` returns for `reference`.
pub fn skopeo_raw_manifest(reference: &str) -> Vec<u8> {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
}

/// Copies `reference` into an OCI layout with skopeo and returns the
/// manifest digest it recorded there.
pub fn skopeo_pull_to_layout(reference: &str, dir: &Path) -> Digest {
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:t", dir.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads a file from an ext4 image with debugfs.
pub fn ext4_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs failed");
    out.stdout
}

/// A fresh store in a temp dir.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// Asserts the store is consistent (full content verification).
pub fn assert_clean(store: &Store) {
    let rep = store.fsck(true).unwrap();
    assert!(rep.is_clean(), "fsck: {:?}", rep.problems);
}

/// Names in the store.
pub fn names(store: &Store) -> BTreeMap<String, Digest> {
    store.references().unwrap().into_iter().collect()
}

pub fn path_of(dir: &tempfile::TempDir, rel: &str) -> PathBuf {
    dir.path().join(rel)
}
