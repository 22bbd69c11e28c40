//! The plain listener's client socket. Buffers that are slices of a body
//! in the body arena (`cache/arena.rs`) are sent from the arena's file
//! with `sendfile(2)`, so the kernel references the stored pages instead
//! of copying the body into the socket; everything else is written as
//! before (`writev`). What precedes such a body in one vectored write (a
//! response head) goes out with `MSG_MORE`, so head and body still leave
//! in one segment, as nginx does with `sendfile` and `tcp_nopush`.
//!
//! hyper hands body `Bytes` to the socket unchanged because the server is
//! built with `writev(true)` (its queue write strategy); HTTP/2 frames
//! chain large DATA payloads the same way. TLS connections encrypt, so
//! they never reach this wrapper.
//!
//! With `server.sendfile = false` (or no arena) each write costs one
//! branch more than the bare `TcpStream`; with it, one pointer-range
//! compare per buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::cache::arena::{self, Arena};

/// A client TCP connection that sends arena bodies with `sendfile`.
pub struct Socket {
    tcp: TcpStream,
    arena: Option<&'static Arena>,
}

impl Socket {
    /// Wraps `tcp`; `sendfile` is used when `enabled` (`server.sendfile`)
    /// and the process has an arena.
    pub fn new(tcp: TcpStream, enabled: bool) -> Socket {
        Socket {
            tcp,
            arena: arena::get().filter(|_| enabled),
        }
    }

    /// Ready when the client has sent something (or closed): an idle
    /// connection waits on this without a read buffer.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_read_ready(cx)
    }

    /// The first bytes the client sent, left in the socket.
    pub fn poll_peek(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        self.tcp.poll_peek(cx, buf)
    }

    /// Sends up to `len` bytes of the arena file from `offset`.
    #[cfg(target_os = "linux")]
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        arena: &Arena,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut from = offset;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, arena.fd(), Some(&mut from), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness was cleared: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `bufs` (what precedes an arena body) with `MSG_MORE`.
    #[cfg(target_os = "linux")]
    fn poll_send_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                sendmsg(
                    &self.tcp,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::MORE | SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    /// `None` when this socket does not use `sendfile`, when nothing in
    /// `bufs` is in the arena, or when the kernel refused `sendfile` (a
    /// sandbox, an exotic socket): the caller writes the buffers instead,
    /// and after a refusal this socket stops using `sendfile`.
    fn poll_write_arena(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        let arena = self.arena?;
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (cx, bufs, arena);
            None
        }
        #[cfg(target_os = "linux")]
        {
            let (i, offset) = bufs
                .iter()
                .enumerate()
                .find_map(|(i, b)| arena.locate(b).map(|o| (i, o)))?;
            if i > 0 {
                return Some(self.poll_send_more(cx, &bufs[..i]));
            }
            match self.poll_sendfile(cx, arena, offset, bufs[0].len()) {
                Poll::Ready(Err(e)) if refused(&e) => {
                    static LOGGED: AtomicBool = AtomicBool::new(false);
                    if !LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "sendfile refused by the kernel: bodies are written instead on such connections");
                    }
                    self.arena = None;
                    None
                }
                p => Some(p),
            }
        }
    }
}

/// Errors meaning `sendfile` cannot be used on this socket at all (nothing
/// was sent), as opposed to the connection failing.
#[cfg(target_os = "linux")]
fn refused(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM)
    )
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.poll_write_arena(cx, &[IoSlice::new(buf)]) {
            return p;
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = this.poll_write_arena(cx, bufs) {
            return p;
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
