//! mvm-jailer: confines one `mvm-vmm` before it runs a line of guest-driven
//! code (Firecracker's jailer model, adapted to mvm's files).
//!
//! The runtime runs `mvm-jailer` instead of `mvm-vmm`; the jailer, still
//! root, does what needs privilege and then execs the VMM with none:
//!
//! 1. reads the VM configuration ([`mvm_vmm_api::VmConfig`], the one typed
//!    contract) and derives the jail's contents from it ([`plan`]): the
//!    kernel, initrds, disks (read-only ones read-only), the directories the
//!    VMM writes (console, log, status; its vsock and vhost-user sockets),
//!    the VMM binary and its shared libraries, `/dev/kvm`;
//! 2. opens the TAPs named in the configuration in the host's network
//!    namespace and hands them to the VMM as descriptors ([`tap`]);
//! 3. forks into new pid, mount, ipc, uts and network namespaces, bind
//!    mounts the plan into the jail directory at the same absolute paths
//!    (so every path in the configuration, and every path the host side
//!    knows, stays valid) and `pivot_root`s into it ([`mounts`]);
//! 4. switches to the sandbox's own uid/gid, drops every capability, sets
//!    `PR_SET_NO_NEW_PRIVS`, leaves only stdio and the TAP descriptors open
//!    ([`privs`]) and execs `mvm-vmm`.
//!
//! The parent prints the VMM's pid (in the host's pid namespace) and exits,
//! so the caller tracks the VMM itself, as it does an unjailed one. cgroup
//! limits are the runtime's (`mvm_runtime::cgroup`): it puts the jailer in
//! the sandbox's cgroup and the VMM inherits it.

pub mod mounts;
pub mod plan;
pub mod privs;
pub mod spec;
pub mod tap;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use mvm_vmm_api::VmConfig;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

pub use plan::{Bind, BindKind};
pub use spec::JailSpec;

/// Environment variables passed on to the VMM (everything else is dropped).
pub const PASSED_ENV: &[&str] = &["MVM_LOG"];

/// File name of the rewritten configuration (TAPs as descriptors) in the
/// jail's root.
pub const JAILED_CONFIG: &str = "vm.json";

/// Why the VMM could not be jailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot read the VM configuration {path}: {source}")]
    Config {
        path: PathBuf,
        source: mvm_vmm_api::config::ConfigFileError,
    },
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Privs(#[from] privs::PrivsError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: nix::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The jailed child failed before exec; its message.
    #[error("{0}")]
    Child(String),
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |source| JailError::Sys { op, source }
}

/// Jail and start the VMM of `spec`; returns its pid (in the caller's pid
/// namespace) once it has exec'd `mvm-vmm`, or why it could not.
pub fn launch(spec: &JailSpec) -> Result<Pid, JailError> {
    spec.validate()?;
    let mut cfg = VmConfig::load(&spec.config).map_err(|source| JailError::Config {
        path: spec.config.clone(),
        source,
    })?;
    let binds = plan::plan(&cfg, spec)?;
    // The jail's mount points must be traversable by the VMM's uid
    // whatever mask the caller has (mvmd's is 077); the VMM gets 077 back.
    let mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    mounts::prepare_root(&spec.root, &binds)?;
    let sandbox = spec.root.parent().unwrap_or(&spec.root);
    mounts::chown_writable(&binds, sandbox, spec.uid, spec.gid)?;
    // TAPs are opened here, in the host's network namespace where their
    // bridges are; the VMM gets descriptors 3, 4, ... in order.
    let taps = tap::open_all(&mut cfg, privs::FIRST_PASSED_FD)?;
    let config_path = if taps.is_empty() {
        spec.config.clone()
    } else {
        let p = spec.root.join(JAILED_CONFIG);
        mvm_vmm_api::write_atomic(&p, &cfg.to_json())
            .map_err(|source| JailError::Write { path: p, source })?;
        Path::new("/").join(JAILED_CONFIG)
    };
    let exec = Exec::new(spec, &config_path)?;

    // A new pid namespace applies to children: the fork below is its init.
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    // Above the descriptors the child arranges for the VMM.
    let wr = {
        let low = wr;
        privs::dup_high(&low, privs::HIGH_FD).map_err(sys("fcntl(F_DUPFD_CLOEXEC)"))?
    };
    // SAFETY: the jailer is single-threaded (no thread holds a lock the
    // child could need); the child only runs `child` and exits.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(rd);
            let err = child(spec, &binds, &taps, &exec, mask, wr.as_raw_fd());
            let msg = err.to_string();
            // SAFETY: writing a buffer we own to the pipe we own.
            unsafe {
                libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            drop(taps);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg.is_empty() {
                Ok(child)
            } else {
                let _ = nix::sys::wait::waitpid(child, None);
                Err(JailError::Child(msg))
            }
        }
    }
}

/// The exec arguments, made before the fork so the child allocates little.
struct Exec {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    fn new(spec: &JailSpec, config: &Path) -> Result<Self, JailError> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                JailError::Plan(plan::PlanError::Path {
                    path: PathBuf::from(std::ffi::OsStr::from_bytes(b)),
                    why: "contains a NUL byte",
                })
            })
        };
        let path = c(spec.vmm.as_os_str().as_bytes())?;
        let argv = vec![
            path.clone(),
            c(b"--config")?,
            c(config.as_os_str().as_bytes())?,
        ];
        let mut env = Vec::new();
        for k in PASSED_ENV {
            if let Some(v) = std::env::var_os(k) {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                env.push(c(&kv)?);
            }
        }
        Ok(Self { path, argv, env })
    }
}

/// `--die-with-parent`, in the child: SIGKILL when the jailer (its
/// parent, which waits for it) dies. Set after the credentials change,
/// which clears it. The parent is outside the child's pid namespace, so
/// `getppid` cannot say whether it died before the request took effect;
/// the error pipe can: its read end is the parent's, and a pipe whose
/// reader is gone polls as an error.
fn die_with_jailer(err_pipe: RawFd) -> Result<(), JailError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number changes only
    // this process's death signal.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(JailError::Sys {
            op: "prctl(PR_SET_PDEATHSIG)",
            source: nix::errno::Errno::last(),
        });
    }
    let mut p = libc::pollfd {
        fd: err_pipe,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd we own, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == 1 && p.revents & libc::POLLERR != 0 {
        return Err(JailError::Sys {
            op: "waiting for the VMM's start (the jailer's caller is gone)",
            source: nix::errno::Errno::ESRCH,
        });
    }
    Ok(())
}

/// How the VMM ended, as the jailer that stays with it reaped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

/// `--die-with-parent`, in the parent once the VMM runs and its pid is
/// printed: stdout closed (the caller reads it to its end), then wait for
/// the VMM, so that the jailer's death (with its caller's) kills it.
/// Returns how the VMM ended, for [`end_like`].
pub fn stay_with(vmm: Pid) -> VmmExit {
    // SAFETY: closing our own stdout; nothing else uses it afterwards.
    unsafe {
        libc::close(1);
    }
    loop {
        match nix::sys::wait::waitpid(vmm, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return VmmExit::Code(code),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                return VmmExit::Signal(sig as i32)
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return VmmExit::Code(1),
        }
    }
}

/// End the jailer the way its VMM ended: the same exit code, or killed
/// by the same signal. The jailer's caller reaps the jailer, not the VMM
/// (the VMM is the jailer's child, in its own pid namespace), so this is
/// how the caller learns the VMM's wait status unchanged: a VMM killed by
/// its seccomp filter is a `SIGSYS` death there too, never an exit code
/// that a VMM could also have chosen (it exits with 128+N itself after a
/// handled signal N).
pub fn end_like(end: VmmExit) -> ! {
    let code = match end {
        VmmExit::Code(code) => code,
        VmmExit::Signal(sig) => {
            die_by(sig);
            // A signal whose default action is not to end the process
            // (none can have killed the VMM): the shell's convention.
            128 + sig
        }
    };
    #[allow(clippy::exit)]
    std::process::exit(code)
}

/// Raise `sig` on this process with its default action, no core file
/// (the VMM's was the interesting one) and `sig` unblocked: returns only
/// if that action does not end the process.
fn die_by(sig: i32) {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process with values we own.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// The child: namespaces, jail, privileges, exec. Returns only on error.
fn child(
    spec: &JailSpec,
    binds: &[Bind],
    taps: &[tap::OpenTap],
    exec: &Exec,
    mask: nix::sys::stat::Mode,
    wr: RawFd,
) -> JailError {
    let r = (|| -> Result<(), JailError> {
        nix::unistd::setsid().map_err(sys("setsid"))?;
        nix::sched::unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWNET,
        )
        .map_err(sys("unshare(mount, ipc, uts, net namespaces)"))?;
        nix::unistd::sethostname("mvm-vmm").map_err(sys("sethostname"))?;
        // The jailer's stdout is how its caller learns the pid; the VMM's
        // stdin and stdout are /dev/null (its stderr is its log, kept).
        privs::null_stdio()?;
        mounts::enter_jail(&spec.root, binds, spec.uid, spec.gid)?;
        nix::sys::stat::umask(mask | nix::sys::stat::Mode::from_bits_truncate(0o077));
        // Keep the error pipe above the descriptors handed to the VMM.
        let fds: Vec<RawFd> = taps.iter().map(|t| t.fd()).collect();
        privs::arrange_fds(&fds)?;
        privs::drop_privileges(spec.uid, spec.gid)?;
        if spec.die_with_parent {
            die_with_jailer(wr)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    let e = nix::unistd::execve(&exec.path, &exec.argv, &exec.env).unwrap_err();
    JailError::Sys {
        op: "exec of the VMM in the jail",
        source: e,
    }
}
