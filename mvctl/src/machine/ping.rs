//! Whether mvmd answers through the forwarded port: `GET /_ping` with the
//! token, blocking, with short timeouts.
//!
//! A plain HTTP/1.1 request on a `TcpStream` rather than the async client:
//! the machine module is synchronous (it runs before and outside mvctl's
//! runtime), and one request with `Connection: close` needs no more. Note
//! that QEMU's user-mode forward accepts the TCP connection itself, before
//! anything in L1 listens: "connected" means nothing, only an `OK` answer
//! does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a ping failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// Connecting, writing or reading failed (nothing listens yet, or the
    /// forward closed the connection).
    #[error("no answer from {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something answered, but not mvmd's `200 OK`.
    #[error("unexpected answer from {addr}: {answer:?}")]
    Answer {
        /// The address.
        addr: SocketAddr,
        /// The first line of the answer.
        answer: String,
    },
}

/// The most of an answer we read: `/_ping` answers two bytes.
const MAX_ANSWER: u64 = 16 * 1024;

/// `GET /_ping` on `127.0.0.1:port`, `timeout` for each step.
pub fn ping(port: u16, token: &str, timeout: Duration) -> Result<(), PingError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |source| PingError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = format!(
        "GET /_ping HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if is_ok(&answer) {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&answer);
        Err(PingError::Answer {
            addr,
            answer: text.lines().next().unwrap_or_default().to_string(),
        })
    }
}

/// A `200` status line and a body of `OK`.
fn is_ok(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let status_ok = head
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/1.") && l.split_whitespace().nth(1) == Some("200"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body_ok = if chunked {
        body.split("\r\n").any(|p| p.trim() == "OK")
    } else {
        body.trim() == "OK"
    };
    status_ok && body_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn answers() {
        assert!(is_ok(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK"));
        assert!(is_ok(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n"
        ));
        assert!(!is_ok(
            b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"code\":\"unauthorized\"}"
        ));
        assert!(!is_ok(b"HTTP/1.1 200 OK\r\n\r\nsomething else"));
        assert!(!is_ok(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!is_ok(b""));
    }

    #[test]
    fn closed_and_silent_ports_fail_fast() {
        // Bound and closed at once, as QEMU's forward does when nothing in
        // L1 listens yet.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            drop(s);
        });
        let e = ping(port, "t", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, PingError::Io { .. }), "{e}");
        t.join().unwrap();
        // Nothing listening at all.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(ping(port, "t", Duration::from_secs(2)).is_err());
    }
}
