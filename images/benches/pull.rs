//! Registry benchmark: pull from a local `docker-registry` + unpack + root
//! disk, versus plain `tar -xzf` + `mkfs.ext4 -d` of the same layer; a
//! second conversion of the same image (cached root disk, and a re-pull
//! that finds every blob present). Prints a table.
//!
//! Inputs are the rootfs tarballs of `resources/images/*.sh` in
//! `${MVM_CACHE:-/var/cache/mvm}/images/` (busybox.tar,
//! debian-bookworm.tar); missing ones are reported and skipped. Each is
//! gzipped into a one-layer OCI image and pushed with our `push`.
//! Targets: ratio >= 0.8 (pull + disk at least 80% of the plain tools'
//! speed), cached conversion <= 10 ms.
//!
//! Run: cargo bench -p mvm-images --bench pull

#[path = "../tests/registry_support/mod.rs"]
mod registry_support;

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{median, ms, plain_tools, RUNS};

use mvm_images::manifest::media_type as mt;
use mvm_images::registry::{self, CredentialSource, NoProgress, PullOptions, PushOptions};
use mvm_images::{Digest, RootDiskOptions, Store};
use registry_support::{Image, Layer, Registry};

struct Row {
    name: String,
    layer_mb: f64,
    pull: Duration,
    disk: Duration,
    plain: Duration,
    cached_disk: Duration,
    repull: Duration,
}

fn bench_image(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    name: &str,
    tarball: &Path,
    work: &Path,
) -> Row {
    // A gzip layer, as registries usually serve them.
    let raw = std::fs::read(tarball).unwrap();
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let blob = gz.finish().unwrap();
    drop(raw);
    let layer_gz = work.join(format!("{name}.tar.gz"));
    std::fs::write(&layer_gz, &blob).unwrap();
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
    let src = Store::open(work.join(format!("src-{name}"))).unwrap();
    image.load(&src, &reference);
    drop(image);
    let push_opts = PushOptions {
        insecure: true,
        credentials: CredentialSource::Anonymous,
        ..Default::default()
    };
    rt.block_on(registry::push(&src, &reference, &push_opts, &NoProgress))
        .unwrap();
    let opts = PullOptions {
        insecure: true,
        credentials: CredentialSource::Anonymous,
        ..Default::default()
    };
    let (mut pull, mut disk, mut plain, mut cached, mut repull) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let dir = work.join(format!("store-{name}-{i}"));
        let store = Store::open(&dir).unwrap();
        let t = Instant::now();
        let rec = rt
            .block_on(registry::pull(&store, &reference, &opts, &NoProgress))
            .unwrap();
        pull.push(t.elapsed());
        let t = Instant::now();
        let d = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
        disk.push(t.elapsed());
        assert!(!d.cached);
        let t = Instant::now();
        let again = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
        cached.push(t.elapsed());
        assert!(again.cached);
        let t = Instant::now();
        rt.block_on(registry::pull(&store, &reference, &opts, &NoProgress))
            .unwrap();
        repull.push(t.elapsed());
        plain.push(plain_tools(&layer_gz, work, d.size));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    Row {
        name: name.to_string(),
        layer_mb,
        pull: median(pull),
        disk: median(disk),
        plain: median(plain),
        cached_disk: median(cached),
        repull: median(repull),
    }
}

fn main() {
    let cache =
        PathBuf::from(std::env::var("MVM_CACHE").unwrap_or_else(|_| "/var/cache/mvm".into()))
            .join("images");
    let work = tempfile::Builder::new()
        .prefix("mvm-bench-pull-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = Registry::start();
    let mut rows = Vec::new();
    for (name, file, script) in [
        ("busybox", "busybox.tar", "busybox.sh"),
        ("debian", "debian-bookworm.tar", "debian.sh"),
    ] {
        let p = cache.join(file);
        if !p.exists() {
            println!(
                "skipping {name}: {} missing; run resources/images/{script} first",
                p.display()
            );
            continue;
        }
        rows.push(bench_image(&rt, &reg, name, &p, work.path()));
    }
    println!();
    println!("pull from a local registry + root disk (median of {RUNS}; ratio = plain / ours, target >= 0.8; cached target <= 10 ms)");
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>10} {:>14} {:>6} {:>10} {:>10}",
        "image",
        "layer MB",
        "pull ms",
        "disk ms",
        "total ms",
        "tar+mkfs ms",
        "ratio",
        "cached ms",
        "repull ms"
    );
    for r in &rows {
        let total = r.pull + r.disk;
        println!(
            "{:<8} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>14.1} {:>6.2} {:>10.3} {:>10.1}",
            r.name,
            r.layer_mb,
            ms(r.pull),
            ms(r.disk),
            ms(total),
            ms(r.plain),
            r.plain.as_secs_f64() / total.as_secs_f64(),
            ms(r.cached_disk),
            ms(r.repull),
        );
    }
}
