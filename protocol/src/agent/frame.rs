//! The frame codec: `u32 LE length | u8 kind | payload`.
//!
//! The length counts the kind byte and the payload, so the smallest valid
//! frame has length 1. Payloads are at most [`MAX_PAYLOAD`] bytes: a peer
//! announcing more is broken or hostile, and the connection is closed
//! rather than trusting it with an allocation of its choosing. Control
//! frames carry JSON; the stream kinds carry raw bytes, so the hot path
//! never pays for base64 or escaping.
//!
//! The blocking reader and writer here serve the guest agent (std threads)
//! and tests; the async client reuses [`decode_header`] and [`encode_header`]
//! so both sides validate frames in exactly one place.

use std::io::{self, IoSlice, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes before the payload: the length and the kind.
pub const HEADER_LEN: usize = 5;
/// The largest payload a frame may carry (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A JSON request or response.
    Control = 1,
    /// Bytes for the process's stdin (host to guest).
    Stdin = 2,
    /// Bytes the process wrote to stdout (or to its terminal).
    Stdout = 3,
    /// Bytes the process wrote to stderr.
    Stderr = 4,
    /// The host closes the process's stdin. No payload.
    StdinEof = 5,
    /// A chunk of a tar stream (copy in and out).
    Data = 6,
    /// The end of a tar stream. No payload.
    DataEof = 7,
}

impl Kind {
    /// The kind for a wire byte; `None` for anything unknown.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Control,
            2 => Self::Stdin,
            3 => Self::Stdout,
            4 => Self::Stderr,
            5 => Self::StdinEof,
            6 => Self::Data,
            7 => Self::DataEof,
            _ => return None,
        })
    }

    /// Whether frames of this kind must have an empty payload.
    pub fn is_marker(self) -> bool {
        matches!(self, Self::StdinEof | Self::DataEof)
    }

    /// A lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::StdinEof => "stdin_eof",
            Self::Data => "data",
            Self::DataEof => "data_eof",
        }
    }
}

/// Why a frame could not be read or written. Every variant but `Io` means
/// the peer broke the protocol; the connection must then be closed, since
/// the stream is no longer known to be at a frame boundary.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("agent connection I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("frame length is 0; every frame has at least its kind byte")]
    Empty,
    #[error("frame payload of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    TooLarge { len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{} frame must be empty but carries {len} bytes", kind.name())]
    MarkerPayload { kind: Kind, len: usize },
    #[error("connection closed in the middle of a frame ({got} of {want} bytes received)")]
    Truncated { got: usize, want: usize },
    #[error("control frame is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
}

impl FrameError {
    /// Whether this is the peer breaking the protocol (as opposed to the
    /// transport failing).
    pub fn is_protocol(&self) -> bool {
        !matches!(self, Self::Io(_))
    }
}

/// Check a header and return the kind and payload length.
pub fn decode_header(h: [u8; HEADER_LEN]) -> Result<(Kind, usize), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let payload = len - 1;
    if payload > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: payload });
    }
    let kind = Kind::from_u8(h[4]).ok_or(FrameError::UnknownKind(h[4]))?;
    if kind.is_marker() && payload != 0 {
        return Err(FrameError::MarkerPayload { kind, len: payload });
    }
    Ok((kind, payload))
}

/// The header for a frame of `kind` with `payload_len` bytes.
pub fn encode_header(kind: Kind, payload_len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: payload_len });
    }
    if kind.is_marker() && payload_len != 0 {
        return Err(FrameError::MarkerPayload {
            kind,
            len: payload_len,
        });
    }
    // Cannot overflow: payload_len <= 1 MiB.
    let len = (payload_len as u32 + 1).to_le_bytes();
    Ok([len[0], len[1], len[2], len[3], kind as u8])
}

/// A whole frame in one buffer, for tests and small control messages.
pub fn encode(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = encode_header(kind, payload.len())?;
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header);
    v.extend_from_slice(payload);
    Ok(v)
}

/// Serialise a control message.
pub fn encode_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(msg)?;
    if json.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: json.len() });
    }
    Ok(json)
}

/// Parse a control message.
pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(payload)?)
}

/// Reads frames from a blocking stream, reusing one payload buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: io::BufReader<R>,
    payload: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner: io::BufReader::with_capacity(64 * 1024, inner),
            payload: Vec::new(),
        }
    }

    /// The next frame, or `None` when the peer closed the connection at a
    /// frame boundary. The payload is valid until the next call.
    pub fn read_frame(&mut self) -> Result<Option<(Kind, &[u8])>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        let (kind, len) = decode_header(header)?;
        self.payload.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.payload)?;
        if got < len {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                want: HEADER_LEN + len,
            });
        }
        Ok(Some((kind, &self.payload)))
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }
}

/// Read until `buf` is full or EOF; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes frames to a blocking stream: one `writev` per frame, so a small
/// frame is one vsock packet and no payload is copied.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Write one frame; `payload` must fit in one (see [`Self::write_stream`]).
    pub fn write_frame(&mut self, kind: Kind, payload: &[u8]) -> Result<(), FrameError> {
        let header = encode_header(kind, payload.len())?;
        let mut bufs = [IoSlice::new(&header), IoSlice::new(payload)];
        let mut bufs: &mut [IoSlice<'_>] = &mut bufs;
        while !bufs.is_empty() {
            match self.inner.write_vectored(bufs) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Write `data` as as many frames of `kind` as it takes (one empty
    /// frame for empty data, as the end markers are).
    pub fn write_stream(&mut self, kind: Kind, data: &[u8]) -> Result<(), FrameError> {
        if data.is_empty() {
            return self.write_frame(kind, data);
        }
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.write_frame(kind, chunk)?;
        }
        Ok(())
    }

    /// Write a control message.
    pub fn write_json<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let json = encode_json(msg)?;
        self.write_frame(Kind::Control, &json)
    }

    /// Flush the underlying stream (a no-op for sockets).
    pub fn flush(&mut self) -> Result<(), FrameError> {
        Ok(self.inner.flush()?)
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: Vec<u8>) -> FrameReader<io::Cursor<Vec<u8>>> {
        FrameReader::new(io::Cursor::new(bytes))
    }

    #[test]
    fn round_trip_every_kind_and_size() {
        let mut out = FrameWriter::new(Vec::new());
        let big = vec![0xa5u8; MAX_PAYLOAD];
        out.write_frame(Kind::Control, br#"{"op":"ping"}"#).unwrap();
        out.write_frame(Kind::Stdin, b"").unwrap();
        out.write_frame(Kind::Stdout, &big).unwrap();
        out.write_frame(Kind::Stderr, b"e").unwrap();
        out.write_frame(Kind::StdinEof, b"").unwrap();
        out.write_stream(Kind::Data, &vec![7u8; MAX_PAYLOAD + 3])
            .unwrap();
        out.write_stream(Kind::DataEof, b"").unwrap();
        let bytes = out.get_ref().clone();
        assert_eq!(&bytes[..5], &[14, 0, 0, 0, 1]);

        let mut r = reader(bytes);
        let mut next = || r.read_frame().unwrap().map(|(k, p)| (k, p.to_vec()));
        assert_eq!(next(), Some((Kind::Control, br#"{"op":"ping"}"#.to_vec())));
        assert_eq!(next(), Some((Kind::Stdin, vec![])));
        assert_eq!(next(), Some((Kind::Stdout, big)));
        assert_eq!(next(), Some((Kind::Stderr, b"e".to_vec())));
        assert_eq!(next(), Some((Kind::StdinEof, vec![])));
        assert_eq!(next(), Some((Kind::Data, vec![7u8; MAX_PAYLOAD])));
        assert_eq!(next(), Some((Kind::Data, vec![7u8; 3])));
        assert_eq!(next(), Some((Kind::DataEof, vec![])));
        assert_eq!(next(), None);
    }

    #[test]
    fn oversized_length_is_refused_before_reading_or_allocating() {
        // Announces 4 GiB; only the header is present.
        let err = reader(vec![0xff, 0xff, 0xff, 0xff, 3])
            .read_frame()
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let just_over = ((MAX_PAYLOAD + 2) as u32).to_le_bytes();
        let mut bytes = just_over.to_vec();
        bytes.push(6);
        let err = reader(bytes).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_PAYLOAD + 1));
        assert!(err.is_protocol());
        let mut w = FrameWriter::new(Vec::new());
        assert!(w
            .write_frame(Kind::Data, &vec![0; MAX_PAYLOAD + 1])
            .is_err());
        assert!(
            w.get_ref().is_empty(),
            "nothing may be written for a refused frame"
        );
    }

    #[test]
    fn truncated_frames_are_errors_not_eof() {
        let full = encode(Kind::Stdout, b"hello").unwrap();
        for cut in 1..full.len() {
            let err = reader(full[..cut].to_vec()).read_frame().unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        assert!(reader(Vec::new()).read_frame().unwrap().is_none());
    }

    #[test]
    fn unknown_kinds_empty_frames_and_marker_payloads_are_refused() {
        for bad in [0u8, 8, 0x80, 0xff] {
            let err = reader(vec![1, 0, 0, 0, bad]).read_frame().unwrap_err();
            assert!(
                matches!(err, FrameError::UnknownKind(k) if k == bad),
                "{err}"
            );
        }
        let err = reader(vec![0, 0, 0, 0, 1]).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::Empty), "{err}");
        let err = reader(vec![2, 0, 0, 0, 5, b'x']).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::MarkerPayload { .. }), "{err}");
        assert!(encode(Kind::DataEof, b"x").is_err());
    }

    #[test]
    fn bad_json_is_an_error() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct M {
            op: String,
        }
        for bad in [
            &b"{"[..],
            b"",
            b"\xff\xfe",
            b"[1,2]",
            b"{\"op\":3}",
            b"null",
        ] {
            let err = decode_json::<M>(bad).unwrap_err();
            assert!(matches!(err, FrameError::Json(_)), "{err}");
        }
        // Deep nesting is refused by serde_json's recursion limit, not a
        // stack overflow.
        let deep = "[".repeat(100_000);
        assert!(decode_json::<serde_json::Value>(deep.as_bytes()).is_err());
    }

    #[test]
    fn interrupted_and_short_reads_and_writes_are_retried() {
        /// Hands out one byte per call and an EINTR in between.
        struct Trickle(Vec<u8>, usize, bool);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.2 = !self.2;
                if self.2 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                if self.1 == self.0.len() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        impl Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.2 = !self.2;
                if self.2 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = FrameWriter::new(Trickle(Vec::new(), 0, false));
        w.write_frame(Kind::Stderr, b"slowly but surely").unwrap();
        let bytes = w.get_ref().0.clone();
        assert_eq!(bytes, encode(Kind::Stderr, b"slowly but surely").unwrap());
        let mut r = FrameReader::new(Trickle(bytes, 0, false));
        let (k, p) = r.read_frame().unwrap().unwrap();
        assert_eq!((k, p), (Kind::Stderr, &b"slowly but surely"[..]));
    }
}
