//! `GET /cache?url=ABSOLUTE_OR_PATH`: what is stored for a URL (SPEC §7).
//!
//! The URL is keyed as a GET for it would be (`admin/target.rs`: path
//! normalisation, the matching rule's key options); an absolute URL names
//! one host, a path every host; under a rule that appends header or cookie
//! values, every value's entry. `url` is a form-encoded query parameter
//! (`curl -G --data-urlencode url=/a?b=1`). The answer is JSON:
//!
//! ```json
//! {"url": "/prices", "objects": [{"key": "http://h/prices#c.currency=EUR",
//!   "tiers": ["memory", "redis"],
//!   "variants": [{"vary": {"accept-language": "fr"}, "status": 200,
//!     "age": 12, "ttl": 588, "tags": ["prices"], "soft_purged": false,
//!     "tiers": ["memory", "redis"],
//!     "encodings": [{"coding": "identity", "bytes": 4096},
//!                   {"coding": "br", "bytes": 512}]}]}]}
//! ```
//!
//! `age` and `ttl` are seconds (`ttl` ≤ 0: stale), sizes are body bytes;
//! a variant's `tiers` are those holding it (same Vary values). `404` when
//! no tier holds anything, `503` when memory holds nothing and Redis could
//! not be asked, `400` on a bad `url`. Memory is scanned in full, Redis is
//! read through its path index; at most [`LIMIT`] objects per tier.
//!
//! Behind `[admin] read_token` when it is set, like `/metrics` and
//! `/dashboard` (SPEC §9); keys can hold request cookie and header values
//! (`key.cookies`, `key.headers`), which is one more reason to set it.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::json_response;
use crate::cache::entry::{Object, Variant};
use crate::cache::freshness::{self, now_millis, Millis};
use crate::cache::Tier;
use crate::proxy::body::ProxyBody;
use crate::proxy::Shared;

/// Objects read per tier, at most.
pub const LIMIT: usize = 100;

pub async fn handle<B>(shared: &Shared, req: &Request<B>) -> Response<ProxyBody> {
    let config = shared.runtime.load().config.clone();
    let Some(url) = query_url(req.uri().query()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "expected ?url=ABSOLUTE_URL_OR_PATH" }),
        );
    };
    let target = match super::target::key_target(&config.rules, &url) {
        Ok(t) => t,
        Err(e) => {
            return json_response(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() }))
        }
    };
    let Ok(selector) = target.purge().selector() else {
        return json_response(StatusCode::BAD_REQUEST, &json!({ "error": "invalid url" }));
    };
    let (memory, redis) = shared.cache.find(&selector, LIMIT).await;
    let mut found: Vec<(Arc<Object>, Tier)> = memory
        .into_iter()
        .filter(|o| target.selects(&o.key))
        .map(|o| (o, Tier::Memory))
        .collect();
    let mut redis_error = None;
    match redis {
        Some(Ok(objects)) => {
            found.extend(
                objects
                    .into_iter()
                    .filter(|o| target.selects(&o.key))
                    .map(|o| (o, Tier::Redis)),
            );
        }
        Some(Err(e)) => redis_error = Some(e.to_string()),
        None => {}
    }
    if found.is_empty() {
        return match redis_error {
            Some(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "url": url, "error": format!("nothing in memory, and {e}") }),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "url": url, "error": "nothing stored" }),
            ),
        };
    }
    let mut body = json!({ "url": url, "objects": describe(&found, now_millis()) });
    if let Some(e) = redis_error {
        body["redis_error"] = json!(e);
    }
    json_response(StatusCode::OK, &body)
}

/// One JSON object per key, each variant with the tiers holding it
/// (matched by Vary values; memory's copy is shown when both hold one).
fn describe(found: &[(Arc<Object>, Tier)], now: Millis) -> Vec<Value> {
    let mut keys: Vec<&str> = found.iter().map(|(o, _)| o.key.url()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let mut variants: Vec<(&Variant, Vec<&str>)> = Vec::new();
            let mut tiers = Vec::new();
            for (o, tier) in found.iter().filter(|(o, _)| o.key.url() == key) {
                tiers.push(tier.as_str());
                for v in &o.variants {
                    match variants.iter_mut().find(|(seen, _)| seen.vary == v.vary) {
                        Some((_, t)) => t.push(tier.as_str()),
                        None => variants.push((v, vec![tier.as_str()])),
                    }
                }
            }
            let variants: Vec<Value> = variants
                .into_iter()
                .map(|(v, tiers)| variant(v, &tiers, now))
                .collect();
            json!({ "key": key, "tiers": tiers, "variants": variants })
        })
        .collect()
}

fn variant(v: &Variant, tiers: &[&str], now: Millis) -> Value {
    let vary: Map<String, Value> = v
        .vary
        .0
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), json!(value)))
        .collect();
    let mut encodings = vec![json!({ "coding": "identity", "bytes": v.body.len() })];
    encodings.extend(
        v.encoded
            .iter()
            .map(|e| json!({ "coding": e.coding.as_str(), "bytes": e.body.len() })),
    );
    json!({
        "vary": vary,
        "status": v.status.as_u16(),
        "age": freshness::current_age(&v.times, now),
        "ttl": v.reported_ttl(now),
        "tags": v.tags,
        "soft_purged": v.soft_purged,
        "tiers": tiers,
        "encodings": encodings,
    })
}

/// The `url` parameter, decoded as a form field (`form_urlencoded`).
fn query_url(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned())
        .filter(|u| !u.is_empty())
}
