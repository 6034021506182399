//! A warm boot's wait for its launch spec (docs/snapshots.md, "Warm
//! starts", step 1).
//!
//! With a warm spec, init has mounted the API filesystems, made the reaper
//! and taken the agent's port, reported `WarmReady`, and then serves that
//! port here, on its main thread, one connection at a time, until one
//! `launch {spec}` is accepted. Nothing of the sandbox exists yet, so no
//! other request has anything to act on: `ping` is answered (a host may
//! check the agent), everything else is refused. A connection that sends
//! nothing is dropped after [`IDLE`], so it cannot keep the one real
//! launch out. The spec is hostile input: it gets the same validation as
//! /mvm/launch.json, and a warm spec is refused (the guest is warm
//! already). A refused spec leaves the guest warm and waiting.
//!
//! After the launch the same listening socket goes to the agent, whose
//! sessions refuse any later `launch` (see `agent::session`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mvm_protocol::agent::frame::{self, FrameReader, FrameWriter};
use mvm_protocol::agent::{ErrorCode, Kind, Request, Response, PROTOCOL_VERSION};
use mvm_protocol::launch::LaunchSpec;

use crate::agent::conn::{self, Conn};

/// How long a connection may stay silent before it is dropped.
pub const IDLE: Duration = Duration::from_secs(10);

/// Serve `listener` until a host hands over an acceptable spec; returns it.
pub fn wait_for_launch(listener: &OwnedFd) -> LaunchSpec {
    loop {
        let conn = match conn::accept(listener) {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: back off, keep waiting.
                crate::warn!("warm: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = set_idle_timeout(&conn, IDLE) {
            crate::warn!("warm: cannot bound a connection's silence: {e}");
            continue;
        }
        if let Some(spec) = serve(conn) {
            return spec;
        }
    }
}

/// Whether `spec` may launch this warm guest: what init checks on
/// /mvm/launch.json, and not warm itself. The message is the host's.
pub fn check(spec: &LaunchSpec) -> Result<(), String> {
    spec.validate().map_err(|e| e.to_string())?;
    if spec.warm {
        return Err("the spec of a launch cannot be warm: the guest is warm already and waits for the sandbox's spec".into());
    }
    if let Some(name) = &spec.hostname {
        crate::hostname::validate(name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One connection: `hello`, then requests until a launch is accepted
/// (returned) or the connection ends.
pub fn serve(conn: Conn) -> Option<LaunchSpec> {
    let writer = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            crate::warn!("warm: cannot duplicate a connection: {e}");
            return None;
        }
    };
    let mut w = FrameWriter::new(writer);
    let mut r = FrameReader::new(conn);
    let reply = |w: &mut FrameWriter<Conn>, msg: &Response| w.write_json(msg).is_ok();
    let refuse = |w: &mut FrameWriter<Conn>, code, msg: String| {
        w.write_json(&Response::error(code, msg)).is_ok()
    };
    let mut pending = match read_request(&mut r, &mut w)? {
        Request::Hello { version, request } if version == PROTOCOL_VERSION => {
            if !reply(
                &mut w,
                &Response::Hello {
                    version: PROTOCOL_VERSION,
                },
            ) {
                return None;
            }
            request.map(|r| *r)
        }
        Request::Hello { version, .. } => {
            let msg = format!("protocol version {version} is not supported; this agent speaks version {PROTOCOL_VERSION}");
            refuse(&mut w, ErrorCode::Version, msg);
            return None;
        }
        _ => {
            let msg = format!(
                "the first message must be {{\"op\":\"hello\",\"version\":{PROTOCOL_VERSION}}}"
            );
            refuse(&mut w, ErrorCode::BadRequest, msg);
            return None;
        }
    };
    loop {
        let req = match pending.take() {
            Some(req) => req,
            None => read_request(&mut r, &mut w)?,
        };
        let ok = match req {
            Request::Launch { spec } => match check(&spec) {
                Ok(()) => {
                    // Accepted even if the answer is lost: the host sees
                    // the guest go on (or connects and is told it was
                    // launched).
                    let _ = reply(&mut w, &Response::Done);
                    w.get_ref().shutdown();
                    crate::info!("warm: launch accepted");
                    return Some(*spec);
                }
                Err(msg) => {
                    crate::info!("warm: launch refused: {msg}");
                    refuse(&mut w, ErrorCode::BadRequest, format!("launch refused: {msg}"))
                }
            },
            Request::Ping => reply(&mut w, &Response::Pong),
            Request::Unknown => refuse(
                &mut w,
                ErrorCode::Unsupported,
                "unsupported op".into(),
            ),
            Request::Hello { .. } => refuse(
                &mut w,
                ErrorCode::BadRequest,
                "hello was already exchanged".into(),
            ),
            other => refuse(
                &mut w,
                ErrorCode::BadRequest,
                format!(
                    "this guest is warm: it has no sandbox to {} until a launch request gives it its spec",
                    other.op()
                ),
            ),
        };
        if !ok {
            return None;
        }
    }
}

/// The next control message; `None` when the connection is to close (its
/// end, silence, a frame that breaks the codec, or a stream frame where
/// nothing streams). A malformed message is answered and skipped: the
/// stream is still at a frame boundary.
fn read_request(r: &mut FrameReader<Conn>, w: &mut FrameWriter<Conn>) -> Option<Request> {
    loop {
        let payload = match r.read_frame() {
            Ok(Some((Kind::Control, p))) => p,
            Ok(Some((k, _))) => {
                let msg = format!("a {} frame is not expected here", k.name());
                let _ = w.write_json(&Response::error(ErrorCode::BadRequest, msg));
                return None;
            }
            Ok(None) => return None,
            Err(e) => {
                if e.is_protocol() {
                    let _ = w.write_json(&Response::error(ErrorCode::BadRequest, e.to_string()));
                }
                crate::info!("warm: connection closed: {e}");
                return None;
            }
        };
        match frame::decode_json::<Request>(payload) {
            Ok(req) => return Some(req),
            Err(e) => {
                let msg = format!("malformed request: {e}");
                if w.write_json(&Response::error(ErrorCode::BadRequest, msg))
                    .is_err()
                {
                    return None;
                }
            }
        }
    }
}

/// `SO_RCVTIMEO`: a read that waits longer fails (EAGAIN), ending the
/// connection.
fn set_idle_timeout(conn: &Conn, t: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the size given from `tv`.
    crate::sys::cvt(unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    use mvm_protocol::agent::frame::{encode, encode_json, FrameReader, MAX_PAYLOAD};
    use mvm_protocol::agent::Exec;

    use super::*;

    /// The host's end of a connection, speaking raw frames.
    struct Host {
        s: UnixStream,
        r: FrameReader<UnixStream>,
    }

    impl Host {
        fn new(s: UnixStream) -> Self {
            let r = FrameReader::new(s.try_clone().unwrap());
            Self { s, r }
        }

        fn send(&mut self, req: &Request) {
            let json = encode_json(req).unwrap();
            self.raw(&encode(Kind::Control, &json).unwrap());
        }

        fn raw(&mut self, bytes: &[u8]) {
            self.s.write_all(bytes).unwrap();
        }

        fn recv(&mut self) -> Option<Response> {
            match self.r.read_frame().unwrap() {
                Some((Kind::Control, p)) => Some(frame::decode_json(p).unwrap()),
                Some((k, _)) => panic!("a {} frame", k.name()),
                None => None,
            }
        }

        fn refused(&mut self, code: ErrorCode, needle: &str) {
            match self.recv() {
                Some(Response::Error { code: c, message }) => {
                    assert_eq!(c, code, "{message}");
                    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                }
                other => panic!("expected an error with {needle:?}, got {other:?}"),
            }
        }

        fn hello(&mut self) {
            self.send(&Request::Hello {
                version: PROTOCOL_VERSION,
                request: None,
            });
            assert_eq!(
                self.recv(),
                Some(Response::Hello {
                    version: PROTOCOL_VERSION
                })
            );
        }
    }

    /// `serve` on one end of a socket pair, on its own thread.
    fn guest() -> (Host, std::thread::JoinHandle<Option<LaunchSpec>>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(Conn::new(OwnedFd::from(guest))));
        (Host::new(host), t)
    }

    fn launch(spec: LaunchSpec) -> Request {
        Request::Launch {
            spec: Box::new(spec),
        }
    }

    fn good() -> LaunchSpec {
        let mut s = LaunchSpec::new(vec!["hostname".into()]);
        s.hostname = Some("warm-one".into());
        s.realtime_ns = Some(mvm_protocol::launch::MIN_REALTIME_NS);
        s.set_entropy(&[9; mvm_protocol::launch::ENTROPY_LEN]);
        s
    }

    #[test]
    fn hostile_launches_are_refused_and_the_guest_keeps_waiting_for_a_good_one() {
        let (mut h, t) = guest();
        h.hello();
        h.send(&Request::Ping);
        assert_eq!(h.recv(), Some(Response::Pong));
        // Not JSON, not a request, a spec with a field no init knows, a
        // spec of the wrong type: malformed, the connection stays.
        h.raw(&encode(Kind::Control, b"{\"op\":\"launch\",").unwrap());
        h.refused(ErrorCode::BadRequest, "malformed request");
        h.raw(&encode(Kind::Control, br#"{"op":"launch"}"#).unwrap());
        h.refused(ErrorCode::BadRequest, "missing field `spec`");
        let future = br#"{"op":"launch","spec":{"version":1,"rootfs":{"image_drive":"r"},"process":{"args":["a"]},"gpu":true}}"#;
        h.raw(&encode(Kind::Control, future).unwrap());
        h.refused(ErrorCode::BadRequest, "unknown field `gpu`");
        h.raw(&encode(Kind::Control, br#"{"op":"launch","spec":[]}"#).unwrap());
        h.refused(ErrorCode::BadRequest, "malformed request");
        // Well formed but not launchable: validated as /mvm/launch.json is.
        let mut s = good();
        s.version = 2;
        h.send(&launch(s));
        h.refused(ErrorCode::BadRequest, "version 2 is not supported");
        h.send(&launch(LaunchSpec::warm()));
        h.refused(ErrorCode::BadRequest, "cannot be warm");
        let mut s = good();
        s.process.args.clear();
        h.send(&launch(s));
        h.refused(ErrorCode::BadRequest, "process.args is empty");
        let mut s = good();
        s.hostname = Some("a\nb".into());
        h.send(&launch(s));
        h.refused(ErrorCode::BadRequest, "hostname");
        let mut s = good();
        s.entropy = Some("00".into());
        h.send(&launch(s));
        h.refused(ErrorCode::BadRequest, "entropy");
        let mut s = good();
        s.process.cwd = "relative".into();
        h.send(&launch(s));
        h.refused(ErrorCode::BadRequest, "not absolute");
        // Nothing to act on before the launch.
        h.send(&Request::Exec(Exec {
            args: vec!["sh".into()],
            ..Exec::default()
        }));
        h.refused(ErrorCode::BadRequest, "warm: it has no sandbox to exec");
        h.send(&Request::Attach { stdin: false });
        h.refused(ErrorCode::BadRequest, "no sandbox to attach");
        h.raw(&encode(Kind::Control, br#"{"op":"teleport"}"#).unwrap());
        h.refused(ErrorCode::Unsupported, "unsupported");
        // A spec close to the frame limit is fine.
        let mut big = good();
        big.process.env = vec![format!("BIG={}", "x".repeat(MAX_PAYLOAD - 4096))];
        h.send(&launch(big.clone()));
        assert_eq!(h.recv(), Some(Response::Done));
        // Accepted: the connection ends, the spec is init's.
        assert_eq!(h.recv(), None);
        assert_eq!(t.join().unwrap(), Some(big));
    }

    #[test]
    fn an_oversized_or_broken_frame_ends_the_connection_without_a_launch() {
        // A frame announcing more than the limit: refused before reading it.
        let (mut h, t) = guest();
        h.hello();
        let len = (MAX_PAYLOAD as u32 + 2).to_le_bytes();
        h.raw(&[len[0], len[1], len[2], len[3], Kind::Control as u8]);
        h.refused(ErrorCode::BadRequest, "exceeds the limit");
        assert_eq!(h.recv(), None);
        assert_eq!(t.join().unwrap(), None);
        // The host cannot even build one: the client refuses it.
        let mut huge = good();
        huge.process.env = vec![format!("BIG={}", "x".repeat(MAX_PAYLOAD))];
        assert!(encode_json(&launch(huge)).is_err());
        // A stream frame where nothing streams.
        let (mut h, t) = guest();
        h.hello();
        h.raw(&encode(Kind::Stdin, b"x").unwrap());
        h.refused(ErrorCode::BadRequest, "stdin frame is not expected");
        assert_eq!(t.join().unwrap(), None);
        // A first message that is not hello, another version.
        let (mut h, t) = guest();
        h.send(&launch(good()));
        h.refused(ErrorCode::BadRequest, "first message must be");
        assert_eq!(t.join().unwrap(), None);
        let (mut h, t) = guest();
        h.send(&Request::Hello {
            version: 99,
            request: Some(Box::new(launch(good()))),
        });
        h.refused(ErrorCode::Version, "99");
        assert_eq!(t.join().unwrap(), None);
        // Truncated mid-frame.
        let (mut h, t) = guest();
        h.hello();
        h.raw(&[10, 0, 0, 0, Kind::Control as u8, b'{']);
        h.s.shutdown(std::net::Shutdown::Write).unwrap();
        h.refused(ErrorCode::BadRequest, "closed in the middle");
        assert_eq!(t.join().unwrap(), None);
    }

    #[test]
    fn the_launch_may_ride_in_hello_and_the_wait_outlasts_failed_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = OwnedFd::from(UnixListener::bind(&path).unwrap());
        let waiting = std::thread::spawn(move || wait_for_launch(&listener));
        // A host that connects and leaves, one that breaks the protocol...
        drop(UnixStream::connect(&path).unwrap());
        let mut broken = UnixStream::connect(&path).unwrap();
        broken.write_all(&[0, 0, 0, 0, 1]).unwrap();
        let mut rest = Vec::new();
        broken.read_to_end(&mut rest).unwrap();
        // ...and the one that launches, in its first frame.
        let mut h = Host::new(UnixStream::connect(&path).unwrap());
        h.send(&Request::Hello {
            version: PROTOCOL_VERSION,
            request: Some(Box::new(launch(good()))),
        });
        assert_eq!(
            h.recv(),
            Some(Response::Hello {
                version: PROTOCOL_VERSION
            })
        );
        assert_eq!(h.recv(), Some(Response::Done));
        assert_eq!(waiting.join().unwrap(), good());
    }
}
