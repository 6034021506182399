//! seccomp filters per thread role (Firecracker's model): each thread of
//! the VMM installs the allowlist of its role before it handles anything a
//! guest controls, and a system call outside it kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, so a compromised thread cannot linger).
//!
//! The VMM's threads and their roles:
//! - **main**: builds the VM, then runs the event loop (virtio queues of
//!   every device: disks, entropy, vsock with its Unix sockets, TAPs; the
//!   exit and signal watch), then writes the status file and exits;
//! - **vCPU** (`vcpu<N>`): `KVM_RUN` and the port/MMIO exits: the serial
//!   console (file writes and rotation), the status port, virtio
//!   configuration space, which includes device activation (vhost-user
//!   messages to virtiofsd, TAP offloads) and may start a helper thread;
//! - helpers started by a vCPU thread (`power-off` grace timer,
//!   `vhost-user-watchdog`) inherit their creator's filter, which covers
//!   what they do (sleep, futex, `shutdown(2)`).
//!
//! The filters are written in Rust rather than Firecracker's JSON compiled
//! at build time: the ioctl numbers come from the same definitions the
//! code uses, the compiler checks them, and there is no build step or file
//! to keep next to the binary (the filters are not meant to be edited by
//! users). Arguments are checked where it matters: `ioctl` request numbers
//! (KVM, TAP, and `FIONBIO`/`FIOCLEX` only), `socket` (`AF_UNIX` only),
//! `prctl` (`PR_SET_NAME` only).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter of the {role} thread: {detail}")]
    Build { role: &'static str, detail: String },
    #[error("installing the seccomp filter of the {role} thread: {detail}")]
    Apply { role: &'static str, detail: String },
}

/// The role of a VMM thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Setup, then the event loop and the teardown.
    Main,
    /// A vCPU run loop (and the helpers it starts).
    Vcpu,
}

impl Role {
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
const fn io(nr: u64) -> u64 {
    ioc(0, KVMIO, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, KVMIO, nr, std::mem::size_of::<T>() as u64)
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, KVMIO, nr, std::mem::size_of::<T>() as u64)
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior::<kvm_bindings::kvm_regs>(0x81);
const KVM_GET_SREGS: u64 = ior::<kvm_bindings::kvm_sregs>(0x83);
const KVM_GET_MSRS: u64 = iowr::<kvm_bindings::kvm_msrs>(0x88);
const KVM_GET_LAPIC: u64 = ior::<kvm_bindings::kvm_lapic_state>(0x8e);
const KVM_GET_MP_STATE: u64 = ior::<kvm_bindings::kvm_mp_state>(0x98);
const KVM_GET_VCPU_EVENTS: u64 = ior::<kvm_bindings::kvm_vcpu_events>(0x9f);

/// Calls every thread makes: memory, threads and locks, signals, time,
/// reading and writing its descriptors and files it already has or
/// rotates (log, console, status), entropy.
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
    libc::SYS_tgkill,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
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
    libc::SYS_fallocate,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getrandom,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
];

/// The main thread's extra calls: the event loop, the vsock device's
/// Unix sockets, the rate limiters' timers.
const MAIN: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

fn eq(arg: u8, v: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, Len::Dword, Op::Eq, v)
}

fn eq64(arg: u8, v: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, Len::Qword, Op::Eq, v)
}

/// The ioctl requests of `role`.
fn ioctls(role: Role) -> Vec<u64> {
    let mut v = vec![
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::TUNSETOFFLOAD as u64,
        libc::TUNSETVNETHDRSZ as u64,
        libc::TUNGETIFF as u64,
    ];
    if role == Role::Vcpu {
        v.extend([
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_MSRS,
            KVM_GET_LAPIC,
            KVM_GET_MP_STATE,
            KVM_GET_VCPU_EVENTS,
        ]);
    }
    v
}

/// The rules of `role`, by system call number.
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
    }
    let ioctl = ioctls(role)
        .into_iter()
        .map(|req| SeccompRule::new(vec![eq(1, req).map_err(build)?]).map_err(build))
        .collect::<Result<Vec<_>, _>>()?;
    m.insert(libc::SYS_ioctl, ioctl);
    // Unix sockets only (guest connections to host ports), as the vsock
    // device makes them.
    m.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![eq(0, libc::AF_UNIX as u64).map_err(build)?]).map_err(build)?],
    );
    // Threads name themselves.
    m.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![eq64(0, libc::PR_SET_NAME as u64).map_err(build)?])
            .map_err(build)?],
    );
    Ok(m)
}

/// The compiled filter of `role`.
pub fn filter(role: Role) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(
        rules(role)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build {
        role: role.name(),
        detail: e.to_string(),
    })?;
    f.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Build {
        role: role.name(),
        detail: e.to_string(),
    })
}

/// Install the filter of `role` on the calling thread (and the threads it
/// starts from now on).
pub fn apply(role: Role) -> Result<(), SeccompError> {
    let prog = filter(role)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Apply {
        role: role.name(),
        detail: e.to_string(),
    })
}

/// Test builds only (feature `seccomp-test-trigger`): with
/// `MVM_SECCOMP_TEST_TRIGGER=1` in its environment the VMM makes a call
/// outside its allowlist once its filters are in place, to prove that the
/// filter kills it.
#[cfg(feature = "seccomp-test-trigger")]
pub fn test_trigger() {
    if std::env::var_os("MVM_SECCOMP_TEST_TRIGGER").is_some_and(|v| v == "1") {
        tracing::warn!("MVM_SECCOMP_TEST_TRIGGER: calling getppid(2), which no filter allows");
        // SAFETY: getppid has no arguments and no side effect.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// Without the feature the trigger does nothing.
#[cfg(not(feature = "seccomp-test-trigger"))]
pub fn test_trigger() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values from <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
    }

    #[test]
    fn roles_differ_where_they_should() {
        let main = rules(Role::Main).unwrap();
        let vcpu = rules(Role::Vcpu).unwrap();
        assert!(main.contains_key(&libc::SYS_epoll_wait));
        assert!(!vcpu.contains_key(&libc::SYS_epoll_wait));
        assert!(!vcpu.contains_key(&libc::SYS_accept4));
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), main[&libc::SYS_ioctl].len() + 7);
        for r in [&main, &vcpu] {
            for nr in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_getppid,
                libc::SYS_setuid,
                libc::SYS_bpf,
            ] {
                assert!(!r.contains_key(&nr), "{nr} allowed");
            }
        }
        filter(Role::Main).unwrap();
        filter(Role::Vcpu).unwrap();
    }

    /// A real filter on a real thread: allowed calls work, a call outside
    /// the list kills the process (checked from a child process).
    #[test]
    fn the_filter_kills_on_a_forbidden_call() {
        // SAFETY: fork in a test; the child only installs the filter,
        // makes two calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = apply(Role::Main).is_ok();
            // SAFETY: plain system calls in the child.
            unsafe {
                libc::syscall(libc::SYS_gettid);
                if ok {
                    libc::syscall(libc::SYS_getppid);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
