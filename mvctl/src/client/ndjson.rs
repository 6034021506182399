//! Newline-delimited JSON streams (logs, pull/push/load progress).
//!
//! The body arrives in arbitrary chunks; lines are cut at `\n` and decoded
//! one at a time. A line longer than [`MAX_LINE`] is an error rather than a
//! reason to buffer without end.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::{ClientError, Result};

/// Longest accepted line. Log records carry at most 16 KiB of text (JSON
/// escaping can multiply that by six); progress lines are small.
pub const MAX_LINE: usize = 1 << 20;

struct BodyChunks {
    body: Incoming,
    host: String,
}

impl BodyChunks {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(ClientError::Http {
                        host: self.host.clone(),
                        source,
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing to decode.
                }
            }
        }
    }
}

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
struct LineBuf {
    buf: BytesMut,
}

impl LineBuf {
    /// The next complete line (without `\n`), if one is buffered.
    fn take_line(&mut self, what: &str) -> Result<Option<BytesMut>> {
        if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line = self.buf.split_to(pos + 1);
            line.truncate(pos);
            return Ok(Some(line));
        }
        if self.buf.len() > MAX_LINE {
            return Err(ClientError::Decode {
                what: what.to_string(),
                why: format!("a line is longer than {MAX_LINE} bytes"),
            });
        }
        Ok(None)
    }
}

/// A stream of `T`, one per line.
pub struct NdjsonStream<T> {
    chunks: BodyChunks,
    lines: LineBuf,
    eof: bool,
    what: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(crate) fn new(body: Incoming, what: String, host: String) -> Self {
        NdjsonStream {
            chunks: BodyChunks { body, host },
            lines: LineBuf::default(),
            eof: false,
            what,
            _t: PhantomData,
        }
    }

    /// The next item; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(line) = self.lines.take_line(&self.what)? {
                if let Some(v) = decode_line(&line, &self.what)? {
                    return Ok(Some(v));
                }
                continue;
            }
            if self.eof {
                // A last line without its newline still counts.
                let rest = std::mem::take(&mut self.lines.buf);
                return decode_line(rest.chunk(), &self.what);
            }
            match self.chunks.next_chunk().await? {
                Some(data) => self.lines.buf.extend_from_slice(&data),
                None => self.eof = true,
            }
        }
    }
}

/// Decode one line; blank lines (keep-alives) give `None`.
fn decode_line<T: DeserializeOwned>(line: &[u8], what: &str) -> Result<Option<T>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(trimmed)
        .map(Some)
        .map_err(|e| ClientError::Decode {
            what: what.to_string(),
            why: format!(
                "{e} in line {:?}",
                String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)])
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_api::logs::{LogRecord, Stream};

    fn lines_of(chunks: &[&[u8]]) -> Result<Vec<LogRecord>> {
        let mut lb = LineBuf::default();
        let mut out = Vec::new();
        for c in chunks {
            lb.buf.extend_from_slice(c);
            while let Some(l) = lb.take_line("logs")? {
                if let Some(r) = decode_line(&l, "logs")? {
                    out.push(r);
                }
            }
        }
        if let Some(r) = decode_line::<LogRecord>(&lb.buf, "logs")? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn lines_split_across_chunks() {
        let a = br#"{"log":"hi\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}"#;
        let b = br#"{"log":"err\n","stream":"stderr","time":"2024-01-01T00:00:01Z"}"#;
        let mut all = a.to_vec();
        all.extend_from_slice(b"\n\n");
        all.extend_from_slice(b);
        // Every split point gives the same two records.
        for cut in 0..all.len() {
            let recs = lines_of(&[&all[..cut], &all[cut..]]).unwrap();
            assert_eq!(recs.len(), 2, "cut at {cut}");
            assert_eq!(recs[0].log, "hi\n");
            assert_eq!(recs[1].stream, Stream::Stderr);
        }
    }

    #[test]
    fn bad_and_huge_lines_are_errors() {
        let e = lines_of(&[b"{not json}\n"]).unwrap_err().to_string();
        assert!(e.contains("not valid") && e.contains("not json"), "{e}");
        let big = vec![b'x'; MAX_LINE + 10];
        let e = lines_of(&[&big]).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
