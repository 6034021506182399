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
//!   It needs no KVM ioctl after setup.
//! - **vCPU** ([`Role::Vcpu`], threads `vcpu<N>`): installs its filter
//!   before its first `KVM_RUN`, then handles the port I/O and MMIO exits:
//!   the serial console (writes and live rotation of its file), the status
//!   port, the i8042 reset, the virtio-mmio registers, where device
//!   activation and reset happen (the TAP offload ioctl; the vhost-user
//!   messages of virtio-fs, with descriptors passed over the socket).
//! - helpers a vCPU thread starts, which inherit its filter (filters
//!   stack, so a child can only ever do less): the `power-off` grace timer
//!   of the status port (sleep, then the exit eventfd) and the
//!   `vhost-user-watchdog` of a virtio-fs exchange (a timed wait, then
//!   `shutdown(2)` on the socket). The one watchdog the main thread runs
//!   during setup ends before the main thread's filter is installed.
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
}

/// The role of a VMM thread (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Setup, then the event loop and the teardown.
    Main,
    /// A vCPU run loop (and the helpers it starts).
    Vcpu,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 2] = [Role::Main, Role::Vcpu];

    /// The role's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
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

/// `KVM_RUN`: the vCPU loop.
pub const KVM_RUN: u64 = kvm_io(0x80);
/// `KVM_GET_REGS`: the crash report of a triple fault.
pub const KVM_GET_REGS: u64 = kvm_ior::<kvm_bindings::kvm_regs>(0x81);
/// `KVM_GET_SREGS`: likewise.
pub const KVM_GET_SREGS: u64 = kvm_ior::<kvm_bindings::kvm_sregs>(0x83);

/// Calls every thread makes: memory, threads (std's spawn and exit, with
/// the guard page and signal stack), locks, blocked signals, time, the
/// descriptors it already holds (reads and writes of disks, TAPs, sockets,
/// eventfds; `close` on teardown), the log and console files it rotates
/// live (`openat`, `rename`), the status file written atomically
/// (`openat`, `fsync`, `rename`, `unlink` on failure), entropy (the rng
/// device, and std's hash map keys in each thread).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone,
    libc::SYS_clone3,
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
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getrandom,
    // vhost-user (virtio-fs start and stop, on a vCPU thread) passes
    // descriptors in messages; vsock's Unix streams use send/recv.
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // The vhost-user watchdog shuts a silent backend's socket down.
    libc::SYS_shutdown,
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
        Role::Main => vec![libc::FIONBIO, libc::FIOCLEX],
        Role::Vcpu => vec![
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            // virtio-net activation and reset set the TAP's offloads.
            libc::TUNSETOFFLOAD,
        ],
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
    for &nr in COMMON {
        m.insert(nr, vec![]);
    }
    if role == Role::Main {
        for &nr in MAIN {
            m.insert(nr, vec![]);
        }
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

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values from <linux/kvm.h> and <linux/if_tun.h> on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
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
}
