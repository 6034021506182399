//! Starting the workload: fork, set up the child (session, stdin, user,
//! working directory), then exec with an `execvp`-like `PATH` search.
//!
//! Everything the child needs is prepared as C strings before `fork`, so
//! the child makes only async-signal-safe syscalls. A failure in the child
//! travels back to the parent over a close-on-exec pipe as (step, errno):
//! EOF on the pipe means exec succeeded. That lets init report *why* the
//! workload did not start (Docker's 127 vs 126) instead of a mystery exit.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use mvm_protocol::status::InitError;

use crate::sys::{cstring, cvt};
use crate::user::ExecUser;

/// The step of child setup that failed (sent over the pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    Session = 1,
    Stdin = 2,
    Groups = 3,
    Gid = 4,
    Uid = 5,
    Cwd = 6,
    Exec = 7,
    Stdio = 8,
    Tty = 9,
}

impl Step {
    fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Session,
            2 => Self::Stdin,
            3 => Self::Groups,
            4 => Self::Gid,
            5 => Self::Uid,
            6 => Self::Cwd,
            7 => Self::Exec,
            8 => Self::Stdio,
            9 => Self::Tty,
            _ => return None,
        })
    }
}

/// Why the workload could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the command has no program name (process.args[0] is empty)")]
    EmptyProgram,
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot create working directory {path}: {source}")]
    CreateCwd { path: String, source: io::Error },
    #[error("cannot create the exec status pipe: {0}")]
    Pipe(io::Error),
    #[error("cannot fork the workload: {0}")]
    Fork(io::Error),
    #[error("exec: {arg0:?}: executable file not found in $PATH")]
    NotInPath { arg0: String },
    #[error("exec: {arg0:?}: {}", errno_text(*errno))]
    Exec { arg0: String, errno: i32 },
    #[error("cannot switch to uid {uid} gid {gid} (groups {sgids:?}): {}", errno_text(*errno))]
    User {
        uid: u32,
        gid: u32,
        sgids: Vec<u32>,
        errno: i32,
    },
    #[error("cannot change to working directory {cwd}: {}", errno_text(*errno))]
    Chdir { cwd: String, errno: i32 },
    #[error("cannot set up the workload's {what}: {}", errno_text(*errno))]
    Setup { what: &'static str, errno: i32 },
    #[error("the workload's setup reported an unknown failure (step {step}, errno {errno})")]
    Garbled { step: i32, errno: i32 },
}

impl SpawnError {
    /// The status code the host sees for this failure.
    pub fn code(&self) -> InitError {
        match self {
            Self::NotInPath { .. } => InitError::NotFound,
            Self::Exec { errno, .. } => match *errno {
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {
                    InitError::NotFound
                }
                libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY => {
                    InitError::NotExecutable
                }
                _ => InitError::Other,
            },
            Self::User { .. } | Self::Chdir { .. } | Self::CreateCwd { .. } => InitError::User,
            Self::EmptyProgram => InitError::NotFound,
            Self::Nul { .. } => InitError::BadSpec,
            Self::Pipe(_) | Self::Fork(_) | Self::Setup { .. } | Self::Garbled { .. } => {
                InitError::Other
            }
        }
    }
}

/// `strerror` text in the lower case Go (and so Docker) prints it.
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

/// Where the child's stdin, stdout and stderr come from. The descriptors
/// are the parent's (close-on-exec, as every descriptor init opens must be,
/// or concurrent spawns would leak them into each other's children and
/// pipes would never see EOF); the child `dup2`s them onto 0, 1 and 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stdio {
    /// stdin /dev/null; stdout and stderr inherited from init (the console).
    #[default]
    Console,
    /// These descriptors; no stdin descriptor means /dev/null.
    Fds {
        stdin: Option<RawFd>,
        stdout: RawFd,
        stderr: RawFd,
    },
    /// The slave side of a pseudo-terminal: it becomes the controlling
    /// terminal of the child's new session and its stdin, stdout, stderr.
    Pty { slave: RawFd },
}

/// A fully prepared workload command.
#[derive(Debug)]
pub struct Command {
    arg0: String,
    /// Whether `PATH` was searched (`arg0` has no `/`).
    searched: bool,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    cwd_display: String,
    user: ExecUser,
    stdio: Stdio,
    /// `cgroup.procs` of the cgroup the child joins before exec.
    cgroup_procs: Option<CString>,
}

impl Command {
    /// Prepare `args` to run with environment `env` (final `KEY=VALUE`
    /// list, see [`crate::env::build`]) in `cwd` as `user`.
    pub fn new(
        args: &[String],
        env: &[String],
        cwd: &str,
        user: ExecUser,
    ) -> Result<Self, SpawnError> {
        let arg0 = args
            .first()
            .filter(|a| !a.is_empty())
            .ok_or(SpawnError::EmptyProgram)?
            .clone();
        let nul = |what| move |_| SpawnError::Nul { what };
        let candidates = crate::env::candidates(&arg0, crate::env::get(env, "PATH"))
            .iter()
            .map(|p| crate::sys::cpath(p))
            .collect::<Result<_, _>>()
            .map_err(nul("process.args[0]"))?;
        let argv = args
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(nul("process.args"))?;
        let envp = env
            .iter()
            .map(|e| cstring(e.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(nul("process.env"))?;
        Ok(Self {
            searched: !arg0.contains('/'),
            arg0,
            candidates,
            argv,
            envp,
            cwd: cstring(cwd.as_bytes()).map_err(nul("process.cwd"))?,
            cwd_display: cwd.into(),
            user,
            stdio: Stdio::Console,
            cgroup_procs: None,
        })
    }

    /// Set where stdin, stdout and stderr come from.
    pub fn stdio(&mut self, stdio: Stdio) -> &mut Self {
        self.stdio = stdio;
        self
    }

    /// Make the child join the cgroup whose `cgroup.procs` file is `procs`
    /// before it execs, so nothing it starts escapes the cgroup. Best
    /// effort: a cgroup that cannot be joined only costs accounting.
    pub fn cgroup(&mut self, procs: &Path) -> &mut Self {
        self.cgroup_procs = crate::sys::cpath(procs).ok();
        self
    }

    /// Create the working directory if it is missing, as runc does
    /// (`MkdirAll(cwd, 0755)` as root): Docker users rely on `-w /new/dir`
    /// just working. It stays root-owned like runc's; a non-root workload
    /// that must write there needs it in the image.
    pub fn ensure_cwd(&self) -> Result<(), SpawnError> {
        let path = Path::new(&self.cwd_display);
        if path.is_dir() {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|source| SpawnError::CreateCwd {
                path: self.cwd_display.clone(),
                source,
            })
    }

    /// Fork and exec the workload; returns its pid once exec succeeded.
    ///
    /// The child: resets signal mask and dispositions (init blocks signals
    /// for its signalfd, and Rust ignores SIGPIPE; both would be inherited
    /// across exec), starts a new session, takes /dev/null as stdin and
    /// keeps init's stdout/stderr (the console), drops to the user
    /// (`setgroups`, `setgid`, then `chdir` while still root as runc does,
    /// then `setuid`), then tries each `PATH` candidate like glibc's
    /// `execvp`.
    pub fn spawn(&self) -> Result<libc::pid_t, SpawnError> {
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(SpawnError::Pipe)?;
        // SAFETY: pipe2 just returned these two descriptors; we own them.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

        // SAFETY: after fork the child only calls `child`, which makes
        // async-signal-safe syscalls on memory prepared before the fork
        // and never returns.
        let pid = cvt(unsafe { libc::fork() }).map_err(SpawnError::Fork)?;
        if pid == 0 {
            drop(rd);
            self.child(wr.as_raw_fd(), &argv, &envp);
        }
        drop(wr);

        let mut msg = [0u8; 8];
        let n = read_full(rd.as_raw_fd(), &mut msg);
        if n == 0 {
            return Ok(pid);
        }
        // The child failed and exits at once; reap it here so the main
        // wait loop never sees a workload that did not start.
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is a valid out pointer.
        while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        let step = i32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
        Err(self.error_for(n, step, errno))
    }

    fn error_for(&self, n: usize, step: i32, errno: i32) -> SpawnError {
        let garbled = SpawnError::Garbled { step, errno };
        if n != 8 {
            return garbled;
        }
        match Step::from_i32(step) {
            Some(Step::Session) => SpawnError::Setup {
                what: "session (setsid)",
                errno,
            },
            Some(Step::Stdin) => SpawnError::Setup {
                what: "stdin (/dev/null)",
                errno,
            },
            Some(Step::Stdio) => SpawnError::Setup {
                what: "stdin, stdout and stderr",
                errno,
            },
            Some(Step::Tty) => SpawnError::Setup {
                what: "controlling terminal",
                errno,
            },
            Some(Step::Groups | Step::Gid | Step::Uid) => SpawnError::User {
                uid: self.user.uid,
                gid: self.user.gid,
                sgids: self.user.sgids.clone(),
                errno,
            },
            Some(Step::Cwd) => SpawnError::Chdir {
                cwd: self.cwd_display.clone(),
                errno,
            },
            Some(Step::Exec) if self.searched && errno == libc::ENOENT => SpawnError::NotInPath {
                arg0: self.arg0.clone(),
            },
            Some(Step::Exec) => SpawnError::Exec {
                arg0: self.arg0.clone(),
                errno,
            },
            None => garbled,
        }
    }

    /// The child side of `spawn`. Never returns.
    fn child(
        &self,
        report: libc::c_int,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> ! {
        let fail = |step: Step| -> ! {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(step as i32).to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: writing 8 bytes from a local buffer to our pipe, then
            // leaving without running any Rust destructors or atexit code.
            unsafe {
                libc::write(report, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        };
        // SAFETY: each call is an async-signal-safe syscall wrapper on
        // locals or on C strings prepared before the fork (the whole block).
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            reset_signal_dispositions();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

            if let Some(procs) = &self.cgroup_procs {
                // "0" moves the writing process itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if libc::setsid() == -1 {
                fail(Step::Session);
            }
            match self.stdio {
                Stdio::Console => {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                    if null == -1 || libc::dup2(null, 0) == -1 {
                        fail(Step::Stdin);
                    }
                    if null != 0 {
                        libc::close(null);
                    }
                }
                // 0-2 are always open in init (ensure_stdio) and in tests,
                // so no source descriptor is among the targets unless it is
                // its own target, which `dup_onto` handles.
                Stdio::Fds {
                    stdin,
                    stdout,
                    stderr,
                } => {
                    let stdin = match stdin {
                        Some(fd) => fd,
                        None => libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
                    };
                    if stdin == -1
                        || !dup_onto(stdin, 0)
                        || !dup_onto(stdout, 1)
                        || !dup_onto(stderr, 2)
                    {
                        fail(Step::Stdio);
                    }
                }
                Stdio::Pty { slave } => {
                    if libc::ioctl(slave, libc::TIOCSCTTY, 0) == -1 {
                        fail(Step::Tty);
                    }
                    if !dup_onto(slave, 0) || !dup_onto(slave, 1) || !dup_onto(slave, 2) {
                        fail(Step::Stdio);
                    }
                }
            }
            if libc::setgroups(self.user.sgids.len(), self.user.sgids.as_ptr()) == -1 {
                fail(Step::Groups);
            }
            if libc::setgid(self.user.gid) == -1 {
                fail(Step::Gid);
            }
            // runc changes directory before dropping privileges, so a
            // directory only root may enter still works as a workdir.
            if libc::chdir(self.cwd.as_ptr()) == -1 {
                fail(Step::Cwd);
            }
            if libc::setuid(self.user.uid) == -1 {
                fail(Step::Uid);
            }

            // glibc execvp: EACCES on one candidate does not stop the
            // search but is reported if nothing else is found; "not there"
            // errors move on; anything else stops the search.
            let mut saw_eacces = false;
            let mut last = libc::ENOENT;
            for path in &self.candidates {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                last = *libc::__errno_location();
                match last {
                    libc::EACCES => saw_eacces = true,
                    libc::ENOENT
                    | libc::ENOTDIR
                    | libc::ESTALE
                    | libc::ENODEV
                    | libc::ETIMEDOUT => {}
                    _ => break,
                }
            }
            let errno = if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
                libc::EACCES
            } else {
                last
            };
            *libc::__errno_location() = errno;
            fail(Step::Exec)
        }
    }
}

/// Set every signal's disposition to the default with the raw syscall:
/// glibc's `sigaction` refuses 32 and 33 (reserved for its threads), but an
/// ignored disposition there is inherited across exec all the same.
/// Async-signal-safe.
fn reset_signal_dispositions() {
    // The kernel's `struct sigaction` (not libc's): handler, flags,
    // restorer, mask. All zero is SIG_DFL with no flags.
    let act = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid, zeroed kernel sigaction, no
        // old-action pointer and the kernel's sigset size (8 bytes).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                act.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
}

/// Make `src` the child's descriptor `dst`, without close-on-exec.
/// Async-signal-safe.
fn dup_onto(src: libc::c_int, dst: libc::c_int) -> bool {
    // SAFETY: plain descriptor syscalls on integers.
    unsafe {
        if src == dst {
            libc::fcntl(dst, libc::F_SETFD, 0) != -1
        } else {
            libc::dup2(src, dst) != -1
        }
    }
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Read until `buf` is full or EOF; returns the bytes read.
fn read_full(fd: libc::c_int, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> ExecUser {
        ExecUser {
            uid: 0,
            gid: 0,
            sgids: vec![],
            home: "/root".into(),
        }
    }

    fn cmd(args: &[&str], env: &[&str]) -> Command {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        Command::new(&args, &env, "/", root()).unwrap()
    }

    fn wait(pid: libc::pid_t) -> libc::c_int {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    fn exit_code(pid: libc::pid_t) -> i32 {
        let status = wait(pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn runs_with_path_lookup_and_env() {
        let c = cmd(
            &[
                "sh",
                "-c",
                "test \"$FOO\" = bar && test \"$(pwd)\" = / && exit 3",
            ],
            &["PATH=/nonexistent:/bin:/usr/bin", "FOO=bar"],
        );
        assert_eq!(exit_code(c.spawn().unwrap()), 3);
    }

    #[test]
    fn child_starts_clean() {
        // New session and /dev/null as stdin, checked by the shell; the
        // signal state is read by `cat` itself, exec'd straight from the
        // shell (no fork, so nothing the shell does transiently shows).
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        let script = r#"
            test "$(cat)" = "" || exit 10
            test "$(readlink /proc/self/fd/0)" = /dev/null || exit 11
            sid=$(cut -d' ' -f6 /proc/$$/stat); test "$sid" = $$ || exit 12
            exec cat /proc/self/status > "$1""#;
        let c = cmd(
            &["/bin/sh", "-c", script, "sh", status.to_str().unwrap()],
            &[],
        );
        assert_eq!(exit_code(c.spawn().unwrap()), 0);
        let status = std::fs::read_to_string(status).unwrap();
        // The test process ignores SIGPIPE (Rust does) and may have other
        // signals ignored or blocked: none of it may reach the workload.
        for key in ["SigBlk:", "SigIgn:"] {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap();
            let mask = line[key.len()..].trim();
            assert!(mask.bytes().all(|b| b == b'0'), "{line}");
        }
    }

    #[test]
    fn missing_program_in_path_is_not_found() {
        let err = cmd(&["no-such-program-mvm"], &["PATH=/bin:/usr/bin"])
            .spawn()
            .unwrap_err();
        assert!(matches!(err, SpawnError::NotInPath { .. }), "{err:?}");
        assert_eq!(err.code(), InitError::NotFound);
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-program-mvm\": executable file not found in $PATH"
        );
    }

    #[test]
    fn missing_absolute_path_is_not_found() {
        let err = cmd(&["/no/such/file"], &[]).spawn().unwrap_err();
        assert_eq!(err.code(), InitError::NotFound);
        assert_eq!(
            err.to_string(),
            "exec: \"/no/such/file\": no such file or directory"
        );
    }

    #[test]
    fn non_executable_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let path = script.to_str().unwrap();
        let err = cmd(&[path], &[]).spawn().unwrap_err();
        assert_eq!(err.code(), InitError::NotExecutable, "{err}");
        assert!(err.to_string().ends_with("permission denied"), "{err}");

        // Found in PATH but not executable: EACCES, as execvp reports.
        let dirname = dir.path().to_str().unwrap();
        let err = cmd(&["script"], &[&format!("PATH={dirname}")])
            .spawn()
            .unwrap_err();
        assert_eq!(err.code(), InitError::NotExecutable, "{err}");

        // Executable bit but no valid format: ENOEXEC, no shell fallback.
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&script, "just text\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A test running in parallel may fork while our write descriptor is
        // open; its child holds that descriptor until its own exec, and for
        // that moment the kernel answers ETXTBSY. Wait that out.
        let mut tries = 0;
        let err = loop {
            let err = cmd(&[path], &[]).spawn().unwrap_err();
            let busy = matches!(
                err,
                SpawnError::Exec {
                    errno: libc::ETXTBSY,
                    ..
                }
            );
            if !busy || tries == 100 {
                break err;
            }
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(err.code(), InitError::NotExecutable, "{err}");
        assert!(err.to_string().contains("exec format error"), "{err}");

        // A directory.
        let err = cmd(&[dirname], &[]).spawn().unwrap_err();
        assert_eq!(err.code(), InitError::NotExecutable, "{err}");
    }

    #[test]
    fn drops_to_user_and_groups() {
        let user = ExecUser {
            uid: 65534,
            gid: 65533,
            sgids: vec![100, 200],
            home: "/".into(),
        };
        let args: Vec<String> = ["sh", "-c", r#"test "$(id -u):$(id -g)" = 65534:65533 || exit 1; test "$(id -G)" = "65533 100 200" || exit 2"#]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = Command::new(&args, &["PATH=/bin:/usr/bin".into()], "/", user).unwrap();
        assert_eq!(exit_code(c.spawn().unwrap()), 0);
    }

    #[test]
    fn bad_cwd_is_a_user_error_and_ensure_cwd_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("a/b");
        let args = vec![
            "sh".to_string(),
            "-c".into(),
            "test \"$(pwd)\" = \"$1\"".into(),
            "sh".into(),
            cwd.to_str().unwrap().into(),
        ];
        let c = Command::new(
            &args,
            &["PATH=/bin:/usr/bin".into()],
            cwd.to_str().unwrap(),
            root(),
        )
        .unwrap();
        let err = c.spawn().unwrap_err();
        assert_eq!(err.code(), InitError::User, "{err}");
        assert!(
            err.to_string().contains("no such file or directory"),
            "{err}"
        );
        c.ensure_cwd().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cwd).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(exit_code(c.spawn().unwrap()), 0);
    }

    #[test]
    fn empty_program_is_refused_before_fork() {
        let err = Command::new(&["".into()], &[], "/", root()).unwrap_err();
        assert!(matches!(err, SpawnError::EmptyProgram));
    }
}
