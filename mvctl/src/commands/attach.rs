//! `attach` and `top`, and the attached session shared with `run` and
//! `start -a`: the main workload's output (stdout and stderr apart), its
//! stdin (`-i`), a raw terminal sized like ours (`-t`), over the upgraded
//! `mvm-stream` of `POST /v1/sandboxes/{id}/attach`.
//!
//! Without a terminal, signals mvctl receives are forwarded to the
//! workload (run.rs's `Forwarder`); with one, Ctrl-C is a byte the guest's
//! terminal turns into SIGINT. Ctrl-P Ctrl-Q detaches (on a terminal),
//! leaving the sandbox running, as in Docker.

use std::io::IsTerminal;

use clap::Args;
use mvm_api::sandbox::Status;
use mvm_protocol::agent::Exit;

use super::run::Forwarder;
use super::stream::{copy_output, pump_stdin, StdinEnd};
use super::{terminal, CmdError, CmdResult, Ctx};
use crate::client::{Client, Upgraded};

/// `mvctl attach`.
#[derive(Debug, Clone, Args)]
pub struct AttachArgs {
    /// Do not attach stdin
    #[arg(long)]
    pub no_stdin: bool,
    /// The sandbox (name, id or id prefix)
    pub sandbox: String,
}

/// `mvctl top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// The sandbox (name, id or id prefix)
    pub sandbox: String,
}

/// What an attached session does locally.
#[derive(Debug, Clone, Copy)]
pub struct SessionOpts {
    /// Send our stdin to the workload.
    pub stdin: bool,
    /// The workload runs on a terminal.
    pub tty: bool,
}

/// How an attached session ended.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    /// The run ended with this status.
    Exited(Exit),
    /// The user detached; the sandbox runs on.
    Detached,
}

/// Refuse `-i -t` when our stdin is not a terminal (Docker's check).
pub fn check_tty(o: SessionOpts) -> Result<(), CmdError> {
    if o.tty && o.stdin && !std::io::stdin().is_terminal() {
        return Err(CmdError::Invalid(
            "the input device is not a TTY: drop -t, or run from a terminal".into(),
        ));
    }
    Ok(())
}

/// Tell the daemon our terminal's size (before a start it becomes the
/// workload's size at launch).
pub async fn send_size(client: &Client, id: &str) {
    if let Some((rows, cols)) = terminal::size() {
        if let Err(e) = client.resize(id, rows, cols).await {
            eprintln!("mvctl: warning: could not set the terminal size: {e}");
        }
    }
}

/// Carry an attach stream until the run ends or the user detaches.
pub async fn session(
    client: &Client,
    id: &str,
    io: Upgraded,
    o: SessionOpts,
) -> Result<Ended, CmdError> {
    let stdin_tty = std::io::stdin().is_terminal();
    let (rd, mut wr) = tokio::io::split(io);
    // Raw mode only when our stdin is a terminal that feeds a terminal.
    let _raw = terminal::RawMode::enter_if(o.tty && o.stdin && stdin_tty)?;
    let (detach_tx, mut detached) = tokio::sync::oneshot::channel::<()>();
    // The receiver may be polled only until it completes (a dropped
    // sender without stdin completes it too).
    let mut detach_open = true;
    let input = o.stdin.then(|| {
        tokio::spawn(async move {
            let keys = stdin_tty;
            if let Ok(StdinEnd::Detached) = pump_stdin(tokio::io::stdin(), &mut wr, keys).await {
                let _ = detach_tx.send(());
            }
            // Keep the write half until the end: closing the connection
            // would detach.
            std::future::pending::<()>().await;
        })
    });
    let resizer = o.tty.then(|| {
        let (client, id) = (client.clone(), id.to_string());
        tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                if let Some((r, c)) = terminal::size() {
                    let _ = client.resize(&id, r, c).await;
                }
            }
        })
    });
    let mut signals = if o.tty {
        None
    } else {
        Some(Forwarder::new(client.clone(), id.to_string())?)
    };
    let output = copy_output(rd, tokio::io::stdout(), tokio::io::stderr(), "attach");
    tokio::pin!(output);
    let r = loop {
        tokio::select! {
            r = &mut output => break r.map(Ended::Exited),
            d = &mut detached, if detach_open => {
                detach_open = false;
                if d.is_ok() {
                    break Ok(Ended::Detached);
                }
            }
            sig = async { signals.as_mut().expect("guarded").recv().await }, if signals.is_some() => {
                if let Some(s) = signals.as_mut() {
                    s.forward(sig).await;
                }
            }
        }
    };
    for t in [input, resizer].into_iter().flatten() {
        t.abort();
    }
    r
}

/// `mvctl attach`.
pub async fn attach(ctx: &Ctx, a: AttachArgs) -> CmdResult {
    let client = ctx.client().await?;
    let info = client.inspect(&a.sandbox).await?;
    let not_running = |status: Status| {
        CmdError::Invalid(format!(
            "sandbox {} is not running ({status:?}); you cannot attach to a stopped sandbox, start it first",
            a.sandbox
        ))
    };
    if info.state.status != Status::Running {
        return Err(not_running(info.state.status));
    }
    let o = SessionOpts {
        stdin: !a.no_stdin && info.config.open_stdin,
        tty: info.config.tty,
    };
    check_tty(o)?;
    let io = client.attach(&info.id, o.stdin).await?;
    // It may have stopped between the look and the attach: then no run
    // would ever end this stream.
    let status = client.inspect(&info.id).await?.state.status;
    if status != Status::Running {
        return Err(not_running(status));
    }
    if o.tty {
        send_size(client, &info.id).await;
    }
    match session(client, &info.id, io, o).await? {
        Ended::Exited(exit) => Ok(exit.shell_code()),
        Ended::Detached => Ok(0),
    }
}

/// `mvctl top`.
pub async fn top(ctx: &Ctx, a: TopArgs) -> CmdResult {
    let client = ctx.client().await?;
    let t = client.top(&a.sandbox).await?;
    let header: Vec<&str> = t.titles.iter().map(String::as_str).collect();
    print!("{}", crate::format::table(&header, &t.processes));
    Ok(0)
}
