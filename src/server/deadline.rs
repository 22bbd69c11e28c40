//! `server.header_read_timeout` from accept (SPEC §10): a connection that
//! has not delivered a complete first request head by then is closed,
//! whether it sent a few bytes or nothing at all.
//!
//! hyper's own HTTP/1.1 header timer only starts once it reads a head, and
//! hyper-util's protocol detection (HTTP/1.1 or h2 prior knowledge) waits
//! for the first bytes without any timer, so a silent connection would
//! hold its slot of `max_connections` forever. After the first request
//! hyper's timer bounds each later head and idle keep-alive wait.
//!
//! The cost is one timer per connection and a relaxed store per request;
//! the deadline is checked when it fires, not on every request.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Whether a connection's first request arrived, and by when it must.
#[derive(Clone)]
pub struct FirstRequest {
    arrived: Arc<AtomicBool>,
    deadline: Instant,
}

/// The connection was closed because no request arrived in time.
#[derive(Debug, thiserror::Error)]
#[error("no request head within header_read_timeout of accept")]
pub struct Silent;

impl FirstRequest {
    /// Starts the clock now (call at accept).
    pub fn new(timeout: Duration) -> FirstRequest {
        FirstRequest {
            arrived: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + timeout,
        }
    }

    /// Called by the service for every request (a complete head).
    pub fn arrived(&self) {
        self.arrived.store(true, Ordering::Relaxed);
    }

    /// Drives `conn`, dropping it (which closes the socket) when no request
    /// arrived by the deadline.
    pub async fn serve<F, E>(self, conn: F) -> Result<(), ConnError<E>>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            done = &mut conn => return done.map_err(ConnError::Http),
            _ = tokio::time::sleep_until(self.deadline) => {}
        }
        if !self.arrived.load(Ordering::Relaxed) {
            return Err(ConnError::Silent(Silent));
        }
        conn.await.map_err(ConnError::Http)
    }
}

/// How a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError<E> {
    #[error(transparent)]
    Silent(Silent),
    #[error("{0}")]
    Http(E),
}
