//! A request body on its way upstream, watched so that
//! `upstream.response_timeout` bounds the wait for the response head only
//! (SPEC §3), as nginx's `proxy_read_timeout` does: its clock starts once
//! the whole request has gone out, not while a client is still uploading.
//! While the body goes out, a stall of `upstream.body_idle_timeout` (no
//! chunk moved) ends the exchange instead: `408` when the client stopped
//! sending (nginx's `client_body_timeout`, not the upstream's fault), a
//! timeout (`504`) when the upstream stopped reading.
//!
//! A body-less request (every GET a cache sends) carries no watch: one
//! branch, no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::ReqBody;

/// The error a body gives when [`Outgoing`] is dropped by a stalled
/// exchange; never seen by a client (the exchange answers for it).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far a request body has gone (shared by [`Outgoing`] and the
/// exchange waiting on it).
#[derive(Default)]
pub struct Progress {
    /// Chunks handed to the upstream connection.
    moved: AtomicU64,
    /// The last poll found the client's body not ready.
    awaiting_client: AtomicBool,
    /// The body ended (or was dropped).
    done: AtomicBool,
    wake: Notify,
}

/// Who stopped a request body from moving for a whole idle timeout.
#[derive(Debug, PartialEq, Eq)]
pub enum Stalled {
    /// The client sent nothing more.
    Client,
    /// The upstream took nothing more.
    Upstream,
}

impl Progress {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Waits until the body has gone out (`Ok`), or until it moved nothing
    /// for `idle` (`Err`, saying who stalled). Checked four times per
    /// `idle`, so a stall is seen between one and one and a quarter idle
    /// timeouts after the last chunk.
    pub async fn sent(&self, idle: Duration) -> Result<(), Stalled> {
        let tick = (idle / 4).max(Duration::from_millis(1));
        let mut last = self.moved.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            if self.done.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {
                    let moved = self.moved.load(Ordering::Relaxed);
                    if moved != last {
                        last = moved;
                        since = Instant::now();
                    } else if since.elapsed() >= idle && !self.done.load(Ordering::Relaxed) {
                        return Err(if self.awaiting_client.load(Ordering::Relaxed) {
                            Stalled::Client
                        } else {
                            Stalled::Upstream
                        });
                    }
                }
            }
        }
    }
}

/// A request body with its [`Progress`] (none for a body-less request).
pub struct Outgoing {
    inner: ReqBody,
    progress: Option<Arc<Progress>>,
}

impl Outgoing {
    /// Wraps `inner`; the progress to wait on comes back unless the body
    /// is already complete.
    pub fn new(inner: ReqBody) -> (Outgoing, Option<Arc<Progress>>) {
        let progress = (!inner.is_end_stream()).then(Arc::<Progress>::default);
        let watch = progress.clone();
        (Outgoing { inner, progress }, watch)
    }

    pub fn into_inner(mut self) -> ReqBody {
        self.progress.take();
        std::mem::replace(&mut self.inner, super::client::empty_body())
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = &this.progress {
            match &polled {
                Poll::Pending => p.awaiting_client.store(true, Ordering::Relaxed),
                Poll::Ready(Some(Ok(_))) => {
                    p.awaiting_client.store(false, Ordering::Relaxed);
                    p.moved.fetch_add(1, Ordering::Relaxed);
                    if this.inner.is_end_stream() {
                        p.finish();
                    }
                }
                Poll::Ready(_) => p.finish(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_moving_is_a_stall_and_one_that_ends_is_sent() {
        let p = Progress::default();
        p.awaiting_client.store(true, Ordering::Relaxed);
        let start = Instant::now();
        assert_eq!(p.sent(Duration::from_secs(4)).await, Err(Stalled::Client));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took <= Duration::from_secs(5),
            "{took:?}"
        );
        p.awaiting_client.store(false, Ordering::Relaxed);
        assert_eq!(p.sent(Duration::from_secs(4)).await, Err(Stalled::Upstream));
        p.finish();
        assert_eq!(p.sent(Duration::from_secs(4)).await, Ok(()));
    }

    #[tokio::test]
    async fn an_empty_body_has_nothing_to_watch() {
        let (body, watch) = Outgoing::new(super::super::client::empty_body());
        assert!(watch.is_none());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
