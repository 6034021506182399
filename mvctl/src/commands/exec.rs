//! `mvctl exec`: run a process in a running sandbox through its guest
//! agent (`POST /v1/sandboxes/{id}/exec`, then the upgraded `mvm-stream`
//! of `POST /v1/exec/{exec_id}/start`, which carries the agent protocol's
//! frames). Exits with the process's status, as `docker exec` does.

use std::io::IsTerminal;

use clap::Args;
use mvm_api::exec::ExecCreateRequest;

use super::stream::{copy_output, pump_stdin};
use super::{terminal, CmdError, CmdResult, Ctx};
use crate::flags;

/// `mvctl exec`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Start the process and return at once
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and send it to the process
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the process on a pseudo-terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the host's value)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (absolute)
    #[arg(short = 'w', long = "workdir", value_parser = flags::parse_workdir)]
    pub workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The sandbox (name, id or id prefix)
    pub sandbox: String,
    /// Program and arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `KEY=VALUE` entries; a bare `KEY` takes the host's value (and is left
/// out when the host has none), as Docker does.
fn env_entries(list: &[String]) -> Result<Vec<String>, CmdError> {
    let mut out = Vec::new();
    for e in list {
        match e.split_once('=') {
            Some(("", _)) => {
                return Err(CmdError::Invalid(format!(
                    "-e {e:?}: the variable name is empty; use KEY=VALUE"
                )))
            }
            Some(_) => out.push(e.clone()),
            None if e.is_empty() => {
                return Err(CmdError::Invalid("-e \"\": use KEY=VALUE or KEY".into()))
            }
            None => {
                if let Ok(v) = std::env::var(e) {
                    out.push(format!("{e}={v}"));
                }
            }
        }
    }
    Ok(out)
}

/// `mvctl exec`.
pub async fn exec(ctx: &Ctx, a: ExecArgs) -> CmdResult {
    let env = env_entries(&a.env)?;
    let stdin_tty = std::io::stdin().is_terminal();
    if a.tty && a.interactive && !stdin_tty {
        return Err(CmdError::Invalid(
            "the input device is not a TTY: drop -t, or run from a terminal".into(),
        ));
    }
    let (rows, cols) = if a.tty {
        terminal::size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let req = ExecCreateRequest {
        cmd: a.cmd.clone(),
        env,
        working_dir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin: a.interactive && !a.detach,
        rows,
        cols,
    };
    let client = ctx.client().await?;
    let exec_id = client.exec_create(&a.sandbox, &req).await?;
    let io = client.exec_start(&exec_id).await?;
    if a.detach {
        // mvmd keeps the process running (and records its exit) when the
        // client goes away.
        drop(io);
        println!("{exec_id}");
        return Ok(0);
    }
    let (rd, mut wr) = tokio::io::split(io);
    // Raw mode only when our stdin is a terminal that feeds a terminal.
    let _raw = terminal::RawMode::enter_if(a.tty && a.interactive && stdin_tty)?;
    let input = if a.interactive {
        Some(tokio::spawn(async move {
            let _ = pump_stdin(tokio::io::stdin(), &mut wr, false).await;
            wr
        }))
    } else {
        None
    };
    let resizer = if a.tty {
        let client = client.clone();
        let id = exec_id.clone();
        Some(tokio::spawn(async move {
            let Ok(mut sig) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while sig.recv().await.is_some() {
                if let Some((r, c)) = terminal::size() {
                    let _ = client.exec_resize(&id, r, c).await;
                }
            }
        }))
    } else {
        None
    };
    let exit = copy_output(rd, tokio::io::stdout(), tokio::io::stderr(), "exec").await;
    if let Some(t) = resizer {
        t.abort();
    }
    if let Some(t) = input {
        t.abort();
    }
    let exit = exit?;
    Ok(exit.shell_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_entries_need_a_name() {
        assert_eq!(env_entries(&["A=1".into()]).unwrap(), vec!["A=1"]);
        assert!(env_entries(&["=1".into()]).is_err());
    }
}
