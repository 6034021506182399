//! `mvctl exec`: run a process in a running sandbox through its guest
//! agent (`POST /v1/sandboxes/{id}/exec`, then the upgraded `mvm-stream`
//! of `POST /v1/exec/{exec_id}/start`, which carries the agent protocol's
//! frames). Exits with the process's status, as `docker exec` does.

use std::io::IsTerminal;

use clap::Args;
use mvm_api::exec::ExecCreateRequest;
use mvm_protocol::agent::frame::{self, HEADER_LEN};
use mvm_protocol::agent::{Exit, Kind, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CmdError, CmdResult, Ctx};
use crate::flags;

/// How much stdin one STDIN frame carries at most.
const STDIN_CHUNK: usize = 32 << 10;

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
    // Raw mode only when our stdin is a terminal that feeds a terminal;
    // restored when the guard drops, on every way out of this function.
    let _raw = if a.tty && a.interactive && stdin_tty {
        Some(terminal::RawMode::enter().map_err(|source| CmdError::Io {
            what: "cannot put the terminal in raw mode".into(),
            source,
        })?)
    } else {
        None
    };
    let input = if a.interactive {
        Some(tokio::spawn(async move {
            let _ = pump_stdin(tokio::io::stdin(), &mut wr).await;
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
    let exit = copy_output(rd, tokio::io::stdout(), tokio::io::stderr()).await;
    if let Some(t) = resizer {
        t.abort();
    }
    if let Some(t) = input {
        t.abort();
    }
    let exit = exit?;
    Ok(exit.shell_code())
}

/// Send stdin as STDIN frames, then STDIN_EOF.
async fn pump_stdin<R, W>(mut src: R, dst: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        write_frame(dst, Kind::Stdin, &buf[..n]).await?;
    }
    write_frame(dst, Kind::StdinEof, &[]).await
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    w.write_all(&h).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Copy STDOUT/STDERR frames to `out`/`err` until the `exited` control
/// frame; its exit is the result. Anything else from the daemon is a
/// protocol error.
async fn copy_output<R, O, E>(mut rd: R, mut out: O, mut err: E) -> Result<Exit, CmdError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let broken = |why: String| {
        CmdError::Invalid(format!(
            "the exec stream from the daemon broke: {why}; the process may still run (see `mvctl ps`)"
        ))
    };
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; HEADER_LEN];
        rd.read_exact(&mut h).await.map_err(|e| {
            broken(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "it ended before the process's exit status".into()
            } else {
                e.to_string()
            })
        })?;
        let (kind, len) = frame::decode_header(h).map_err(|e| broken(e.to_string()))?;
        buf.resize(len, 0);
        rd.read_exact(&mut buf)
            .await
            .map_err(|e| broken(e.to_string()))?;
        let io = |source| CmdError::Io {
            what: "writing the process's output".into(),
            source,
        };
        match kind {
            Kind::Stdout => {
                out.write_all(&buf).await.map_err(io)?;
                out.flush().await.map_err(io)?;
            }
            Kind::Stderr => {
                err.write_all(&buf).await.map_err(io)?;
                err.flush().await.map_err(io)?;
            }
            Kind::Control => match frame::decode_json::<Response>(&buf) {
                Ok(Response::Exited(exit)) => return Ok(exit),
                Ok(Response::Error { message, .. }) => return Err(broken(message)),
                Ok(_) => {}
                Err(e) => return Err(broken(e.to_string())),
            },
            other => return Err(broken(format!("unexpected {} frame", other.name()))),
        }
    }
}

/// The local terminal: size and raw mode (termios through libc).
pub mod terminal {
    use std::io;

    /// Rows and columns of the terminal on stdout (or stdin).
    pub fn size() -> Option<(u16, u16)> {
        for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
            // SAFETY: an all-zero winsize is valid.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes a winsize to the pointer we own.
            let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
                return Some((ws.ws_row, ws.ws_col));
            }
        }
        None
    }

    /// Stdin in raw mode until dropped.
    pub struct RawMode {
        saved: libc::termios,
    }

    impl RawMode {
        /// Put stdin in raw mode, keeping the old settings.
        pub fn enter() -> io::Result<RawMode> {
            // SAFETY: an all-zero termios is valid storage for tcgetattr.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr writes to the termios we own.
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let saved = t;
            // SAFETY: cfmakeraw changes the termios we own.
            unsafe { libc::cfmakeraw(&mut t) };
            // SAFETY: tcsetattr reads the termios we own.
            if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frame_bytes(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, kind, payload).await.unwrap();
        v
    }

    #[tokio::test]
    async fn output_frames_are_split_and_the_exit_returned() {
        let mut wire = frame_bytes(Kind::Stdout, b"hi\n").await;
        wire.extend(frame_bytes(Kind::Stderr, b"oops\n").await);
        let exited = frame::encode_json(&Response::Exited(Exit::code(3))).unwrap();
        wire.extend(frame_bytes(Kind::Control, &exited).await);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = copy_output(&wire[..], &mut out, &mut err).await.unwrap();
        assert_eq!(exit.shell_code(), 3);
        assert_eq!(out, b"hi\n");
        assert_eq!(err, b"oops\n");
    }

    #[tokio::test]
    async fn a_stream_without_exit_is_an_error() {
        let wire = frame_bytes(Kind::Stdout, b"hi\n").await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(copy_output(&wire[..], &mut out, &mut err).await.is_err());
    }

    #[tokio::test]
    async fn stdin_ends_with_eof() {
        let mut wire = Vec::new();
        pump_stdin(&b"abc"[..], &mut wire).await.unwrap();
        let mut expect = frame_bytes(Kind::Stdin, b"abc").await;
        expect.extend(frame_bytes(Kind::StdinEof, b"").await);
        assert_eq!(wire, expect);
    }

    #[test]
    fn env_entries_need_a_name() {
        assert_eq!(env_entries(&["A=1".into()]).unwrap(), vec!["A=1"]);
        assert!(env_entries(&["=1".into()]).is_err());
    }
}
