//! virtio-fs benchmark on real KVM: sequential write and read, file
//! creation and a metadata pass, in a guest, through a virtio-fs share
//! with each of virtiofsd's cache modes (`never`, `auto`, `always`), next
//! to the guest's own ext4 scratch disk (virtio-blk, under the overlay
//! root), all in one run so the figures compare.
//!
//! A standalone program (no libtest harness); needs the environment of
//! the end-to-end tests (`MVM_KERNEL`, `MVM_INIT`, `MVM_VMM`, virtiofsd)
//! and hardware KVM (inside the emulated KVM host on machines without
//! it). Optional: `MVM_BENCH_FS_MIB` (default 64: the sequential file),
//! `MVM_BENCH_FS_FILES` (default 500: small files created).
//!
//! The cache mode is chosen with a wrapper around the real virtiofsd that
//! replaces the runtime's `--cache=` argument, so the runtime's own
//! invocation (sandbox, seccomp, capabilities) is what is measured.

use std::fs;
use std::path::{Path, PathBuf};

use mvm_e2e::{GuestState, StatusExt, Vm};
use mvm_runtime::share::{locate_virtiofsd, HostShare, CACHE_MODE};

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The guest side: prints `RESULT <name> <milliseconds>` lines. Times
/// come from /proc/uptime (10 ms resolution; every step takes far longer
/// under emulation). Caches are dropped before the read so it measures
/// the device, not the guest's page cache.
fn script(dir: &str, mib: usize, files: usize) -> String {
    format!(
        r#"
set -e
now() {{ cut -d' ' -f1 /proc/uptime; }}
ms() {{ awk -v a="$1" -v b="$2" 'BEGIN {{ printf "%d", (b - a) * 1000 }}'; }}
mkdir -p {dir}/bench && cd {dir}/bench
t0=$(now); dd if=/dev/zero of=seq bs=1M count={mib} conv=fsync 2>/dev/null; t1=$(now)
echo "RESULT write $(ms $t0 $t1)"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); dd if=seq of=/dev/null bs=1M 2>/dev/null; t1=$(now)
echo "RESULT read $(ms $t0 $t1)"
mkdir small
t0=$(now); i=0; while [ $i -lt {files} ]; do echo x > small/f$i; i=$((i+1)); done; sync; t1=$(now)
echo "RESULT create $(ms $t0 $t1)"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); ls -l small > /dev/null; t1=$(now)
echo "RESULT stat $(ms $t0 $t1)"
rm -f seq
# `rm -r` removing entries while it reads the directory can skip some
# (seen with cache=never on a tmpfs-backed share: readdir offsets shift
# under the deletions); count the passes it takes.
t0=$(now); n=0; while [ -e small ] && [ $n -lt 30 ]; do rm -rf small 2>/dev/null || true; n=$((n+1)); done; sync; t1=$(now)
echo "RESULT remove $(ms $t0 $t1)"
[ $n -eq 1 ] || echo "NOTE rm -r took $n passes"
[ ! -e small ]
"#
    )
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    write: f64,
    read: f64,
    create: f64,
    stat: f64,
    remove: f64,
}

fn parse(console: &str) -> Option<Figures> {
    let mut f = Figures::default();
    let mut n = 0;
    for line in console.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("RESULT") {
            continue;
        }
        let (Some(name), Some(v)) = (w.next(), w.next().and_then(|v| v.parse::<f64>().ok())) else {
            continue;
        };
        let slot = match name {
            "write" => &mut f.write,
            "read" => &mut f.read,
            "create" => &mut f.create,
            "stat" => &mut f.stat,
            "remove" => &mut f.remove,
            _ => continue,
        };
        *slot = v.max(1.0);
        n += 1;
    }
    (n == 5).then_some(f)
}

/// A virtiofsd that runs the real one with `--cache=<mode>`.
fn wrapper(dir: &Path, real: &Path, mode: &str) -> PathBuf {
    let p = dir.join(format!("virtiofsd-{mode}"));
    fs::write(
        &p,
        format!(
            "#!/bin/bash\nargs=()\nfor a in \"$@\"; do case \"$a\" in --cache=*) args+=(--cache={mode}) ;; *) args+=(\"$a\") ;; esac; done\nexec {} \"${{args[@]}}\"\n",
            real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn run(name: &str, dir: &str, share: Option<HostShare>, mib: usize, files: usize) -> Figures {
    let mut vm = Vm::new(&["/bin/sh", "-c", &script(dir, mib, files)]);
    vm.memory_mib = 512;
    vm.timeout = std::time::Duration::from_secs(900);
    // Room for the sequential file on the scratch disk.
    if share.is_none() {
        mvm_e2e::rootfs::scratch_disk(&vm.scratch(), (mib as u64) * 2 + 64).unwrap();
    }
    vm.shares = share.into_iter().collect();
    let out = vm.run();
    assert!(
        out.code() == Some(0)
            && out.status().guest == GuestState::PoweredOff
            && out.status().exit_code() == Some(0),
        "{name}: {}",
        out.describe()
    );
    for note in out.console.lines().filter(|l| l.starts_with("NOTE ")) {
        eprintln!("{name}: {note}");
    }
    let f = parse(&out.console).unwrap_or_else(|| panic!("{name}: no results\n{}", out.console));
    eprintln!("{name}: {f:?}");
    f
}

fn main() {
    let mib = env_usize("MVM_BENCH_FS_MIB", 64);
    let files = env_usize("MVM_BENCH_FS_FILES", 500);
    let real = locate_virtiofsd(None).expect("virtiofsd (resources/virtiofsd/build.sh)");
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    rows.push((
        "scratch ext4 (virtio-blk)".to_string(),
        run("scratch", "/root", None, mib, files),
    ));
    for mode in ["never", "auto", "always"] {
        let src = tmp.path().join(format!("share-{mode}"));
        fs::create_dir_all(&src).unwrap();
        std::env::set_var("MVM_VIRTIOFSD", wrapper(tmp.path(), &real, mode));
        let share = HostShare {
            tag: "bench".into(),
            source: src,
            target: "/share".into(),
            read_only: false,
        };
        let label = if mode == CACHE_MODE {
            format!("virtio-fs, cache={mode} (default)")
        } else {
            format!("virtio-fs, cache={mode}")
        };
        rows.push((label, run(mode, "/share", Some(share), mib, files)));
    }
    println!();
    println!(
        "virtio-fs vs scratch disk: {mib} MiB sequential file, {files} small files (guest times, debug VMM, virtiofsd release)"
    );
    println!();
    println!("| storage | seq write MiB/s | seq read MiB/s | creates/s | `ls -l` of {files} files, ms | remove all, ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (label, f) in rows {
        println!(
            "| {label} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            mib as f64 / (f.write / 1000.0),
            mib as f64 / (f.read / 1000.0),
            files as f64 / (f.create / 1000.0),
            f.stat,
            f.remove
        );
    }
}
