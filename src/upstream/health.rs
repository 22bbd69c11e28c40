//! Active health checks: every `interval`, each server gets
//! `GET <path>` with a `timeout`; a 2xx or 3xx is a success. After
//! `unhealthy_threshold` consecutive failures a server leaves rotation;
//! after `healthy_threshold` consecutive successes it returns. Each
//! transition is logged and exported as `strata_upstream_healthy`.

use std::sync::Weak;

use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::client::empty_body;
use super::Upstreams;

/// Spawns one checker task for the pool; it holds only a weak reference,
/// and stops when the pool is dropped (its token is cancelled).
pub fn spawn(pool: Weak<Upstreams>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let interval = {
                let Some(pool) = pool.upgrade() else { return };
                check_all(&pool).await;
                pool.config().health.interval
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

async fn check_all(pool: &Upstreams) {
    let checks = pool
        .balancer
        .servers()
        .iter()
        .map(|server| async move { (server, check_one(pool, &server.authority).await) });
    for (server, result) in futures_util::future::join_all(checks).await {
        let health = &pool.config().health;
        let name = server.authority.as_str();
        match result {
            Ok(()) => {
                if server.record_success(health) {
                    tracing::info!(server = name, "upstream healthy: back in rotation");
                    pool.metrics().upstream_healthy(name, true);
                }
            }
            Err(reason) => {
                tracing::debug!(server = name, %reason, "health check failed");
                if server.record_failure(health) {
                    tracing::warn!(server = name, %reason, "upstream unhealthy: out of rotation");
                    pool.metrics().upstream_healthy(name, false);
                }
            }
        }
    }
}

async fn check_one(pool: &Upstreams, authority: &http::uri::Authority) -> Result<(), String> {
    let health = &pool.config().health;
    let mut req = Request::new(empty_body());
    *req.uri_mut() = health
        .path
        .parse()
        .map_err(|_| format!("invalid health path {:?}", health.path))?;
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("strata-health-check"),
    );
    let work = async {
        let resp = pool
            .client()
            .request(authority, req, health.timeout)
            .await
            .map_err(|e| format!("{} error", e.kind()))?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(health.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", health.timeout)),
    }
}
