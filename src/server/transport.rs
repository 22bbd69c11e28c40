//! The byte streams a proxy connection is served over (plain TCP, TLS), as
//! the keep-alive release loop of [`super::keepalive`] needs them: a look at
//! the client's first bytes (h2c or HTTP/1.1), a wait for the client's next
//! bytes that holds no buffer of hyper's, and [`Replay`], which gives a new
//! hyper connection what an earlier one read but did not parse.
//!
//! Nothing is taken from the stream while looking or waiting: a plain
//! socket is peeked and polled for readiness; a TLS stream has its records
//! decrypted into rustls's plaintext buffer, where hyper then reads them.
//! While it waits, a TLS connection holds rustls's own buffers (its record
//! buffer shrinks to 4 KiB when empty) but none of hyper's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::deadline::Flushes;
use super::sendfile::Socket;

/// Bytes looked at while no hyper connection is held: the length of the
/// h2 preface (RFC 9113 §3.4).
pub const LOOK: usize = 24;

/// A client connection's stream, for the keep-alive release loop.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The protocol agreed on before any byte: over TLS, ALPN's choice
    /// (none means HTTP/1.1, RFC 7301 §3.2 and RFC 9113 §3.2); `None` on a
    /// plain socket, where the first bytes tell (h2c or HTTP/1.1).
    fn agreed(&self) -> Option<Protocol>;

    /// Ready once the client has sent something or closed, taking nothing
    /// from the stream. With `look`, a copy of the first bytes available
    /// (up to its room) is put there, and none means the client closed;
    /// without it, a stream that can wait without a buffer reads nothing.
    /// An error means nothing more will come.
    fn poll_arrival(
        &mut self,
        cx: &mut Context<'_>,
        look: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>>;
}

/// A protocol a TLS client agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Transport for Flushes<Socket> {
    fn agreed(&self) -> Option<Protocol> {
        None
    }

    fn poll_arrival(
        &mut self,
        cx: &mut Context<'_>,
        look: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        let socket = self.get_ref();
        match look {
            Some(buf) => socket.poll_peek(cx, buf).map_ok(|_| ()),
            // The new hyper connection reads the end, if that is what came.
            None => socket.poll_read_ready(cx),
        }
    }
}

impl Transport for Flushes<TlsStream<TcpStream>> {
    fn agreed(&self) -> Option<Protocol> {
        Some(match self.get_ref().get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        })
    }

    /// Reads and decrypts records into rustls's plaintext buffer, where
    /// the bytes stay for hyper (an empty buffer after the client's
    /// `close_notify` or the socket's end). Records rustls queued in
    /// answer to what it read (a `no_renegotiation` alert, a TLS 1.3
    /// `KeyUpdate`) are sent here: hyper, which would flush them, is not
    /// there while the connection waits.
    fn poll_arrival(
        &mut self,
        cx: &mut Context<'_>,
        look: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        let tls = self.get_mut();
        let read = Pin::new(&mut *tls).poll_fill_buf(cx).map_ok(|plain| {
            if let Some(buf) = look {
                let n = plain.len().min(buf.remaining());
                buf.put_slice(&plain[..n]);
            }
        });
        if read.is_pending() && tls.get_ref().1.wants_write() {
            if let Poll::Ready(Err(e)) = Pin::new(tls).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

/// A stream, after bytes that were read from it but not yet parsed.
pub struct Replay<T> {
    pub held: Bytes,
    pub io: T,
}

impl<T> Replay<T> {
    pub fn new(io: T) -> Replay<T> {
        Replay {
            held: Bytes::new(),
            io,
        }
    }

    /// Keeps `read` (a copy: it may be a slice of hyper's whole read
    /// buffer) before what is still held.
    pub fn hold(&mut self, read: &[u8]) {
        if read.is_empty() {
            return;
        }
        let mut both = BytesMut::with_capacity(read.len() + self.held.len());
        both.extend_from_slice(read);
        both.extend_from_slice(&self.held);
        self.held = both.freeze();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.held.len().min(buf.remaining());
        buf.put_slice(&this.held[..n]);
        this.held.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
