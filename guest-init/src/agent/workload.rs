//! The main workload as the agent sees it: its pid, how it ended, and, when
//! the launch spec says `output: agent`, its output held for an attacher.
//!
//! Output is read by one pump thread per stream into a bounded buffer
//! ([`BUFFER_LIMIT`]) from the moment the workload starts. When the buffer
//! is full the pumps stop reading, so the workload blocks on its full pipe
//! exactly as it would writing to a slow terminal: nothing is dropped and
//! memory stays bounded. An attacher takes chunks out in order (freeing
//! room), then gets `exited` once the workload has ended and every byte has
//! been sent. One attacher at a time: a new one replaces the old, which is
//! told it was detached. The final status stays for late attachers.
//!
//! Everything shares one mutex and condition variable: the state is small
//! and every change (data, room, exit, attach) can matter to every waiter.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mvm_protocol::agent::{Exit, Kind};
use mvm_protocol::launch::{Output, Process};

use super::{fdio, pty};
use crate::process::{Command, SpawnError, Stdio};

/// Output kept for an attacher before the workload is made to wait.
pub const BUFFER_LIMIT: usize = 1 << 20;
/// How long output may keep trickling in after the workload exited (from
/// processes it left behind holding its stdout) before the stream is
/// declared finished. Restarted by every chunk.
pub const LINGER: Duration = Duration::from_millis(250);
/// How long init waits after the workload exited for a host to attach and
/// collect buffered output and the exit status, while none is attached.
pub const UNATTACHED_GRACE: Duration = Duration::from_secs(10);
/// Largest single read from the workload's pipes.
const CHUNK: usize = 64 * 1024;

/// The main workload.
#[derive(Debug)]
pub struct Workload {
    pid: libc::pid_t,
    /// Whether output is held for attachers (`output: agent`).
    attachable: bool,
    /// Where an attacher's stdin goes (pipe write end or terminal master).
    stdin: Mutex<Option<OwnedFd>>,
    /// The terminal master, for resizes.
    terminal: Option<OwnedFd>,
    /// Written once when the workload exits, so pumps blocked in `poll`
    /// notice and start their linger timeout. Never read: it stays
    /// readable.
    exit_note: (OwnedFd, OwnedFd),
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct State {
    exit: Option<Exit>,
    chunks: VecDeque<(Kind, Vec<u8>)>,
    buffered: usize,
    /// Pumps still reading.
    open_streams: usize,
    /// Id of the current attacher; bumped on every attach and detach.
    generation: u64,
    attached: bool,
    /// An attacher received `exited`.
    delivered: bool,
    /// The host asked for a shutdown.
    shutdown: bool,
}

/// How an attacher's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// Everything was sent; the workload ended like this.
    Exited(Exit),
    /// Another attacher took over.
    Detached,
}

/// What an attacher gets next.
enum Next {
    Chunk(Kind, Vec<u8>),
    End(AttachEnd),
}

/// The exit of a raw wait status; `None` for stops and continues.
pub fn exit_of(status: libc::c_int) -> Option<Exit> {
    if libc::WIFEXITED(status) {
        Some(Exit::code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Exit::signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

impl Workload {
    /// Start the workload as `process` says: on the console, on pipes or
    /// on a terminal (the latter two read by pumps for attachers).
    pub fn spawn(command: &mut Command, process: &Process) -> Result<Arc<Self>, SpawnError> {
        let exit_note = fdio::pipe().map_err(SpawnError::Pipe)?;
        if process.output == Output::Console {
            let pid = command.spawn()?;
            return Ok(Arc::new(Self::new(pid, false, None, None, exit_note)));
        }
        let mut streams = Vec::new();
        let (pid, stdin, terminal) = if process.terminal {
            let pty = pty::open().map_err(SpawnError::Pipe)?;
            if process.rows > 0 && process.cols > 0 {
                pty::set_size(&pty.master, process.rows, process.cols).map_err(SpawnError::Pipe)?;
            }
            command.stdio(Stdio::Pty {
                slave: pty.slave.as_raw_fd(),
            });
            let pid = command.spawn()?;
            drop(pty.slave);
            let stdin = if process.stdin {
                Some(fdio::dup(&pty.master).map_err(SpawnError::Pipe)?)
            } else {
                None
            };
            streams.push((
                Kind::Stdout,
                fdio::dup(&pty.master).map_err(SpawnError::Pipe)?,
            ));
            (pid, stdin, Some(pty.master))
        } else {
            let (out_r, out_w) = fdio::pipe().map_err(SpawnError::Pipe)?;
            let (err_r, err_w) = fdio::pipe().map_err(SpawnError::Pipe)?;
            let input = if process.stdin {
                Some(fdio::pipe().map_err(SpawnError::Pipe)?)
            } else {
                None
            };
            command.stdio(Stdio::Fds {
                stdin: input.as_ref().map(|(r, _)| r.as_raw_fd()),
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
            });
            let pid = command.spawn()?;
            streams.push((Kind::Stdout, out_r));
            streams.push((Kind::Stderr, err_r));
            (pid, input.map(|(_, w)| w), None)
        };
        let w = Arc::new(Self::new(pid, true, stdin, terminal, exit_note));
        w.lock().open_streams = streams.len();
        for (kind, fd) in streams {
            let me = w.clone();
            let spawned = std::thread::Builder::new()
                .name("mvm-pump".into())
                .stack_size(128 * 1024)
                .spawn(move || me.pump(kind, fd));
            if let Err(e) = spawned {
                // The workload runs; without a pump its output blocks. Say
                // so loudly rather than failing a running workload.
                crate::warn!("cannot start the output pump of the workload: {e}");
                let mut st = w.lock();
                st.open_streams -= 1;
            }
        }
        Ok(w)
    }

    fn new(
        pid: libc::pid_t,
        attachable: bool,
        stdin: Option<OwnedFd>,
        terminal: Option<OwnedFd>,
        exit_note: (OwnedFd, OwnedFd),
    ) -> Self {
        Self {
            pid,
            attachable,
            stdin: Mutex::new(stdin),
            terminal,
            exit_note,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cond.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether output is held for attachers.
    pub fn attachable(&self) -> bool {
        self.attachable
    }

    /// How the workload ended, if it has.
    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Record the workload's end (called by init's main thread, which
    /// reaps it).
    pub fn set_exited(&self, status: libc::c_int) {
        let exit = exit_of(status).unwrap_or(Exit::code(255));
        self.lock().exit = Some(exit);
        self.cond.notify_all();
        // SAFETY: one byte from a constant to our pipe; it has room.
        unsafe { libc::write(self.exit_note.1.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    }

    /// Read one output stream into the buffer until it ends.
    fn pump(&self, kind: Kind, fd: OwnedFd) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut st = self.lock();
            while st.buffered >= BUFFER_LIMIT {
                st = self.wait(st);
            }
            let room = (BUFFER_LIMIT - st.buffered).min(CHUNK);
            let exited = st.exit.is_some();
            drop(st);
            let polled = if exited {
                fdio::poll_read(&[fd.as_raw_fd()], Some(LINGER))
            } else {
                fdio::poll_read(&[fd.as_raw_fd(), self.exit_note.0.as_raw_fd()], None)
            };
            let revents = match polled {
                Ok(r) => r,
                Err(e) => {
                    crate::warn!("workload output: poll: {e}");
                    break;
                }
            };
            if !fdio::ready(revents[0]) {
                if exited {
                    break; // lingered long enough
                }
                continue; // the workload exited: poll again with the linger
            }
            match fdio::read(fd.as_raw_fd(), &mut buf[..room]) {
                Ok(Some(n)) => {
                    let mut st = self.lock();
                    st.buffered += n;
                    st.chunks.push_back((kind, buf[..n].to_vec()));
                    drop(st);
                    self.cond.notify_all();
                }
                Ok(None) => break,
                Err(e) => {
                    crate::warn!("workload output: read: {e}");
                    break;
                }
            }
        }
        self.lock().open_streams -= 1;
        self.cond.notify_all();
    }

    /// Become the attacher; returns its id. The previous one is detached.
    pub fn attach(&self) -> u64 {
        let mut st = self.lock();
        st.generation += 1;
        st.attached = true;
        let id = st.generation;
        drop(st);
        self.cond.notify_all();
        id
    }

    /// The attacher `id` is gone (its connection ended).
    pub fn detach(&self, id: u64) {
        let mut st = self.lock();
        if st.generation == id {
            st.generation += 1;
            st.attached = false;
        }
        drop(st);
        self.cond.notify_all();
    }

    /// Stream everything to attacher `id` through `send`, until the end
    /// or until it is replaced. A chunk `send` fails on is put back for the
    /// next attacher, and the error returned.
    pub fn stream(
        &self,
        id: u64,
        mut send: impl FnMut(Kind, &[u8]) -> io::Result<()>,
    ) -> io::Result<AttachEnd> {
        loop {
            let next = {
                let mut st = self.lock();
                loop {
                    if st.generation != id {
                        break Next::End(AttachEnd::Detached);
                    }
                    if let Some((kind, data)) = st.chunks.pop_front() {
                        st.buffered -= data.len();
                        break Next::Chunk(kind, data);
                    }
                    if st.open_streams == 0 {
                        if let Some(exit) = st.exit {
                            break Next::End(AttachEnd::Exited(exit));
                        }
                    }
                    st = self.wait(st);
                }
            };
            match next {
                Next::End(end) => return Ok(end),
                Next::Chunk(kind, data) => {
                    // Room was made: wake the pumps.
                    self.cond.notify_all();
                    if let Err(e) = send(kind, &data) {
                        let mut st = self.lock();
                        if st.generation == id {
                            st.buffered += data.len();
                            st.chunks.push_front((kind, data));
                        }
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Attacher `id` delivered `exited`.
    pub fn delivered(&self, id: u64) {
        let mut st = self.lock();
        if st.generation == id {
            st.delivered = true;
        }
        drop(st);
        self.cond.notify_all();
    }

    /// Whether init may power off: the output has been delivered, or there
    /// is nothing to deliver it to (console output), or no host has been
    /// attached for `UNATTACHED_GRACE` (tracked by the caller through
    /// `unattached_since`).
    pub fn may_power_off(&self, unattached_since: &mut Instant) -> bool {
        if !self.attachable {
            return true;
        }
        let st = self.lock();
        if st.delivered {
            return true;
        }
        if st.attached {
            *unattached_since = Instant::now();
            return false;
        }
        st.shutdown || unattached_since.elapsed() >= UNATTACHED_GRACE
    }

    /// Feed the workload's stdin (attachers that asked for it).
    pub fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = stdin.as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the workload's stdin is closed or was not kept open (process.stdin)",
            ));
        };
        let r = fdio::write_all(fd.as_raw_fd(), data);
        if r.is_err() {
            *stdin = None;
        }
        r
    }

    /// Close the workload's stdin (on a terminal: send end-of-file).
    pub fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = stdin.take() {
            if self.terminal.is_some() {
                let _ = fdio::write_all(fd.as_raw_fd(), &[4]);
            }
        }
    }

    /// Resize the workload's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        match &self.terminal {
            Some(t) => pty::set_size(t, rows, cols),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the main workload has no terminal (process.terminal is false)",
            )),
        }
    }

    /// Send `sig` to the workload.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        if self.exit().is_some() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        crate::reaper::signal_workload(self.pid, sig)
    }

    /// Stop the workload: `sig`, up to `timeout` for it to exit, then
    /// SIGKILL. Returns how it ended (`None` if even SIGKILL did not end it
    /// within a few seconds: a process stuck in the kernel).
    pub fn stop(&self, sig: libc::c_int, timeout: Duration) -> Option<Exit> {
        self.lock().shutdown = true;
        self.cond.notify_all();
        for (sig, wait) in [(sig, timeout), (libc::SIGKILL, Duration::from_secs(5))] {
            if let Some(exit) = self.exit() {
                return Some(exit);
            }
            // ESRCH: it is exiting right now; the wait below sees it.
            let _ = crate::reaper::signal_workload(self.pid, sig);
            let deadline = Instant::now() + wait;
            let mut st = self.lock();
            while st.exit.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self
                    .cond
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        self.exit()
    }
}
