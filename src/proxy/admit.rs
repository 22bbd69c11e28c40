//! Admission: a storable miss streams to the client while its body is
//! collected (up to `max_object_size`); at the end the variant is built,
//! compressed once per configured coding (off the async workers), admitted
//! to the tiers, and the collapse waiters are told. A body that breaks or
//! outgrows the limit is never stored: the waiters are released instead.

use std::sync::Arc;

use crate::upstream::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use super::body::{BoxError, IdleTimeout, ProxyBody};
use crate::cache::collapse::{Flight, WriteLock};
use crate::cache::entry::{self, Encoded, Object, Variant, VaryKey};
use crate::cache::freshness::{Policy, Times};
use crate::cache::key::CacheKey;
use crate::cache::Cache;
use crate::compression::{self, CompressionPolicy};

/// Everything known about a storable response before its body.
pub struct Plan {
    pub key: CacheKey,
    /// The object already stored for the URL (other variants), if any.
    pub base: Option<Arc<Object>>,
    pub vary: VaryKey,
    pub status: StatusCode,
    /// Headers to store: end-to-end, rule applied, no Age, no surrogates.
    pub headers: HeaderMap,
    pub times: Times,
    pub policy: Policy,
    pub tags: Vec<String>,
    pub max_size: u64,
    pub compression: Option<CompressionPolicy>,
}

/// Chunks for the client; the channel is small so a slow client paces
/// the upstream read instead of growing a buffer.
pub type ClientTx = mpsc::Sender<Result<Bytes, BoxError>>;

pub fn client_channel() -> (ClientTx, ProxyBody) {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    });
    (
        tx,
        ProxyBody::boxed(http_body_util::StreamBody::new(stream)),
    )
}

/// Drives `body` to the end in its own task: forwards each chunk to
/// `client` (if any, until it goes away), collects it for storage, then
/// admits. `done` learns the stored variant (or `None`).
pub fn spawn(
    cache: Cache,
    plan: Plan,
    lock: Option<WriteLock>,
    body: IdleTimeout<UpstreamBody>,
    client: Option<ClientTx>,
    done: Option<oneshot::Sender<Option<Arc<Variant>>>>,
) {
    tokio::spawn(async move {
        let stored = run(&cache, plan, lock, body, client).await;
        if let Some(done) = done {
            let _ = done.send(stored);
        }
    });
}

async fn run(
    cache: &Cache,
    plan: Plan,
    mut lock: Option<WriteLock>,
    mut body: IdleTimeout<UpstreamBody>,
    mut client: Option<ClientTx>,
) -> Option<Arc<Variant>> {
    let declared = super::headers::content_length(&plan.headers);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    let mut storing = true;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(key = %plan.key, error = %e, "upstream body failed: not stored");
                if let Some(tx) = client.take() {
                    let _ = tx.send(Err(e)).await;
                }
                return None; // the lock drops: waiters released
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total += data.len() as u64;
                if storing {
                    if total > plan.max_size {
                        storing = false;
                        chunks = Vec::new();
                        if let Some(l) = lock.take() {
                            l.publish(Flight::Released);
                        }
                        cache.mark_pass(plan.key.hash());
                    } else {
                        chunks.push(data.clone());
                    }
                }
                if let Some(tx) = &client {
                    if tx.send(Ok(data)).await.is_err() {
                        client = None;
                    }
                }
                if client.is_none() && !storing {
                    return None;
                }
            }
        }
    }
    drop(client); // ends the client's body
    if !storing || declared.is_some_and(|d| d != total) {
        return None;
    }
    let body = concat(chunks, total);
    let variant = Arc::new(
        build_variant(
            plan.status,
            plan.headers,
            body,
            plan.vary,
            plan.times,
            plan.policy,
            plan.tags,
            plan.compression.as_ref(),
        )
        .await,
    );
    let object = Arc::new(match &plan.base {
        Some(base) => base.with_variant(variant.clone()),
        None => Object {
            key: plan.key.clone(),
            variants: vec![variant.clone()],
        },
    });
    cache.admit(object.clone());
    if let Some(l) = lock.take() {
        l.publish(Flight::Stored(object));
    }
    Some(variant)
}

/// The body in one allocation of exactly its size. Always a copy, even of
/// a single chunk: hyper's chunks are slices of its read buffer, which a
/// stored slice would keep alive whole (a 1 KiB body pinning 8–64 KiB).
fn concat(chunks: Vec<Bytes>, total: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(total as usize);
    for c in chunks {
        buf.extend_from_slice(&c);
    }
    buf.freeze()
}

/// Builds a stored variant: identity headers completed, and one encoded
/// representation per configured coding when the response compresses.
#[allow(clippy::too_many_arguments)]
pub async fn build_variant(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    vary: VaryKey,
    times: Times,
    policy: Policy,
    tags: Vec<String>,
    compression: Option<&CompressionPolicy>,
) -> Variant {
    let mut headers = entry::owned_headers(&headers);
    headers.remove(header::AGE);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !headers.contains_key(header::DATE) {
        let date = std::time::UNIX_EPOCH + std::time::Duration::from_millis(times.response);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
            headers.insert(header::DATE, v);
        }
    }
    let mut encoded = Vec::new();
    if let Some(policy) = compression {
        if policy.eligible(status, &headers) && policy.large_enough(Some(body.len() as u64)) {
            compression::merge_vary_accept_encoding(&mut headers);
            for &coding in &policy.algorithms {
                let level = policy.store_level.for_coding(coding);
                let input = body.clone();
                let result =
                    tokio::task::spawn_blocking(move || compression::encode(coding, level, &input))
                        .await;
                match result {
                    Ok(Ok(bytes)) if bytes.len() < body.len() => {
                        let mut h = headers.clone();
                        compression::mark_encoded(&mut h, coding, Some(bytes.len() as u64));
                        encoded.push(Encoded {
                            coding,
                            headers: h,
                            body: bytes,
                        });
                    }
                    Ok(Ok(_)) => {} // no smaller: identity only
                    Ok(Err(e)) => tracing::warn!(error = %e, "compression failed"),
                    Err(e) => tracing::warn!(error = %e, "compression task failed"),
                }
            }
        }
    }
    Variant {
        vary,
        status,
        headers,
        body,
        encoded,
        times,
        policy,
        tags,
        soft_purged: false,
        hits: Default::default(),
    }
}
