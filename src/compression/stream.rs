//! The streaming encoder for responses that are not stored: br or gzip
//! applied as the body flows, flushed whenever the upstream pauses so a
//! trickling origin still reaches the client promptly.
//!
//! Hand-written rather than async-compression: its encoders only emit
//! when their internal buffer fills or the stream ends, so a slow origin's
//! first bytes would sit in the encoder; this one flushes at every pause
//! and bounds the brotli window (memory per stream).

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use super::{BoxError, Coding};

/// Largest brotli window for streaming: 1 MiB instead of the default 4 MiB.
/// The rust encoder allocates its whole window up front, so this caps the
/// per-stream memory (about 2.8 MiB at quality 3) and the input held before a
/// metablock is emitted. Bodies of known smaller length get a smaller window.
const STREAM_LGWIN: u32 = 20;
/// Emit an output frame once this much compressed data is ready.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// Input consumed per poll before giving the executor a turn.
const INPUT_BUDGET: usize = 1024 * 1024;

enum StreamEncoder {
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl StreamEncoder {
    /// `len` is the body length if known, to size the brotli window.
    fn new(coding: Coding, level: u32, len: Option<u64>) -> Self {
        // Smallest window holding the whole body (brotli keeps 16 bytes back).
        let lgwin = len.map_or(STREAM_LGWIN, |n| {
            (u64::BITS - n.saturating_add(16).leading_zeros()).clamp(16, STREAM_LGWIN)
        });
        match coding {
            Coding::Br => StreamEncoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                level.min(11),
                lgwin,
            ))),
            Coding::Gzip => StreamEncoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.clamp(1, 9)),
            )),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            StreamEncoder::Br(w) => w.as_mut(),
            StreamEncoder::Gzip(w) => w,
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            StreamEncoder::Br(w) => w.get_mut(),
            StreamEncoder::Gzip(w) => w.get_mut(),
        }
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.output()))
    }

    fn finish(self) -> io::Result<Bytes> {
        Ok(Bytes::from(match self {
            StreamEncoder::Br(w) => w.into_inner(),
            StreamEncoder::Gzip(w) => w.finish()?,
        }))
    }
}

/// A response body compressed as it streams. Output is emitted in frames of
/// about 32 KiB, and flushed whenever the inner body is pending after
/// yielding data, so a trickling upstream still reaches the client promptly.
/// Trailers are dropped; inner errors are passed on and end the body.
pub struct CompressedBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    encoder: Option<StreamEncoder>,
    /// Data written since the last flush.
    dirty: bool,
}

impl std::fmt::Debug for CompressedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedBody")
            .field("finished", &self.encoder.is_none())
            .finish_non_exhaustive()
    }
}

/// Wraps a streaming body so it is compressed as it flows, never buffering it
/// whole. `level` is clamped into the coding's range.
pub fn compress_body<B>(coding: Coding, level: u32, body: B) -> CompressedBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let len = body.size_hint().upper();
    CompressedBody {
        inner: UnsyncBoxBody::new(body.map_err(Into::into)),
        encoder: Some(StreamEncoder::new(coding, level, len)),
        dirty: false,
    }
}

type FrameResult = Option<Result<Frame<Bytes>, BoxError>>;

impl CompressedBody {
    fn fail(&mut self, err: io::Error) -> Poll<FrameResult> {
        self.encoder = None;
        Poll::Ready(Some(Err(err.into())))
    }

    fn emit(data: Bytes) -> Poll<FrameResult> {
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Body for CompressedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FrameResult> {
        let this = &mut *self;
        let mut consumed = 0usize;
        loop {
            let Some(enc) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            if enc.output().len() >= OUTPUT_CHUNK {
                return Self::emit(enc.take());
            }
            if consumed >= INPUT_BUDGET {
                if !enc.output().is_empty() {
                    return Self::emit(enc.take());
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    if std::mem::take(&mut this.dirty) {
                        if let Err(e) = enc.writer().flush() {
                            return this.fail(e);
                        }
                    }
                    if !enc.output().is_empty() {
                        return Self::emit(enc.take());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Err(e) = enc.writer().write_all(&data) {
                        return this.fail(e);
                    }
                    this.dirty = true;
                    consumed += data.len();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let Some(enc) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match enc.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Self::emit(out),
                        Err(e) => this.fail(e),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
