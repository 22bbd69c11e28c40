//! `POST /upstreams/drain` and `POST /upstreams/undrain` with
//! `{"server": "host:port"}` and `Authorization: Bearer TOKEN`: a drained
//! server gets no new requests (sticky clients move to another server and
//! get a new cookie) while its in-flight requests finish; `/health` shows
//! it with `"draining": true`. Answers `{"server": ..., "draining": bool,
//! "changed": bool}`; 401 without the right token, 400 on a bad body, 404
//! for a server that is not configured. Drain state survives a reload for
//! servers that stay configured.

use super::bad_request as bad;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::auth;
use super::json_response;
use crate::proxy::body::ProxyBody;
use crate::proxy::Shared;

const MAX_BODY: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    server: String,
}

/// Handles drain (`draining = true`) and undrain.
pub async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    draining: bool,
) -> Response<ProxyBody> {
    let token = shared.runtime.load().config.admin.token.clone();
    let Some(token) = token else {
        return auth::disabled(if draining { "drain" } else { "undrain" });
    };
    if !auth::may_write(&req, &token) {
        return auth::unauthorized(&req);
    }
    let body = match super::read_body(shared, req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let parsed: DrainBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad(&format!(
                "invalid JSON, expected {{\"server\": \"host:port\"}}: {e}"
            ))
        }
    };
    let server = parsed.server.trim();
    if server.is_empty() {
        return bad("expected {\"server\": \"host:port\"}");
    }
    let upstreams = shared.runtime.load().upstreams.clone();
    match upstreams.set_draining(server, draining) {
        Some(was) => json_response(
            StatusCode::OK,
            &json!({ "server": server, "draining": draining, "changed": was != draining }),
        ),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no configured upstream server {server:?}") }),
        ),
    }
}
