//! Reads of different URLs that are in flight at once share one Redis
//! command: the lookups queue their object names, and a batcher task sends
//! whatever has queued as one `MGET` (one `GET` when alone).
//!
//! Why: every Redis command costs both sides a fixed amount besides its
//! keys — on this side the client crate's command, channel message, reply
//! slot and response timer, on the server its dispatch — and under load a
//! fleet's hits spread over many URLs (which the per-URL coalescing of
//! `cache/reads.rs` cannot share) send one command each. Batching makes
//! that cost one per batch. The batch forms by itself: after the first
//! name arrives, the batcher yields once so that the requests already
//! runnable queue theirs, then takes everything queued (at most
//! [`MAX_BATCH`]). An idle instance pays one task hop per read.
//!
//! In a Cluster, redis-rs splits an `MGET` by hash slot and sends each
//! part to its node (a node that fails fails the whole batch). Each batch runs in a task of its own (batches
//! overlap), bounded by `cache.redis.timeout` and counted once by the
//! circuit breaker; its error or timeout is every member's miss.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::store::Core;
use crate::cache::storage::StorageError;

/// The most names one `MGET` carries. A batch is answered whole, so a
/// small read waits for the largest in its batch, and a batch that overruns
/// `cache.redis.timeout` is a miss for all of its reads (pipelined `GET`s
/// would lose only the later ones): 16 keeps a burst of large objects from
/// failing together, and is about the batch size that 64 busy connections
/// form by themselves here.
pub(super) const MAX_BATCH: usize = 16;

/// What one read waits for: the object's payload, `None` when absent.
type Answer = Result<Option<Bytes>, StorageError>;

struct Read {
    name: String,
    answer: oneshot::Sender<Answer>,
}

/// The queue to the batcher. Dropping the last clone stops it.
#[derive(Clone)]
pub(super) struct Reads {
    queue: mpsc::UnboundedSender<Read>,
}

impl Reads {
    /// Starts the batcher on `rt`.
    pub(super) fn start(core: Arc<Core>, rt: &tokio::runtime::Handle) -> Reads {
        let (queue, rx) = mpsc::unbounded_channel();
        rt.spawn(run(core, rx));
        Reads { queue }
    }

    /// A queue with no batcher behind it (outside a runtime): every read
    /// is a miss at once.
    pub(super) fn off() -> Reads {
        let (queue, _) = mpsc::unbounded_channel();
        Reads { queue }
    }

    /// The payload stored under `name`, read in the next batch. Bounded by
    /// the batch's bound (`cache.redis.timeout`); a batcher that is gone
    /// answers "not connected".
    pub(super) async fn read(&self, name: String) -> Answer {
        let (answer, rx) = oneshot::channel();
        if self.queue.send(Read { name, answer }).is_err() {
            return Err(super::conn::not_connected());
        }
        rx.await
            .unwrap_or_else(|_| Err(super::conn::not_connected()))
    }
}

/// The batcher: takes what has queued, sends it, repeats until every
/// sender is gone.
async fn run(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Read>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut queued, MAX_BATCH).await == 0 {
            return;
        }
        if queued.len() < MAX_BATCH {
            // The requests already runnable queue theirs before the batch
            // leaves (the woken batcher would otherwise run first).
            tokio::task::yield_now().await;
            while queued.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(read) => queued.push(read),
                    Err(_) => break,
                }
            }
        }
        let batch = std::mem::replace(&mut queued, Vec::with_capacity(MAX_BATCH));
        tokio::spawn(send(core.clone(), batch));
    }
}

/// Sends one batch and answers each of its reads.
async fn send(core: Arc<Core>, batch: Vec<Read>) {
    let (names, answers): (Vec<String>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|r| (r.name, r.answer)).unzip();
    match core.read_many(&names).await {
        Ok(payloads) => {
            for (answer, payload) in answers.into_iter().zip(payloads) {
                // A reader that left no longer waits.
                let _ = answer.send(Ok(payload));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(share(&e)));
            }
        }
    }
}

/// A batch's error, for each of its reads.
fn share(e: &StorageError) -> StorageError {
    match e {
        StorageError::Redis(e) => StorageError::Redis(e.clone()),
        StorageError::Timeout => StorageError::Timeout,
        StorageError::BreakerOpen => StorageError::BreakerOpen,
        // Not produced by a read of payloads.
        StorageError::Corrupt(_) | StorageError::Unencodable(_) => StorageError::Timeout,
    }
}
