//! The queue's consumer: fans each alert out to the webhooks that want its
//! event. Each webhook has a worker of its own with its own bounded queue
//! ([`WEBHOOK_QUEUE`] alerts; when full, the alert is dropped for that
//! webhook and counted as `dropped`): it batches for the webhook's
//! `batch_window` (from the batch's first alert), then sends one request at
//! a time, in order. A slow or dead receiver (up to
//! [`TRIES`](super::deliver::TRIES) × `timeout` per batch) delays only its
//! own alerts, never another webhook's. Every alert of a batch is counted
//! in `strata_alerts_total{event,result}` as `sent` or `failed` (all tries
//! failed: dropped).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::deliver::{redacted, Sender};
use super::{payload, Alert, AlertsConfig, Format, WebhookConfig};
use crate::metrics::Metrics;

/// Alerts waiting for one webhook before new ones for it are dropped.
pub const WEBHOOK_QUEUE: usize = super::QUEUE;

/// Alerts in one request at most; a fuller batch goes out at once.
pub const MAX_BATCH: usize = 100;

/// Base of the retry backoff: tries at 0, 0.5 s and 1.5 s.
const BACKOFF: Duration = Duration::from_millis(500);

/// The queue of one webhook's worker. Dropping it lets the worker send
/// what it holds (at once, without waiting for the window) and end.
struct Worker {
    hook: WebhookConfig,
    tx: mpsc::Sender<Alert>,
}

/// Runs until every [`Alerts`](super::Alerts) handle is gone.
pub async fn run(
    mut rx: mpsc::Receiver<Alert>,
    mut config: watch::Receiver<Arc<AlertsConfig>>,
    metrics: Metrics,
) {
    let sender = match Sender::new(BACKOFF) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client: alerts disabled");
            while let Some(a) = rx.recv().await {
                metrics.alert(a.event.as_str(), "failed");
            }
            return;
        }
    };
    let mut workers: Vec<Worker> = Vec::new();
    loop {
        tokio::select! {
            received = rx.recv() => {
                // Gone: dropping the workers' queues flushes them.
                let Some(alert) = received else { return };
                let current = config.borrow().clone();
                let wanted = |h: &&WebhookConfig| delivers(h, &alert);
                for hook in current.webhooks.iter().filter(wanted) {
                    let worker = worker_for(&mut workers, hook, &sender, &metrics);
                    if worker.tx.try_send(alert.clone()).is_err() {
                        tracing::warn!(
                            url = %redacted(&hook.url),
                            event = alert.event.as_str(),
                            "webhook queue full: alert dropped"
                        );
                        metrics.alert(alert.event.as_str(), "dropped");
                    }
                }
            }
            Ok(()) = config.changed() => {
                // Webhooks removed or changed by a reload: their workers
                // send what they hold under the old settings, then end.
                let current = config.borrow_and_update().clone();
                workers.retain(|w| current.webhooks.contains(&w.hook));
            }
        }
    }
}

/// The worker of `hook` (equal configurations share one), started on first
/// use.
fn worker_for<'a>(
    workers: &'a mut Vec<Worker>,
    hook: &WebhookConfig,
    sender: &Sender,
    metrics: &Metrics,
) -> &'a Worker {
    let i = match workers.iter().position(|w| &w.hook == hook) {
        Some(i) => i,
        None => {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            tokio::spawn(work(hook.clone(), rx, sender.clone(), metrics.clone()));
            workers.push(Worker {
                hook: hook.clone(),
                tx,
            });
            workers.len() - 1
        }
    };
    &workers[i]
}

/// One webhook's worker: batches, then delivers, one request at a time.
async fn work(
    hook: WebhookConfig,
    mut rx: mpsc::Receiver<Alert>,
    sender: Sender,
    metrics: Metrics,
) {
    while let Some(first) = rx.recv().await {
        // The window runs from when the first alert was raised: alerts that
        // queued behind a slow delivery are not held back once more.
        let waited = SystemTime::now()
            .duration_since(first.at)
            .unwrap_or_default();
        let due = Instant::now() + hook.batch_window.saturating_sub(waited);
        let mut alerts = vec![first];
        while alerts.len() < MAX_BATCH {
            match tokio::time::timeout_at(due, rx.recv()).await {
                Ok(Some(a)) => alerts.push(a),
                // Window over, or the queue closed (reload, shutdown).
                Ok(None) | Err(_) => break,
            }
        }
        deliver(&sender, &metrics, &hook, &alerts).await;
    }
}

async fn deliver(sender: &Sender, metrics: &Metrics, hook: &WebhookConfig, alerts: &[Alert]) {
    let body = Bytes::from(payload::body(hook.format, alerts));
    let result = match sender.deliver(hook, body).await {
        Ok(tries) => {
            tracing::debug!(url = %redacted(&hook.url), alerts = alerts.len(), tries, "alerts delivered");
            "sent"
        }
        Err((tries, e)) => {
            tracing::warn!(
                url = %redacted(&hook.url),
                alerts = alerts.len(),
                tries,
                error = %e,
                "webhook delivery failed: alerts dropped"
            );
            "failed"
        }
    };
    for a in alerts {
        metrics.alert(a.event.as_str(), result);
    }
}

/// Whether `hook` gets `alert`: an event it asked for (all, when its
/// `events` is empty). An Alertmanager hook also gets the recovery of an
/// event it asked for (`upstream_up` for `upstream_down`,
/// `redis_breaker_closed` for `redis_breaker_open`, the first
/// `upstream_up` for `all_upstreams_down`), sent as that alert with
/// `endsAt`: without it, an alert Alertmanager was told of would stay
/// firing until its `resolve_timeout`. Other formats hear a recovery only
/// when they asked for it.
fn delivers(hook: &WebhookConfig, alert: &Alert) -> bool {
    let alertmanager = hook.format == Format::Alertmanager;
    match alert.ends {
        None => {
            hook.wants(alert.event)
                || (alertmanager && alert.event.resolves().is_some_and(|e| hook.wants(e)))
        }
        Some(ended) => alertmanager && hook.wants(ended),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Event;

    fn hook(format: Format, events: &[Event]) -> WebhookConfig {
        WebhookConfig {
            url: "http://127.0.0.1:9/hook".parse().unwrap(),
            authorization: None,
            format,
            events: events.to_vec(),
            secret: None,
            batch_window: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    fn alert(event: Event, ends: Option<Event>) -> Alert {
        Alert {
            event,
            severity: event.severity(),
            instance: "edge-1".into(),
            message: String::new(),
            labels: Default::default(),
            at: SystemTime::now(),
            ends,
        }
    }

    /// An Alertmanager hook that asked for `upstream_down` alone hears the
    /// `upstream_up` that resolves it; a `json` hook does not.
    #[test]
    fn an_alertmanager_hook_hears_the_recovery_of_what_it_asked_for() {
        let up = alert(Event::UpstreamUp, None);
        let closed = alert(Event::RedisBreakerClosed, None);
        let am = hook(Format::Alertmanager, &[Event::UpstreamDown]);
        assert!(delivers(&am, &up));
        assert!(
            !delivers(&am, &closed),
            "not the recovery of what it asked for"
        );
        assert!(!delivers(&hook(Format::Json, &[Event::UpstreamDown]), &up));
        assert!(delivers(&hook(Format::Json, &[Event::UpstreamUp]), &up));
        // The recovery that ends another event's alert.
        let ends = alert(Event::UpstreamUp, Some(Event::AllUpstreamsDown));
        assert!(delivers(
            &hook(Format::Alertmanager, &[Event::AllUpstreamsDown]),
            &ends
        ));
        assert!(!delivers(&hook(Format::Json, &[]), &ends));
        assert!(!delivers(&am, &ends));
    }
}
