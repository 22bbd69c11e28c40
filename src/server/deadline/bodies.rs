//! The request and response bodies that tell a connection's
//! [`HeadDeadline`](super::HeadDeadline) what became of its requests: a
//! response written to the end ([`Tracked`], holding the request's
//! [`Open`]) and a request body read to its end ([`RequestBody`]).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{State, RESET_MIN_STREAMS};

/// A request that has not been answered to the end.
pub struct Open {
    pub(super) state: Arc<State>,
    /// An HTTP/2 stream whose response head is not given yet: dropped so,
    /// the client reset it (see the module doc).
    pub(super) unanswered_stream: bool,
}

impl Open {
    /// Its response is given: from here the request counts as answered.
    pub fn answered(mut self) -> Open {
        self.unanswered_stream = false;
        self
    }

    /// Its response is a `101`: the connection becomes a tunnel.
    pub fn switched(&self) {
        self.state.switched.store(true, Ordering::Relaxed);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let s = &self.state;
        // Still open until the socket has taken what hyper holds of it.
        s.ended.fetch_add(1, Ordering::Relaxed);
        if self.unanswered_stream {
            let resets = s.resets.fetch_add(1, Ordering::Relaxed) + 1;
            let streams = s.streams.load(Ordering::Relaxed);
            if streams >= RESET_MIN_STREAMS && resets > streams / 2 {
                s.abusive.notify_one();
            }
        }
    }
}

/// A response body that keeps its request [`Open`] until it is dropped
/// (hyper drops it when it has queued the last frame, or the connection
/// ended).
pub struct Tracked<B> {
    inner: B,
    _open: Option<Open>,
}

impl<B> Tracked<B> {
    /// `open`'s response: from here the request counts as answered.
    pub fn new(inner: B, open: Open) -> Tracked<B> {
        Tracked {
            inner,
            _open: Some(open.answered()),
        }
    }

    /// A response whose body holds its request's [`Open`] itself (an
    /// HTTP/2 body behind the stall guard, which lets it go when it cuts
    /// the stream).
    pub fn holding_its_own(inner: B) -> Tracked<B> {
        Tracked { inner, _open: None }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's body is pending on its connection until this is cleared
/// ([`super::HeadDeadline::body_end`]). Carried to where the body is read
/// in the request's extensions, and only for a request with a body: a
/// `GET` costs nothing.
#[derive(Clone)]
pub struct BodyEnd {
    pub(super) state: Arc<State>,
    /// The request's number (`State::body`).
    pub(super) number: u64,
}

impl BodyEnd {
    /// The body has been read to its end: the connection's mark is cleared,
    /// unless a later request has set its own meanwhile.
    fn reached(self) {
        let _ =
            self.state
                .body
                .compare_exchange(self.number, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A client request's body, read upstream, that clears its [`BodyEnd`]
/// once read to its end.
///
/// Over HTTP/2 a body's declared `content-length` can be reached before its
/// stream ends (`END_STREAM` may come in a later frame, after more `DATA`
/// than declared: a malformed request, RFC 9113 §8.1.1, that must not be
/// forwarded). The frame that completes the length is therefore held back
/// until the stream ends: the upstream never receives a complete request
/// whose client then sends too much, and the excess fails the exchange as
/// a broken client body (`400`). HTTP/1.1 bodies end with their length and
/// are never held.
pub struct RequestBody {
    inner: Incoming,
    end: Option<BodyEnd>,
    /// The data frame that completed the declared length, waiting for the
    /// stream's end.
    held: Option<Frame<Bytes>>,
    /// Trailers that ended the stream after `held`, given next.
    trailers: Option<Frame<Bytes>>,
}

/// More request body than its `content-length` declared (RFC 9113
/// §8.1.1).
#[derive(Debug, thiserror::Error)]
#[error("the request body is longer than its content-length")]
pub struct BodyTooLong;

/// A request body's failure: hyper's, or [`BodyTooLong`].
pub type RequestBodyError = Box<dyn std::error::Error + Send + Sync>;

impl RequestBody {
    pub fn new(inner: Incoming, end: Option<BodyEnd>) -> RequestBody {
        RequestBody {
            inner,
            end,
            held: None,
            trailers: None,
        }
    }

    fn ended(&mut self) {
        if let Some(end) = self.end.take() {
            end.reached();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.ended();
                    return Poll::Ready(this.held.take().map(Ok));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Some(Ok(frame)) => frame,
            };
            let empty_data = frame.data_ref().is_some_and(|d| d.is_empty());
            if this.held.is_some() {
                if empty_data {
                    continue;
                }
                if frame.is_data() {
                    return Poll::Ready(Some(Err(BodyTooLong.into())));
                }
                // Trailers end the stream: the held frame, then them.
                this.ended();
                this.trailers = Some(frame);
                return Poll::Ready(this.held.take().map(Ok));
            }
            // hyper's decoder is done with a body before its last frame is
            // handed over (a declared length reached, or the last chunk
            // read).
            if this.inner.is_end_stream() {
                this.ended();
            } else if frame.is_data() && !empty_data && this.inner.size_hint().exact() == Some(0) {
                this.held = Some(frame);
                continue;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.trailers.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.held.as_ref().and_then(Frame::data_ref) {
            Some(held) => SizeHint::with_exact(held.len() as u64),
            None => self.inner.size_hint(),
        }
    }
}
