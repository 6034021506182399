//! Volume storage benchmark: fio (Debian's) sequential and random reads
//! and writes, and the untar of a source tree, on each kind of storage a
//! sandbox can write to, next to the same storage used by the host
//! directly, in one run so the ratios compare.
//!
//! Rows (the three guest ones in one sandbox, started through a real
//! `mvmd` as `mvctl run` does):
//! - a **block volume** (`volume create --driver block`: an ext4 image
//!   file on the host, a virtio-blk disk of the guest);
//! - a **virtio-fs bind mount** (`-v HOSTDIR:/bind`, a sandboxed
//!   virtiofsd, the runtime's cache mode);
//! - the **scratch overlay** (a directory of the guest's root: overlayfs,
//!   its upper layer on the sandbox's ext4 scratch disk, virtio-blk);
//! - the **host**: the same fio jobs and untar on a directory of the
//!   filesystem that holds the bind mount's directory, the block volume's
//!   image and the scratch disk (mvmd's root and the bench's files are in
//!   one temp dir).
//!
//! A standalone program (no libtest harness), run by
//! `tests/run-bench.sh volumes`, which builds what it needs first:
//! `MVM_BENCH_VOL_IMAGE`, the rootfs tarball of `resources/images/fio.sh`
//! (Debian bookworm with Debian's fio), and `MVM_BENCH_VOL_TREE`, an
//! uncompressed tarball of a source tree (by default the `fs/` directory
//! of Debian's `linux-source-6.12`). The host needs Debian's `fio`
//! (`resources/deps.sh`). Optional: `MVM_BENCH_VOL_SEQ_MIB` (128: the
//! sequential file), `MVM_BENCH_VOL_RAND_MIB` (32: the random-access
//! file), `MVM_BENCH_VOL_RUNTIME` (20: seconds each random job may run at
//! most).
//!
//! Every fio job uses `ioengine=psync`, buffered I/O (the host's
//! directory may be a tmpfs, which refuses `O_DIRECT`), `end_fsync=1` on
//! writes, and `invalidate=1` (fio's default) so reads start with the
//! file out of the page cache of whoever runs fio.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image name this benchmark imports its fio image as.
const IMAGE: &str = "bench/fio:bookworm";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn env_path(name: &str, what: &str) -> PathBuf {
    let p =
        PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
            panic!("{name} is not set ({what}): run tests/run-bench.sh volumes")
        }));
    assert!(p.is_file(), "{name}={}: no such file ({what})", p.display());
    p
}

/// `mvmd` and `mvctl` sit next to `mvm-vmm` (one cargo target dir).
fn binary(name: &str) -> PathBuf {
    let vmm = std::env::var_os("MVM_VMM").expect("MVM_VMM is not set: run tests/run-bench.sh");
    let p = Path::new(&vmm).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it in the VMM's profile (`make build-release`, or `make build` with MVM_PROFILE_DIR=debug)",
        p.display()
    );
    p
}

struct Daemon {
    child: Child,
    host: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let log = dir.join("mvmd.log");
    let run = dir.join("run");
    let child = Command::new(binary("mvmd"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--run-dir")
        .arg(&run)
        .arg("--no-network")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn mvmd");
    let socket = run.join("mvmd.sock");
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mvmd did not listen within 60 s; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        host: format!("unix://{}", socket.display()),
    }
}

/// Run mvctl; panics with its output unless it exits 0. Returns stdout.
fn mvctl(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(binary("mvctl"))
        .args(args)
        .env("MVM_HOST", &d.host)
        .stdin(Stdio::null())
        .output()
        .expect("spawn mvctl");
    assert!(
        out.status.success(),
        "mvctl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fio command line (without `--directory`), the same for every row.
fn fio_args(seq_mib: u64, rand_mib: u64, runtime: u64) -> String {
    format!(
        "--output-format=json --ioengine=psync --direct=0 \
         --name=seqwrite --rw=write --bs=1M --size={seq_mib}M --filename=seq --end_fsync=1 \
         --name=seqread --stonewall --rw=read --bs=1M --size={seq_mib}M --filename=seq \
         --name=randwrite --stonewall --rw=randwrite --bs=4k --size={rand_mib}M --filename=rand --end_fsync=1 --runtime={runtime} \
         --name=randread --stonewall --rw=randread --bs=4k --size={rand_mib}M --filename=rand --runtime={runtime}"
    )
}

/// Shell functions both sides use: `meta DIR TAR` prints the untar and
/// removal times in ms. `rm -rf` is repeated until the tree is gone: on
/// a share whose host directory is a tmpfs of a kernel before 6.6,
/// removing entries while reading the directory can skip some
/// (docs/benchmarks.md, fs); the passes are reported.
const META: &str = r#"
now() { date +%s%N; }
meta() {
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  mkdir "$1/tree"
  t0=$(now); tar -xf "$2" -C "$1/tree"; sync; t1=$(now)
  n=0; while [ -e "$1/tree" ] && [ $n -lt 30 ]; do rm -rf "$1/tree" 2>/dev/null || true; n=$((n+1)); done; sync; t2=$(now)
  [ ! -e "$1/tree" ]
  [ $n -eq 1 ] || echo "NOTE $3: rm -rf took $n passes" >&2
  echo "META $3 $(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))"
}
"#;

/// The script for one row: fio between markers, then the untar.
fn row_script(name: &str, dir: &str, fio: &str, tree: &str) -> String {
    format!(
        r#"mkdir -p {dir}/fio
echo "FIO-BEGIN {name}"
fio --directory={dir}/fio {fio}
echo "FIO-END {name}"
rm -rf {dir}/fio
meta {dir} {tree} {name}
"#
    )
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    /// MiB/s.
    seq_write: f64,
    seq_read: f64,
    /// 4 KiB IOPS.
    rand_write: f64,
    rand_read: f64,
    /// Milliseconds.
    untar: f64,
    remove: f64,
}

/// Fill `f` from fio's JSON report.
fn parse_fio(json: &str, f: &mut Figures) {
    let start = json.find('{').expect("fio printed no JSON");
    let v: serde_json::Value =
        serde_json::from_str(&json[start..]).unwrap_or_else(|e| panic!("fio's JSON: {e}\n{json}"));
    for job in v["jobs"].as_array().expect("fio jobs") {
        assert_eq!(job["error"], 0, "fio job failed: {job}");
        let kib_s = |side: &str| job[side]["bw"].as_f64().unwrap_or(0.0);
        let iops = |side: &str| job[side]["iops"].as_f64().unwrap_or(0.0);
        match job["jobname"].as_str() {
            Some("seqwrite") => f.seq_write = kib_s("write") / 1024.0,
            Some("seqread") => f.seq_read = kib_s("read") / 1024.0,
            Some("randwrite") => f.rand_write = iops("write"),
            Some("randread") => f.rand_read = iops("read"),
            other => panic!("unexpected fio job {other:?}"),
        }
    }
    for (what, x) in [
        ("seq write", f.seq_write),
        ("seq read", f.seq_read),
        ("rand write", f.rand_write),
        ("rand read", f.rand_read),
    ] {
        assert!(x > 0.0, "fio reported no {what}:\n{json}");
    }
}

/// The rows in `out` (a script's stdout): name -> figures.
fn parse_rows(out: &str) -> Vec<(String, Figures)> {
    let mut rows: Vec<(String, Figures)> = Vec::new();
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("FIO-BEGIN ") {
            let end = format!("FIO-END {name}");
            let json: Vec<&str> = lines.by_ref().take_while(|l| *l != end).collect();
            let mut f = Figures::default();
            parse_fio(&json.join("\n"), &mut f);
            rows.push((name.to_string(), f));
        } else if let Some(rest) = line.strip_prefix("META ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            let row = rows
                .iter_mut()
                .find(|r| r.0 == w[0])
                .unwrap_or_else(|| panic!("META for a row without fio: {line}"));
            row.1.untar = w[1].parse::<f64>().unwrap().max(1.0);
            row.1.remove = w[2].parse::<f64>().unwrap().max(1.0);
        }
    }
    rows
}

fn main() {
    let seq = env_u64("MVM_BENCH_VOL_SEQ_MIB", 128);
    let rand = env_u64("MVM_BENCH_VOL_RAND_MIB", 32);
    let runtime = env_u64("MVM_BENCH_VOL_RUNTIME", 20);
    let image = env_path("MVM_BENCH_VOL_IMAGE", "resources/images/fio.sh's tarball");
    let tree = env_path("MVM_BENCH_VOL_TREE", "a source tree's tarball");
    let tree_mib = fs::metadata(&tree).unwrap().len() >> 20;
    let tree_entries = Command::new("tar")
        .arg("-tf")
        .arg(&tree)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    let fio_version = Command::new("fio")
        .arg("--version")
        .output()
        .expect("fio on the host (resources/deps.sh installs Debian's)");
    let fio_version = String::from_utf8_lossy(&fio_version.stdout)
        .trim()
        .to_string();

    // One temp dir holds mvmd's root (block volume image, scratch disk),
    // the bind mount's directory and the host row's directory: the same
    // filesystem under every row.
    let tmp = tempfile::Builder::new()
        .prefix("mvm-bench-vol-")
        .tempdir()
        .unwrap();
    let fstype = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(tmp.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let (bind, host, input) = (
        tmp.path().join("bind"),
        tmp.path().join("host"),
        tmp.path().join("in"),
    );
    for d in [&bind, &host, &input] {
        fs::create_dir_all(d).unwrap();
    }
    fs::copy(&tree, input.join("tree.tar")).unwrap();
    let d = start_daemon(tmp.path());
    eprintln!("volumes: importing {}", image.display());
    mvctl(&d, &["import", image.to_str().unwrap(), IMAGE]);
    let blk_mib = seq + rand + tree_mib * 3 + 128;
    mvctl(
        &d,
        &[
            "volume",
            "create",
            "--driver",
            "block",
            "-o",
            &format!("size={blk_mib}m"),
            "benchblk",
        ],
    );

    let fio = fio_args(seq, rand, runtime);
    // The tree's tarball is copied into a guest tmpfs first, so that the
    // untar reads it from memory on both sides.
    let mut guest = format!("set -e\n{META}\ncp /in/tree.tar /t/tree.tar\nmkdir -p /scratch\n");
    for (name, dir) in [
        ("block", "/blk"),
        ("bind", "/bind"),
        ("scratch", "/scratch"),
    ] {
        guest.push_str(&row_script(name, dir, &fio, "/t/tree.tar"));
    }
    eprintln!("volumes: the guest rows (block volume, bind mount, scratch overlay)");
    let t = Instant::now();
    let out = mvctl(
        &d,
        &[
            "run",
            "--rm",
            "-m",
            "1g",
            "-v",
            "benchblk:/blk",
            "-v",
            &format!("{}:/bind", bind.display()),
            "-v",
            &format!("{}:/in:ro", input.display()),
            "--tmpfs",
            &format!("/t:size={}m", tree_mib + 16),
            IMAGE,
            "sh",
            "-c",
            &guest,
        ],
    );
    eprintln!(
        "volumes: guest rows took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let mut rows = parse_rows(&out);

    eprintln!("volumes: the host row");
    let host_script = format!(
        "set -e\n{META}\n{}",
        row_script(
            "host",
            host.to_str().unwrap(),
            &fio,
            input.join("tree.tar").to_str().unwrap()
        )
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&host_script)
        .stderr(Stdio::inherit())
        .output()
        .expect("sh");
    assert!(out.status.success(), "the host row failed");
    rows.extend(parse_rows(&String::from_utf8_lossy(&out.stdout)));
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        ["block", "bind", "scratch", "host"],
        "rows missing: {rows:?}"
    );
    for (name, f) in &rows {
        assert!(f.untar > 0.0, "{name}: no untar figure");
        eprintln!("{name}: {f:?}");
    }
    let h = rows[3].1;
    let label = |n: &str| match n {
        "block" => "block volume (ext4 image, virtio-blk)",
        "bind" => "bind mount (virtio-fs, virtiofsd)",
        "scratch" => "scratch overlay (overlayfs on ext4, virtio-blk)",
        _ => "host, directly",
    };
    let vmm = std::env::var("MVM_VMM").unwrap_or_default();
    let profile = if vmm.contains("/release/") {
        "release"
    } else if vmm.contains("/debug/") {
        "debug"
    } else {
        "?"
    };
    println!();
    println!(
        "Volumes against the host: fio ({fio_version}) psync, buffered, {seq} MiB sequential (1 MiB blocks), \
         {rand} MiB random (4 KiB blocks, at most {runtime} s per job); untar of a {tree_mib} MiB source tree \
         ({tree_entries} entries) then rm -rf. Storage under every row: {fstype}. {profile} mvm-vmm."
    );
    println!("(x: the row's speed relative to the host's; for times, host time / row time.)");
    println!();
    println!("| storage | seq write MiB/s | seq read MiB/s | rand write IOPS | rand read IOPS | untar s | rm -rf s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, f) in &rows {
        println!(
            "| {} | {:.1} ({:.2}x) | {:.1} ({:.2}x) | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.2} ({:.2}x) | {:.2} ({:.2}x) |",
            label(name),
            f.seq_write,
            f.seq_write / h.seq_write,
            f.seq_read,
            f.seq_read / h.seq_read,
            f.rand_write,
            f.rand_write / h.rand_write,
            f.rand_read,
            f.rand_read / h.rand_read,
            f.untar / 1000.0,
            h.untar / f.untar,
            f.remove / 1000.0,
            h.remove / f.remove,
        );
    }
    println!();
    let (b, v) = (rows[0].1, rows[1].1);
    let met = |x: f64, goal: f64| if x >= goal { "met" } else { "NOT met" };
    for (what, x, goal) in [
        (
            "block volume, sequential write",
            b.seq_write / h.seq_write,
            0.8,
        ),
        (
            "block volume, sequential read",
            b.seq_read / h.seq_read,
            0.8,
        ),
        (
            "virtio-fs, sequential write",
            v.seq_write / h.seq_write,
            0.5,
        ),
        ("virtio-fs, sequential read", v.seq_read / h.seq_read, 0.5),
    ] {
        println!(
            "- {what}: {x:.2}x the host (target {goal}x on hardware KVM): {}",
            met(x, goal)
        );
    }
}
