//! `GET /events`: Server-Sent Events (WHATWG HTML §9.2), one `data:` line of
//! JSON per second — the snapshot of `admin/snapshot.rs`.
//!
//! The snapshot is computed once per second for all subscribers, not per
//! client: one producer task samples the metrics and publishes the encoded
//! event into a `tokio::sync::watch` channel; each subscriber's stream only
//! copies out the latest `Bytes` (a reference-count increment). The
//! producer is started by the first subscriber and stops at the first tick
//! that finds none, so nothing is computed while nobody watches. Streams
//! end when the server starts draining.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::Response;
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::snapshot::Window;
use crate::proxy::body::ProxyBody;
use crate::proxy::Shared;

/// Time between two snapshots.
pub const PERIOD: Duration = Duration::from_secs(1);

/// What a client waits before reconnecting after a dropped stream (the
/// SSE `retry:` field), in milliseconds.
const RETRY_MS: u32 = 2000;

/// The snapshot publisher shared by every `/events` stream.
pub struct Events {
    hub: Arc<Hub>,
}

struct Hub {
    shared: Arc<Shared>,
    /// The latest encoded event (`data: {...}\n\n`); empty before the first.
    latest: watch::Sender<Bytes>,
    /// Whether a producer task is running (at most one is).
    producing: AtomicBool,
    /// Cancelled when the server drains: every stream ends.
    closing: CancellationToken,
}

impl Events {
    pub fn new(shared: Arc<Shared>) -> Events {
        Events {
            hub: Arc::new(Hub {
                shared,
                latest: watch::Sender::new(Bytes::new()),
                producing: AtomicBool::new(false),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Ends every stream (the server is draining) and stops the producer.
    pub fn close(&self) {
        self.hub.closing.cancel();
    }

    /// A `200 text/event-stream` response that carries a snapshot every
    /// [`PERIOD`] until the client goes or the server drains; `503` (JSON,
    /// `Retry-After`) while [`max_streams`] are open, so that dashboard
    /// tabs never take every admin connection slot from `/health`.
    ///
    /// `credential` is the token the request carried: a stream whose token
    /// a reload no longer accepts (`read_token` rotated) ends at its next
    /// snapshot, and the page's reconnection is refused.
    pub fn subscribe(&self, credential: Option<Vec<u8>>) -> Response<ProxyBody> {
        let hub = &self.hub;
        let cap = max_streams(hub.shared.runtime.load().config.admin.max_connections);
        let open = hub.latest.receiver_count();
        if open >= cap {
            let mut r = super::json_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "error": format!("{open} /events streams open, the most admin.max_connections allows; close a dashboard")
                }),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        let mut rx = hub.latest.subscribe();
        let already_running = hub.producing.swap(true, Ordering::SeqCst);
        if !already_running {
            tokio::spawn(produce(hub.clone()));
        }
        // A running producer's latest snapshot is at most a second old:
        // send it now so the page fills at once.
        let current = rx.borrow_and_update().clone();
        let first = (already_running && !current.is_empty()).then_some(current);
        let retry = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
        let closing = hub.closing.clone();
        let head = stream::iter([retry].into_iter().chain(first));
        let shared = hub.shared.clone();
        // Shared by the stream's steps, not copied into each.
        let allowed = Arc::new(move || {
            let admin = &shared.runtime.load().config.admin;
            admin.read_token.is_none()
                || credential
                    .as_deref()
                    .is_some_and(|c| super::auth::allows_read(c, admin))
        });
        let updates = stream::unfold((rx, closing), move |(mut rx, closing)| {
            let allowed = allowed.clone();
            async move {
                tokio::select! {
                    _ = closing.cancelled() => None,
                    changed = rx.changed() => {
                        changed.ok()?;
                        if !allowed() {
                            return None;
                        }
                        let event = rx.borrow_and_update().clone();
                        Some((event, (rx, closing)))
                    }
                }
            }
        });
        use futures_util::StreamExt;
        let frames = head
            .chain(updates)
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut r = Response::new(ProxyBody::boxed(StreamBody::new(frames)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Reverse proxies in front of the admin listener must not buffer.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        r
    }
}

/// Open `/events` streams allowed: half of `admin.max_connections`
/// (each stream holds a connection for as long as it is open), so the
/// other half stays for `/health`, `/metrics` and the rest.
pub fn max_streams(max_connections: usize) -> usize {
    max_connections / 2
}

impl Drop for Events {
    fn drop(&mut self) {
        self.hub.closing.cancel();
    }
}

/// Publishes a snapshot every [`PERIOD`] while anyone subscribes.
async fn produce(hub: Arc<Hub>) {
    let mut window = Window::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.closing.cancelled() => return,
            _ = tick.tick() => {}
        }
        if hub.latest.receiver_count() == 0 {
            hub.producing.store(false, Ordering::SeqCst);
            // A subscriber that came in between the count and the store
            // saw `producing` still set and started no producer: go on for
            // it, unless it has since started one.
            if hub.latest.receiver_count() == 0 || hub.producing.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        let snapshot = window.snapshot(&hub.shared);
        let mut event = b"data: ".to_vec();
        if let Err(e) = serde_json::to_writer(&mut event, &snapshot) {
            tracing::error!(error = %e, "cannot encode the dashboard snapshot");
            continue;
        }
        event.extend_from_slice(b"\n\n");
        hub.latest.send_replace(Bytes::from(event));
    }
}
