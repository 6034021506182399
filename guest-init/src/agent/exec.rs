//! `exec`: start a process for a session and stream its output.
//!
//! The process gets pipes (or a new terminal), joins the workload cgroup,
//! and runs as the requested user (default: the main workload's) with the
//! main workload's environment plus the request's, as `docker exec` does.
//! Its exit status comes from the reaper through the [`Router`].
//!
//! One output thread per exec polls the process's stdout and stderr (or its
//! terminal) and the exit, and writes frames as fast as the host takes them
//! (a blocking socket write is the back-pressure: the process then blocks
//! on its full pipe). After the exit it drains what is left, stopping once
//! the streams close or stay silent for [`LINGER`] (a background process
//! may hold them open forever), then sends `exited`. If the host goes away
//! the thread keeps draining and discarding until the process ends, so the
//! process is never wedged on a pipe nobody reads.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mvm_protocol::agent::{ErrorCode, Exec, Kind, Response};
use mvm_protocol::status::InitError;

use super::router::ExitReceiver;
use super::session::SharedWriter;
use super::workload::{exit_of, LINGER};
use super::{fdio, pty, Agent};
use crate::process::{Command, SpawnError, Stdio};

/// Read size for output; a frame carries at most one read.
const CHUNK: usize = 256 * 1024;

/// A running exec, as its session holds it.
#[derive(Debug)]
pub struct Running {
    pub pid: libc::pid_t,
    /// Where STDIN frames go (pipe write end or terminal master).
    pub stdin: Option<OwnedFd>,
    /// The terminal master, for resizes.
    pub terminal: Option<Arc<OwnedFd>>,
    /// Set by the output thread just before it sends `exited`.
    pub done: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

/// An error for the host.
pub type Refusal = (ErrorCode, String);

fn spawn_refusal(e: SpawnError) -> Refusal {
    let code = match e.code() {
        InitError::NotFound => ErrorCode::NotFound,
        InitError::NotExecutable => ErrorCode::NotExecutable,
        InitError::User => ErrorCode::User,
        InitError::BadSpec => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

fn io_refusal(what: &str, e: std::io::Error) -> Refusal {
    (ErrorCode::Internal, format!("{what}: {e}"))
}

/// Check, prepare and start the process; on success `started` has been
/// sent and the output thread runs.
pub fn start(agent: &Agent, req: Exec, writer: &SharedWriter) -> Result<Running, Refusal> {
    if req.args.is_empty() || req.args[0].is_empty() {
        return Err((
            ErrorCode::BadRequest,
            "exec needs a command: args is empty".into(),
        ));
    }
    if let Some(bad) = req
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('=') || e.contains('\0'))
    {
        return Err((
            ErrorCode::BadRequest,
            format!("environment entry {bad:?} is not KEY=VALUE"),
        ));
    }
    let d = &agent.config;
    let cwd = req.cwd.as_deref().unwrap_or(&d.cwd);
    if !cwd.starts_with('/') {
        return Err((
            ErrorCode::BadRequest,
            format!("working directory {cwd:?} is not absolute"),
        ));
    }
    let user_spec = req.user.as_deref().unwrap_or(&d.user);
    let user = crate::user::resolve_in_root(user_spec, &d.root)
        .map_err(|e| (ErrorCode::User, format!("user {user_spec:?}: {e}")))?;
    let mut env = crate::env::build(&[d.env.clone(), req.env].concat(), &d.hostname, &user.home);
    if req.tty && crate::env::get(&env, "TERM").is_none() {
        env.push("TERM=xterm".into());
    }
    let mut cmd = Command::new(&req.args, &env, cwd, user).map_err(spawn_refusal)?;
    if let Some(cg) = &d.cgroup {
        cmd.cgroup(&cg.join("cgroup.procs"));
    }

    let mut streams: Vec<(Kind, OwnedFd)> = Vec::new();
    let (pid, exit, stdin, terminal) = if req.tty {
        let pty = pty::open().map_err(|e| io_refusal("cannot open a terminal", e))?;
        if req.rows > 0 && req.cols > 0 {
            pty::set_size(&pty.master, req.rows, req.cols)
                .map_err(|e| io_refusal("cannot size the terminal", e))?;
        }
        cmd.stdio(Stdio::Pty {
            slave: pty.slave.as_raw_fd(),
        });
        let (pid, exit) = agent.router.spawn(&cmd).map_err(spawn_refusal)?;
        drop(pty.slave);
        let dup = |what| fdio::dup(&pty.master).map_err(|e| io_refusal(what, e));
        let stdin = if req.stdin {
            Some(dup("cannot duplicate the terminal")?)
        } else {
            None
        };
        streams.push((Kind::Stdout, dup("cannot duplicate the terminal")?));
        (pid, exit, stdin, Some(Arc::new(pty.master)))
    } else {
        let pipe = || fdio::pipe().map_err(|e| io_refusal("cannot create a pipe", e));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let input = if req.stdin { Some(pipe()?) } else { None };
        cmd.stdio(Stdio::Fds {
            stdin: input.as_ref().map(|(r, _)| r.as_raw_fd()),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
        });
        let (pid, exit) = agent.router.spawn(&cmd).map_err(spawn_refusal)?;
        streams.push((Kind::Stdout, out_r));
        streams.push((Kind::Stderr, err_r));
        (pid, exit, input.map(|(_, w)| w), None)
    };

    // The terminal is known by pid before the host learns the pid: a
    // resize by pid from another connection may follow at once.
    if let Some(t) = &terminal {
        agent.register_terminal(pid, t);
    }
    // `started` goes out before any output can.
    let sent = writer.send(&Response::Started { pid });
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let writer = writer.clone();
        let done = done.clone();
        let mut alive = sent.is_ok();
        std::thread::Builder::new()
            .name("mvm-exec".into())
            .stack_size(256 * 1024)
            .spawn(move || pump(streams, exit, &writer, &done, &mut alive))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            // The process runs but nobody would read it: end it.
            let _ = crate::sys::kill(pid, libc::SIGKILL);
            return Err(io_refusal("cannot start the output thread", e));
        }
    };
    Ok(Running {
        pid,
        stdin,
        terminal,
        done,
        thread,
    })
}

/// Copy output to the host until the process ended and its streams are
/// drained, then send `exited`. `alive`: whether the host still listens.
fn pump(
    mut streams: Vec<(Kind, OwnedFd)>,
    exit: ExitReceiver,
    writer: &SharedWriter,
    done: &AtomicBool,
    alive: &mut bool,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut status = None;
    loop {
        if streams.is_empty() && status.is_some() {
            break;
        }
        let mut fds: Vec<_> = streams.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        if status.is_none() {
            fds.push(exit.fd());
        }
        let timeout = status.is_some().then_some(LINGER);
        let revents = match fdio::poll_read(&fds, timeout) {
            Ok(r) => r,
            Err(e) => {
                crate::warn!("exec output: poll: {e}");
                break;
            }
        };
        if revents.iter().all(|&r| r == 0) {
            break; // lingered long enough after the exit
        }
        if status.is_none() && fdio::ready(revents[fds.len() - 1]) {
            match exit.try_recv() {
                Ok(Some(s)) => status = Some(s),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let mut closed = Vec::new();
        for (i, (kind, fd)) in streams.iter().enumerate() {
            if !fdio::ready(revents[i]) {
                continue;
            }
            match fdio::read(fd.as_raw_fd(), &mut buf) {
                Ok(Some(n)) => {
                    if *alive && writer.frame(*kind, &buf[..n]).is_err() {
                        *alive = false;
                    }
                }
                Ok(None) => closed.push(i),
                Err(e) => {
                    crate::warn!("exec output: read: {e}");
                    closed.push(i);
                }
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
    }
    // Streams are drained; the status may still be on its way (a process
    // that closed its output before exiting).
    let status = match status {
        Some(s) => Some(s),
        None => exit.recv().ok(),
    };
    done.store(true, Ordering::SeqCst);
    if *alive {
        let exit = status.and_then(exit_of);
        let msg = match exit {
            Some(e) => Response::Exited(e),
            None => Response::error(
                ErrorCode::Internal,
                "the exit status of the process was lost",
            ),
        };
        let _ = writer.send(&msg);
    }
}

/// Send a signal to the exec'd process.
pub fn signal(pid: libc::pid_t, sig: libc::c_int) -> std::io::Result<()> {
    crate::reaper::signal_workload(pid, sig)
}
