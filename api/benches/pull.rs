//! Pull benchmark through the installed product: `POST /v1/images/pull`
//! to a real `mvmd` (then the root disk the first `run` builds), against
//! `skopeo copy` + `tar -x` of each layer + `mkfs.ext4 -d`, of the same
//! image from the same local `docker-registry`, side by side in one run.
//! Then a second pull (every blob present) and a cached conversion.
//! Prints one table; progress goes to stderr.
//!
//! Images: the rootfs tarballs of `resources/images/*.sh` in
//! `${MVM_CACHE:-/var/cache/mvm}/images/` (`debian-bookworm.tar`,
//! `python3-bookworm.tar`; `busybox.tar` when asked for), each gzipped
//! (level 6) into a one-layer OCI image and pushed with our `push` to a
//! `docker-registry` on 127.0.0.1. A missing tarball is reported and
//! skipped.
//!
//! Per run, interleaved (mvm first in even runs, the reference first in
//! odd ones, so that load changes hit both alike):
//!
//! - **mvm**: a fresh `mvmd` (release build, private root and socket,
//!   placeholder kernel/init/VMM as in `api/tests/registry.rs`: nothing
//!   boots). *pull*: from connecting to its socket to the end of the
//!   NDJSON answer, whose last line must be the `result`. *root disk*:
//!   without KVM the first `run` cannot be timed, so the conversion that
//!   run would do first is timed through the library:
//!   `Store::root_disk()` on mvmd's own store (`ROOT/images`), the call the
//!   runtime makes, with the runtime's (default) options.
//! - **reference**: `skopeo copy --src-tls-verify=false docker://… oci:DIR`,
//!   then `tar -x` of every layer in order into one directory (whiteouts
//!   aside; GNU tar detects the gzip), then `mkfs.ext4 -d` of that
//!   directory into an image file of the size of mvm's disk, with the
//!   options mvm's root disks use (`-b 4096 -I 256 -m 0 -O ^has_journal -E
//!   nodiscard,lazy_itable_init=1`). Everything in the same work
//!   directory as mvmd's root (`MVM_BENCH_DIR`, default `/var/tmp`).
//! - second pull: the same request again (mvm: every blob present, the
//!   answer says up to date; reference: `skopeo copy` into the same
//!   layout, which skips the blobs it has).
//! - cached conversion: `root_disk()` again (a `stat`). The plain tools
//!   keep no cache, so the reference has no figure there.
//! - for comparison with mvm's tmpfs staging (`Staging::Auto`), the
//!   reference conversion again with its `tar -x` into a directory on
//!   the tmpfs at `/dev/shm` (not part of the ratio's reference).
//!
//! Ratio = reference time / mvm time: >= 1.0 means mvm is at least as
//! fast (target for pull + root disk: >= 1.0).
//!
//! Environment: `MVM_BENCH_PULL_RUNS` (default 3), `MVM_BENCH_PULL_IMAGES`
//! (comma-separated from busybox, debian, python; default debian,python),
//! `MVM_BENCH_DIR` (work directory, default /var/tmp),
//! `MVM_BENCH_STAGING=store` (mvm unpacks in its store, as before the
//! tmpfs staging, instead of the runtime's default `Staging::Auto`).
//!
//! Run: `cargo bench -p mvmd --bench pull` (or `tests/run-bench.sh images`).

#[path = "../../images/tests/registry_support/mod.rs"]
mod registry_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mvm_images::manifest::media_type as mt;
use mvm_images::registry::{self, CredentialSource, NoProgress, PushOptions};
use mvm_images::rootdisk::{Staging, TMPFS_STAGING};
use mvm_images::{Digest, Reference, RootDiskOptions, Store};
use registry_support::{Image, Layer, Registry};

/// The images the benchmark knows: name, tarball, script that makes it.
const IMAGES: [(&str, &str, &str); 3] = [
    ("busybox", "busybox.tar", "busybox.sh"),
    ("debian", "debian-bookworm.tar", "debian.sh"),
    ("python", "python3-bookworm.tar", "python.sh"),
];

/// The mkfs.ext4 options of mvm's root disks (`images/src/rootdisk.rs`).
const MKFS_ARGS: [&str; 14] = [
    "-q",
    "-F",
    "-t",
    "ext4",
    "-b",
    "4096",
    "-I",
    "256",
    "-m",
    "0",
    "-O",
    "^has_journal",
    "-E",
    "nodiscard,lazy_itable_init=1",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

/// A running mvmd with its own root and socket; killed when dropped.
struct Mvmd {
    dir: PathBuf,
    child: Child,
    sock: PathBuf,
}

impl Mvmd {
    fn start(dir: &Path) -> Mvmd {
        let _ = std::fs::remove_dir_all(dir);
        let fake = dir.join("artifacts");
        std::fs::create_dir_all(&fake).unwrap();
        for f in ["vmlinux", "mvm-init", "mvm-vmm"] {
            std::fs::write(fake.join(f), b"not used: no microVM boots here").unwrap();
        }
        let log = std::fs::File::create(dir.join("mvmd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvmd"));
        cmd.arg("--root")
            .arg(dir.join("root"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .env("MVM_KERNEL", fake.join("vmlinux"))
            .env("MVM_INIT", fake.join("mvm-init"))
            .env("MVM_VMM", fake.join("mvm-vmm"))
            .env("HOME", dir.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl in the child before exec; async-signal-safe. The
        // daemon must not outlive the benchmark.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn mvmd");
        let m = Mvmd {
            dir: dir.to_path_buf(),
            child,
            sock: dir.join("run/mvmd.sock"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if m.sock.exists() && api(&m.sock, "GET", "/_ping", "").0 == 200 {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "mvmd did not start: {}",
            std::fs::read_to_string(dir.join("mvmd.log")).unwrap_or_default()
        );
    }

    fn store(&self) -> Store {
        Store::open(self.dir.join("root/images")).unwrap()
    }

    /// `POST /v1/images/pull` to the end of the answer; the result value.
    fn pull(&self, reference: &str) -> serde_json::Value {
        let (status, body) = api(
            &self.sock,
            "POST",
            "/v1/images/pull",
            &format!(r#"{{"reference":"{reference}","insecure":true}}"#),
        );
        assert_eq!(status, 200, "pull failed: {body}");
        let line = body.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let last: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad NDJSON line {line:?}: {e}"));
        assert_eq!(last["type"], "result", "pull failed: {body}");
        last["value"].clone()
    }
}

impl Drop for Mvmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.0 request over the Unix socket (the answer ends with the
/// connection): status and body.
fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return (0, String::new());
    };
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: mvmd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo_copy(reference: &str, layout: &Path) {
    run(Command::new("skopeo")
        .arg("--insecure-policy")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:t", layout.display())));
}

/// The layer blobs of the layout's only image, in order.
fn layout_layers(layout: &Path) -> Vec<PathBuf> {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let blob = |d: &serde_json::Value| {
        let d: Digest = d.as_str().unwrap().parse().unwrap();
        layout.join("blobs/sha256").join(d.hex())
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(&l["digest"]))
        .collect()
}

/// The reference's conversion: `tar -x` of every layer into `tree`, then
/// `mkfs.ext4 -d` into an image of `size` bytes. Returns both times.
fn reference_convert(layers: &[PathBuf], tree: &Path, img: &Path, size: u64) -> [Duration; 2] {
    let _ = std::fs::remove_dir_all(tree);
    let _ = std::fs::remove_file(img);
    std::fs::create_dir_all(tree).unwrap();
    let t = Instant::now();
    for l in layers {
        run(Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf"])
            .arg(l)
            .arg("-C")
            .arg(tree));
    }
    let tar = t.elapsed();
    let t = Instant::now();
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(MKFS_ARGS)
        .arg("-d")
        .arg(tree)
        .arg(img));
    [tar, t.elapsed()]
}

/// Medians of one image's runs, in ms.
#[derive(Default)]
struct Samples {
    pull: Vec<Duration>,
    disk: Vec<Duration>,
    disk_unpack: Vec<Duration>,
    disk_mkfs: Vec<Duration>,
    repull: Vec<Duration>,
    cached: Vec<Duration>,
    ref_pull: Vec<Duration>,
    ref_tar: Vec<Duration>,
    ref_mkfs: Vec<Duration>,
    ref_repull: Vec<Duration>,
    /// tar -x into the tmpfs + mkfs.ext4 -d.
    ref_shm: Vec<Duration>,
    on_tmpfs: bool,
}

struct Row {
    name: String,
    layer_mb: f64,
    tar_mb: f64,
    disk_mb: f64,
    s: Samples,
}

/// Gzips the tarball into a one-layer image and pushes it.
fn prepare(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    name: &str,
    tarball: &Path,
    work: &Path,
) -> (Reference, f64) {
    let raw = std::fs::read(tarball).unwrap();
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let blob = gz.finish().unwrap();
    drop(raw);
    let layer_mb = blob.len() as f64 / 1e6;
    let image = Image::new(
        vec![Layer {
            media_type: mt::OCI_LAYER_GZIP.into(),
            blob,
            diff_id,
        }],
        "amd64",
        false,
    );
    let reference = reg.reference(&format!("bench/{name}:1"));
    let src_dir = work.join(format!("src-{name}"));
    let src = Store::open(&src_dir).unwrap();
    image.load(&src, &reference);
    drop(image);
    let opts = PushOptions {
        insecure: true,
        credentials: CredentialSource::Anonymous,
        ..Default::default()
    };
    rt.block_on(registry::push(&src, &reference, &opts, &NoProgress))
        .unwrap();
    drop(src);
    std::fs::remove_dir_all(&src_dir).unwrap();
    (reference, layer_mb)
}

fn bench_image(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    name: &str,
    tarball: &Path,
    work: &Path,
    runs: usize,
    disk_opts: &RootDiskOptions,
) -> Row {
    eprintln!("pull bench: {name}: compressing and pushing");
    let (reference, layer_mb) = prepare(rt, reg, name, tarball, work);
    let refname = reference.to_string();
    let mut s = Samples::default();
    let mut disk_size = 0;
    let layout = work.join("ref-layout");
    let tree = work.join("ref-tree");
    let img = work.join("ref.ext4");
    let shm_tree = Path::new(TMPFS_STAGING)
        .is_dir()
        .then(|| Path::new(TMPFS_STAGING).join(format!("mvm-bench-tree-{}", std::process::id())));
    for i in 0..runs {
        let mvm_first = i % 2 == 0;
        for side in 0..2 {
            if (side == 0) == mvm_first {
                eprintln!("pull bench: {name}: run {}/{runs}: mvm", i + 1);
                let d = Mvmd::start(&work.join("mvmd"));
                let t = Instant::now();
                let v = d.pull(&refname);
                s.pull.push(t.elapsed());
                assert_eq!(v["updated"], true, "{v}");
                let store = d.store();
                let rec = store.resolve(&refname).unwrap();
                let t = Instant::now();
                let disk = store.root_disk(&rec, disk_opts).unwrap();
                s.disk.push(t.elapsed());
                let b = disk.build.expect("a fresh store builds the disk");
                s.disk_unpack.push(b.unpack);
                s.disk_mkfs.push(b.mkfs);
                s.on_tmpfs = b.on_tmpfs;
                disk_size = disk.size;
                let t = Instant::now();
                let v = d.pull(&refname);
                s.repull.push(t.elapsed());
                assert_eq!(v["updated"], false, "{v}");
                let t = Instant::now();
                let again = store.root_disk(&rec, disk_opts).unwrap();
                s.cached.push(t.elapsed());
                assert!(again.cached);
            } else {
                eprintln!("pull bench: {name}: run {}/{runs}: reference", i + 1);
                assert!(disk_size > 0, "mvm runs first in the first run");
                let _ = std::fs::remove_dir_all(&layout);
                let t = Instant::now();
                skopeo_copy(&refname, &layout);
                s.ref_pull.push(t.elapsed());
                let layers = layout_layers(&layout);
                // In an odd run the reference goes first: it uses the size
                // of the disk mvm made in the run before.
                let [tar, mkfs] = reference_convert(&layers, &tree, &img, disk_size);
                s.ref_tar.push(tar);
                s.ref_mkfs.push(mkfs);
                let _ = std::fs::remove_dir_all(&tree);
                let _ = std::fs::remove_file(&img);
                // The same with the tree on the tmpfs mvm stages on.
                if let Some(shm) = &shm_tree {
                    let [tar, mkfs] = reference_convert(&layers, shm, &img, disk_size);
                    s.ref_shm.push(tar + mkfs);
                    let _ = std::fs::remove_dir_all(shm);
                }
                let t = Instant::now();
                skopeo_copy(&refname, &layout);
                s.ref_repull.push(t.elapsed());
                let _ = std::fs::remove_dir_all(&tree);
                let _ = std::fs::remove_file(&img);
                let _ = std::fs::remove_dir_all(&layout);
            }
        }
    }
    Row {
        name: name.to_string(),
        layer_mb,
        tar_mb: std::fs::metadata(tarball).unwrap().len() as f64 / 1e6,
        disk_mb: disk_size as f64 / 1e6,
        s,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is looked at.
    let runs: usize = env_or("MVM_BENCH_PULL_RUNS", 3).max(1);
    let wanted: String = env_or("MVM_BENCH_PULL_IMAGES", "debian,python".to_string());
    let cache =
        PathBuf::from(std::env::var("MVM_CACHE").unwrap_or_else(|_| "/var/cache/mvm".into()))
            .join("images");
    let base: PathBuf = env_or("MVM_BENCH_DIR", PathBuf::from("/var/tmp"));
    let work = tempfile::Builder::new()
        .prefix("mvm-bench-pull-")
        .tempdir_in(&base)
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let disk_opts = RootDiskOptions {
        staging: match std::env::var("MVM_BENCH_STAGING").as_deref() {
            Ok("store") => Staging::Store,
            Ok("auto") | Err(_) => Staging::Auto,
            Ok(v) => panic!("MVM_BENCH_STAGING={v:?}: use auto or store"),
        },
        ..RootDiskOptions::default()
    };
    let load_before = loadavg();
    let reg = Registry::start();
    let mut rows = Vec::new();
    for want in wanted.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let Some((name, file, script)) = IMAGES.iter().find(|(n, _, _)| *n == want) else {
            panic!("MVM_BENCH_PULL_IMAGES: unknown image {want:?} (have busybox, debian, python)");
        };
        let p = cache.join(file);
        if !p.exists() {
            println!(
                "skipping {name}: {} missing; run resources/images/{script} first",
                p.display()
            );
            continue;
        }
        rows.push(bench_image(
            &rt,
            &reg,
            name,
            &p,
            work.path(),
            runs,
            &disk_opts,
        ));
    }
    let load_after = loadavg();
    println!();
    println!(
        "pull through mvmd + root disk vs skopeo copy + tar -x + mkfs.ext4 -d, same local registry \
         (median of {runs} interleaved runs; ratio = reference / mvm, >= 1.0: mvm at least as fast; \
         load average {load_before} before, {load_after} after)"
    );
    println!(
        "mvm root disk: Store::root_disk() on mvmd's store through the library (what the first `run` does; no KVM needed), staging {:?}",
        disk_opts.staging
    );
    println!();
    println!("| image | step | mvm ms | reference ms | ratio |\n| --- | --- | --- | --- | --- |");
    for r in &rows {
        let s = &r.s;
        let pull = median(s.pull.clone());
        let disk = median(s.disk.clone());
        let first: Vec<Duration> = s.pull.iter().zip(&s.disk).map(|(a, b)| *a + *b).collect();
        let ref_pull = median(s.ref_pull.clone());
        let ref_conv: Vec<Duration> = s
            .ref_tar
            .iter()
            .zip(&s.ref_mkfs)
            .map(|(a, b)| *a + *b)
            .collect();
        let ref_first: Vec<Duration> = s
            .ref_pull
            .iter()
            .zip(&ref_conv)
            .map(|(a, b)| *a + *b)
            .collect();
        let (first, ref_first) = (median(first), median(ref_first));
        let ref_conv = median(ref_conv);
        let repull = median(s.repull.clone());
        let ref_repull = median(s.ref_repull.clone());
        let line = |step: &str, a: Duration, b: Option<Duration>| {
            let (bs, ratio) = match b {
                Some(b) => (
                    format!("{:.0}", ms(b)),
                    format!("{:.2}", b.as_secs_f64() / a.as_secs_f64()),
                ),
                None => ("-".into(), "-".into()),
            };
            let v = ms(a);
            let a = if v < 10.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.0}")
            };
            println!("| {} | {step} | {a} | {bs} | {ratio} |", r.name);
        };
        line(
            "pull (API until the result line) / skopeo copy",
            pull,
            Some(ref_pull),
        );
        line(
            "root disk (root_disk()) / tar -x + mkfs.ext4 -d",
            disk,
            Some(ref_conv),
        );
        line("**pull + root disk**", first, Some(ref_first));
        line("second pull / skopeo copy again", repull, Some(ref_repull));
        line(
            "cached conversion / (no cache)",
            median(s.cached.clone()),
            None,
        );
        if !s.ref_shm.is_empty() {
            line(
                "root disk / tar -x into the tmpfs + mkfs.ext4 -d",
                disk,
                Some(median(s.ref_shm.clone())),
            );
        }
    }
    println!();
    println!("breakdown (medians, ms)");
    println!(
        "| image | layer MB (gzip) | tar MB | disk MB | mvm tree on | mvm unpack | mvm mkfs | ref tar -x | ref mkfs |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &rows {
        let s = &r.s;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.name,
            r.layer_mb,
            r.tar_mb,
            r.disk_mb,
            if s.on_tmpfs { "tmpfs" } else { "store" },
            ms(median(s.disk_unpack.clone())),
            ms(median(s.disk_mkfs.clone())),
            ms(median(s.ref_tar.clone())),
            ms(median(s.ref_mkfs.clone())),
        );
    }
}
