//! The host side's first line: `CONNECT <port>\n`.
//!
//! The muxer peeks at the socket and consumes exactly the line, so data a
//! client sends right behind it (before the `OK`) stays in the socket and
//! reaches the guest after the handshake.

/// Longest line accepted: `CONNECT 4294967295\r\n` is 20 bytes.
pub const MAX_LINE: usize = 32;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// No newline within [`MAX_LINE`] bytes.
    #[error("no newline in the first {MAX_LINE} bytes; expected \"CONNECT <port>\\n\"")]
    TooLong,
    /// The line is not a CONNECT line.
    #[error("expected \"CONNECT <port>\\n\", got {0:?}")]
    Malformed(String),
}

/// Looks for a complete line in `peeked`. `Ok(None)`: incomplete, wait for
/// more; `Ok(Some((port, line_len)))`: consume `line_len` bytes.
pub fn parse_connect(peeked: &[u8]) -> Result<Option<(u32, usize)>, HandshakeError> {
    let Some(nl) = peeked.iter().position(|&b| b == b'\n') else {
        if peeked.len() >= MAX_LINE {
            return Err(HandshakeError::TooLong);
        }
        return Ok(None);
    };
    let line = &peeked[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let port = text.strip_prefix("CONNECT ").ok_or_else(malformed)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let port: u32 = port.parse().map_err(|_| malformed())?;
    Ok(Some((port, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Ok(Some((1024, 13))));
        assert_eq!(parse_connect(b"CONNECT 52\r\nDATA"), Ok(Some((52, 12))));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295\n"),
            Ok(Some((u32::MAX, 19)))
        );
        assert_eq!(parse_connect(b"CONNE"), Ok(None));
        assert_eq!(parse_connect(b""), Ok(None));
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT \n",
            b"CONNECT -1\n",
            b"CONNECT +1\n",
            b"CONNECT 4294967296\n",
            b"connect 1\n",
            b"CONNECT 1 2\n",
            b"\xff\n",
        ] {
            assert!(
                matches!(parse_connect(bad), Err(HandshakeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_connect(&[b'x'; MAX_LINE]),
            Err(HandshakeError::TooLong)
        );
    }
}
