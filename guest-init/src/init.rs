//! PID 1's whole life, in order (see the README for the why):
//! report boot, mount the API filesystems, read the spec, assemble and
//! (a warm spec: report `WarmReady` and take the real spec from the
//! agent's `launch`, see [`crate::warm`]), apply the host's clock and
//! entropy, assemble and
//! switch to the root filesystem, set up the system (API filesystems,
//! virtio-fs shares, hostname, loopback, the spec's network), start the
//! workload,
//! reap until it exits, stop the rest, make data durable, power off.
//! Every failure before the workload runs is printed as
//! `mvm-init: error: ...`, reported as an `InitError`, and powers off.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mvm_protocol::launch::{LaunchSpec, SpecError, SPEC_PATH};
use mvm_protocol::status::{GuestEvent, InitError};

use crate::etcfiles::EtcError;
use crate::hostname::HostnameError;
use crate::mounts::MountError;
use crate::network::NetworkError;
use crate::process::{Command, SpawnError};
use crate::reaper::{Reaper, ReaperError};
use crate::rootfs::{Assembled, RootfsError};
use crate::shares::ShareError;
use crate::status::{self, ConsoleOnly, StatusPort};
use crate::user::UserError;

/// How long the workload's leftover processes get between SIGTERM and
/// SIGKILL once the workload has exited.
const GRACE: Duration = Duration::from_millis(100);

/// Anything that stops init from running the workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Early(MountError),
    #[error("cannot read the launch spec /{SPEC_PATH}: {0}; the host must load the spec archive after the init archive")]
    SpecRead(std::io::Error),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Hostname(#[from] HostnameError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{0}")]
    System(MountError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Etc(#[from] EtcError),
    #[error("user {spec:?}: {source}")]
    User { spec: String, source: UserError },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    #[error("cannot limit the workload's memory to {0} bytes (memory.max of its cgroup): {1}")]
    MemoryMax(u64, io::Error),
    #[error("a warm boot needs the agent's port, which init cannot listen on: {0} (does the VM have a vsock device?)")]
    WarmListen(io::Error),
    #[error(transparent)]
    Reseed(#[from] crate::reseed::ReseedError),
}

impl Error {
    /// The code the host receives.
    pub fn code(&self) -> InitError {
        match self {
            Self::Early(_)
            | Self::System(_)
            | Self::Reaper(_)
            | Self::MemoryMax(..)
            | Self::WarmListen(_)
            | Self::Reseed(_) => InitError::Other,
            Self::SpecRead(_) | Self::Spec(_) | Self::Hostname(HostnameError::Invalid(_)) => {
                InitError::BadSpec
            }
            Self::Hostname(_) => InitError::Other,
            Self::Rootfs(_) | Self::Share(_) => InitError::Mount,
            Self::User { .. } => InitError::User,
            Self::Network(_) | Self::Etc(_) => InitError::Network,
            Self::Spawn(e) => e.code(),
        }
    }
}

/// What survives from the run into the shutdown, success or not.
#[derive(Debug, Default)]
struct State {
    rootfs: Assembled,
}

/// `mvm-init --idle`, run as a workload (not as PID 1): wait until a
/// signal ends the process. The workload of helper guests that only serve
/// the host through the agent (a block volume's export or import), whose
/// root disk holds nothing but a copy of this binary.
pub const IDLE_FLAG: &str = "--idle";

/// The entry point of the `mvm-init` binary.
pub fn main() -> ! {
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } != 1 && std::env::args().nth(1).as_deref() == Some(IDLE_FLAG) {
        loop {
            // SAFETY: pause(2) only waits; SIGTERM's default action ends
            // the process.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } != 1 {
        crate::error!("mvm-init is PID 1 inside an mvm guest and must not run anywhere else (it mounts, kills every process and reboots)");
        std::process::exit(1);
    }
    let reporter: Box<dyn status::Reporter> = match StatusPort::open() {
        Ok(port) => Box::new(port),
        Err(e) => {
            crate::warn!("{e}; events are reported on the console only");
            Box::new(ConsoleOnly)
        }
    };
    status::install(reporter);
    // First thing: the boot timer stops here. Its console line waits until
    // /proc/cmdline says whether to be quiet.
    status::report_silently(GuestEvent::BootComplete);
    std::panic::set_hook(Box::new(|info| {
        crate::error!("init panicked: {info}");
        status::report(GuestEvent::InitError(InitError::Other));
        crate::shutdown::power_off(None, None);
    }));

    let mut state = State::default();
    let event = match run(&mut state) {
        Ok(event) => Some(event),
        Err(e) => {
            crate::error!("{e}");
            status::report(GuestEvent::InitError(e.code()));
            None
        }
    };
    crate::shutdown::power_off(event, state.rootfs.scratch.as_ref())
}

fn run(state: &mut State) -> Result<GuestEvent, Error> {
    crate::mounts::mount_early(Path::new("/")).map_err(Error::Early)?;
    ensure_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    crate::console::set_quiet(crate::console::cmdline_wants_quiet(&cmdline));
    crate::info!("{}", status::describe(GuestEvent::BootComplete));

    let bytes = std::fs::read(Path::new("/").join(SPEC_PATH)).map_err(Error::SpecRead)?;
    let spec = LaunchSpec::from_json(&bytes)?;
    if let Some(name) = &spec.hostname {
        crate::hostname::validate(name)?;
    }
    // Before anything is forked, so no SIGCHLD or forwarded signal is lost.
    let reaper = Reaper::new()?;
    let (spec, listener) = if spec.warm {
        // Everything above is all a warm guest has: no disk, no NIC, no
        // hostname, no process but init, until the launch.
        let listener = crate::agent::listen_guest().map_err(Error::WarmListen)?;
        status::report(GuestEvent::WarmReady);
        let spec = crate::warm::wait_for_launch(&listener);
        (spec, Some(listener))
    } else {
        (spec, None)
    };
    // Before anything reads the clock or draws random numbers for the
    // sandbox.
    crate::reseed::apply(&spec)?;

    state.rootfs = crate::rootfs::assemble(&spec.rootfs)?;
    crate::rootfs::switch_root(Path::new(crate::rootfs::ROOT_DIR))?;
    crate::mounts::mount_system(Path::new("/")).map_err(Error::System)?;
    for fd in crate::shares::mount_all(Path::new("/"), &spec)? {
        crate::shutdown::freeze_at_power_off(fd);
    }

    if let Some(name) = &spec.hostname {
        crate::hostname::set(name)?;
    }
    let hostname = crate::sys::hostname().unwrap_or_default();
    if let Err(e) = crate::net::bring_up("lo") {
        crate::warn!("cannot bring up the loopback interface: {e}");
    }
    match &spec.network {
        // Init owns the /etc files then, whole (as Docker does).
        Some(net) => {
            let start = std::time::Instant::now();
            let mut nl = crate::netlink::Netlink::open().map_err(NetworkError::Socket)?;
            crate::network::apply(&mut nl, net)?;
            crate::etcfiles::write(Path::new("/"), spec.hostname.as_deref(), net)?;
            crate::info!(
                "network configured ({} interfaces, {} routes) in {} us",
                net.interfaces.len(),
                net.routes.len(),
                start.elapsed().as_micros()
            );
        }
        // Older specs: only complete the image's /etc/hosts.
        None => {
            crate::hostname::write_etc(Path::new("/"), &hostname, spec.hostname.is_some());
        }
    }

    let p = &spec.process;
    let user =
        crate::user::resolve_in_root(&p.user, Path::new("/")).map_err(|source| Error::User {
            spec: p.user.clone(),
            source,
        })?;
    let env = crate::env::build(&p.env, &hostname, &user.home);
    let cgroup = crate::agent::cgroup::setup_guest();
    if let Some(max) = p.memory_max {
        // A limit the host asked for is never silently dropped: the
        // workload would run without it.
        let dir = cgroup.as_ref().ok_or_else(|| {
            Error::MemoryMax(
                max,
                io::Error::other("no workload cgroup (see the warning above)"),
            )
        })?;
        crate::agent::cgroup::set_memory_max(dir, max).map_err(|e| Error::MemoryMax(max, e))?;
    }
    let mut command = Command::new(&p.args, &env, &p.cwd, user)?;
    if let Some(cg) = &cgroup {
        command.cgroup(&cg.join("cgroup.procs"));
    }
    command.ensure_cwd()?;
    if spec.rootfs.read_only {
        // Last: init's own files (mount points, /etc/hostname, the
        // working directory) are in place.
        crate::rootfs::make_read_only(Path::new("/")).map_err(Error::System)?;
    }
    // The agent's port is taken before the workload exists, so no workload
    // can listen there first (it is privileged too; see AGENT_PORT). A few
    // syscalls: the workload's start waits for nothing else of the agent.
    let listener = match listener {
        Some(l) => Ok(l),
        None => crate::agent::listen_guest(),
    };
    let workload = crate::agent::Workload::spawn(&mut command, p)?;

    let config = crate::agent::Config {
        env: p.env.clone(),
        user: p.user.clone(),
        cwd: p.cwd.clone(),
        hostname,
        root: "/".into(),
        cgroup,
    };
    let upper = state.rootfs.upper.take();
    let agent = crate::agent::Agent::with_export(
        config,
        Arc::new(crate::agent::Router::new()),
        workload,
        upper,
    );
    crate::agent::start(agent.clone(), move || listener);
    let status = crate::agent::supervise(&reaper, &agent)?;
    let event =
        crate::reaper::event_for_status(status).unwrap_or(GuestEvent::InitError(InitError::Other));
    match reaper.terminate_all(GRACE) {
        Ok(true) => {}
        Ok(false) => crate::warn!("some processes did not exit after SIGKILL"),
        Err(e) => crate::warn!("{e}"),
    }
    if agent.exports_changes() {
        hold_for_host(&reaper, &agent)?;
    }
    Ok(event)
}

/// `rootfs.export_changes`: the upper directory is final now; serve the
/// host (it reads the changes) until it sends `shutdown`, or until no host
/// has been connected for `EXPORT_IDLE_SECS`.
fn hold_for_host(reaper: &Reaper, agent: &crate::agent::Agent) -> Result<(), Error> {
    agent.changes_ready();
    crate::info!("the workload's changes are ready; waiting for the host to read them");
    let idle = Duration::from_secs(mvm_protocol::launch::EXPORT_IDLE_SECS);
    let mut idle_since = std::time::Instant::now();
    let router = agent.router.clone();
    reaper.reap_until(
        HOLD_TICK,
        |p, s| {
            router.deliver(p, s);
        },
        || agent.hold_over(&mut idle_since, idle),
    )?;
    Ok(())
}

/// How often a guest held for its host checks whether it may power off.
const HOLD_TICK: Duration = Duration::from_millis(20);

/// The kernel opens /dev/console as fds 0-2 for init only if the
/// initramfs has the node; without it they are closed, and the workload
/// would have no stdout. Open the devtmpfs console onto any missing one.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on a small integer only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: open with a constant path; dup2 onto a free slot.
        unsafe {
            let console = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if console >= 0 && console != fd {
                libc::dup2(console, fd);
                libc::close(console);
            }
        }
    }
}
