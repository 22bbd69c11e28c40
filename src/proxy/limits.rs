//! The rate limits around an answer (`[[rate_limits]]`, see
//! `traffic/rate_limit.rs`): the `count = "all"` limits as the request
//! arrives, and, when a `count = "origin"` limit may still refuse it on its
//! way upstream, the arrival's settlement once it is answered: refunded if
//! that limit refused it, counted by the arrival's `dry_run` limits if not.

use std::future::Future;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use super::cache_status::{CacheStatus, Fwd};
use super::error::ProxyError;
use super::validate::Present;
use super::{Answered, ConnInfo, Runtime, Shared};
use crate::traffic::RateLimits;

impl Shared {
    /// [`Shared::answer`] behind `limits`: a `429` when a `count = "all"`
    /// limit refuses the request on arrival. A request refused later by a
    /// `count = "origin"` limit (its answer is that limit's `429`) gets
    /// its arrival charges back; a stale copy served instead is no
    /// refusal. Allocates nothing more than the arrival check when no
    /// origin limit matches the path. A function returning an `async`
    /// block for the reason [`Shared::handle`] is.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn limited<'a>(
        &'a self,
        limits: &'a RateLimits,
        runtime: &'a Arc<Runtime>,
        req: Request<Incoming>,
        conn: ConnInfo,
        present: Present,
    ) -> impl Future<Output = Answered> + 'a {
        async move {
            let arrival = match Box::pin(limits.on_arrival(&req, conn.client_ip)).await {
                Ok(arrival) => arrival,
                Err(over) => {
                    let e = ProxyError::RateLimited(over);
                    return Answered::error(&e, CacheStatus::fwd(Fwd::Bypass));
                }
            };
            let answered = self.answer(runtime, req, conn, present).await;
            if let Some(arrival) = arrival {
                Box::pin(limits.settle(arrival, answered.limited)).await;
            }
            answered
        }
    }
}
