//! The host side of a guest vsock port without `vhost-vsock`: the VMM
//! listens on a Unix socket; a client connects, writes `CONNECT <port>\n`
//! and reads `OK <host_port>\n`, after which the stream is the guest's
//! AF_VSOCK connection to `<port>` (Firecracker's "hybrid" design). If
//! nothing listens on the guest port the VMM closes the socket instead.

/// The longest acknowledgement line accepted (`OK 4294967295\n` is 14).
pub const MAX_ACK_LEN: usize = 32;

/// The line that asks the VMM for a connection to guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Why an acknowledgement is not one.
#[derive(Debug, thiserror::Error)]
#[error("the VMM's vsock socket answered {line:?} instead of \"OK <port>\"")]
pub struct AckError {
    pub line: String,
}

/// Parse the VMM's answer (without its newline): the host-side port.
pub fn parse_ack(line: &[u8]) -> Result<u32, AckError> {
    let err = || AckError {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| err())?;
    let port = text.strip_prefix("OK ").ok_or_else(err)?;
    port.trim_end_matches('\r').parse().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(connect_line(1024), "CONNECT 1024\n");
        assert_eq!(parse_ack(b"OK 1073741824").unwrap(), 1_073_741_824);
        assert_eq!(parse_ack(b"OK 5\r").unwrap(), 5);
        for bad in [
            &b""[..],
            b"OK",
            b"OK x",
            b"ERR 1",
            b"ok 1",
            b"OK -1",
            b"\xff",
        ] {
            assert!(parse_ack(bad).is_err(), "{bad:?}");
        }
    }
}
