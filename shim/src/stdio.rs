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

async fn open_writer(path: &str) -> Option<tokio::fs::File> {
    if path.is_empty() {
        return None;
    }
    // Blocks (on tokio's blocking pool) until containerd has the read end
    // open, which it does before it asks for a create or an exec.
    match tokio::fs::OpenOptions::new().write(true).open(path).await {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("cannot open {path}: {e}; that output is discarded");
            None
        }
    }
}

/// Copy containerd's stdin FIFO into the process's stdin until its end
/// (or `close`, containerd's CloseIO), then close the process's stdin.
pub fn pump_stdin(path: String, mut stdin: ExecStdin, close: Arc<Notify>) {
    tokio::spawn(async move {
        let copy = async {
            let mut f = tokio::fs::OpenOptions::new().read(true).open(&path).await?;
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
pub async fn pump_output(fifos: &Fifos, mut output: ExecOutput) -> Option<Exit> {
    let mut out = open_writer(&fifos.stdout).await;
    let mut err = if fifos.terminal {
        None
    } else {
        open_writer(&fifos.stderr).await
    };
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
