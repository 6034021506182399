//! Restore benchmark (issue 15): a sandbox started from a checkpoint
//! against a cold boot, through `mvctl` and a real `mvmd` on real KVM, in
//! one table. Prints a table; not a timed test.
//!
//! Rounds (`MVM_BENCH_RESTORE_RUNS`, default 10), interleaved (the first
//! of the three changes each round):
//! - **cold `run --rm true`**: create, boot, the workload, power-off,
//!   teardown, as a user types it;
//! - **cold start to a running workload**: `start` of a created sandbox
//!   whose workload counts in a tmpfs, then `exec … cat /tmp/count` (mvmd
//!   waits for the guest agent): the boot, init, the agent;
//! - **restore to a running workload**: `start --checkpoint c1` of the
//!   same kind of sandbox checkpointed once while it counted, then the
//!   same `exec`, whose count must not be below the one saved (a boot
//!   would start again at 1).
//!
//! One untimed start of each sandbox comes first (the first restore reads
//! the memory file from disk). Each sandbox is stopped between rounds,
//! untimed. Then one sandbox of
//! each kind is left running for a while and its VMM's guest memory is
//! read from `/proc/PID/smaps` (`mvm_e2e::procmem`): resident, PSS, and
//! for the restored one how much of it is the memory file's pages (shared
//! with the page cache and any other mapping of the file) against its
//! private copies of the pages it wrote.
//!
//! Every call is checked (exit status 0).

use std::time::{Duration, Instant};

use mvm_e2e::bench::{
    env_usize, import_busybox, inspect, ms, mvctl, pct, start_daemon_with, Daemon, IMAGE,
};

/// A workload that keeps its state in a tmpfs: the count goes on after a
/// restore and starts again at 1 after a boot.
/// Each count is written to a new file renamed over the old one: `echo >
/// /tmp/count` truncates before it writes, and an `exec` reading in
/// between saw an empty file (the first run of this benchmark failed so).
const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 1; done";

/// The count the workload of sandbox `name` has written (its first
/// `exec`, which waits for the agent).
fn count(d: &Daemon, name: &str) -> (u64, Duration) {
    // Before the workload's first write there is no file: 0.
    let (out, took) = mvctl(
        d,
        &[
            "exec",
            name,
            "sh",
            "-c",
            "cat /tmp/count 2>/dev/null || echo 0",
        ],
    );
    let n = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: /tmp/count holds {out:?}"));
    (n, took)
}

/// Start `name` (from `checkpoint` if given) and reach its workload:
/// (the `start` call, start to the first `exec` answered, the count).
fn start(d: &Daemon, name: &str, checkpoint: Option<&str>) -> (Duration, Duration, u64) {
    let t = Instant::now();
    let args: Vec<&str> = match checkpoint {
        Some(c) => vec!["start", "--checkpoint", c, name],
        None => vec!["start", name],
    };
    let (_, started) = mvctl(d, &args);
    let (n, _) = count(d, name);
    (started, t.elapsed(), n)
}

/// The guest memory of sandbox `name`'s running VMM.
fn guest_memory(d: &Daemon, name: &str) -> mvm_e2e::procmem::VmmMemory {
    let info = inspect(d, name);
    let pid = info["state"]["pid"].as_u64().expect("a running VMM's pid") as u32;
    let bytes = info["host_config"]["memory_mib"].as_u64().unwrap_or(0) << 20;
    mvm_e2e::procmem::read(pid, bytes).expect("the VMM's smaps")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    mvm_e2e::require_hardware_kvm();
    let runs = env_usize("MVM_BENCH_RESTORE_RUNS", 10).max(1);
    let d = start_daemon_with(&[]);
    import_busybox(&d);
    // Warm-up: the image's root disk and the init archive are made once.
    mvctl(&d, &["run", "--rm", IMAGE, "true"]);

    let (cold, warm) = ("bench-cold", "bench-restore");
    mvctl(&d, &["create", "--name", cold, IMAGE, "sh", "-c", COUNTER]);
    mvctl(
        &d,
        &["run", "-d", "--name", warm, IMAGE, "sh", "-c", COUNTER],
    );
    let t = Instant::now();
    // The count the checkpoint holds is at least this one: a restored
    // guest's first answer cannot be below it.
    let at_checkpoint = loop {
        let (n, _) = count(&d, warm);
        if n >= 3 {
            break n;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no count");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, checkpoint_took) = mvctl(&d, &["checkpoint", "create", warm, "c1"]);
    let saved = {
        let dir = inspect(&d, warm)["paths"]["dir"]
            .as_str()
            .expect("paths.dir")
            .to_string();
        let list = std::fs::read_to_string(format!("{dir}/checkpoints/c1/checkpoint.json"))
            .expect("checkpoint.json");
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        (
            v["paused_us"].as_u64().unwrap_or(0),
            v["memory_bytes"].as_u64().unwrap_or(0),
        )
    };
    // Warm-up, untimed: the first restore reads the memory file from
    // disk; the cold sandbox's first boot does the same for its disks.
    for (name, checkpoint) in [(warm, Some("c1")), (cold, None)] {
        start(&d, name, checkpoint);
        mvctl(&d, &["stop", "-t", "0", name]);
    }

    let (mut run_rm, mut cold_start, mut cold_ready) = (vec![], vec![], vec![]);
    let (mut rest_start, mut rest_ready) = (vec![], vec![]);
    for round in 0..runs {
        eprintln!("restore: round {}/{runs}", round + 1);
        for k in 0..3 {
            match (round + k) % 3 {
                0 => run_rm.push(mvctl(&d, &["run", "--rm", IMAGE, "true"]).1),
                1 => {
                    let (s, r, _) = start(&d, cold, None);
                    cold_start.push(s);
                    cold_ready.push(r);
                    mvctl(&d, &["stop", "-t", "0", cold]);
                }
                _ => {
                    let (s, r, n) = start(&d, warm, Some("c1"));
                    assert!(
                        n >= at_checkpoint,
                        "the restored count is {n}, the checkpoint's {at_checkpoint}: a boot?"
                    );
                    rest_start.push(s);
                    rest_ready.push(r);
                    mvctl(&d, &["stop", "-t", "0", warm]);
                }
            }
        }
    }

    // Memory of one of each, running a while.
    start(&d, cold, None);
    start(&d, warm, Some("c1"));
    std::thread::sleep(Duration::from_secs(5));
    let (mc, mr) = (guest_memory(&d, cold), guest_memory(&d, warm));
    mvctl(&d, &["stop", "-t", "0", cold]);
    mvctl(&d, &["stop", "-t", "0", warm]);

    let base = pct(&run_rm, 0.5);
    let line = |what: &str, v: &[Duration]| {
        println!(
            "| {what} | {} | {:.0} | {:.0} | {:.2}x |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.95),
            pct(v, 0.5) / base
        );
    };
    println!(
        "## restore: `start --checkpoint` against a cold boot (mvctl -> mvmd -> mvm-vmm, real KVM)"
    );
    println!();
    println!("| what | n | p50 ms | p95 ms | p50 / cold `run --rm true` |");
    println!("| --- | --- | --- | --- | --- |");
    line("cold `run --rm true`", &run_rm);
    line("cold `start` (the call)", &cold_start);
    line(
        "cold `start` + first `exec` answered (boot to a running workload)",
        &cold_ready,
    );
    line("`start --checkpoint` (the call)", &rest_start);
    line(
        "`start --checkpoint` + first `exec` answered (restore to a running workload)",
        &rest_ready,
    );
    println!();
    println!(
        "restore to a running workload: {:.2}x of a cold boot to one (p50); the checkpoint (made once: pause, write, copy the scratch disk) took {:.0} ms, the guest paused {:.0} ms, {:.1} MiB of guest memory written",
        pct(&rest_ready, 0.5) / pct(&cold_ready, 0.5),
        ms(checkpoint_took),
        saved.0 as f64 / 1000.0,
        mib(saved.1 / 1024)
    );
    println!();
    println!("| guest memory of one running sandbox, 5 s after its start | resident MiB | PSS MiB | private (anonymous) MiB | shared with the memory file MiB |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| cold boot | {:.1} | {:.1} | {:.1} | - |",
        mib(mc.guest),
        mib(mc.guest_pss),
        mib(mc.guest_anon)
    );
    println!(
        "| restored from c1 | {:.1} | {:.1} | {:.1} | {:.1} |",
        mib(mr.guest),
        mib(mr.guest_pss),
        mib(mr.guest_anon),
        mib(mr.guest.saturating_sub(mr.guest_anon))
    );
}
