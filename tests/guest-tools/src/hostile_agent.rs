//! `mvm-hostile-agent`: a compromised guest, for the end-to-end test of
//! `mvctl cp` out of a sandbox (tests/tests/cli.rs).
//!
//! It is the guest's PID 1 in place of mvm-init: the test starts an mvmd
//! of its own with `--init` naming this program, the product's switch
//! for the guest init it boots. That models the strongest attacker the
//! host faces, a guest whose kernel or init is the attacker's, and keeps
//! the shipped init free of any test-only way to hand its agent port to
//! someone else (the port is privileged and bound before the workload
//! starts; no workload can take it, which the agent suite tests).
//!
//! It binds the agent's vsock port and speaks the agent protocol with the
//! protocol crate's own frames and messages. `attach` is refused as an
//! init without agent output would (`not_attachable`), so mvmd leaves it
//! be; `copy_out PATH` answers with a hostile tar chosen by `PATH`:
//! `/<case><host dir>`, where `<host dir>` is an absolute directory on
//! the host next to the copy's destination (the guest cannot know the
//! host's paths; the test tells it through the path it asks for):
//!
//! | case | entries |
//! | --- | --- |
//! | `ok` | `d/`, `d/f` (a clean archive: the pipeline works) |
//! | `symlink-abs` | `link -> <host dir>`, then the file `link/pwned` |
//! | `symlink-rel` | `up -> ..`, then the file `up/<host dir's name>/keep` |
//! | `symlink-nested` | `d/`, `d/up -> ../..`, then `d/up/<name>/keep` |
//! | `dotdot` | the file `../<name>/keep` |
//! | `dotdot-inner` | `d/`, the file `d/../../<name>/pwned` |
//! | `absolute` | the file `<host dir>/pwned` |
//! | `hardlink-abs` | the hard link `h -> <host dir>/keep`, then the file `h` |
//! | `hardlink-rel` | the hard link `h -> ../<name>/keep`, then the file `h` |
//!
//! Anything else is refused with `unsupported`. It prints
//! `hostile-agent: listening` and one `hostile-agent: sent CASE` per
//! archive on the console.

use std::io::{self, Write};

use mvm_guest_tools::vsock::{accept, listen};
use mvm_protocol::agent::frame::{FrameReader, FrameWriter};
use mvm_protocol::agent::{ErrorCode, Kind, Request, Response, AGENT_PORT, PROTOCOL_VERSION};

/// One tar entry, written header by header so hostile names survive.
enum Entry {
    Dir(String),
    File(String, &'static [u8]),
    Symlink(String, String),
    Hardlink(String, String),
}

/// A ustar header block for `name` (at most 100 bytes, as every case's).
fn header(name: &str, kind: u8, mode: u32, size: usize, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        let n = v.len().min(len);
        h[at..at + n].copy_from_slice(&v[..n]);
    };
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        field(h, at, len, s.as_bytes());
    };
    field(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 1_600_000_000);
    h[156] = kind;
    field(&mut h, 157, 100, link.as_bytes());
    field(&mut h, 257, 8, b"ustar\x0000");
    // The checksum counts its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    field(&mut h, 148, 8, s.as_bytes());
    h
}

fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (block, data): ([u8; 512], &[u8]) = match e {
            Entry::Dir(p) => (header(p, b'5', 0o755, 0, ""), b""),
            Entry::File(p, d) => (header(p, b'0', 0o644, d.len(), ""), d),
            Entry::Symlink(p, t) => (header(p, b'2', 0o777, 0, t), b""),
            Entry::Hardlink(p, t) => (header(p, b'1', 0o644, 0, t), b""),
        };
        out.extend_from_slice(&block);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The archive for a `copy_out` path, or `None` for an unknown case.
fn archive(path: &str) -> Option<(String, Vec<u8>)> {
    let rest = path.strip_prefix('/')?;
    let (case, host) = rest.split_once('/')?;
    let host = format!("/{host}");
    let name = host.rsplit('/').next().unwrap_or_default().to_string();
    let s = |v: &str| v.to_string();
    use Entry::*;
    let entries = match case {
        "ok" => vec![Dir(s("d")), File(s("d/f"), b"fine\n")],
        "symlink-abs" => vec![
            Symlink(s("link"), host.clone()),
            File(s("link/pwned"), b"pwned\n"),
        ],
        "symlink-rel" => vec![
            Symlink(s("up"), s("..")),
            File(format!("up/{name}/keep"), b"pwned\n"),
        ],
        "symlink-nested" => vec![
            Dir(s("d")),
            Symlink(s("d/up"), s("../..")),
            File(format!("d/up/{name}/keep"), b"pwned\n"),
        ],
        "dotdot" => vec![File(format!("../{name}/keep"), b"pwned\n")],
        "dotdot-inner" => vec![
            Dir(s("d")),
            File(format!("d/../../{name}/pwned"), b"pwned\n"),
        ],
        "absolute" => vec![File(format!("{host}/pwned"), b"pwned\n")],
        "hardlink-abs" => vec![
            Hardlink(s("h"), format!("{host}/keep")),
            File(s("h"), b"pwned\n"),
        ],
        "hardlink-rel" => vec![
            Hardlink(s("h"), format!("../{name}/keep")),
            File(s("h"), b"pwned\n"),
        ],
        _ => return None,
    };
    Some((case.to_string(), tar(&entries)))
}

/// One host connection: `hello` (with its first request), then requests.
fn serve(conn: std::fs::File) -> io::Result<()> {
    let mut rx = FrameReader::new(conn.try_clone()?);
    let mut tx = FrameWriter::new(conn);
    let mut greeted = false;
    loop {
        let req: Request = match rx.read_frame().map_err(io::Error::other)? {
            None => return Ok(()),
            Some((Kind::Control, p)) => {
                mvm_protocol::agent::frame::decode_json(p).map_err(io::Error::other)?
            }
            Some(_) => continue,
        };
        let req = match req {
            Request::Hello { request, .. } if !greeted => {
                greeted = true;
                tx.write_json(&Response::Hello {
                    version: PROTOCOL_VERSION,
                })
                .map_err(io::Error::other)?;
                match request {
                    Some(r) => *r,
                    None => {
                        tx.flush().map_err(io::Error::other)?;
                        continue;
                    }
                }
            }
            r => r,
        };
        match req {
            Request::CopyOut { path } => match archive(&path) {
                Some((case, data)) => {
                    tx.write_stream(Kind::Data, &data)
                        .and_then(|()| tx.write_frame(Kind::DataEof, &[]))
                        .map_err(io::Error::other)?;
                    println!("hostile-agent: sent {case}");
                }
                None => tx
                    .write_json(&Response::error(
                        ErrorCode::Unsupported,
                        format!("no hostile archive for {path:?}"),
                    ))
                    .map_err(io::Error::other)?,
            },
            Request::Attach { .. } => tx
                .write_json(&Response::error(
                    ErrorCode::NotAttachable,
                    "this guest keeps no output",
                ))
                .map_err(io::Error::other)?,
            other => tx
                .write_json(&Response::error(
                    ErrorCode::Unsupported,
                    format!("{} is not served here", other.op()),
                ))
                .map_err(io::Error::other)?,
        }
        tx.flush().map_err(io::Error::other)?;
        let _ = io::stdout().flush();
    }
}

fn main() {
    let l = match listen(AGENT_PORT) {
        Ok(l) => l,
        Err(e) => {
            println!("hostile-agent: cannot listen on vsock port {AGENT_PORT}: {e}");
            // PID 1 must not exit (the kernel would panic, and the test
            // would read a crash rather than this line).
            loop {
                std::thread::park();
            }
        }
    };
    println!("hostile-agent: listening");
    let _ = io::stdout().flush();
    loop {
        match accept(&l) {
            Ok(c) => {
                std::thread::spawn(move || {
                    if let Err(e) = serve(c) {
                        println!("hostile-agent: connection: {e}");
                    }
                });
            }
            Err(e) => println!("hostile-agent: accept: {e}"),
        }
    }
}
