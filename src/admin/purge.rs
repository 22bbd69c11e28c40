//! `POST /purge`: `{"url": "..."}`, `{"prefix": "/assets/"}` or
//! `{"tags": ["a", "b"]}`, optionally with `"soft": true` (mark stale
//! instead of removing), with `Authorization: Bearer TOKEN`; answers
//! `{"purged": N}`, plus `"cascaded": M` when cascades ran (`N` counts
//! the cascaded entries too).
//! 401 without the right token (and, with no `admin.token` configured,
//! for every request), 400 on a bad body.
//!
//! A `url` is normalised like a request's path and keyed with the
//! matching rule's key options (`admin/target.rs`); under a rule that
//! appends header or cookie values it purges every value's entry.

use super::bad_request as bad;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{auth, json_response};
use crate::activity::Kind;
use crate::cache::Purge;
use crate::proxy::body::ProxyBody;
use crate::proxy::Shared;

/// Purge bodies are tiny; anything larger is refused.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    url: Option<String>,
    prefix: Option<String>,
    tags: Option<Vec<String>>,
    #[serde(default)]
    soft: bool,
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let token = shared.runtime.load().config.admin.token.clone();
    let Some(token) = token else {
        return auth::disabled("purge");
    };
    if !auth::may_write(&req, &token) {
        return auth::unauthorized(&req);
    }
    let body = match super::read_body(shared, req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let parsed: PurgeBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        // An array or a scalar: serde's message would name the Rust type.
        Err(_) if !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) => {
            return bad(
                "expected a JSON object: {\"url\": \"/path\"}, {\"prefix\": \"/path/\"} or {\"tags\": [\"tag\"]}, optionally with \"soft\": true",
            )
        }
        Err(e) => return bad(&format!("invalid JSON: {e}")),
    };
    let soft = parsed.soft;
    let purge = match parsed {
        PurgeBody {
            url: Some(url),
            prefix: None,
            tags: None,
            ..
        } if !url.is_empty() => {
            // Keyed as a GET for it would be (SPEC §7, §10).
            match super::target::key_target(&shared.runtime.load().config.rules, &url) {
                Ok(target) => target.purge(),
                Err(e) => return bad(&e.to_string()),
            }
        }
        PurgeBody {
            url: None,
            prefix: Some(prefix),
            tags: None,
            ..
        // The escapes normalised as request paths' are (SPEC §10), so
        // `/x%2f` selects what `/x%2F…` stored; dot segments are not
        // resolved (that would change what a prefix selects).
        } if !prefix.is_empty() => {
            if let Err(e) = super::target::encoded("prefix", &prefix) {
                return bad(&e.to_string());
            }
            Purge::Prefix(crate::proxy::target::normalize_escapes(&prefix).into_owned())
        }
        PurgeBody {
            url: None,
            prefix: None,
            tags: Some(tags),
            ..
        } if !tags.is_empty() => {
            // Checked as a cascade's `purge_tags` are: a tag with a space or
            // a comma can never be stored, so it would purge nothing.
            let mut checked = Vec::with_capacity(tags.len());
            for (i, t) in tags.iter().enumerate() {
                match crate::cache::tags::checked(t) {
                    Ok(t) => checked.push(t.to_string()),
                    Err(e) => return bad(&format!("tags[{i}]: {e}")),
                }
            }
            Purge::Tags(checked)
        }
        _ => {
            return bad("expected exactly one of {\"url\": ...}, {\"prefix\": ...} or {\"tags\": [...]}, non-empty")
        }
    };
    let runtime = shared.runtime.load_full();
    match shared
        .cache
        .purge(&purge, soft, &runtime.config.invalidation)
        .await
    {
        Ok(p) => {
            let n = p.direct + p.cascaded;
            tracing::info!(
                ?purge,
                soft,
                purged = p.direct,
                cascaded = p.cascaded,
                "purge"
            );
            let how = if soft { "soft-purged" } else { "purged" };
            let cascaded = if p.cascaded > 0 {
                format!(" (+{} by cascade)", p.cascaded)
            } else {
                String::new()
            };
            shared.activity.record(
                Kind::Purge,
                format!("{} → {} {how}{cascaded}", describe(&purge), p.direct),
            );
            // `{"purged": N}` as before; `cascaded` only when cascades ran;
            // `warning` when Redis (so the fleet) could not be purged: this
            // instance's memory was, and the counts are its.
            let mut body = json!({ "purged": n });
            if p.cascaded > 0 {
                body["cascaded"] = json!(p.cascaded);
            }
            if let Some(e) = &p.redis_error {
                tracing::warn!(?purge, error = %e, "purge: Redis and the fleet not purged; this instance's memory was");
                body["warning"] = json!(format!(
                    "{e}: only this instance's memory was purged, not Redis or the other instances"
                ));
            }
            json_response(StatusCode::OK, &body)
        }
        Err(e) => bad(&e.to_string()),
    }
}

/// A one-line account of a purge for the activity list. Queries are
/// shown as `?…`: like the access log, never show what may be a signed
/// URL's credentials.
fn describe(purge: &Purge) -> String {
    use crate::cache::key::loggable;
    match purge {
        Purge::Url(url) => format!("url {}", loggable(url)),
        Purge::Prefix(prefix) => format!("prefix {}", loggable(prefix)),
        Purge::Tags(tags) => format!("tags {}", tags.join(", ")),
    }
}
