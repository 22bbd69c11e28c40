//! Request bodies for a batch of alerts, one function per webhook format.
//!
//! - `json`: `{"alerts": [{"event", "severity", "instance", "message",
//!   "labels", "at"}]}` with `at` in RFC 3339 UTC.
//! - `slack`: an incoming-webhook message, `{"text", "blocks"}`; `text` is
//!   the whole batch in one mrkdwn string (what notifications show).
//! - `alertmanager`: the body of Alertmanager's `POST /api/v2/alerts`, an
//!   array of `{"labels", "annotations", "startsAt"}` where `labels` holds
//!   `alertname` (the event), `severity`, `instance` and the alert's own
//!   labels. A recovery (`upstream_up`, `redis_breaker_closed`) is sent as
//!   the alert it ends, with `endsAt`, so Alertmanager resolves it; so is
//!   a recovery that ends another event's alert ([`Alert::ends`]: the
//!   first `upstream_up` ends `all_upstreams_down`). `annotations.event`
//!   names the recovery.

use serde_json::{json, Map, Value};

use super::event::{rfc3339, Alert};
use super::Format;

/// The body for `alerts` in `format` (never empty: callers batch ≥ 1).
pub fn body(format: Format, alerts: &[Alert]) -> Vec<u8> {
    let value = match format {
        Format::Json => json_body(alerts),
        Format::Slack => slack_body(alerts),
        Format::Alertmanager => alertmanager_body(alerts),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

fn json_body(alerts: &[Alert]) -> Value {
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            json!({
                "event": a.event.as_str(),
                "severity": a.severity.as_str(),
                "instance": a.instance,
                "message": a.message,
                "labels": a.labels,
                "at": rfc3339(a.at),
            })
        })
        .collect();
    json!({ "alerts": list })
}

fn slack_body(alerts: &[Alert]) -> Value {
    let line = |a: &Alert| {
        let mark = match a.severity {
            super::Severity::Critical => ":red_circle:",
            super::Severity::Warning => ":warning:",
            super::Severity::Info => ":white_check_mark:",
        };
        format!(
            "{mark} *{}* on `{}`: {}",
            a.event.as_str(),
            a.instance,
            a.message
        )
    };
    let text = alerts.iter().map(line).collect::<Vec<_>>().join("\n");
    let blocks: Vec<Value> = alerts
        .iter()
        .map(|a| json!({"type": "section", "text": {"type": "mrkdwn", "text": line(a)}}))
        .collect();
    json!({ "text": text, "blocks": blocks })
}

fn alertmanager_body(alerts: &[Alert]) -> Value {
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let ends = a.ends.or(a.event.resolves());
            let name = ends.unwrap_or(a.event);
            let mut labels = Map::new();
            for (k, v) in &a.labels {
                labels.insert(k.clone(), Value::String(v.clone()));
            }
            labels.insert("alertname".into(), name.as_str().into());
            labels.insert("severity".into(), name.severity().as_str().into());
            labels.insert("instance".into(), a.instance.clone().into());
            labels.insert("job".into(), "strata".into());
            let at = rfc3339(a.at);
            let mut alert = json!({
                "labels": labels,
                "annotations": { "summary": a.message, "event": a.event.as_str() },
                "startsAt": at,
            });
            if ends.is_some() {
                // The alert it ends started earlier; Alertmanager keeps
                // that start and takes the end from here.
                if let Some(o) = alert.as_object_mut() {
                    o.remove("startsAt");
                    o.insert("endsAt".into(), Value::String(rfc3339(a.at)));
                }
            }
            alert
        })
        .collect();
    Value::Array(list)
}
