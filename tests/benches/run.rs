//! Sandbox start benchmark: `mvctl run --rm busybox true` end to end, as a
//! user types it, against a real `mvmd` on real KVM. Prints a table; not a
//! timed test.
//!
//! Measured:
//! - sequential runs (`MVM_BENCH_RUNS`, default 20) and parallel ones
//!   (`MVM_BENCH_PARALLEL`, default 10): p50/p95 of each `mvctl` call, and
//!   starts per second for the parallel batch;
//! - a breakdown over `MVM_BENCH_BREAKDOWN` runs (default 5) split into the
//!   steps a run is made of: `mvctl version` (the CLI plus one API round
//!   trip), `create` (API + disk preparation: root disk lookup, scratch disk,
//!   launch archive), `start -a` (VMM start, boot, the workload, power-off),
//!   of which boot to init is the VMM's own `boot_time_us`, and `rm`
//!   (teardown);
//! - `mvmd`'s RSS when idle, and the host memory of one running sandbox's
//!   VMM (its own resident memory, and the guest memory it touched: the
//!   guest RAM mapping's, told apart by `mvm_e2e::procmem`).
//!
//! - with `MVM_BENCH_CONFINE_RUNS=N` (default 0: skipped), what the VMM's
//!   confinement costs: four daemons side by side, the default (jail and
//!   seccomp), `--no-jail`, `--no-seccomp` and both switches, N runs each,
//!   interleaved: `run --rm true` wall time, the VMM's `boot_time_us`
//!   (create, then `start -a`), and one running sandbox's VMM memory per
//!   daemon. The four daemons run at once, all with `--no-network` (two
//!   with networking would fight over the default bridge).
//!
//! Every call is checked (exit status 0); a benchmark of failures would be
//! worthless. QEMU's direct boot of the same kernel and disk is measured by
//! the `boot` benchmark in the same `make bench` run: compare this table's
//! p50 with its "spawn to VMM exit".

use std::fs;
use std::time::{Duration, Instant};

use mvm_e2e::bench::{
    env_usize, import_busybox, inspect, ms, mvctl, pct, row, start_daemon_with, status_kib, Daemon,
    IMAGE,
};

fn start_daemon() -> Daemon {
    start_daemon_with(&[])
}

/// The VMM memory of one running sandbox of `d`: (own, guest) KiB.
fn sandbox_memory(d: &Daemon) -> (u64, u64) {
    let (id, _) = mvctl(d, &["run", "-d", IMAGE, "sleep", "600"]);
    let id = id.trim().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let info = inspect(d, &id);
    let vmm = info["state"]["pid"].as_u64().map(|p| p as u32);
    let guest_bytes = info["host_config"]["memory_mib"].as_u64().unwrap_or(0) << 20;
    let m = vmm
        .and_then(|p| mvm_e2e::procmem::read(p, guest_bytes))
        .map_or((0, 0), |m| (m.own, m.guest));
    mvctl(d, &["rm", "-f", &id]);
    m
}

/// The VMM's own boot time of a created-then-started sandbox, and of it
/// the VMM's setup: from its start to its vCPUs' start (the "starting N
/// vCPU(s): M ms after VMM start" line of its log); the rest is the
/// guest's boot to its init.
fn boot_time(d: &Daemon) -> (Option<Duration>, Option<Duration>) {
    let (id, _) = mvctl(d, &["create", IMAGE, "true"]);
    let id = id.trim().to_string();
    mvctl(d, &["start", "-a", &id]);
    let info = inspect(d, &id);
    let us = info["paths"]["status"].as_str().and_then(|p| {
        let st: serde_json::Value =
            serde_json::from_slice(&fs::read(p).unwrap_or_default()).unwrap_or_default();
        st["boot_time_us"].as_u64()
    });
    let setup = info["paths"]["vmm_log"]
        .as_str()
        .and_then(|p| vmm_setup_ms(&fs::read_to_string(p).unwrap_or_default()));
    mvctl(d, &["rm", &id]);
    (
        us.map(Duration::from_micros),
        setup.map(Duration::from_millis),
    )
}

/// The milliseconds of the VMM's last "starting N vCPU(s): M ms after VMM
/// start" line.
fn vmm_setup_ms(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let rest = &l[l.find("vCPU(s): ")? + "vCPU(s): ".len()..];
        rest[..rest.find(" ms after VMM start")?]
            .trim()
            .parse()
            .ok()
    })
}

/// `MVM_BENCH_CONFINE_RUNS`: the default daemon against `--no-jail`,
/// `--no-seccomp` and both, runs interleaved (see the module doc).
fn confinement(runs: usize) {
    let configs: [(&str, &[&str]); 4] = [
        ("jail + seccomp (default)", &[]),
        ("--no-jail", &["--no-jail"]),
        ("--no-seccomp", &["--no-seccomp"]),
        ("--no-jail --no-seccomp", &["--no-jail", "--no-seccomp"]),
    ];
    // The four daemons run at once, and two with networking would fight
    // over the default network's bridge, nftables tables and DNS address:
    // all four run without it (sandboxes get loopback only), the same for
    // each, so the comparison is the VMM's confinement alone.
    let daemons: Vec<Daemon> = configs
        .iter()
        .map(|(_, flags)| {
            let mut flags = flags.to_vec();
            flags.push("--no-network");
            let d = start_daemon_with(&flags);
            import_busybox(&d);
            mvctl(&d, &["run", "--rm", IMAGE, "true"]);
            d
        })
        .collect();
    let n = configs.len();
    let (mut wall, mut boot, mut setup) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for round in 0..runs {
        eprintln!("confinement: round {}/{runs}", round + 1);
        // A different first daemon each round, so none always runs first.
        for k in 0..n {
            let i = (round + k) % n;
            wall[i].push(mvctl(&daemons[i], &["run", "--rm", IMAGE, "true"]).1);
            let (b, s) = boot_time(&daemons[i]);
            boot[i].extend(b);
            setup[i].extend(s);
        }
    }
    let mem: Vec<(u64, u64)> = daemons.iter().map(sandbox_memory).collect();
    println!("## confinement: the VMM jailed and filtered, or not (`mvctl run`, real KVM)");
    println!();
    println!(
        "| mvmd | n | `run --rm true` p50 ms | p95 ms | VMM boot_time_us p50 ms | p95 ms | of which VMM setup p50 ms | VMM overhead MiB | guest touched MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, (name, _)) in configs.iter().enumerate() {
        let p = |v: &[Duration], q| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", pct(v, q))
            }
        };
        println!(
            "| {name} | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {:.1} |",
            wall[i].len(),
            pct(&wall[i], 0.5),
            pct(&wall[i], 0.95),
            p(&boot[i], 0.5),
            p(&boot[i], 0.95),
            p(&setup[i], 0.5),
            mem[i].0 as f64 / 1024.0,
            mem[i].1 as f64 / 1024.0
        );
    }
    println!();
    let base = pct(&wall[0], 0.5);
    for (i, (name, _)) in configs.iter().enumerate().skip(1) {
        println!(
            "- {name}: `run --rm true` p50 {:.3}x of the default's; VMM overhead {:+.2} MiB against it",
            pct(&wall[i], 0.5) / base,
            (mem[i].0 as f64 - mem[0].0 as f64) / 1024.0
        );
    }
    println!();
}

fn main() {
    mvm_e2e::require_hardware_kvm();
    let confine_runs = env_usize("MVM_BENCH_CONFINE_RUNS", 0);
    if confine_runs > 0 {
        confinement(confine_runs);
    }
    let runs = env_usize("MVM_BENCH_RUNS", 20);
    if runs == 0 {
        // MVM_BENCH_RUNS=0: the confinement comparison alone.
        return;
    }
    let parallel = env_usize("MVM_BENCH_PARALLEL", 10);
    let breakdown = env_usize("MVM_BENCH_BREAKDOWN", 5);

    let d = start_daemon();
    import_busybox(&d);
    // Warm-up: converts the image to its root disk and caches the init
    // archive, as the first run after an import does.
    let (_, first) = mvctl(&d, &["run", "--rm", IMAGE, "true"]);
    let idle_rss = status_kib(d.child.id(), "VmRSS");

    let seq: Vec<Duration> = (0..runs)
        .map(|_| mvctl(&d, &["run", "--rm", IMAGE, "true"]).1)
        .collect();

    let t = Instant::now();
    let par: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..parallel)
            .map(|_| s.spawn(|| mvctl(&d, &["run", "--rm", IMAGE, "true"]).1))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let par_wall = t.elapsed();

    let (mut api, mut create, mut start, mut boot, mut rm) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..breakdown {
        api.push(mvctl(&d, &["version"]).1);
        let (id, took) = mvctl(&d, &["create", IMAGE, "true"]);
        create.push(took);
        let id = id.trim().to_string();
        start.push(mvctl(&d, &["start", "-a", &id]).1);
        let info = inspect(&d, &id);
        if let Some(p) = info["paths"]["status"].as_str() {
            let st: serde_json::Value =
                serde_json::from_slice(&fs::read(p).unwrap_or_default()).unwrap_or_default();
            if let Some(us) = st["boot_time_us"].as_u64() {
                boot.push(Duration::from_micros(us));
            }
        }
        rm.push(mvctl(&d, &["rm", &id]).1);
    }

    // One running sandbox: its VMM's host memory.
    let (id, _) = mvctl(&d, &["run", "-d", IMAGE, "sleep", "600"]);
    let id = id.trim().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let info = inspect(&d, &id);
    let vmm = info["state"]["pid"].as_u64().map(|p| p as u32);
    let guest_bytes = info["host_config"]["memory_mib"].as_u64().unwrap_or(0) << 20;
    let (own, guest) = vmm
        .and_then(|p| mvm_e2e::procmem::read(p, guest_bytes))
        .map_or((0, 0), |m| (m.own, m.guest));
    mvctl(&d, &["rm", "-f", &id]);

    println!("## mvctl run --rm busybox true (mvctl -> mvmd -> mvm-vmm, real KVM)");
    println!();
    println!("| what | n | p50 ms | p95 ms |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| first run after import (root disk conversion) | 1 | {:.0} | - |",
        ms(first)
    );
    row("sequential `run --rm true`", &seq);
    row(
        &format!("parallel `run --rm true` ({parallel} at once)"),
        &par,
    );
    row("breakdown: `version` (CLI + API round trip)", &api);
    row("breakdown: `create` (API + disk preparation)", &create);
    row(
        "breakdown: `start -a` (VMM start, boot, workload, power-off)",
        &start,
    );
    if !boot.is_empty() {
        row(
            "breakdown: of which boot to init (VMM's boot_time_us)",
            &boot,
        );
    }
    row("breakdown: `rm` (teardown)", &rm);
    println!();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| starts per second ({parallel} parallel, {:.1} s wall) | {:.2} |",
        par_wall.as_secs_f64(),
        parallel as f64 / par_wall.as_secs_f64()
    );
    println!("| mvmd idle RSS | {:.1} MiB |", idle_rss as f64 / 1024.0);
    println!(
        "| one sandbox's VMM overhead (RSS outside guest RAM) | {:.1} MiB |",
        own as f64 / 1024.0
    );
    println!(
        "| its guest memory touched (RSS of guest RAM) | {:.1} MiB |",
        guest as f64 / 1024.0
    );
}
