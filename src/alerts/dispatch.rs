//! The queue's consumer: fans each alert out to the webhooks that want its
//! event, batches per webhook for its `batch_window` (from the batch's
//! first alert), then hands each batch to a delivery task. At most
//! [`IN_FLIGHT`] deliveries run at once; every alert of a batch is counted
//! in `strata_alerts_total{event,result}` as `sent` or `failed` (all
//! [`TRIES`](super::deliver::TRIES) failed: dropped).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::deliver::{redacted, Sender};
use super::{payload, Alert, AlertsConfig, Format, WebhookConfig};
use crate::metrics::Metrics;

/// Deliveries running at once (each holds at most one connection).
pub const IN_FLIGHT: usize = 8;

/// Alerts in one request at most; a fuller batch goes out at once.
pub const MAX_BATCH: usize = 100;

/// Base of the retry backoff: tries at 0, 0.5 s and 1.5 s.
const BACKOFF: Duration = Duration::from_millis(500);

struct Batch {
    hook: WebhookConfig,
    alerts: Vec<Alert>,
    due: Instant,
}

/// Runs until every [`Alerts`](super::Alerts) handle is gone.
pub async fn run(
    mut rx: mpsc::Receiver<Alert>,
    config: watch::Receiver<Arc<AlertsConfig>>,
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
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batches: Vec<Batch> = Vec::new();
    loop {
        let next_due = batches.iter().map(|b| b.due).min();
        tokio::select! {
            received = rx.recv() => {
                let Some(alert) = received else {
                    for b in batches.drain(..) {
                        send(&sender, &limit, &metrics, b);
                    }
                    return;
                };
                let current = config.borrow().clone();
                let wanted = |h: &&WebhookConfig| {
                    h.wants(alert.event) && (!alert.resolved || h.format == Format::Alertmanager)
                };
                for hook in current.webhooks.iter().filter(wanted) {
                    let i = match batches.iter().position(|b| &b.hook == hook) {
                        Some(i) => i,
                        None => {
                            batches.push(Batch {
                                hook: hook.clone(),
                                alerts: Vec::new(),
                                due: Instant::now() + hook.batch_window,
                            });
                            batches.len() - 1
                        }
                    };
                    batches[i].alerts.push(alert.clone());
                    if batches[i].alerts.len() >= MAX_BATCH {
                        send(&sender, &limit, &metrics, batches.swap_remove(i));
                    }
                }
            }
            _ = sleep_until(next_due) => {
                let now = Instant::now();
                let (due, keep): (Vec<Batch>, Vec<Batch>) =
                    batches.drain(..).partition(|b| b.due <= now);
                batches = keep;
                for b in due {
                    send(&sender, &limit, &metrics, b);
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn send(sender: &Sender, limit: &Arc<Semaphore>, metrics: &Metrics, batch: Batch) {
    let (sender, limit, metrics) = (sender.clone(), limit.clone(), metrics.clone());
    tokio::spawn(async move {
        let Ok(_permit) = limit.acquire_owned().await else {
            return;
        };
        let Batch { hook, alerts, .. } = batch;
        let body = Bytes::from(payload::body(hook.format, &alerts));
        let result = match sender.deliver(&hook, body).await {
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
        for a in &alerts {
            metrics.alert(a.event.as_str(), result);
        }
    });
}
