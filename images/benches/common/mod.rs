//! What both image benchmarks measure the same way: the median of a few
//! runs, and the reference they are compared with (plain `tar -x` then
//! `mkfs.ext4 -d`, with the mkfs options the library uses).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs per measurement; the median is reported.
pub const RUNS: usize = 3;

/// The median of `v` (not empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `tar -xf` (GNU tar detects gzip by itself) then `mkfs.ext4 -d` of the
/// tree into a `size_bytes` image, in `work`; the time of both.
pub fn plain_tools(tarball: &Path, work: &Path, size_bytes: u64) -> Duration {
    let tree = work.join("plain-tree");
    let img = work.join("plain.ext4");
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&img);
    std::fs::create_dir_all(&tree).unwrap();
    let t = Instant::now();
    let st = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf"])
        .arg(tarball)
        .arg("-C")
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size_bytes).unwrap();
    drop(f);
    let st = Command::new("mkfs.ext4")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
        ])
        .args([
            "-O",
            "^has_journal",
            "-E",
            "nodiscard,lazy_itable_init=1",
            "-d",
        ])
        .arg(&tree)
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let took = t.elapsed();
    std::fs::remove_dir_all(&tree).unwrap();
    std::fs::remove_file(&img).unwrap();
    took
}
