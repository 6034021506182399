//! Request bodies: nothing, bytes in memory, or a stream read from a file
//! or stdin (`load`, `import`), sent chunk by chunk so that a multi-GiB
//! tarball never sits in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncRead;

/// Chunk size of streamed uploads.
const CHUNK: usize = 256 << 10;

/// A request body.
pub struct Body(UnsyncBoxBody<Bytes, std::io::Error>);

impl Body {
    /// No body.
    pub fn empty() -> Body {
        Body(Empty::new().map_err(|never| match never {}).boxed_unsync())
    }

    /// A body held in memory.
    pub fn full(data: impl Into<Bytes>) -> Body {
        Body(
            Full::new(data.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// A body streamed from `reader` until its end.
    pub fn reader(reader: impl AsyncRead + Send + 'static) -> Body {
        Body(
            ReaderBody {
                reader: Box::pin(reader),
                buf: BytesMut::new(),
                done: false,
            }
            .boxed_unsync(),
        )
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

struct ReaderBody {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buf: BytesMut,
    done: bool,
}

impl hyper::body::Body for ReaderBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        this.buf.reserve(CHUNK);
        match tokio_util::io::poll_read_buf(this.reader.as_mut(), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Ok(0)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
