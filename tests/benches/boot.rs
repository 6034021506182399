//! Boot benchmark: mvm-vmm against QEMU's `microvm` machine, side by side
//! on the same KVM, booting the same kernel, the same initramfs (mvm-init
//! plus a launch spec running `true`) and the same read-only busybox ext4
//! root disk, 1 vCPU and 128 MiB each. Prints a table; not a timed test.
//!
//! Per run it measures, from the host's `spawn()` of the VMM process:
//! - the time until init's `mvm-init: boot complete` line arrives on the
//!   serial console (read from the VMM's stdout through a pipe, so the
//!   timestamp is taken when the bytes arrive, not by polling a file);
//! - the time until the VMM process has exited after the workload `true`
//!   ran (init powers off, the guest resets, the VMM ends);
//! - CPU time (user + system, vCPU guest time included) from `wait4`;
//! - memory: `/proc/PID/status` every 10 ms (peak `RssAnon`, `RssFile`,
//!   `RssShmem`) and `/proc/PID/smaps` every 50 ms, which splits the
//!   process's RSS into the guest RAM mapping (told apart by its size,
//!   `mvm_e2e::procmem`) and the VMM's own overhead. Guest RAM is
//!   anonymous private memory in mvm-vmm without virtio-fs (so in
//!   `RssAnon`), a shared memfd in QEMU (`-object memory-backend-memfd`,
//!   so in `RssShmem`): only the smaps split compares the two.
//!
//! Every run is checked: the console must show init's `workload exited
//! with status 0` and the VMM must exit 0 (ours: status file
//! `powered_off`, exit code 0). A measured failed boot would be worthless,
//! so any failure ends the benchmark with the console in the message.
//!
//! QEMU's kernel command line is ours, taken from a warm-up run's debug
//! log, without our `virtio_mmio.device=` entries: `-M microvm,acpi=off`
//! appends its own for its devices (one virtio-blk, one virtio-rng, as
//! ours). QEMU's microvm has no i8042 by default, so `-device i8042` lets
//! the guest's `reboot=k` reset it, which `-no-reboot` turns into an exit.
//!
//! A second table compares mvm-vmm with its seccomp filters (the default)
//! and with `--no-seccomp`, the same runs interleaved: what the filters
//! cost in start time and memory.
//!
//! With `MVM_BENCH_BOOT_BASELINE_VMM` (another `mvm-vmm` binary, e.g. one
//! built from an older commit into its own target directory), a third
//! table compares it with `MVM_VMM`, the same runs interleaved in the same
//! host: how a change to the VMM moved boot time and memory.
//!
//! Runs are interleaved (a QEMU run after every few of ours) so that load
//! changes on the machine hit both alike; one warm-up run of each is not
//! counted (it pulls the binaries into the page cache).
//!
//! Environment: `MVM_KERNEL`, `MVM_INIT`, `MVM_VMM` (set by
//! `tests/run-bench.sh`), `MVM_BENCH_BOOT_RUNS` (ours, default 10),
//! `MVM_BENCH_QEMU_RUNS` (default 3; 0 skips QEMU),
//! `MVM_BENCH_NO_SECCOMP_RUNS` (default: as many as ours; 0 skips the
//! seccomp table), `MVM_BENCH_BOOT_BASELINE_VMM` (a second VMM, see
//! above) and `MVM_BENCH_BASELINE_RUNS` (default: as many as ours),
//! `MVM_BENCH_QEMU` (binary, default `qemu-system-x86_64`).
//!
//! Run: `make bench`, or `tests/run-bench.sh boot`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mvm_e2e::{procmem, rootfs, Artifacts, GuestState, StatusExt, StatusReport};
use mvm_protocol::initramfs::spec_archive;
use mvm_protocol::launch::LaunchSpec;

/// Init's console line once it runs (printed unless `mvm.quiet`).
const MARKER: &str = "mvm-init: boot complete";
/// Init's console line after the workload `true` exited cleanly.
const EXITED_OK: &str = "mvm-init: workload exited with status 0";
const MEMORY_MIB: u32 = 128;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// `/proc/PID/smaps` is read every this many samples (it walks the page
/// tables: too costly every 10 ms inside the emulated host).
const SMAPS_EVERY: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ours,
    Qemu,
    Baseline,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "mvm-vmm",
            Vmm::Qemu => "qemu microvm",
            Vmm::Baseline => "baseline mvm-vmm",
        }
    }
}

/// Memory figures of a process, KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Rss {
    anon: u64,
    file: u64,
    shmem: u64,
}

impl Rss {
    fn read(pid: u32) -> Option<Rss> {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = s.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Some(Rss {
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            shmem: field("RssShmem:")?,
        })
    }
}

/// One measured run.
#[derive(Debug)]
struct Sample {
    to_marker: Duration,
    to_exit: Duration,
    /// The VMM's own figure (process start to init's BootComplete event).
    boot_time_us: Option<u64>,
    cpu: Duration,
    /// Peaks over the run, KiB: the VMM's own and the guest RAM's resident
    /// pages (smaps), and the status fields.
    overhead: u64,
    guest: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

/// What a finished process left behind.
struct Finished {
    code: Option<i32>,
    console: String,
    stderr: String,
    marker_at: Option<Duration>,
    exit_at: Duration,
    cpu: Duration,
    peak: Rss,
    peak_split: procmem::VmmMemory,
}

/// Spawn `cmd` with its stdout (the guest console) on a pipe and watch it
/// until it exits: marker time, exit time, CPU, memory peaks.
fn watch(mut cmd: Command, stderr_path: &Path) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(stderr_path)?);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");

    // Console reader: timestamps the marker when its bytes arrive.
    let reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        let mut marker_at = None;
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    console.extend_from_slice(&buf[..n]);
                    if marker_at.is_none() {
                        let tail = console.len().saturating_sub(n + MARKER.len());
                        if String::from_utf8_lossy(&console[tail..]).contains(MARKER) {
                            marker_at = Some(start.elapsed());
                        }
                    }
                }
            }
        }
        (String::from_utf8_lossy(&console).into_owned(), marker_at)
    });

    // Reaper: wait4 gives the exact exit time and the child's rusage.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; zeroed is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child, which nothing else waits for (the
        // `Child` handle is never waited on); the pointers are valid.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        let at = start.elapsed();
        let _ = tx.send((r, status, ru, at));
    });

    let mut peak = Rss::default();
    let mut peak_split = procmem::VmmMemory::default();
    let guest_bytes = u64::from(MEMORY_MIB) << 20;
    let mut samples = 0u32;
    let (r, status, ru, exit_at) = loop {
        match rx.recv_timeout(SAMPLE_EVERY) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("reaper thread died"),
        }
        if let Some(rss) = Rss::read(pid) {
            peak.anon = peak.anon.max(rss.anon);
            peak.file = peak.file.max(rss.file);
            peak.shmem = peak.shmem.max(rss.shmem);
        }
        if samples.is_multiple_of(SMAPS_EVERY) {
            if let Some(m) = procmem::read(pid, guest_bytes) {
                peak_split.own = peak_split.own.max(m.own);
                peak_split.guest = peak_split.guest.max(m.guest);
            }
        }
        samples += 1;
        if start.elapsed() > RUN_TIMEOUT {
            // SAFETY: plain kill(2) of our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    };
    drop(child);
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let (console, marker_at) = reader.join().expect("console reader");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Finished {
        code,
        console,
        stderr: fs::read_to_string(stderr_path).unwrap_or_default(),
        marker_at,
        exit_at,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        peak,
        peak_split,
    })
}

/// Inputs shared by every run.
struct Setup {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    /// Our two archives (init, spec), and their concatenation for QEMU.
    spec_cpio: PathBuf,
    both_cpio: PathBuf,
    qemu: String,
    /// `MVM_BENCH_BOOT_BASELINE_VMM`.
    baseline: Option<PathBuf>,
}

impl Setup {
    fn new() -> Result<Setup> {
        let a = Artifacts::get();
        let dir = tempfile::Builder::new()
            .prefix("mvm-bench-boot-")
            .tempdir()?;
        let spec = LaunchSpec::new(vec!["true".into()]);
        let spec_bytes = spec_archive(&spec.to_json()?)?;
        let spec_cpio = dir.path().join("spec.cpio");
        fs::write(&spec_cpio, &spec_bytes)?;
        // The VMM pads each archive to 4 bytes; init's archive is a whole
        // number of 512-byte blocks already, so plain concatenation is the
        // same initrd.
        let mut both = fs::read(&a.init_cpio)?;
        both.resize(both.len().next_multiple_of(4), 0);
        both.extend_from_slice(&spec_bytes);
        let both_cpio = dir.path().join("initrd.cpio");
        fs::write(&both_cpio, both)?;
        Ok(Setup {
            rootfs: rootfs::busybox().to_path_buf(),
            spec_cpio,
            both_cpio,
            qemu: std::env::var("MVM_BENCH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
            baseline: std::env::var_os("MVM_BENCH_BOOT_BASELINE_VMM").map(PathBuf::from),
            dir,
        })
    }

    fn run_dir(&self, vmm: Vmm, n: usize) -> Result<PathBuf> {
        let d = self.dir.path().join(format!("{vmm:?}-{n}"));
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// A run of `vmm` (ours or the baseline: an mvm-vmm binary).
    fn ours(
        &self,
        vmm: Vmm,
        n: usize,
        debug_log: bool,
        seccomp: bool,
    ) -> Result<(Sample, Finished)> {
        let a = Artifacts::get();
        let d = self.run_dir(vmm, n)?;
        let d = if seccomp { d } else { d.join("no-seccomp") };
        fs::create_dir_all(&d)?;
        let status_path = d.join("status.json");
        let binary = match vmm {
            Vmm::Baseline => self.baseline.clone().context("no baseline VMM")?,
            _ => a.vmm.clone(),
        };
        let mut cmd = Command::new(&binary);
        cmd.arg("--kernel")
            .arg(&a.kernel)
            .arg("--initrd")
            .arg(&a.init_cpio)
            .arg("--initrd")
            .arg(&self.spec_cpio)
            .args(["--cpus", "1", "--memory", &MEMORY_MIB.to_string()])
            .arg("--drive")
            .arg(format!("id=rootfs,path={},ro", self.rootfs.display()))
            .args(["--console", "stdout", "--status-file"])
            .arg(&status_path)
            .args((!seccomp).then_some("--no-seccomp"))
            .env("MVM_LOG", if debug_log { "debug" } else { "warn" });
        let f = watch(cmd, &d.join("stderr"))?;
        let status = StatusReport::read(&status_path);
        let ok = f.code == Some(0)
            && status.as_ref().is_some_and(|s| {
                s.guest == GuestState::PoweredOff
                    && s.exit_code() == Some(0)
                    && s.boot_time_us.is_some()
            });
        let sample = check(vmm, &f, ok, &format!("status file: {status:?}"))?;
        let sample = Sample {
            boot_time_us: status.and_then(|s| s.boot_time_us),
            ..sample
        };
        Ok((sample, f))
    }

    fn qemu(&self, n: usize, append: &str) -> Result<Sample> {
        let a = Artifacts::get();
        let d = self.run_dir(Vmm::Qemu, n)?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off,memory-backend=mem",
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"),
            "-m",
            &format!("{MEMORY_MIB}M"),
            "-smp",
            "1",
            "-enable-kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "i8042",
        ])
        .arg("-kernel")
        .arg(&a.kernel)
        .arg("-initrd")
        .arg(&self.both_cpio)
        .arg("-append")
        .arg(append)
        .arg("-drive")
        .arg(format!(
            "id=rootfs,file={},format=raw,if=none,readonly=on",
            self.rootfs.display()
        ))
        .args([
            "-device",
            "virtio-blk-device,drive=rootfs,serial=rootfs",
            "-device",
            "virtio-rng-device",
        ]);
        let f = watch(cmd, &d.join("stderr"))?;
        check(Vmm::Qemu, &f, f.code == Some(0), "")
    }
}

/// Turn a finished run into a sample, or fail naming what went wrong.
fn check(vmm: Vmm, f: &Finished, ok: bool, extra: &str) -> Result<Sample> {
    let describe = || {
        format!(
            "exit code {:?} after {:?}; {extra}\n--- stderr\n{}\n--- console\n{}",
            f.code, f.exit_at, f.stderr, f.console
        )
    };
    let Some(to_marker) = f.marker_at else {
        bail!(
            "{}: no {MARKER:?} on the console: {}",
            vmm.name(),
            describe()
        );
    };
    if !ok || !f.console.contains(EXITED_OK) {
        bail!(
            "{}: the guest did not run `true` to a clean power-off (want exit 0 and {EXITED_OK:?}): {}",
            vmm.name(),
            describe()
        );
    }
    Ok(Sample {
        to_marker,
        to_exit: f.exit_at,
        boot_time_us: None,
        cpu: f.cpu,
        overhead: f.peak_split.own,
        guest: f.peak_split.guest,
        anon: f.peak.anon,
        file: f.peak.file,
        shmem: f.peak.shmem,
    })
}

/// Our kernel command line from a debug log, without the virtio-mmio
/// entries (QEMU adds its own).
fn cmdline_from_log(stderr: &str) -> Result<String> {
    const KEY: &str = "kernel command line: ";
    let line = stderr
        .lines()
        .find_map(|l| l.split_once(KEY).map(|(_, rest)| rest))
        .with_context(|| format!("no {KEY:?} in mvm-vmm's debug log (MVM_LOG=debug):\n{stderr}"))?;
    // Drop any ANSI colour codes the logger may add.
    let mut clean = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            clean.push(c);
        }
    }
    Ok(clean
        .split_whitespace()
        .filter(|w| !w.starts_with("virtio_mmio.device="))
        .collect::<Vec<_>>()
        .join(" "))
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of runs")),
        Err(_) => default,
    }
}

/// Nearest-rank percentile.
fn pct<T: Copy + Ord>(mut v: Vec<T>, p: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

struct Row {
    name: &'static str,
    unit: &'static str,
    get: fn(&Sample) -> Option<f64>,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Two columns of samples side by side: `a` and `b` with their names, and
/// the ratio b/a of the medians.
struct Columns<'a> {
    a: (&'a str, &'a [Sample]),
    b: (&'a str, &'a [Sample]),
}

fn print_table(title: &str, cols: Columns<'_>) {
    let (a_name, ours) = cols.a;
    let (b_name, qemu) = cols.b;
    let rows = [
        Row {
            name: "spawn -> init running (console marker)",
            unit: "ms",
            get: |s| Some(ms(s.to_marker)),
        },
        Row {
            name: "VMM start -> BootComplete (status file)",
            unit: "ms",
            get: |s| s.boot_time_us.map(|us| us as f64 / 1000.0),
        },
        Row {
            name: "spawn -> VMM exit, workload `true`",
            unit: "ms",
            get: |s| Some(ms(s.to_exit)),
        },
        Row {
            name: "CPU time, user+sys (vCPU included)",
            unit: "ms",
            get: |s| Some(ms(s.cpu)),
        },
        Row {
            name: "VMM overhead: peak RSS outside guest RAM",
            unit: "MiB",
            get: |s| Some(mib(s.overhead)),
        },
        Row {
            name: "guest memory touched: peak RSS of guest RAM",
            unit: "MiB",
            get: |s| Some(mib(s.guest)),
        },
        Row {
            name: "  peak RssAnon (anonymous guest RAM too)",
            unit: "MiB",
            get: |s| Some(mib(s.anon)),
        },
        Row {
            name: "  peak RssFile",
            unit: "MiB",
            get: |s| Some(mib(s.file)),
        },
        Row {
            name: "  peak RssShmem (memfd guest RAM)",
            unit: "MiB",
            get: |s| Some(mib(s.shmem)),
        },
    ];
    // f64 is not Ord: rank on thousandths instead.
    let stat = |samples: &[Sample], get: fn(&Sample) -> Option<f64>, p: f64| -> Option<f64> {
        let v: Vec<i64> = samples
            .iter()
            .filter_map(get)
            .map(|x| (x * 1000.0).round() as i64)
            .collect();
        pct(v, p).map(|x| x as f64 / 1000.0)
    };
    println!();
    println!("{title}");
    let h = |name: &str, p: &str| format!("{name} {p}");
    println!(
        "{:<44} {:>4} {:>14} {:>14} {:>14} {:>14} {:>11}",
        "metric",
        "unit",
        h(a_name, "p50"),
        h(a_name, "p95"),
        h(b_name, "p50"),
        h(b_name, "p95"),
        format!("{b_name}/{a_name}")
    );
    for r in &rows {
        let (o50, o95) = (stat(ours, r.get, 50.0), stat(ours, r.get, 95.0));
        let (q50, q95) = (stat(qemu, r.get, 50.0), stat(qemu, r.get, 95.0));
        let ratio = match (o50, q50) {
            (Some(o), Some(q)) if o > 0.0 => format!("{:.2}x", q / o),
            _ => "-".into(),
        };
        println!(
            "{:<44} {:>4} {:>14} {:>14} {:>14} {:>14} {:>11}",
            r.name,
            r.unit,
            fmt_opt(o50),
            fmt_opt(o95),
            fmt_opt(q50),
            fmt_opt(q95),
            ratio
        );
    }
}

fn environment() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let place = if std::env::var_os("MVM_TESTHOST").is_some() {
        "inside the emulated KVM host (nested KVM under QEMU TCG: absolute times are TCG times, compare ratios)"
    } else {
        "on this host's KVM"
    };
    format!(
        "{place}; {cpus} CPUs, load {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The kinds of run a benchmark interleaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Ours,
    Qemu,
    NoSeccomp,
    Baseline,
}

fn main() -> Result<()> {
    let n_ours = env_count("MVM_BENCH_BOOT_RUNS", 10).max(1);
    let n_qemu = env_count("MVM_BENCH_QEMU_RUNS", 3);
    let n_open = env_count("MVM_BENCH_NO_SECCOMP_RUNS", n_ours);
    let setup = Setup::new()?;
    let n_base = match &setup.baseline {
        Some(_) => env_count("MVM_BENCH_BASELINE_RUNS", n_ours),
        None => 0,
    };
    eprintln!("boot: {}", environment());

    // Warm-up (not counted): page cache, and our exact command line.
    eprintln!("boot: warm-up run of mvm-vmm (debug log, not counted)");
    let (_, warm) = setup.ours(Vmm::Ours, 0, true, true)?;
    let append = cmdline_from_log(&warm.stderr)?;
    if n_qemu > 0 {
        eprintln!("boot: warm-up run of QEMU (not counted); -append {append:?}");
        setup.qemu(0, &append)?;
    }
    if let (Some(b), true) = (&setup.baseline, n_base > 0) {
        eprintln!(
            "boot: warm-up run of the baseline mvm-vmm {} (not counted)",
            b.display()
        );
        setup.ours(Vmm::Baseline, 0, false, true)?;
    }

    // Interleave: next is whichever has done the smallest share of its
    // runs (ties: the first in this order).
    let wanted = [
        (Arm::Ours, n_ours),
        (Arm::Qemu, n_qemu),
        (Arm::NoSeccomp, n_open),
        (Arm::Baseline, n_base),
    ];
    let (mut ours, mut qemu, mut open, mut base) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    loop {
        let done = |arm: Arm| match arm {
            Arm::Ours => ours.len(),
            Arm::Qemu => qemu.len(),
            Arm::NoSeccomp => open.len(),
            Arm::Baseline => base.len(),
        };
        let next = wanted
            .iter()
            .filter(|(arm, of)| done(*arm) < *of)
            .min_by(|(x, xn), (y, yn)| {
                let sx = done(*x) as f64 / *xn as f64;
                let sy = done(*y) as f64 / *yn as f64;
                sx.total_cmp(&sy)
            })
            .map(|(arm, of)| (*arm, *of));
        let Some((arm, of)) = next else { break };
        let n = done(arm) + 1;
        let (s, label, into) = match arm {
            Arm::Ours => (
                setup.ours(Vmm::Ours, n, false, true)?.0,
                "mvm-vmm",
                &mut ours,
            ),
            Arm::NoSeccomp => (
                setup.ours(Vmm::Ours, n, false, false)?.0,
                "mvm-vmm --no-seccomp",
                &mut open,
            ),
            Arm::Baseline => (
                setup.ours(Vmm::Baseline, n, false, true)?.0,
                "baseline mvm-vmm",
                &mut base,
            ),
            Arm::Qemu => (setup.qemu(n, &append)?, "qemu", &mut qemu),
        };
        eprintln!(
            "boot: {label} run {n}/{of}: marker {:?}, exit {:?}",
            s.to_marker, s.to_exit
        );
        into.push(s);
    }
    print_table(
        &format!(
            "boot: mvm-vmm ({} runs) vs QEMU -M microvm ({} runs); 1 vCPU, {MEMORY_MIB} MiB, same kernel, initramfs, busybox root disk, workload `true`",
            ours.len(),
            qemu.len()
        ),
        Columns {
            a: ("ours", &ours),
            b: ("qemu", &qemu),
        },
    );
    if n_open > 0 {
        print_table(
            &format!(
                "boot: mvm-vmm with its seccomp filters ({} runs) vs --no-seccomp ({} runs), same runs interleaved",
                ours.len(),
                open.len()
            ),
            Columns {
                a: ("seccomp", &ours),
                b: ("no-seccomp", &open),
            },
        );
    }
    if n_base > 0 {
        let b = setup.baseline.as_deref().unwrap_or(Path::new("?"));
        print_table(
            &format!(
                "boot: mvm-vmm {} ({} runs) vs baseline mvm-vmm {} ({} runs), same runs interleaved",
                Artifacts::get().vmm.display(),
                ours.len(),
                b.display(),
                base.len()
            ),
            Columns {
                a: ("ours", &ours),
                b: ("baseline", &base),
            },
        );
    }
    println!("({})", environment());
    Ok(())
}
