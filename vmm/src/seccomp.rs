//! seccomp filters per thread role (Firecracker's model): each thread of
//! the VMM installs the allowlist of its role once its setup is done and
//! before it handles anything a guest controls, and a system call outside
//! the list kills the whole process (`SECCOMP_RET_KILL_PROCESS`: a
//! compromised thread cannot linger, and the runtime sees a VMM killed by
//! `SIGSYS`, which it reports as such).
//!
//! # The threads of the VMM and their roles
//!
//! - **main** ([`Role::Main`]): builds the VM (KVM, memory, devices, disk
//!   locks, TAPs, the vhost-user handshakes with the virtio-fs backends),
//!   starts the vCPUs, installs its filter, then runs the event loop (the
//!   virtio queues of every device: disk I/O, entropy, vsock with its Unix
//!   sockets, TAP frames and their rate limiters' timers, the exit latch
//!   and the signalfd) and the teardown (console flush, status file).
//!   Its only KVM ioctls after setup read the VM-wide state for a
//!   snapshot (`KVM_GET_IRQCHIP`, `KVM_GET_PIT2`, `KVM_GET_CLOCK`),
//!   served from the event loop with the control socket (`control`),
//!   which also needs `setsockopt` (a deadline on a connection) and
//!   `ftruncate` (the memory file's size).
//! - **vCPU** ([`Role::Vcpu`], threads `vcpu<N>`): installs its filter
//!   before its first `KVM_RUN`, then handles the port I/O and MMIO exits:
//!   the serial console (writes and live rotation of its file), the status
//!   port, the i8042 reset, the virtio-mmio registers, where device
//!   activation and reset happen (the TAP offload ioctl; the vhost-user
//!   messages of virtio-fs, with descriptors passed over the socket).
//!   Paused for a snapshot, it reads its own state (the `KVM_GET_*`
//!   ioctls of `vstate::vcpu_state`).
//! - **helper** ([`Role::Helper`]): the `power-off` grace timer of the
//!   status port (a wait, a sleep, then the exit eventfd) and each
//!   virtio-fs backend's `vhost-user-watchdog` (a timed wait, then
//!   `shutdown(2)` on its copy of the socket). Both are started during
//!   setup on the main thread, before any filter, by [`spawn_helper`],
//!   which installs this role's filter first thing on the new thread and
//!   returns only once it is in place; they then wait for their work. The
//!   role is the narrowest: besides what a thread needs to wait, sleep,
//!   log (with the log's live rotation) and end, only `shutdown`. No
//!   `ioctl` (no KVM, no TAP), no reads, no disk or socket I/O beyond
//!   that, no new threads. Started on demand from a vCPU thread instead,
//!   they would have inherited the vCPU's filter.
//!
//! # Why in Rust
//!
//! Firecracker writes its filters as JSON compiled to BPF at build time,
//! so operators can swap them. Ours are Rust: the ioctl numbers are
//! computed from the same kernel structures the code passes (checked
//! against `<linux/kvm.h>` by the tests), the compiler checks every
//! syscall name, there is no build step and no file to ship next to the
//! binary, and the filters are not meant to be edited by users (a missing
//! entry is a bug to fix here, with a comment saying who needs it).
//! Building the BPF at start-up costs well under a millisecond.
//!
//! Arguments are checked where it matters: `ioctl` request numbers (the
//! vCPU's KVM and TAP requests; `FIONBIO`/`FIOCLEX` on the main thread),
//! `socket` (`AF_UNIX` only, for the vsock device), `fcntl` (flag and
//! descriptor-flag commands, and close-on-exec duplication), `prctl`
//! (`PR_SET_NAME` only, for thread names).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule or the filter could not be compiled (a bug in this module).
    #[error("building the seccomp filter of the {role} thread: {detail}")]
    Build {
        /// The role.
        role: &'static str,
        /// seccompiler's message.
        detail: String,
    },
    /// The kernel refused the filter.
    #[error(
        "installing the seccomp filter of the {role} thread: {detail}; the host kernel needs \
         CONFIG_SECCOMP_FILTER (run with --no-seccomp only to debug)"
    )]
    Apply {
        /// The role.
        role: &'static str,
        /// seccompiler's message.
        detail: String,
    },
    /// A helper thread could not be started.
    #[error("starting the {name} thread: {source}")]
    Helper {
        /// The thread's name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The role of a VMM thread (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Setup, then the event loop and the teardown.
    Main,
    /// A vCPU run loop.
    Vcpu,
    /// A timer or watchdog thread ([`spawn_helper`]).
    Helper,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Main, Role::Vcpu, Role::Helper];

    /// The role's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
            Self::Helper => "helper",
        }
    }
}

const KVMIO: u64 = 0xAE;

/// `_IOC(dir, type, nr, size)` of the Linux ioctl encoding.
const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const fn kvm_io(nr: u64) -> u64 {
    ioc(0, KVMIO, nr, 0)
}
const fn kvm_ior<T>(nr: u64) -> u64 {
    ioc(2, KVMIO, nr, std::mem::size_of::<T>() as u64)
}

const fn kvm_iowr<T>(nr: u64) -> u64 {
    ioc(3, KVMIO, nr, std::mem::size_of::<T>() as u64)
}

/// `KVM_RUN`: the vCPU loop.
pub const KVM_RUN: u64 = kvm_io(0x80);
/// `KVM_GET_REGS`: the crash report of a triple fault.
pub const KVM_GET_REGS: u64 = kvm_ior::<kvm_bindings::kvm_regs>(0x81);
/// `KVM_GET_SREGS`: likewise.
pub const KVM_GET_SREGS: u64 = kvm_ior::<kvm_bindings::kvm_sregs>(0x83);

/// What a paused vCPU reads of itself for a snapshot
/// (`vstate::vcpu_state`), with `KVM_GET_REGS` and `KVM_GET_SREGS`.
pub const KVM_GET_MP_STATE: u64 = kvm_ior::<kvm_bindings::kvm_mp_state>(0x98);
pub const KVM_GET_XSAVE: u64 = kvm_ior::<kvm_bindings::kvm_xsave>(0xa4);
pub const KVM_GET_XCRS: u64 = kvm_ior::<kvm_bindings::kvm_xcrs>(0xa6);
pub const KVM_GET_DEBUGREGS: u64 = kvm_ior::<kvm_bindings::kvm_debugregs>(0xa1);
pub const KVM_GET_LAPIC: u64 = kvm_ior::<kvm_bindings::kvm_lapic_state>(0x8e);
pub const KVM_GET_CPUID2: u64 = kvm_iowr::<kvm_bindings::kvm_cpuid2>(0x91);
pub const KVM_GET_MSRS: u64 = kvm_iowr::<kvm_bindings::kvm_msrs>(0x88);
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ior::<kvm_bindings::kvm_vcpu_events>(0x9f);
/// What the main thread reads of the VM for a snapshot (`vstate::vm`).
pub const KVM_GET_IRQCHIP: u64 = kvm_iowr::<kvm_bindings::kvm_irqchip>(0x62);
pub const KVM_GET_PIT2: u64 = kvm_ior::<kvm_bindings::kvm_pit_state2>(0x9f);
pub const KVM_GET_CLOCK: u64 = kvm_ior::<kvm_bindings::kvm_clock_data>(0x7c);

/// The base every role's list starts from, and all a helper thread may
/// call: memory (the allocator; a thread's stack and signal stack
/// unmapped when it ends), futexes (its channel, with a deadline: the
/// clock), sleeps and clocks, blocked signals, its log lines and the log's
/// live rotation (`write`, `openat`, `rename`, `close`), entropy (std's
/// hash map keys), `shutdown` (the vhost-user watchdog on a silent
/// backend's socket) and the end of the thread (`abort` on a panic that
/// cannot unwind: `tgkill`).
const BASE: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    // abort(3) after a panic that cannot unwind: the process ends by
    // SIGABRT (as it would without a filter) instead of by SIGSYS.
    libc::SYS_tgkill,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_getrandom,
    // The vhost-user watchdog shuts a silent backend's socket down.
    libc::SYS_shutdown,
];

/// What the main and vCPU threads call beyond [`BASE`]: threads (std's
/// spawn), the descriptors they hold (reads and writes of disks, TAPs,
/// sockets, eventfds), the status file written atomically (`fsync`,
/// `unlink` on failure), the vhost-user messages with descriptors
/// (virtio-fs start and stop, on a vCPU thread) and vsock's Unix streams.
const WORKER: &[i64] = &[
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
];

/// The main thread's extra calls: the event loop, the vsock device's
/// Unix sockets (host clients accepted, guest connections to host ports
/// made), the rate limiters' timers.
const MAIN: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_connect,
    // A non-blocking connect's result.
    libc::SYS_getsockopt,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // The control socket: a deadline on the accepted connection.
    libc::SYS_setsockopt,
    // A snapshot's memory file is sized to the guest's memory (its pages
    // of zeros are holes).
    libc::SYS_ftruncate,
];

/// The `fcntl` commands allowed (std's `set_nonblocking` on files,
/// `try_clone`, the descriptor flags).
const FCNTL_CMDS: &[libc::c_int] = &[
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_DUPFD_CLOEXEC,
];

/// The ioctl requests of `role`.
pub fn ioctls(role: Role) -> Vec<u64> {
    match role {
        // std's `set_nonblocking` on sockets (vsock's accepted and
        // connected streams) and close-on-exec.
        // A snapshot reads the VM-wide state (`control`).
        Role::Main => vec![
            libc::FIONBIO,
            libc::FIOCLEX,
            KVM_GET_IRQCHIP,
            KVM_GET_PIT2,
            KVM_GET_CLOCK,
        ],
        Role::Vcpu => vec![
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            // virtio-net activation and reset set the TAP's offloads.
            libc::TUNSETOFFLOAD,
            // A paused vCPU saves its own state for a snapshot.
            KVM_GET_MP_STATE,
            KVM_GET_XSAVE,
            KVM_GET_XCRS,
            KVM_GET_DEBUGREGS,
            KVM_GET_LAPIC,
            KVM_GET_CPUID2,
            KVM_GET_MSRS,
            KVM_GET_VCPU_EVENTS,
        ],
        Role::Helper => vec![],
    }
}

fn arg_eq(arg: u8, len: Len, v: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(arg, len, Op::Eq, v)?])
}

/// The rules of `role`, by system call number (an empty rule list allows
/// the call whatever its arguments).
pub fn rules(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build {
        role: role.name(),
        detail: e.to_string(),
    };
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let lists: &[&[i64]] = match role {
        Role::Helper => &[BASE],
        Role::Vcpu => &[BASE, WORKER],
        Role::Main => &[BASE, WORKER, MAIN],
    };
    for &nr in lists.iter().copied().flatten() {
        m.insert(nr, vec![]);
    }
    if role == Role::Helper {
        // std checks that a descriptor is open before it closes it
        // (`OwnedFd`'s drop, debug builds): `F_GETFD` alone. A helper
        // closes the last reference to the exit eventfd, or its socket
        // copy, when it ends after the VM.
        m.insert(
            libc::SYS_fcntl,
            vec![arg_eq(1, Len::Dword, libc::F_GETFD as u64).map_err(build)?],
        );
        return Ok(m);
    }
    if role == Role::Main {
        // Unix sockets only: the vsock device's connections to host ports.
        m.insert(
            libc::SYS_socket,
            vec![arg_eq(0, Len::Dword, libc::AF_UNIX as u64).map_err(build)?],
        );
    }
    // The request is an unsigned long, but the kernel compares it as an
    // unsigned int (`ioctl(2)`'s `cmd`): compare the low 32 bits.
    let ioctl = ioctls(role)
        .into_iter()
        .map(|req| arg_eq(1, Len::Dword, req).map_err(build))
        .collect::<Result<Vec<_>, _>>()?;
    m.insert(libc::SYS_ioctl, ioctl);
    let fcntl = FCNTL_CMDS
        .iter()
        .map(|&cmd| arg_eq(1, Len::Dword, cmd as u64).map_err(build))
        .collect::<Result<Vec<_>, _>>()?;
    m.insert(libc::SYS_fcntl, fcntl);
    // Threads name themselves (std's spawn).
    m.insert(
        libc::SYS_prctl,
        vec![arg_eq(0, Len::Dword, libc::PR_SET_NAME as u64).map_err(build)?],
    );
    Ok(m)
}

/// The compiled filter of `role`.
pub fn filter(role: Role) -> Result<BpfProgram, SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build {
        role: role.name(),
        detail: e.to_string(),
    };
    let f = SeccompFilter::new(
        rules(role)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    f.try_into().map_err(build)
}

/// Installs the filter of `role` on the calling thread (and the threads
/// it starts from now on).
pub fn apply(role: Role) -> Result<(), SeccompError> {
    let t0 = std::time::Instant::now();
    let prog = filter(role)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Apply {
        role: role.name(),
        detail: e.to_string(),
    })?;
    // What the filters cost at start (docs/benchmarks.md).
    tracing::debug!(
        "seccomp: the {} thread's filter ({} BPF instructions) built and installed in {} us",
        role.name(),
        prog.len(),
        t0.elapsed().as_micros()
    );
    Ok(())
}

/// Starts the helper thread `name` running `body`, with the helper
/// filter installed first when `confine` (mvmd's default; not with
/// --no-seccomp); returns once the filter is in place. Called during
/// setup, before any filter: the thread then has only its own.
pub fn spawn_helper(
    name: &'static str,
    confine: bool,
    body: impl FnOnce() + Send + 'static,
) -> Result<(), SeccompError> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let confined = if confine { apply(Role::Helper) } else { Ok(()) };
            let ok = confined.is_ok();
            let _ = ready_tx.send(confined);
            if ok {
                body();
            }
        })
        .map_err(|source| SeccompError::Helper { name, source })?;
    ready.recv().unwrap_or_else(|_| {
        Err(SeccompError::Helper {
            name,
            source: std::io::Error::other("the thread ended before it was ready"),
        })
    })
}

/// The hook that confines the helper threads of the virtio crate (the
/// virtio-fs watchdog): [`Role::Helper`]'s filter.
pub fn helper_hook() -> mvm_virtio::fs::ThreadHook {
    std::sync::Arc::new(|| apply(Role::Helper).map_err(|e| e.to_string()))
}

/// Test builds only (feature `seccomp-test-trigger`, built by
/// `tests/run-e2e.sh` as the separate binary `mvm-vmm-seccomp-trigger`,
/// never the product's `mvm-vmm`): once the main thread's filter is in
/// place, make a call no filter allows, to prove that the filter kills
/// the VMM. Being that binary is the request.
#[cfg(feature = "seccomp-test-trigger")]
pub fn test_trigger() {
    tracing::warn!("seccomp-test-trigger build: calling getppid(2), which no filter allows");
    // SAFETY: getppid has no arguments and no side effect.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// Without the feature the trigger does nothing.
#[cfg(not(feature = "seccomp-test-trigger"))]
pub fn test_trigger() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each call is in one list only: the base is shared, not repeated.
    #[test]
    fn the_lists_do_not_repeat_each_other() {
        let mut seen = std::collections::BTreeSet::new();
        for &nr in BASE.iter().chain(WORKER).chain(MAIN) {
            assert!(seen.insert(nr), "system call {nr} is listed twice");
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values from <linux/kvm.h> and <linux/if_tun.h> on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_AE98);
        assert_eq!(KVM_GET_XSAVE, 0x9000_AEA4);
        assert_eq!(KVM_GET_XCRS, 0x8188_AEA6);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_AEA1);
        assert_eq!(KVM_GET_LAPIC, 0x8400_AE8E);
        assert_eq!(KVM_GET_CPUID2, 0xC008_AE91);
        assert_eq!(KVM_GET_MSRS, 0xC008_AE88);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_AE9F);
        assert_eq!(KVM_GET_IRQCHIP, 0xC208_AE62);
        assert_eq!(KVM_GET_PIT2, 0x8070_AE9F);
        assert_eq!(KVM_GET_CLOCK, 0x8030_AE7C);
        assert_eq!(libc::TUNSETOFFLOAD, 0x4004_54D0);
    }

    #[test]
    fn every_role_compiles_to_bpf() {
        for role in Role::ALL {
            let prog = filter(role).unwrap();
            assert!(!prog.is_empty(), "{role:?}");
            // A classic BPF program is at most 4096 instructions.
            assert!(prog.len() < 4096, "{role:?}: {}", prog.len());
        }
    }

    #[test]
    fn the_ioctl_lists_hold_what_the_vmm_uses() {
        let vcpu = ioctls(Role::Vcpu);
        for req in [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, libc::TUNSETOFFLOAD] {
            assert!(vcpu.contains(&req), "{req:#x}");
        }
        let main = ioctls(Role::Main);
        assert!(main.contains(&libc::FIONBIO));
        // The main thread runs no vCPU and sets up KVM before its filter.
        assert!(!main.contains(&KVM_RUN));
        let vcpu_rules = rules(Role::Vcpu).unwrap();
        assert_eq!(vcpu_rules[&libc::SYS_ioctl].len(), vcpu.len());
    }

    #[test]
    fn roles_differ_where_they_should() {
        let main = rules(Role::Main).unwrap();
        let vcpu = rules(Role::Vcpu).unwrap();
        for nr in [libc::SYS_epoll_wait, libc::SYS_accept4, libc::SYS_socket] {
            assert!(main.contains_key(&nr), "{nr}");
            assert!(!vcpu.contains_key(&nr), "{nr}");
        }
        for r in [&main, &vcpu] {
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_getppid,
                libc::SYS_setuid,
                libc::SYS_bpf,
                libc::SYS_seccomp,
                libc::SYS_fork,
                libc::SYS_kill,
                libc::SYS_open_by_handle_at,
            ] {
                assert!(!r.contains_key(&nr), "{nr} allowed");
            }
        }
    }

    /// In a forked child (a filter cannot be removed from a thread),
    /// install `role`'s filter, make an allowed call, then `forbidden`;
    /// returns the child's wait status. The filter is built before the
    /// fork: the test harness has other threads, so the child must not
    /// allocate.
    fn run_filtered(role: Role, forbidden: impl FnOnce()) -> i32 {
        let prog = filter(role).unwrap();
        // SAFETY: fork in a test; the child only installs the filter,
        // makes system calls and exits without returning.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if seccompiler::apply_filter(&prog).is_ok() {
                0
            } else {
                3
            };
            // SAFETY: plain system calls in the child.
            unsafe { libc::syscall(libc::SYS_gettid) };
            if code == 0 {
                forbidden();
            }
            // SAFETY: ends the child without running the parent's
            // destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    /// A real filter on a real thread: an allowed call works, a call
    /// outside the list kills the process with SIGSYS.
    #[test]
    fn the_filter_kills_on_a_forbidden_call() {
        for role in Role::ALL {
            // SAFETY: getppid has no arguments.
            let status = run_filtered(role, || unsafe {
                libc::syscall(libc::SYS_getppid);
            });
            assert!(libc::WIFSIGNALED(status), "{role:?}: status {status:#x}");
            assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{role:?}");
        }
    }

    /// Arguments are checked: an ioctl outside the list kills, even on a
    /// descriptor where it would be harmless; so does a non-Unix socket.
    #[test]
    fn arguments_are_checked() {
        // SAFETY: TIOCGWINSZ on stdin with a valid buffer.
        let status = run_filtered(Role::Vcpu, || unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            libc::ioctl(0, libc::TIOCGWINSZ, &mut ws);
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // SAFETY: socket(2) with constant arguments.
        let status = run_filtered(Role::Main, || unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // An allowed request passes: FIONBIO on the main thread.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        // SAFETY: FIONBIO on our own socket with a valid int.
        let status = run_filtered(Role::Main, || unsafe {
            let on: libc::c_int = 1;
            libc::ioctl(fd, libc::FIONBIO, &on);
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }

    /// The helper role is the narrowest: a strict subset of both other
    /// roles, with none of the calls that reach KVM, a TAP, a disk, a
    /// socket's data or a new thread.
    #[test]
    fn the_helper_role_is_narrower_than_every_other() {
        let helper = rules(Role::Helper).unwrap();
        for role in [Role::Main, Role::Vcpu] {
            let other = rules(role).unwrap();
            for nr in helper.keys() {
                assert!(
                    other.contains_key(nr),
                    "{nr} allowed to helpers, not to {role:?}"
                );
            }
            assert!(helper.len() < other.len(), "{role:?}");
        }
        for nr in [
            libc::SYS_ioctl,
            libc::SYS_prctl,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_read,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_epoll_wait,
            libc::SYS_execve,
            libc::SYS_seccomp,
        ] {
            assert!(!helper.contains_key(&nr), "{nr} allowed to helpers");
        }
        // What the two helpers do.
        for nr in [
            libc::SYS_futex,
            libc::SYS_clock_nanosleep,
            libc::SYS_shutdown,
        ] {
            assert!(helper.contains_key(&nr), "{nr}");
        }
        // fcntl: one command, where the others have five.
        assert_eq!(helper[&libc::SYS_fcntl].len(), 1);
    }

    /// Under the helper filter, an ioctl the main thread may make, a new
    /// thread, and an `fcntl` other than `F_GETFD`, kill.
    #[test]
    fn the_helper_filter_kills_what_other_roles_may_do() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        // SAFETY: FIONBIO on our own socket with a valid int.
        let status = run_filtered(Role::Helper, || unsafe {
            let on: libc::c_int = 1;
            libc::ioctl(fd, libc::FIONBIO, &on);
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // SAFETY: clone3 with no arguments fails (EFAULT/EINVAL) where it
        // is allowed; it creates nothing.
        let status = run_filtered(Role::Helper, || unsafe {
            libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // SAFETY: F_SETFL on our own socket.
        let status = run_filtered(Role::Helper, || unsafe {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    /// A helper thread started by `spawn_helper` has the filter in place
    /// (`Seccomp: 2` for that thread) before its body runs, and the body
    /// can wait, sleep and hand a result back under it.
    #[test]
    fn a_helper_thread_runs_confined() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        spawn_helper("test-helper", true, move || {
            // SAFETY: gettid has no arguments.
            let _ = tid_tx.send(unsafe { libc::syscall(libc::SYS_gettid) });
            let _ = go_rx.recv();
            std::thread::sleep(std::time::Duration::from_millis(1));
            let _ = done_tx.send(());
        })
        .unwrap();
        let tid = tid_rx.recv().unwrap();
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some("2"), "{line}");
        go_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        // Unconfined on request (--no-seccomp).
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_helper("test-helper", false, move || {
            let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let _ = tx.send(s);
        })
        .unwrap();
        let seccomp_line = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Seccomp:"))
                .map(str::to_owned)
        };
        let ours = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(seccomp_line(&rx.recv().unwrap()), seccomp_line(&ours));
    }
}
