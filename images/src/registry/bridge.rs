//! Bridges between the async network side and the blocking store side.
//!
//! The store writes blobs through `std::io::Read` (it hashes, fsyncs and
//! renames, all blocking); the network yields async byte streams. A
//! bounded channel joins them, so memory stays at a few chunks per blob
//! and a slow disk slows the download instead of buffering it.

use std::fs::File;
use std::io::{self, Read};

use bytes::{Buf, Bytes};
use futures_util::Stream;
use tokio::sync::mpsc;

/// Chunks in flight per transfer.
pub(crate) const CHANNEL_DEPTH: usize = 8;
/// Read size when streaming a blob file to the network.
const FILE_CHUNK: usize = 256 * 1024;

/// A blocking reader fed by an async producer. End of data is the sender
/// being dropped; an `Err` item is returned to the reader as is.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    /// A reader and the sender that feeds it.
    pub(crate) fn new() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        (
            tx,
            ChannelReader {
                rx,
                cur: Bytes::new(),
            },
        )
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.cur.is_empty() {
            // Runs on a blocking thread (spawn_blocking), never on the
            // executor, so blocking_recv cannot stall async tasks.
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.cur = b,
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Streams a file from a blocking thread, `FILE_CHUNK` bytes at a time,
/// calling `on_chunk` with the running byte count. The reader thread stops
/// when the stream is dropped (its sends fail).
pub(crate) fn file_stream(
    mut file: File,
    on_chunk: impl Fn(u64) + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; FILE_CHUNK];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    sent += n as u64;
                    on_chunk(sent);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn channel_reader_reassembles_and_propagates_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut r) = ChannelReader::new();
        let h = std::thread::spawn(move || {
            let mut out = Vec::new();
            let res = r.read_to_end(&mut out);
            (out, res.map_err(|e| e.to_string()))
        });
        rt.block_on(async {
            tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
            tx.send(Ok(Bytes::new())).await.unwrap();
            tx.send(Ok(Bytes::from_static(b"world"))).await.unwrap();
            tx.send(Err(io::Error::other("cut"))).await.unwrap();
        });
        let (out, res) = h.join().unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(res.unwrap_err(), "cut");
    }

    #[test]
    fn file_stream_yields_the_file() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let mut tmp = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..FILE_CHUNK * 2 + 17).map(|i| i as u8).collect();
        io::Write::write_all(&mut tmp, &data).unwrap();
        io::Seek::rewind(&mut tmp).unwrap();
        let got = rt.block_on(async {
            let mut s = Box::pin(file_stream(tmp, |_| {}));
            let mut got = Vec::new();
            while let Some(c) = s.next().await {
                got.extend_from_slice(&c.unwrap());
            }
            got
        });
        assert_eq!(got, data);
    }
}
