//! Root disk benchmark: our unpack + mkfs versus plain `tar -x` +
//! `mkfs.ext4 -d` of the same layer, the cached second conversion, and
//! scratch disk creation (template copy versus mkfs). Prints a table.
//!
//! Inputs are the rootfs tarballs of `resources/images/*.sh` in
//! `${MVM_CACHE:-/var/cache/mvm}/images/` (busybox.tar, debian-bookworm.tar);
//! missing ones are reported and skipped. Targets: ratio >= 0.8 (ours at
//! least 80% of the plain tools' speed), cached lookup <= 10 ms.
//!
//! Run: cargo bench -p mvm-images --bench rootdisk

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{median, ms, plain_tools, RUNS};

use mvm_images::{ImportOptions, Reference, RootDiskOptions, Store};

struct Row {
    name: String,
    files: u64,
    ours: Duration,
    unpack: Duration,
    mkfs: Duration,
    publish: Duration,
    plain: Duration,
    cached: Duration,
}

fn bench_image(name: &str, tarball: &Path, work: &Path) -> Row {
    let store_dir = work.join(format!("store-{name}"));
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = Store::open(&store_dir).unwrap();
    let f = std::io::BufReader::new(std::fs::File::open(tarball).unwrap());
    let reference = Reference::parse(&format!("bench/{name}")).unwrap();
    store
        .import(f, Some(&reference), &ImportOptions::default())
        .unwrap();
    let rec = store.resolve(&reference.to_string()).unwrap();
    let (mut ours, mut unpack, mut mkfs, mut publish, mut plain, mut cached) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut files = 0;
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(store.root_disk_path(&rec));
        let t = Instant::now();
        let disk = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
        ours.push(t.elapsed());
        let b = disk.build.expect("fresh build");
        unpack.push(b.unpack);
        mkfs.push(b.mkfs);
        publish.push(b.publish);
        files = b.stats.entries;
        let t = Instant::now();
        let again = store.root_disk(&rec, &RootDiskOptions::default()).unwrap();
        cached.push(t.elapsed());
        assert!(again.cached);
        plain.push(plain_tools(tarball, work, disk.size));
    }
    Row {
        name: name.to_string(),
        files,
        ours: median(ours),
        unpack: median(unpack),
        mkfs: median(mkfs),
        publish: median(publish),
        plain: median(plain),
        cached: median(cached),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let cache =
        PathBuf::from(std::env::var("MVM_CACHE").unwrap_or_else(|_| "/var/cache/mvm".into()))
            .join("images");
    let work = tempfile::Builder::new()
        .prefix("mvm-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
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
        rows.push(bench_image(name, &p, work.path()));
    }
    println!();
    println!("root disk conversion (median of {RUNS}; ratio = plain / ours, target >= 0.8; cached target <= 10 ms)");
    println!(
        "{:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>12} {:>6} {:>10}",
        "image",
        "entries",
        "ours ms",
        "unpack ms",
        "mkfs ms",
        "fsync ms",
        "tar+mkfs ms",
        "ratio",
        "cached ms"
    );
    for r in &rows {
        println!(
            "{:<8} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>6.2} {:>10.3}",
            r.name,
            r.files,
            ms(r.ours),
            ms(r.unpack),
            ms(r.mkfs),
            ms(r.publish),
            ms(r.plain),
            r.plain.as_secs_f64() / r.ours.as_secs_f64(),
            ms(r.cached)
        );
    }

    // Scratch disks: template copy (what the library does) vs mkfs each time.
    let store = Store::open(work.path().join("store-scratch")).unwrap();
    println!();
    println!("scratch disk creation (median of {RUNS})");
    println!("{:<8} {:>14} {:>12}", "size", "template ms", "mkfs ms");
    for size in [1u64 << 30, 10 << 30] {
        let warm = work.path().join("warm.ext4");
        store.create_scratch_disk(&warm, size).unwrap();
        std::fs::remove_file(&warm).unwrap();
        let (mut tmpl, mut mk) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            let a = work.path().join(format!("t{i}.ext4"));
            let t = Instant::now();
            store.create_scratch_disk(&a, size).unwrap();
            tmpl.push(t.elapsed());
            let b = work.path().join(format!("m{i}.ext4"));
            let t = Instant::now();
            mvm_images::rootdisk::mkfs_scratch(&b, size).unwrap();
            mk.push(t.elapsed());
            std::fs::remove_file(a).unwrap();
            std::fs::remove_file(b).unwrap();
        }
        println!(
            "{:<8} {:>14.1} {:>12.1}",
            format!("{}G", size >> 30),
            ms(median(tmpl)),
            ms(median(mk))
        );
    }
}
