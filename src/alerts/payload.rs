//! Request bodies for a batch of alerts, one function per webhook format.
//!
//! - `json`: `{"alerts": [{"event", "severity", "instance", "message",
//!   "labels", "at"}]}` with `at` in RFC 3339 UTC, the keys in that order
//!   (SPEC §9; a consumer may match the text).
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

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::event::{rfc3339, Alert};
use super::Format;

/// The body for `alerts` in `format` (never empty: callers batch ≥ 1).
pub fn body(format: Format, alerts: &[Alert]) -> Vec<u8> {
    let encoded = match format {
        Format::Json => serde_json::to_vec(&json_body(alerts)),
        Format::Slack => serde_json::to_vec(&slack_body(alerts)),
        Format::Alertmanager => serde_json::to_vec(&alertmanager_body(alerts)),
    };
    encoded.unwrap_or_default()
}

/// The `json` body. Structs, not `json!`: serde_json's map sorts its keys,
/// and SPEC §9 gives the order, which the fields' order keeps.
#[derive(Serialize)]
struct JsonBody<'a> {
    alerts: Vec<JsonAlert<'a>>,
}

#[derive(Serialize)]
struct JsonAlert<'a> {
    event: &'static str,
    severity: &'static str,
    instance: &'a str,
    message: &'a str,
    labels: &'a BTreeMap<String, String>,
    at: String,
}

fn json_body(alerts: &[Alert]) -> JsonBody<'_> {
    let alerts = alerts
        .iter()
        .map(|a| JsonAlert {
            event: a.event.as_str(),
            severity: a.severity.as_str(),
            instance: &a.instance,
            message: &a.message,
            labels: &a.labels,
            at: rfc3339(a.at),
        })
        .collect();
    JsonBody { alerts }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::alerts::{Event, Severity};

    /// SPEC §9 gives the `json` alert's keys in an order; the text keeps
    /// it (serde_json's map had sorted them: `at` first).
    #[test]
    fn json_alert_keys_follow_the_spec_order() {
        let alert = Alert {
            event: Event::UpstreamDown,
            severity: Severity::Warning,
            instance: "edge-1".into(),
            message: "upstream 127.0.0.1:3001 is out of rotation".into(),
            labels: BTreeMap::from([("server".to_string(), "127.0.0.1:3001".to_string())]),
            at: UNIX_EPOCH + Duration::from_secs(1_796_234_833),
            ends: None,
        };
        let body = String::from_utf8(body(Format::Json, &[alert])).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"alerts":[{"event":"upstream_down","severity":"warning","instance":"edge-1","#,
                r#""message":"upstream 127.0.0.1:3001 is out of rotation","#,
                r#""labels":{"server":"127.0.0.1:3001"},"at":"2026-12-02T18:07:13Z"}]}"#
            )
        );
    }
}
