//! An upstream socket that counts the bytes read from it, so the retry
//! rule (RFC 9112 §9.3.1, see `upstream/client.rs`) can tell a reused
//! connection that closed before any response byte from one that closed
//! partway through a response head: hyper reports both as the same
//! incomplete message.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from a connection so far, shared with its holder.
#[derive(Clone, Default)]
pub struct ReadCount(Arc<AtomicU64>);

impl ReadCount {
    /// Bytes read so far.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// `inner`, counting what is read from it into a [`ReadCount`].
pub struct Counted<S> {
    inner: S,
    read: ReadCount,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> (Counted<S>, ReadCount) {
        let read = ReadCount::default();
        (
            Counted {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.0.fetch_add(n as u64, Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_are_counted_writes_are_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut counted, read) = Counted::new(a);
        counted.write_all(b"request").await.unwrap();
        assert_eq!(read.get(), 0);
        b.write_all(b"HTTP/1.1 2").await.unwrap();
        let mut buf = [0u8; 16];
        let n = counted.read(&mut buf).await.unwrap();
        assert_eq!(read.get(), n as u64);
        assert_eq!(n, 10);
    }
}
