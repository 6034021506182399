//! The "machine": on hosts without hardware KVM, mvmd and its microVMs run
//! inside the emulated KVM host (`resources/testhost/`: QEMU TCG with
//! nested AMD SVM), started once and kept running, with the API forwarded
//! to a local TCP port, as `podman machine` does. mvctl then works
//! unchanged, only slower.
//!
//! - L1 boots the testhost's kernel and init; its job is
//!   `resources/testhost/machine-l1`, which mounts the persistent disk at
//!   `/var/lib/mvm`, installs the machine's own copies of mvmd, mvm-vmm,
//!   the guest init and kernel there when they changed ([`artifacts`]),
//!   brings up user-mode networking (with L1's 127.0.0.1 pointed at the
//!   host's) and runs mvmd with `--tcp 0.0.0.0:2375 --token-file ...
//!   --kernel --init --vmm` until told to stop ([`qemu`], [`boot`]).
//! - A watcher restarts an L1 that stalls or dies and records which
//!   sandboxes that cost; the next command tells the user ([`health`],
//!   [`watch`]).
//! - The disk is a sparse ext4 image, so images and sandboxes survive
//!   machine restarts ([`disk`]). Sandboxes do not survive: their VMMs die
//!   with L1, and mvmd marks them exited on its next start.
//! - QEMU forwards `127.0.0.1:PORT` (free at start) to mvmd; the token is
//!   fresh for each boot, 0600. `machine.json` (0600, in the run dir)
//!   records QEMU's pid and start time, the port and the token file
//!   ([`state`]); [`endpoint`] trusts it only while that very QEMU lives
//!   and mvmd answers `/_ping` ([`ping`]).
//! - Stop writes `stop` to a virtio-serial control port; L1 stops mvmd and
//!   the VMMs, syncs, unmounts the disk and powers off, so the file system
//!   is clean (no journal to replay). Only if L1 does not power off in
//!   time is QEMU killed; the next start's `e2fsck -p` then replays the
//!   journal.
//! - Start and stop are serialised between mvctl processes by a lock file.

pub mod artifacts;
pub mod boot;
pub mod disk;
pub mod health;
pub mod paths;
pub mod ping;
pub mod ports;
pub mod qemu;
pub mod state;
pub mod wake;
pub mod watch;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::MachineCommand;
use crate::format;
use paths::{BootFiles, Paths, PathsError};
use qemu::{L1Boot, QemuConfig, QemuError};
use state::{MachineState, StateError};

/// Where the machine's mvmd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `tcp://127.0.0.1:PORT`.
    pub url: String,
    /// Bearer token of that port.
    pub token: String,
}

/// Size of the machine when it has to be started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// vCPUs of the emulated host ([`DEFAULT_CPUS`] when `None`).
    pub cpus: Option<u32>,
    /// Memory of the emulated host in MiB ([`DEFAULT_MEMORY_MIB`] when
    /// `None`).
    pub memory_mib: Option<u64>,
}

/// The name the brief gives [`StartOptions`].
pub type MachineOptions = StartOptions;

/// vCPUs of L1 by default: TCG runs one host thread per vCPU.
pub const DEFAULT_CPUS: u32 = 2;
/// Memory of L1 by default. L1 keeps its root overlay and `/tmp` in
/// memory; mvmd's temporary files go to the disk.
pub const DEFAULT_MEMORY_MIB: u64 = 4096;
/// Least memory: the testhost kernel, its tmpfs root and mvmd.
const MIN_MEMORY_MIB: u64 = 1024;
/// Environment variable with the seconds to wait for the machine to answer.
pub const TIMEOUT_ENV: &str = "MVM_MACHINE_TIMEOUT";
/// Default of [`TIMEOUT_ENV`]: L1 boots in 15-40 s under TCG on a loaded
/// 2-core host, its first boot also builds the initramfs.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long L1 gets to power off after `stop` (mvmd 15 s, the VMMs 5 s,
/// unmounting, plus a boot still in progress).
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How many ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: u32 = 3;
/// Boots of L1 one start tries when L1 stalls before mvmd answers (a
/// fault of the emulation, README "Reliability"): the second boot has
/// always come up where the first froze.
const BOOT_ATTEMPTS: u32 = 2;

/// Errors of the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Finding files or programs.
    #[error(transparent)]
    Paths(#[from] PathsError),
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// The disk.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// L1's kernel and initramfs.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The boot dir.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The machine's programs.
    #[error(transparent)]
    Artifacts(#[from] artifacts::ArtifactError),
    /// L1 stalled (while waited for; the caller restarts or stops it).
    #[error("{0}")]
    Stalled(health::Stall),
    /// L1 failed too often in a row to be restarted again.
    #[error("{0}")]
    GaveUp(String),
    /// A start option out of range.
    #[error("{0}")]
    BadOption(String),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error(
        "cannot start {}: {source}; install QEMU (apt-get install qemu-system-x86)",
        qemu::QEMU
    )]
    Spawn {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The machine ended while starting.
    #[error("the machine stopped while starting ({why}).{details}")]
    Died {
        /// What ended it.
        why: String,
        /// Log excerpts and where the logs are.
        details: String,
    },
    /// mvmd did not answer in time.
    #[error(
        "the machine (QEMU pid {pid}) started but mvmd did not answer on {url} within {secs} s; it is left \
         running (`mvctl machine stop` stops it). Read {console} (L1's kernel log), {machine_log} and \
         {mvmd_log}; set {TIMEOUT_ENV} to wait longer"
    )]
    Timeout {
        /// QEMU's pid.
        pid: u32,
        /// The endpoint.
        url: String,
        /// Seconds waited.
        secs: u64,
        /// L1's console log.
        console: String,
        /// The job's log.
        machine_log: String,
        /// mvmd's log.
        mvmd_log: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MachineError {
    let what = what.into();
    move |source| MachineError::Io { what, source }
}

/// Start the machine unless it runs, and return its endpoint; says on
/// stderr what it does, since a start takes tens of seconds. A restart of
/// the machine after a failure that nobody was told of yet is told here.
pub fn ensure_running(opts: &StartOptions) -> Result<Endpoint, MachineError> {
    let paths = Paths::from_env();
    let ep = start(&paths, opts)?.endpoint;
    watch::report(&paths);
    Ok(ep)
}

/// The endpoint of the running machine, if one runs and mvmd answers; as
/// [`ensure_running`], tells of a restart after a failure.
pub fn endpoint() -> Option<Endpoint> {
    let paths = Paths::from_env();
    let ep = running_endpoint(&paths)?;
    watch::report(&paths);
    Some(ep)
}

/// `mvctl machine start|stop|status`; returns the exit status.
pub fn cli(cmd: MachineCommand) -> Result<i32, MachineError> {
    let paths = Paths::from_env();
    match cmd {
        MachineCommand::Start { cpus, memory } => {
            let opts = StartOptions {
                cpus,
                memory_mib: memory,
            };
            let started = start(&paths, &opts)?;
            watch::report(&paths);
            if !started.started {
                let s = &started.state;
                println!(
                    "The machine is already running (QEMU pid {}): mvmd at {}",
                    s.pid,
                    s.url()
                );
                let differs =
                    cpus.is_some_and(|c| c != s.cpus) || memory.is_some_and(|m| m != s.memory_mib);
                if differs {
                    eprintln!(
                        "mvctl: warning: it runs with {} vCPUs and {} MiB; `mvctl machine stop` first to change them",
                        s.cpus, s.memory_mib
                    );
                }
            } else {
                println!("Machine running: mvmd at {}", started.endpoint.url);
            }
            Ok(0)
        }
        MachineCommand::Stop => stop(&paths),
        MachineCommand::Status => {
            print!("{}", status_text(&paths)?);
            Ok(0)
        }
        MachineCommand::Watch => Ok(watch::run(&paths)),
    }
}

fn running_endpoint(paths: &Paths) -> Option<Endpoint> {
    let s = MachineState::load(&paths.state()).ok()??;
    if !s.is_alive() {
        return None;
    }
    let token = read_token(&s.token_file).ok()?;
    ping::ping(s.port, &token, Duration::from_secs(3)).ok()?;
    Some(Endpoint {
        url: s.url(),
        token,
    })
}

fn read_token(path: &Path) -> Result<String, MachineError> {
    Ok(fs::read_to_string(path)
        .map_err(io_err(format!(
            "read the machine's token {}",
            path.display()
        )))?
        .trim()
        .into())
}

/// The outcome of [`start`].
#[derive(Debug, Clone)]
pub(crate) struct Started {
    pub(crate) endpoint: Endpoint,
    pub(crate) state: MachineState,
    /// `false` when it was running already.
    pub(crate) started: bool,
}

pub(crate) fn check_options(opts: &StartOptions) -> Result<(u32, u64), MachineError> {
    let cpus = opts.cpus.unwrap_or(DEFAULT_CPUS);
    if !(1..=64).contains(&cpus) {
        return Err(MachineError::BadOption(format!(
            "--cpus {cpus}: the machine takes 1 to 64 vCPUs"
        )));
    }
    let memory = opts.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    if memory < MIN_MEMORY_MIB {
        return Err(MachineError::BadOption(format!(
            "--memory {memory} MiB: the machine needs at least {MIN_MEMORY_MIB} MiB (its root file system and /tmp \
             live in its memory)"
        )));
    }
    let host = host_memory_mib();
    if host > 0 && memory > host {
        return Err(MachineError::BadOption(format!(
            "--memory {memory} MiB: this host has only {host} MiB; give the machine less"
        )));
    }
    Ok((cpus, memory))
}

fn host_memory_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// The lock serialising start and stop; released when dropped.
pub(crate) fn lock(paths: &Paths) -> Result<File, MachineError> {
    fs::create_dir_all(&paths.run_dir)
        .map_err(io_err(format!("create {}", paths.run_dir.display())))?;
    let p = paths.lock();
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(io_err(format!("open {}", p.display())))?;
    // SAFETY: flock on a descriptor owned by `f`; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    eprintln!("mvctl: waiting for another mvctl that is starting or stopping the machine");
    loop {
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(MachineError::Io {
                what: format!("lock {}", p.display()),
                source: e,
            });
        }
    }
}

fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&s: &u64| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

fn start(paths: &Paths, opts: &StartOptions) -> Result<Started, MachineError> {
    let opts = check_options(opts)?;
    let _lock = lock(paths)?;
    let started = start_locked(paths, opts, None)?;
    if started.started {
        // This process started it (or restarted a failed one): a watcher
        // takes over from here.
        let mut state = started.state.clone();
        state.watcher = watch::spawn(paths);
        state.save(&paths.state())?;
        return Ok(Started { state, ..started });
    }
    Ok(started)
}

/// [`start`] under the lock: use the machine that runs (restarting it if
/// L1 has stalled), or boot one. A new machine shares `shares`
/// writable (a restart: the failed machine's), or when `None` (or
/// empty) the user's home and the current directory
/// ([`boot::host_shares`]).
pub(crate) fn start_locked(
    paths: &Paths,
    (cpus, memory_mib): (u32, u64),
    shares: Option<&[PathBuf]>,
) -> Result<Started, MachineError> {
    if let Some(s) = MachineState::load(&paths.state())? {
        if s.is_alive() {
            let token = read_token(&s.token_file)?;
            let endpoint = Endpoint {
                url: s.url(),
                token: token.clone(),
            };
            // mvmd answering is the first test: after the host slept
            // (suspend), the heartbeat is old but L1 works.
            let stall = if ping::ping(s.port, &token, Duration::from_secs(3)).is_ok() {
                None
            } else if let Some(st) = health::check(
                &BootFiles::new(&s.boot_dir),
                health::stall_limit(),
                std::time::SystemTime::now(),
            ) {
                Some(st)
            } else {
                // Started by an mvctl that gave up waiting, or mvmd is
                // restarting: wait for it rather than start a second one.
                eprintln!(
                    "mvctl: the machine (QEMU pid {}) is running; waiting for mvmd to answer",
                    s.pid
                );
                match wait_ready(&s, &token, None, Instant::now()) {
                    Ok(_) => None,
                    Err(MachineError::Stalled(st)) => Some(st),
                    Err(MachineError::Died { .. }) => Some(health::Stall::Died),
                    Err(e) => return Err(e),
                }
            };
            if let Some(st) = stall {
                let r = watch::restart_locked(paths, &s, &st, (cpus, memory_mib))?;
                eprint!("{}", watch::notice(&r));
                watch::mark_reported(paths);
                return Ok(r.started);
            }
            return Ok(Started {
                endpoint,
                state: s,
                started: false,
            });
        }
        // QEMU is gone, though nobody stopped it (a stop removes the
        // state): L1 died, or QEMU was killed. Its sandboxes are lost.
        let r = watch::restart_locked(paths, &s, &health::Stall::Died, (cpus, memory_mib))?;
        eprint!("{}", watch::notice(&r));
        watch::mark_reported(paths);
        return Ok(r.started);
    }

    let t0 = Instant::now();
    eprintln!(
        "mvctl: starting the emulated KVM host (no hardware virtualization here; QEMU TCG, {cpus} vCPUs, \
         {memory_mib} MiB)..."
    );
    let testhost = paths::testhost_dir()?;
    let mvmd = paths::mvmd_binary()?;
    let mut env = Vec::new();
    for name in ["MVMD_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(name) {
            env.push((name.to_string(), v));
        }
    }

    fs::create_dir_all(&paths.dir).map_err(io_err(format!("create {}", paths.dir.display())))?;
    let dir = paths
        .dir
        .canonicalize()
        .map_err(io_err(format!("resolve {}", paths.dir.display())))?;
    let paths = &Paths::new(dir, &paths.run_dir);
    paths::check_no_newline("the machine dir", &paths.dir)?;
    // The machine runs copies of these on its disk (artifacts.rs): found
    // and hashed here, copied in L1 when they changed.
    let sources = artifacts::locate(&mvmd)?;
    let programs = artifacts::hash_all(&sources, &paths.artifact_memo())?;
    let boot_files = L1Boot::build(&testhost)?;
    if disk::ensure(&paths.disk())? {
        eprintln!(
            "mvctl: created the machine's disk {} ({} sparse; mvmd's images and sandboxes live there)",
            paths.disk().display(),
            format::human_size(disk::DISK_SIZE)
        );
    }
    disk::check(&paths.disk())?;
    let shares = match shares {
        Some(s) if !s.is_empty() => s.to_vec(),
        _ => boot::host_shares(
            std::env::var_os("HOME").map(PathBuf::from).as_deref(),
            std::env::current_dir().ok().as_deref(),
        ),
    };
    if !shares.is_empty() {
        let list: Vec<String> = shares.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "mvctl: sharing {} with the machine (writable, at the same paths: bind mounts must be under them)",
            list.join(", ")
        );
    }
    let job = boot::Job {
        script: testhost.join("machine-l1"),
        artifacts: artifacts::manifest(&programs),
        env,
        shares: shares.clone(),
    };
    let files = BootFiles::new(paths.boot());
    let mut boot_attempt = 0;
    loop {
        boot_attempt += 1;
        let token = boot::prepare(&paths.boot(), &paths.previous_boot(), &job)?;
        make_control_fifos(paths)?;

        let mut attempt = 0;
        let (mut child, state) = loop {
            attempt += 1;
            let port = qemu::free_port()?;
            let config = QemuConfig {
                boot: boot_files.clone(),
                cpus,
                memory_mib,
                boot_dir: paths.boot(),
                disk: paths.disk(),
                control: paths.control(),
                monitor: paths.monitor(),
                port,
                shares: shares.clone(),
            };
            let _ = fs::remove_file(paths.monitor());
            let child = spawn_qemu(&config, &files.qemu_log())?;
            let pid = child.id();
            let pid_start_time = state::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
            let state = MachineState {
                pid,
                pid_start_time,
                port,
                token_file: files.token(),
                started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ready_secs: None,
                cpus,
                memory_mib,
                disk: paths.disk(),
                boot_dir: paths.boot(),
                mvmd: mvmd.clone(),
                artifacts: programs.clone(),
                watcher: None,
                shares: shares.clone(),
            };
            state.save(&paths.state())?;
            // A port taken in the meantime makes QEMU exit at once.
            let mut child = child;
            std::thread::sleep(Duration::from_millis(300));
            let exited = child.try_wait().map_err(io_err("wait for QEMU"))?;
            if exited.is_some()
                && attempt < PORT_ATTEMPTS
                && qemu::port_taken(&read_lossy(&files.qemu_log()))
            {
                eprintln!("mvctl: port {port} was taken meanwhile; trying another");
                let _ = fs::write(files.qemu_log(), b"");
                continue;
            }
            break (child, state);
        };

        return match wait_ready(&state, &token, Some(&mut child), t0) {
            // Nothing ran in this L1 yet, so nothing is lost by booting it
            // again; its logs and vCPU state stay in the previous boot dir.
            Err(MachineError::Stalled(st)) if boot_attempt < BOOT_ATTEMPTS => {
                health::dump_l1_state(&paths.monitor(), &files.l1_state(), state.cpus);
                kill_qemu_now(&state);
                let _ = child.wait();
                let _ = fs::write(files.stalled(), format!("{st}\n"));
                eprintln!(
                "mvctl: {st}; booting it again (nothing ran in it yet; this boot's logs and L1's vCPU state: {})",
                paths.previous_boot().display()
            );
                continue;
            }
            Ok(secs) => {
                let mut state = state;
                state.ready_secs = Some(secs);
                state.save(&paths.state())?;
                eprintln!(
                    "mvctl: the machine is ready in {secs:.1} s (mvmd at {})",
                    state.url()
                );
                Ok(Started {
                    endpoint: Endpoint {
                        url: state.url(),
                        token,
                    },
                    state,
                    started: true,
                })
            }
            Err(e) => {
                let e = match e {
                    // Not left running: nobody would restart it.
                    MachineError::Stalled(st) => {
                        health::dump_l1_state(&paths.monitor(), &files.l1_state(), state.cpus);
                        kill_qemu_now(&state);
                        let _ = fs::write(files.stalled(), format!("{st}\n"));
                        MachineError::Died {
                            why: st.to_string(),
                            details: diagnose(&files),
                        }
                    }
                    e => e,
                };
                if matches!(e, MachineError::Died { .. }) {
                    MachineState::remove(&paths.state())?;
                    remove_control_fifos(paths);
                }
                Err(e)
            }
        };
    }
}

fn spawn_qemu(config: &QemuConfig, log: &Path) -> Result<Child, MachineError> {
    let out = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(io_err(format!("open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("open {}", log.display())))?;
    let mut cmd = Command::new(qemu::QEMU);
    cmd.args(qemu::args(config))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setsid(2), which is async-signal-safe. Its own session keeps
    // QEMU out of the terminal's process group: a Ctrl-C meant for mvctl,
    // or the end of the shell, does not stop the machine.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| MachineError::Spawn { source })
}

fn make_control_fifos(paths: &Paths) -> Result<(), MachineError> {
    remove_control_fifos(paths);
    for p in [paths.control_in(), paths.control_out()] {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| MachineError::BadOption(format!("{} contains a NUL byte", p.display())))?;
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(MachineError::Io {
                what: format!("mkfifo {}", p.display()),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

pub(crate) fn remove_control_fifos(paths: &Paths) {
    let _ = fs::remove_file(paths.control_in());
    let _ = fs::remove_file(paths.control_out());
}

/// Wait until mvmd answers through the forward; returns the seconds since
/// `t0`. `child` is QEMU when this process started it (its exit is then
/// seen at once); otherwise liveness comes from the state.
fn wait_ready(
    s: &MachineState,
    token: &str,
    mut child: Option<&mut Child>,
    t0: Instant,
) -> Result<f64, MachineError> {
    let files = BootFiles::new(&s.boot_dir);
    let limit = timeout();
    let waited_from = Instant::now();
    let waited_since = std::time::SystemTime::now();
    let mut l1_up = files.job_started().exists();
    loop {
        let exit = match child.as_deref_mut() {
            Some(c) => c
                .try_wait()
                .map_err(io_err("wait for QEMU"))?
                .map(|st| st.to_string()),
            None => (!s.is_alive()).then(|| "QEMU exited".to_string()),
        };
        if let Some(why) = exit {
            return Err(MachineError::Died {
                why,
                details: diagnose(&files),
            });
        }
        if !l1_up && files.job_started().exists() {
            l1_up = true;
            eprintln!(
                "mvctl: L1 is up after {:.1} s; starting mvmd in it",
                t0.elapsed().as_secs_f64()
            );
        }
        if l1_up && ping::ping(s.port, token, Duration::from_secs(2)).is_ok() {
            return Ok(t0.elapsed().as_secs_f64());
        }
        let now = std::time::SystemTime::now();
        let stall = if l1_up {
            health::check(&files, health::stall_limit(), now)
        } else {
            health::boot_check(&files, health::stall_limit(), waited_since, now)
        };
        if let Some(st) = stall {
            return Err(MachineError::Stalled(st));
        }
        if waited_from.elapsed() > limit {
            return Err(MachineError::Timeout {
                pid: s.pid,
                url: s.url(),
                secs: limit.as_secs(),
                console: files.console_log().display().to_string(),
                machine_log: files.machine_log().display().to_string(),
                mvmd_log: files.mvmd_log().display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of a log (at most its last 64 KiB), minus lines
/// matching `skip`.
fn tail(p: &Path, n: usize, skip: &dyn Fn(&str) -> bool) -> Vec<String> {
    let Ok(mut f) = File::open(p) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !skip(l))
        .map(String::from)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// What went wrong in a boot, from its files: the job's and the init's
/// own error reports first, then the ends of the logs.
fn diagnose(files: &BootFiles) -> String {
    let mut out = String::new();
    for (label, p) in [
        ("machine job", files.machine_error()),
        ("L1 init", files.init_error()),
    ] {
        let t = read_lossy(&p);
        if !t.trim().is_empty() {
            out.push_str(&format!("\n{label}: {}", t.trim()));
        }
    }
    // TCG warns about every CPU feature it does not emulate; noise here.
    let tcg_noise = |l: &str| l.contains("doesn't support requested feature");
    let none = |_: &str| false;
    for (p, n, skip) in [
        (files.mvmd_log(), 10, &none as &dyn Fn(&str) -> bool),
        (files.machine_log(), 10, &none),
        (files.console_log(), 10, &none),
        (files.qemu_log(), 5, &tcg_noise),
    ] {
        let lines = tail(&p, n, skip);
        if !lines.is_empty() {
            out.push_str(&format!(
                "\nlast lines of {}:\n    {}",
                p.display(),
                lines.join("\n    ")
            ));
        }
    }
    out.push_str(&format!("\nlogs of this boot: {}", files.dir.display()));
    out
}

fn stop(paths: &Paths) -> Result<i32, MachineError> {
    let _lock = lock(paths)?;
    let Some(s) = MachineState::load(&paths.state())? else {
        remove_control_fifos(paths);
        println!("The machine is not running");
        return Ok(0);
    };
    // First the watcher: a machine going down must not look failed to it.
    if let Some(w) = s.watcher {
        watch::stop(w);
    }
    if !s.is_alive() {
        MachineState::remove(&paths.state())?;
        remove_control_fifos(paths);
        println!(
            "The machine is not running (QEMU pid {} had ended; its state is cleared)",
            s.pid
        );
        return Ok(0);
    }
    let t0 = Instant::now();
    eprintln!(
        "mvctl: stopping the machine (QEMU pid {}); its sandboxes stop with it",
        s.pid
    );
    let files = BootFiles::new(&s.boot_dir);
    let mut forced = None;
    match send_stop(paths) {
        Ok(()) => {
            if !wait_gone(&s, STOP_TIMEOUT) {
                forced = Some(format!(
                    "L1 did not power off within {} s",
                    STOP_TIMEOUT.as_secs()
                ));
            }
        }
        Err(e) => forced = Some(format!("cannot send the stop request ({e})")),
    }
    if let Some(why) = &forced {
        eprintln!("mvctl: warning: {why}; terminating QEMU");
        kill_qemu(&s);
    }
    MachineState::remove(&paths.state())?;
    remove_control_fifos(paths);
    let result = read_lossy(&files.stopped());
    let result = result.trim();
    if forced.is_none() && result == "clean" {
        println!("Machine stopped in {:.1} s", t0.elapsed().as_secs_f64());
        return Ok(0);
    }
    let why = if result.is_empty() {
        "it did not report releasing its disk"
    } else {
        result
    };
    eprintln!(
        "mvctl: warning: the machine did not stop cleanly ({why}); the next start checks the disk with e2fsck. \
         Logs: {}",
        files.dir.display()
    );
    println!("Machine stopped in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(0)
}

/// Write `stop` to the control FIFO, which QEMU holds open and passes to
/// the `mvm.control` port in L1 (where it waits if L1 is still booting).
fn send_stop(paths: &Paths) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(paths.control_in())?;
    f.write_all(b"stop\n")
}

/// Wait until QEMU has ended; `false` on timeout.
fn wait_gone(s: &MachineState, limit: Duration) -> bool {
    let t0 = Instant::now();
    while s.is_alive() {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// SIGKILL, for an L1 that can no longer stop cleanly (it has stalled);
/// waits until QEMU is gone.
pub(crate) fn kill_qemu_now(s: &MachineState) {
    if s.is_alive() {
        // SAFETY: kill(2) with a pid just checked to be this machine's QEMU
        // (same start time); no memory is involved.
        unsafe { libc::kill(s.pid as libc::pid_t, libc::SIGKILL) };
        wait_gone(s, Duration::from_secs(30));
    }
}

/// SIGTERM (QEMU exits at once, without L1's cooperation), then SIGKILL.
fn kill_qemu(s: &MachineState) {
    for (sig, wait) in [
        (libc::SIGTERM, Duration::from_secs(10)),
        (libc::SIGKILL, Duration::from_secs(10)),
    ] {
        if !s.is_alive() {
            return;
        }
        // SAFETY: kill(2) with a pid just checked to be this machine's QEMU
        // (same start time); no memory is involved.
        unsafe { libc::kill(s.pid as libc::pid_t, sig) };
        if wait_gone(s, wait) {
            return;
        }
    }
}

/// Whether the machine runs the programs the host has now.
fn programs_text(s: &MachineState, paths: &Paths) -> String {
    if s.artifacts.is_empty() {
        return "unknown (started by an older mvctl)".into();
    }
    let changed = artifacts::changed_since(&s.artifacts, &paths.artifact_memo());
    let dir = s
        .artifacts
        .first()
        .and_then(|a| a.source.parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    if changed.is_empty() {
        format!("its own copies of mvmd, mvm-vmm, mvm-init, vmlinux (current; mvmd from {dir})")
    } else {
        format!(
            "{} changed on this host since the machine started; `mvctl machine stop` and `start` install them \
             (its sandboxes stop)",
            changed.join(", ")
        )
    }
}

fn status_text(paths: &Paths) -> Result<String, MachineError> {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let state = MachineState::load(&paths.state())?.filter(|s| s.is_alive());
    match &state {
        Some(s) => {
            let answering = read_token(&s.token_file)
                .is_ok_and(|t| ping::ping(s.port, &t, Duration::from_secs(3)).is_ok());
            let api = if answering {
                "answering".to_string()
            } else {
                format!(
                    "not answering (starting, or see {})",
                    BootFiles::new(&s.boot_dir).mvmd_log().display()
                )
            };
            let uptime = chrono::DateTime::parse_from_rfc3339(&s.started_at)
                .map(|t| format::human_duration(chrono::Utc::now().signed_duration_since(t)))
                .unwrap_or_else(|_| s.started_at.clone());
            rows.push(("Machine", "running".into()));
            rows.push(("QEMU pid", s.pid.to_string()));
            rows.push(("Endpoint", s.url()));
            rows.push(("mvmd", api));
            rows.push(("Uptime", uptime));
            if let Some(r) = s.ready_secs {
                rows.push(("Started in", format!("{r:.1} s")));
            }
            rows.push(("CPUs", s.cpus.to_string()));
            rows.push(("Memory", format!("{} MiB", s.memory_mib)));
            rows.push(("Programs", programs_text(s, paths)));
            rows.push((
                "Shares",
                if s.shares.is_empty() {
                    "none (bind mounts are refused)".into()
                } else {
                    let list: Vec<String> =
                        s.shares.iter().map(|p| p.display().to_string()).collect();
                    format!("{} (writable, at the same paths)", list.join(", "))
                },
            ));
            rows.push((
                "Watcher",
                match s.watcher {
                    Some(w) if w.is_alive() => format!(
                        "pid {} (restarts L1 after {} s without a heartbeat; log {})",
                        w.pid,
                        health::stall_limit().as_secs(),
                        paths.watch_log().display()
                    ),
                    _ => "not running (the next mvctl command checks the machine)".into(),
                },
            ));
        }
        None => rows.push(("Machine", "stopped".into())),
    }
    let disk_path = state
        .as_ref()
        .map(|s| s.disk.clone())
        .unwrap_or_else(|| paths.disk());
    rows.push((
        "Disk",
        match disk::usage(&disk_path) {
            Some(u) => format!(
                "{} ({} used on this host, {} size)",
                disk_path.display(),
                format::human_size(u.allocated),
                format::human_size(u.size)
            ),
            None => format!("{} (made on first start)", disk_path.display()),
        },
    ));
    let boot = state
        .as_ref()
        .map(|s| s.boot_dir.clone())
        .unwrap_or_else(|| paths.boot());
    if boot.exists() {
        rows.push((
            "Logs",
            format!(
                "{} (console.log, machine.log, mvmd.log, qemu.log)",
                boot.display()
            ),
        ));
    }
    if let Some(r) = watch::LastRestart::load(paths) {
        rows.push(("Last failure", r.summary()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    Ok(rows
        .iter()
        .map(|(k, v)| format!("{:width$}  {v}\n", format!("{k}:"), width = width + 1))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(
            check_options(&StartOptions::default()).unwrap(),
            (DEFAULT_CPUS, DEFAULT_MEMORY_MIB)
        );
        assert_eq!(
            check_options(&StartOptions {
                cpus: Some(1),
                memory_mib: Some(2048)
            })
            .unwrap(),
            (1, 2048)
        );
        for (cpus, mem, want) in [
            (Some(0), None, "1 to 64 vCPUs"),
            (Some(65), None, "1 to 64 vCPUs"),
            (None, Some(512), "at least 1024 MiB"),
            (None, Some(1 << 40), "this host has only"),
        ] {
            let e = check_options(&StartOptions {
                cpus,
                memory_mib: mem,
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn stopped_machine_status_and_stop() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path().join("state"), d.path().join("run"));
        let text = status_text(&paths).unwrap();
        assert!(text.starts_with("Machine:"), "{text}");
        assert!(
            text.contains("stopped") && text.contains("made on first start"),
            "{text}"
        );
        assert_eq!(running_endpoint(&paths), None);
        assert_eq!(stop(&paths).unwrap(), 0);
        // A state file left by a QEMU that is gone is cleared, not trusted.
        fs::create_dir_all(&paths.run_dir).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let s = MachineState {
            pid,
            pid_start_time: 1,
            port: 1,
            token_file: d.path().join("token"),
            started_at: "2026-11-27T10:00:00Z".into(),
            ready_secs: None,
            cpus: 2,
            memory_mib: 4096,
            disk: paths.disk(),
            boot_dir: paths.boot(),
            mvmd: "/usr/bin/mvmd".into(),
            artifacts: Vec::new(),
            watcher: None,
            shares: Vec::new(),
        };
        s.save(&paths.state()).unwrap();
        assert_eq!(running_endpoint(&paths), None);
        assert!(status_text(&paths).unwrap().contains("stopped"));
        assert_eq!(stop(&paths).unwrap(), 0);
        assert!(!paths.state().exists());
    }

    #[test]
    fn diagnosis_names_the_errors_and_logs() {
        let d = tempfile::tempdir().unwrap();
        let files = BootFiles::new(d.path());
        fs::write(
            files.machine_error(),
            "mvmd exited with status 2 while starting; see mvmd.log\n",
        )
        .unwrap();
        fs::write(files.mvmd_log(), "error: unexpected argument '--tcp'\n").unwrap();
        fs::write(
            files.qemu_log(),
            "qemu: warning: TCG doesn't support requested feature: CPUID.01H:ECX.fma [bit 12]\nqemu: real problem\n",
        )
        .unwrap();
        let t = diagnose(&files);
        assert!(t.contains("machine job: mvmd exited with status 2"), "{t}");
        assert!(t.contains("unexpected argument '--tcp'"), "{t}");
        assert!(t.contains("real problem") && !t.contains("fma"), "{t}");
        assert!(t.contains(&d.path().display().to_string()), "{t}");
    }
}
