//! A process's stdio between containerd's FIFOs and the guest agent's
//! session (`mvm_protocol::agent::client::ExecSession`): containerd (or
//! `ctr`) holds the other ends of the FIFOs; the agent carries the
//! streams over vsock, a terminal's as one stream.

use std::sync::Arc;

use mvm_protocol::agent::client::{Event, ExecOutput, ExecStdin};
use mvm_protocol::agent::message::Exit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The FIFO paths containerd gave for a process (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fifos {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The output FIFOs of a process, opened while containerd's client holds
/// their read ends (at create or exec, as runc's shim does): a client that
/// leaves later (`ctr run -d`) then makes writes fail, and the output is
/// discarded, instead of an open that would wait for a reader forever.
#[derive(Debug, Default)]
pub struct Sinks {
    out: Option<std::fs::File>,
    err: Option<std::fs::File>,
}

impl Sinks {
    /// Open `fifos`' stdout and stderr (stderr is the terminal's stdout).
    pub fn open(fifos: &Fifos) -> Self {
        Self {
            out: open_writer(&fifos.stdout),
            err: if fifos.terminal {
                None
            } else {
                open_writer(&fifos.stderr)
            },
        }
    }
}

/// How long an output FIFO may wait for its reader: the client opens its
/// read ends concurrently with its exec request (`ctr task exec`), so it
/// is usually there within milliseconds.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Open a FIFO for writing. A client opens its read ends concurrently with
/// the request that makes us open ours, so the reader may not be there
/// yet (ENXIO on a non-blocking open, which lost `ctr task exec` output):
/// then wait for it, for at most [`READER_WAIT`], with a blocking open on
/// a thread of its own. The descriptor is blocking, so a slow reader slows
/// the guest down instead of losing output.
fn open_writer(path: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return None;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => {
            set_blocking(&f);
            Some(f)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => wait_for_reader(path),
        Err(e) => {
            log::warn!("cannot open {path}: {e}; that output is discarded");
            None
        }
    }
}

/// The blocking open of [`open_writer`], bounded by [`READER_WAIT`].
fn wait_for_reader(path: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_string();
    let spawned = std::thread::Builder::new()
        .name("fifo-open".into())
        .spawn(move || {
            let _ = tx.send(std::fs::OpenOptions::new().write(true).open(p));
        });
    if let Err(e) = spawned {
        log::warn!("cannot wait for a reader of {path}: {e}; that output is discarded");
        return None;
    }
    match rx.recv_timeout(READER_WAIT) {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            log::warn!("cannot open {path}: {e}; that output is discarded");
            None
        }
        Err(_) => {
            // Release the blocked open: a reader of our own lets it
            // return (its descriptor is dropped by the thread's send).
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            log::warn!("no reader opened {path} within {READER_WAIT:?}; that output is discarded");
            None
        }
    }
}

fn set_blocking(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own, changing only its status flags.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Open a FIFO for reading, which blocks until a writer opens it, on a
/// thread of its own: a client that closed its end before we opened ours
/// (`ctr task exec` with stdin at /dev/null) never opens it again, and a
/// blocking open on tokio's blocking pool would then hold the shim's
/// runtime, and so the shim, alive after containerd asked it to exit
/// (`ctr task delete` hung on it). A detached thread ends with the
/// process.
async fn open_reader(path: &str) -> std::io::Result<std::fs::File> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_string();
    std::thread::Builder::new()
        .name("stdin-fifo-open".into())
        .spawn(move || {
            let _ = tx.send(std::fs::File::open(p));
        })?;
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("the FIFO opener thread ended")))
}

/// Copy containerd's stdin FIFO into the process's stdin until its end
/// (or `close`, containerd's CloseIO), then close the process's stdin.
pub fn pump_stdin(path: String, mut stdin: ExecStdin, close: Arc<Notify>) {
    tokio::spawn(async move {
        let copy = async {
            let mut f = tokio::fs::File::from_std(open_reader(&path).await?);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                if stdin.write(&buf[..n]).await.is_err() {
                    return Ok(());
                }
            }
        };
        tokio::select! {
            r = copy => if let Err(e) = r { log::warn!("stdin {path}: {e}") },
            () = close.notified() => {}
        }
        let _ = stdin.close().await;
    });
}

/// Copy the process's output to containerd's FIFOs until it exits; the
/// exit, or `None` if the session broke first (the microVM ended). A
/// FIFO whose reader went away is drained into nothing, so the guest is
/// never blocked by a client that left.
pub async fn pump_output(sinks: Sinks, mut output: ExecOutput) -> Option<Exit> {
    let mut out = sinks.out.map(tokio::fs::File::from_std);
    let mut err = sinks.err.map(tokio::fs::File::from_std);
    loop {
        let (sink, data) = match output.next().await {
            Ok(Event::Stdout(d)) => (&mut out, d),
            Ok(Event::Stderr(d)) => (&mut err, d),
            Ok(Event::Exited(e)) => {
                for f in [&mut out, &mut err].into_iter().flatten() {
                    let _ = f.flush().await;
                }
                return Some(e);
            }
            Err(e) => {
                log::info!("output session ended: {e}");
                return None;
            }
        };
        if let Some(f) = sink {
            if f.write_all(&data).await.is_err() || f.flush().await.is_err() {
                *sink = None;
            }
        }
    }
}
