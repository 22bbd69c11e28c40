//! `Cache-Status` and `Via` on the responses hyper writes by itself (SPEC
//! §3: every response carries `Cache-Status`).
//!
//! hyper's HTTP/1.1 server answers a request head it cannot parse (a bad
//! request line or field, `Content-Length` fields that differ, a
//! `Transfer-Encoding` that does not end in `chunked`, a head over the
//! size limits) with a bare `400` or `431` written straight to the socket
//! before any request exists, and hyper 1.x gives the server no hook to
//! add fields to it. The client socket wrapper
//! ([`super::deadline::Flushes`]) knows when no request is open on an
//! HTTP/1 connection: a `4xx`/`5xx` response head written then is one of
//! hyper's, and goes out here with `cache-status: strata; fwd=bypass` and
//! `via: 1.1 strata` after its status line, as Strata's own refusals
//! carry, and is reported (counted in `strata_requests_total` and written
//! to the access log, see `Shared::refused_head`). Every other write costs
//! the wrapper one relaxed load; the
//! tunnel of a connection switched by a `101` (WebSocket), where no request
//! is open either, is never touched.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// The fields added after the status line.
const STAMP: &[u8] = b"cache-status: strata; fwd=bypass\r\nvia: 1.1 strata\r\n";

/// Called once per refusal with its status code (`400`, `431`).
pub type Report = Box<dyn Fn(u16) + Send + Sync>;

/// Stamps (and reports) hyper's own error responses on one connection.
pub struct OwnResponses {
    /// A rewritten head being written.
    pending: Option<Pending>,
    report: Report,
}

/// The caller's buffer counts as written (`consumed` bytes) once all of
/// `bytes` is.
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    consumed: usize,
}

impl OwnResponses {
    /// `report` is told each refusal's status when its head is first seen.
    pub fn new(report: Report) -> OwnResponses {
        OwnResponses {
            pending: None,
            report,
        }
    }

    /// For a write made while no request is open on an HTTP/1 connection:
    /// `None` (write `bufs` as they are) unless the first buffer is a whole
    /// error response head of hyper's, which is then written with the
    /// fields added (resumed by the next call after `Pending`: the caller
    /// writes the same buffers again).
    pub fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.pending.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty())?;
            let bytes = stamped(first)?;
            (self.report)(status_of(first));
            self.pending = Some(Pending {
                bytes,
                written: 0,
                consumed: first.len(),
            });
        }
        let p = self.pending.as_mut()?;
        while p.written < p.bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &p.bytes[p.written..]) {
                Poll::Ready(Ok(0)) => {
                    self.pending = None;
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => p.written += n,
                Poll::Ready(Err(e)) => {
                    self.pending = None;
                    return Some(Poll::Ready(Err(e)));
                }
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let consumed = p.consumed;
        self.pending = None;
        Some(Poll::Ready(Ok(consumed)))
    }
}

/// The status code of a head `stamped` accepted (`HTTP/1.x NNN ...`).
fn status_of(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(400)
}

/// `head` with [`STAMP`] after its status line, if it is a whole HTTP/1
/// `4xx`/`5xx` response head without a `Cache-Status` (so never one of
/// Strata's own, which all carry it).
fn stamped(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    if !matches!(rest.first(), Some(b'4' | b'5')) {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let fields = &head[..end];
    if fields
        .windows(b"\ncache-status:".len())
        .any(|w| w.eq_ignore_ascii_case(b"\ncache-status:"))
    {
        return None;
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut out = Vec::with_capacity(head.len() + STAMP.len());
    out.extend_from_slice(&head[..line_end]);
    out.extend_from_slice(STAMP);
    out.extend_from_slice(&head[line_end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_stamped() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            stamped(bare).unwrap(),
            b"HTTP/1.1 400 Bad Request\r\ncache-status: strata; fwd=bypass\r\nvia: 1.1 strata\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(stamped(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n").is_some());
        // Strata's own, a success, a partial head, not HTTP/1: unchanged.
        assert!(
            stamped(b"HTTP/1.1 400 Bad Request\r\nCache-Status: strata; fwd=bypass\r\n\r\n")
                .is_none()
        );
        assert!(stamped(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(stamped(b"HTTP/1.1 400 Bad Request\r\ncontent-le").is_none());
        assert!(stamped(b"\x00\x00\x12\x04\x00").is_none());
    }

    #[tokio::test]
    async fn a_stamped_head_is_written_whole_and_counted_as_the_callers() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server) = tokio::io::duplex(16);
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = reported.clone();
        let writer = tokio::spawn(async move {
            let mut own = OwnResponses::new(Box::new(move |s| seen.lock().unwrap().push(s)));
            let bufs = [IoSlice::new(head)];
            // The duplex takes 16 bytes at a time: resumed across Pending.
            std::future::poll_fn(|cx| own.poll_write(&mut server, cx, &bufs).unwrap()).await
        });
        let mut got = vec![0u8; head.len() + STAMP.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(writer.await.unwrap().unwrap(), head.len());
        assert_eq!(got, stamped(head).unwrap());
        assert_eq!(
            *reported.lock().unwrap(),
            [400],
            "reported once, across Pending"
        );
    }
}
