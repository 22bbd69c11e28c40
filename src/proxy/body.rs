//! Response bodies. A hit is `Full` (a clone of stored `Bytes`, no box, no
//! copy); a pass-through is the upstream's body behind an idle timeout; the
//! rest (store-while-streaming, streaming compression) is boxed.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::{Instant, Sleep};

pub use crate::compression::BoxError;

/// Bytes of a streamed body handed to hyper per frame at most: one HTTP/2
/// frame at the default `SETTINGS_MAX_FRAME_SIZE`. hyper asks an HTTP/2
/// body for more only once h2 has taken a whole piece, so a client is seen
/// to take something (for `send_timeout`) every piece it takes: with
/// 64 KiB, one reading 40 KiB/s against a 1 s timeout was cut.
pub const PIECE: usize = 16 << 10;

/// The body of every response Strata sends.
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    Upstream(IdleTimeout<crate::upstream::UpstreamBody>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Empty
    }

    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        ProxyBody::Boxed(UnsyncBoxBody::new(body.map_err(Into::into)))
    }
}

impl From<&'static str> for ProxyBody {
    fn from(s: &'static str) -> Self {
        ProxyBody::full(Bytes::from_static(s.as_bytes()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// The upstream's body stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for more than {0:?}")]
pub struct BodyIdle(pub Duration);

/// A body told when [`IdleTimeout`] cuts it off (an upstream body counts
/// the stall as an upstream error).
pub trait Stalls {
    fn stalled(&mut self);
}

impl Stalls for crate::upstream::UpstreamBody {
    fn stalled(&mut self) {
        crate::upstream::UpstreamBody::stalled(self);
    }
}

/// Wraps a body so that a stall longer than `idle` between two frames ends
/// it with [`BodyIdle`] (the client sees a cut-off response, never a hang)
/// and tells it so ([`Stalls`]). The timer is allocated at the first stall
/// and re-armed (not re-allocated) at later ones.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current stall.
    armed: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: None,
            armed: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Stalls + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                if !this.armed {
                    let deadline = Instant::now() + idle;
                    match &mut this.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let Some(sleep) = this.sleep.as_mut() else {
                    return Poll::Pending;
                };
                ready!(sleep.as_mut().poll(cx));
                this.inner.stalled();
                Poll::Ready(Some(Err(Box::new(BodyIdle(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;
