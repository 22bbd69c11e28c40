//! `POST /purge`: `{"url": "..."}`, `{"prefix": "/assets/"}` or
//! `{"tags": ["a", "b"]}` with `Authorization: Bearer TOKEN`; answers
//! `{"purged": N}`. 401 without the right token, 400 on a bad body.

use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{json_response, text};
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
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let token = shared.runtime.load().config.admin.token.clone();
    let Some(token) = token else {
        return text(
            StatusCode::FORBIDDEN,
            "purge is disabled: no admin.token configured\n",
        );
    };
    if !authorized(&req, &token) {
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"strata-admin\""),
        );
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("body too large or unreadable"),
    };
    let parsed: PurgeBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad(&format!("invalid JSON: {e}")),
    };
    let purge = match parsed {
        PurgeBody {
            url: Some(url),
            prefix: None,
            tags: None,
        } if !url.is_empty() => Purge::Url(url),
        PurgeBody {
            url: None,
            prefix: Some(prefix),
            tags: None,
        } if !prefix.is_empty() => Purge::Prefix(prefix),
        PurgeBody {
            url: None,
            prefix: None,
            tags: Some(tags),
        } if !tags.is_empty() && tags.iter().all(|t| !t.trim().is_empty()) => Purge::Tags(tags),
        _ => {
            return bad("expected exactly one of {\"url\": ...}, {\"prefix\": ...} or {\"tags\": [...]}, non-empty")
        }
    };
    match shared.cache.purge(&purge).await {
        Ok(n) => {
            tracing::info!(?purge, purged = n, "purge");
            json_response(StatusCode::OK, &json!({ "purged": n }))
        }
        Err(e) => bad(&e.to_string()),
    }
}

fn bad(reason: &str) -> Response<ProxyBody> {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": reason }))
}

/// Constant-time comparison of the bearer token.
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
