//! The client side of the upgraded `mvm-stream` connections of `exec` and
//! `attach`: the guest agent protocol's frames (STDIN / STDIN_EOF and
//! `resize` controls up; STDOUT / STDERR and a final `exited` down).

use mvm_protocol::agent::frame::{self, HEADER_LEN};
use mvm_protocol::agent::{Exit, Kind, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::CmdError;

/// How much stdin one STDIN frame carries at most.
const STDIN_CHUNK: usize = 32 << 10;

/// Docker's default detach keys: ctrl-p, ctrl-q.
const DETACH: [u8; 2] = [0x10, 0x11];

/// How feeding stdin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinEnd {
    /// Stdin ended; STDIN_EOF was sent.
    Eof,
    /// The user typed the detach keys: nothing more is sent, the process
    /// keeps running.
    Detached,
}

/// Send stdin as STDIN frames, then STDIN_EOF. With `detach_keys`,
/// ctrl-p ctrl-q ends the session instead (a lone ctrl-p is passed on
/// with the next byte).
pub async fn pump_stdin<R, W>(
    mut src: R,
    dst: &mut W,
    detach_keys: bool,
) -> std::io::Result<StdinEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut held = false;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if !detach_keys {
            write_frame(dst, Kind::Stdin, &buf[..n]).await?;
            continue;
        }
        let mut out = Vec::with_capacity(n + 1);
        for &b in &buf[..n] {
            if held {
                held = false;
                if b == DETACH[1] {
                    if !out.is_empty() {
                        write_frame(dst, Kind::Stdin, &out).await?;
                    }
                    return Ok(StdinEnd::Detached);
                }
                out.push(DETACH[0]);
            }
            if b == DETACH[0] {
                held = true;
            } else {
                out.push(b);
            }
        }
        if !out.is_empty() {
            write_frame(dst, Kind::Stdin, &out).await?;
        }
    }
    if held {
        write_frame(dst, Kind::Stdin, &DETACH[..1]).await?;
    }
    write_frame(dst, Kind::StdinEof, &[]).await?;
    Ok(StdinEnd::Eof)
}

/// Write one frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = frame::encode_header(kind, payload.len()).map_err(std::io::Error::other)?;
    w.write_all(&h).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Send an in-band terminal resize.
pub async fn write_resize<W: AsyncWrite + Unpin>(
    w: &mut W,
    rows: u16,
    cols: u16,
) -> std::io::Result<()> {
    let req = Request::Resize {
        target: None,
        rows,
        cols,
    };
    let json = frame::encode_json(&req).map_err(std::io::Error::other)?;
    write_frame(w, Kind::Control, &json).await
}

/// Copy STDOUT/STDERR frames to `out`/`err` until the `exited` control
/// frame; its exit is the result. Anything else from the daemon is a
/// protocol error; `what` names the stream in messages.
pub async fn copy_output<R, O, E>(
    mut rd: R,
    mut out: O,
    mut err: E,
    what: &str,
) -> Result<Exit, CmdError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let broken = |why: String| {
        CmdError::Invalid(format!(
            "the {what} stream from the daemon broke: {why}; the process may still run (see `mvctl ps`)"
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
        let exit = copy_output(&wire[..], &mut out, &mut err, "exec")
            .await
            .unwrap();
        assert_eq!(exit.shell_code(), 3);
        assert_eq!(out, b"hi\n");
        assert_eq!(err, b"oops\n");
    }

    #[tokio::test]
    async fn a_stream_without_exit_is_an_error() {
        let wire = frame_bytes(Kind::Stdout, b"hi\n").await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(copy_output(&wire[..], &mut out, &mut err, "exec")
            .await
            .is_err());
    }

    #[tokio::test]
    async fn stdin_ends_with_eof() {
        let mut wire = Vec::new();
        let end = pump_stdin(&b"abc"[..], &mut wire, false).await.unwrap();
        assert_eq!(end, StdinEnd::Eof);
        let mut expect = frame_bytes(Kind::Stdin, b"abc").await;
        expect.extend(frame_bytes(Kind::StdinEof, b"").await);
        assert_eq!(wire, expect);
    }

    #[tokio::test]
    async fn detach_keys_end_the_session() {
        let mut wire = Vec::new();
        let end = pump_stdin(&b"ab\x10x\x10\x11cd"[..], &mut wire, true)
            .await
            .unwrap();
        assert_eq!(end, StdinEnd::Detached);
        // The lone ctrl-p went through; nothing after the keys did.
        assert_eq!(wire, frame_bytes(Kind::Stdin, b"ab\x10x").await);
        // Without detach keys the bytes pass unchanged.
        let mut wire = Vec::new();
        pump_stdin(&b"\x10\x11"[..], &mut wire, false)
            .await
            .unwrap();
        assert!(wire.starts_with(&frame_bytes(Kind::Stdin, b"\x10\x11").await));
    }
}
