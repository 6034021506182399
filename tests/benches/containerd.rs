//! containerd with the mvm runtime against runc (Debian's
//! `io.containerd.runc.v2`) on the same host and the same image
//! (`mvm_e2e::containerd`): `ctr run --rm IMAGE id true` wall time, p50
//! and p95 of 10 each, then the host memory of one running task (its shim
//! plus the VMM and virtiofsd, or runc's shim plus the container's
//! process), as PSS. Prints a table; asserts nothing about timing.

use std::time::{Duration, Instant};

use mvm_e2e::containerd::{shim_pid_of, text, Containerd, IMAGE, RUNTIME};

const RUNC: &str = "io.containerd.runc.v2";
const N: usize = 10;

fn run_once(c: &Containerd, runtime: &str, id: &str) -> Duration {
    let t0 = Instant::now();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--snapshotter",
        "native",
        IMAGE,
        id,
        "true",
    ]);
    let d = t0.elapsed();
    assert!(
        out.status.success(),
        "{runtime}: {}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    d
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// PSS of `pid` in KiB (`smaps_rollup`).
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The shim of task `id` and every process below it (runc's container
/// process), plus the VMs of this containerd (mvm's VMM and virtiofsd,
/// in their own sessions).
fn task_memory(c: &Containerd, id: &str) -> (u64, usize) {
    let shim = c
        .shim_pid(id)
        .or_else(|| shim_pid_of("containerd-shim-runc-v2", id));
    let mut pids: Vec<i32> = shim.into_iter().collect();
    // Descendants of the shim.
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rfind(')')
                        .and_then(|j| s[j + 2..].split_whitespace().nth(1)?.parse::<i32>().ok())
                });
            if ppid == Some(parent) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        i += 1;
    }
    for p in c.vm_processes() {
        if !pids.contains(&p) {
            pids.push(p);
        }
    }
    (pids.iter().map(|p| pss_kib(*p)).sum(), pids.len())
}

fn main() {
    let c = Containerd::start();
    let mut rows = Vec::new();
    for (name, runtime) in [("mvm", RUNTIME), ("runc", RUNC)] {
        // One warm-up (init archive, page cache).
        run_once(&c, runtime, &format!("{name}-warm"));
        let mut times: Vec<Duration> = (0..N)
            .map(|i| run_once(&c, runtime, &format!("{name}-{i}")))
            .collect();
        let p50 = percentile(&mut times, 0.5);
        let p95 = percentile(&mut times, 0.95);
        let id = format!("{name}-mem");
        let out = c.ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--snapshotter",
            "native",
            IMAGE,
            &id,
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Running means booted for runc; for mvm, wait for the guest's
        // workload (the agent answers `ps` once it runs).
        let t0 = Instant::now();
        while !c.ctr(&["task", "ps", &id]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "task {id} never ran"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (pss, procs) = task_memory(&c, &id);
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        c.wait_stopped(&id);
        c.ok(&["task", "delete", &id]);
        c.ok(&["containers", "rm", &id]);
        rows.push((name, p50, p95, pss, procs));
    }
    println!("\n`ctr run --rm IMAGE id true`, {N} sequential runs each, same host and image (native snapshotter)\n");
    println!("| runtime | p50 | p95 | host memory per task (PSS) | processes |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, p50, p95, pss, procs) in rows {
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.1} MiB | {procs} |",
            p50.as_secs_f64() * 1000.0,
            p95.as_secs_f64() * 1000.0,
            pss as f64 / 1024.0
        );
    }
}
