//! Webhook alerts: what went wrong, told to the operator's chat, pager or
//! Alertmanager without ever slowing a request.
//!
//! The emitting side is an [`Alerts`] handle (a cheap clone): the modules
//! that see a transition — health checks, the Redis breaker, the SIGHUP
//! reload, the ratio and certificate watcher — call [`Alerts::emit`], which
//! is a `try_send` on a bounded queue; a full queue drops the alert and
//! counts it (`strata_alerts_total{result="dropped"}`). Nothing on the hit
//! path emits anything. Every alert is also listed in the dashboard's
//! recent activity ([`Alerts::attach`]).
//!
//! - `alerts/event.rs`: the events, their severities, one [`Alert`].
//! - `alerts/payload.rs`: the `json`, `slack` and `alertmanager` bodies.
//! - `alerts/deliver.rs`: the HTTP(S) client, `Strata-Signature`, retries.
//! - `alerts/dispatch.rs`: the queue's consumer: a queue, batching and
//!   one delivery at a time per webhook.
//! - `alerts/watch.rs`: rolling hit/5xx ratios and certificate expiry.

pub mod deliver;
pub mod dispatch;
pub mod event;
pub mod payload;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch as tokio_watch};

use crate::activity::{Activity, Kind};
use crate::metrics::Metrics;
pub use event::{Alert, Event, Severity};

/// Alerts queued for delivery before new ones are dropped (and counted).
pub const QUEUE: usize = 1024;

/// `[alerts]`: where alerts go and which computed conditions raise them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertsConfig {
    /// The `instance` of every alert; default `hostname:port` of
    /// `server.listen`.
    pub instance: String,
    pub webhooks: Vec<WebhookConfig>,
    pub hit_ratio_low: Option<RatioAlert>,
    pub error_ratio_high: Option<RatioAlert>,
    /// `cert_expiring` fires for certificates that end within this.
    pub cert_expiry: Duration,
}

/// One `[[alerts.webhooks]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// `http://` or `https://` (Mozilla's roots, rustls).
    /// Without userinfo: a `user:password@` written in the URL is taken
    /// out when the config is read and sent as [`Self::authorization`].
    pub url: http::Uri,
    /// `Authorization: Basic` (RFC 7617) from the URL's userinfo, marked
    /// sensitive (its `Debug` shows no secret).
    pub authorization: Option<http::HeaderValue>,
    pub format: Format,
    /// Events sent to this webhook; empty = all.
    pub events: Vec<Event>,
    /// HMAC-SHA256 key for `Strata-Signature`; `None` = unsigned.
    pub secret: Option<String>,
    /// Alerts raised within this window go out in one request.
    pub batch_window: Duration,
    /// Bound on one delivery try (connect to response head).
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn wants(&self, event: Event) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }
}

/// The body shape a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"alerts": [{"event", "severity", "instance", "message", "labels", "at"}]}`.
    Json,
    /// Slack incoming-webhook `{"text": ..., "blocks": [...]}`.
    Slack,
    /// Alertmanager API v2 `POST /api/v2/alerts` body: an array of alerts.
    Alertmanager,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "slack" => Some(Format::Slack),
            "alertmanager" => Some(Format::Alertmanager),
            _ => None,
        }
    }
}

/// `[alerts.hit_ratio_low]` / `[alerts.error_ratio_high]`: a ratio over a
/// rolling `window`, judged only while traffic is at least `min_rps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioAlert {
    /// A fraction, 0.0–1.0.
    pub threshold: f64,
    pub window: Duration,
    /// Requests per second (averaged over the window) below which the
    /// ratio is not judged: three misses at night are not an incident.
    pub min_rps: f64,
}

/// The emitting handle. Cheap to clone; `emit` never blocks or awaits.
#[derive(Clone)]
pub struct Alerts {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Alert>,
    /// The dashboard's recent-activity list, once attached.
    activity: OnceLock<Activity>,
    /// False while no webhook is configured: emitting is then free.
    any_webhook: AtomicBool,
    config: tokio_watch::Sender<Arc<AlertsConfig>>,
    metrics: Metrics,
}

impl Alerts {
    /// A handle that drops everything (unit tests, tools).
    pub fn disabled() -> Alerts {
        Alerts { inner: None }
    }

    /// Starts the dispatcher task (inside a tokio runtime) for `config`.
    pub fn start(config: &AlertsConfig, metrics: Metrics) -> Alerts {
        metrics.alerts_init(Event::ALL.iter().map(|e| e.as_str()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let (config_tx, config_rx) = tokio_watch::channel(Arc::new(config.clone()));
        tokio::spawn(dispatch::run(rx, config_rx, metrics.clone()));
        Alerts {
            inner: Some(Arc::new(Inner {
                tx,
                activity: OnceLock::new(),
                any_webhook: AtomicBool::new(!config.webhooks.is_empty()),
                config: config_tx,
                metrics,
            })),
        }
    }

    /// Applies a reloaded `[alerts]` (webhooks, thresholds); alerts already
    /// batched go out under the old settings.
    pub fn reconfigure(&self, config: &AlertsConfig) {
        if let Some(inner) = &self.inner {
            inner
                .any_webhook
                .store(!config.webhooks.is_empty(), Ordering::Relaxed);
            inner.config.send_replace(Arc::new(config.clone()));
        }
    }

    /// Also lists every alert in `activity` (the dashboard's recent
    /// activity), webhooks or not; the first call wins.
    pub fn attach(&self, activity: Activity) {
        if let Some(inner) = &self.inner {
            let _ = inner.activity.set(activity);
        }
    }

    /// The configuration in force (for the watcher).
    pub fn config(&self) -> Arc<AlertsConfig> {
        match &self.inner {
            Some(inner) => inner.config.borrow().clone(),
            None => Arc::new(AlertsConfig::default()),
        }
    }

    /// Raises `event`. `labels` identify what it is about (e.g.
    /// `server`); they become Alertmanager labels. Never blocks: with the
    /// queue full the alert is dropped and counted.
    pub fn emit(&self, event: Event, message: impl Into<String>, labels: &[(&str, &str)]) {
        self.raise(event, message.into(), labels, None);
    }

    /// Says that `ended`'s condition ended with `recovery` (e.g.
    /// `all_upstreams_down` with an `upstream_up`), to Alertmanager
    /// webhooks that asked for `ended` (they resolve the alert; the other
    /// formats hear `recovery` itself, if they asked for it). `labels` are
    /// those `ended` was raised with. Delivered, it counts as `recovery`
    /// in `strata_alerts_total`, as `recovery`'s own alert does.
    pub fn resolve(
        &self,
        ended: Event,
        recovery: Event,
        message: impl Into<String>,
        labels: &[(&str, &str)],
    ) {
        self.raise(recovery, message.into(), labels, Some(ended));
    }

    fn raise(&self, event: Event, message: String, labels: &[(&str, &str)], ends: Option<Event>) {
        let Some(inner) = &self.inner else { return };
        // A refused reload is listed by the reload itself (its own kind);
        // a resolution is not an alert of its own.
        let listed = ends.is_none() && event != Event::ReloadFailed;
        if let (Some(activity), true) = (inner.activity.get(), listed) {
            activity.record(Kind::Alert, format!("{}: {message}", event.as_str()));
        }
        if !inner.any_webhook.load(Ordering::Relaxed) {
            return;
        }
        let config = inner.config.borrow().clone();
        let alert = Alert {
            event,
            severity: event.severity(),
            instance: config.instance.clone(),
            message,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            at: SystemTime::now(),
            ends,
        };
        match inner.tx.try_send(alert) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a)) => {
                tracing::warn!(event = a.event.as_str(), "alert queue full: alert dropped");
                inner.metrics.alert(a.event.as_str(), "dropped");
            }
        }
    }
}
