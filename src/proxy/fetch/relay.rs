//! Answering the request that triggered a cache fetch from a response
//! relayed without being stored (not storable, larger than
//! `max_object_size`, no room to collect it). The fetch went upstream
//! without the client's preconditions and range ([`CLIENT_CONDITIONALS`]),
//! so Strata evaluates them against this response as its origin would
//! have, the answer the same request gets once the URL is hit-for-miss
//! and they are forwarded: RFC 9110 §13.2.2's order (`If-Match`,
//! `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`) for GET
//! and HEAD, then `If-Range` and one byte range, cut from the stream when
//! its length is known (§14.2). Otherwise the whole response streams,
//! compressed for the client where SPEC §3 says so.
//!
//! [`CLIENT_CONDITIONALS`]: super::exchange::CLIENT_CONDITIONALS

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};

use super::super::body::ProxyBody;
use super::super::cache_status::CacheStatus;
use super::super::range::{self, RangeOutcome};
use super::super::validate::Field;
use super::super::{forward, headers, stored, Answered, RequestCtx};
use super::{served, streamed, would_compress};
use crate::compression;

/// The client's preconditions, evaluated by [`preconditions`].
const PRECONDITIONS: [header::HeaderName; 4] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// The answer to `req` from `rparts` and `body`, a response the cache
/// fetched for it and does not store (`status`: its `Cache-Status`).
pub(super) fn relay(
    ctx: &RequestCtx<'_>,
    req: &Request<()>,
    rparts: http::response::Parts,
    body: ProxyBody,
    status: CacheStatus,
) -> Answered {
    // Whether the `200` varies on Accept-Encoding (every coding's answer
    // carries `Vary`, identity's too), and whether this one is encoded.
    let varies = ctx
        .runtime
        .config
        .compression
        .as_ref()
        .is_some_and(|p| would_compress(p, rparts.status, &rparts.headers));
    let compressing = ctx.coding.is_some() && varies;
    // Most requests carry no precondition and no range.
    if ctx.present.has(Field::Conditional) {
        if let Some(mut resp) = preconditions(ctx, req, &rparts) {
            if let Some(served) = served(&rparts) {
                resp.extensions_mut().insert(served.clone());
            }
            return Answered::new(resp, status);
        }
        match single_range(req, &rparts, compressing) {
            // The `Vary` of the `200` they are cut from (RFC 9110 §15.3.7).
            Some((len, RangeOutcome::Single(first, last))) => {
                let mut resp = range::partial_stream(rparts, body, first, last, len);
                if varies {
                    compression::merge_vary_accept_encoding(resp.headers_mut());
                }
                return Answered::new(resp, status);
            }
            Some((len, RangeOutcome::Unsatisfiable)) => {
                let mut resp = range::unsatisfiable(&rparts.headers, len, 0);
                resp.headers_mut().remove(header::AGE);
                if varies {
                    compression::merge_vary_accept_encoding(resp.headers_mut());
                }
                if let Some(served) = served(&rparts) {
                    resp.extensions_mut().insert(served.clone());
                }
                return Answered::new(resp, status);
            }
            Some((_, RangeOutcome::Ignore)) | None => {}
        }
    }
    let mut answered = streamed(ctx, rparts, body, status);
    if req.method() == Method::HEAD {
        // The GET's fields (its encoding too), no body.
        *answered.response.body_mut() = ProxyBody::empty();
    }
    answered
}

/// The `304` or `412` the client's preconditions call for against the
/// relayed response, if any. Its tags of Strata's encodings are mapped
/// back to the origin's first (as for a request forwarded upstream,
/// `forward::unmap_etags`), and a `304` carries the encoded tag the client
/// holds and the `Vary` the `200` would have.
fn preconditions(
    ctx: &RequestCtx<'_>,
    req: &Request<()>,
    rparts: &http::response::Parts,
) -> Option<Response<ProxyBody>> {
    let mut conditions = HeaderMap::new();
    for name in PRECONDITIONS {
        for value in req.headers().get_all(&name) {
            conditions.append(name.clone(), value.clone());
        }
    }
    if conditions.is_empty() {
        return None;
    }
    let compression = ctx.runtime.config.compression.as_ref();
    if let Some(policy) = compression {
        forward::unmap_etags(&mut conditions, policy, ctx.coding);
    }
    let mut resp =
        stored::preconditions(rparts.status, &rparts.headers, &conditions, req.method())?;
    let compressed = compression.is_some_and(|p| would_compress(p, rparts.status, &rparts.headers));
    if resp.status() == StatusCode::NOT_MODIFIED && compressed {
        compression::merge_vary_accept_encoding(resp.headers_mut());
        if let (Some(coding), Some(inm)) = (ctx.coding, req.headers().get(header::IF_NONE_MATCH)) {
            forward::encoded_not_modified(&mut resp, inm, coding);
        }
    }
    Some(resp)
}

/// The client's single byte range of a relayed `200` (RFC 9110 §14.2),
/// with the response's length: only for a GET, when the length is known
/// before the body (`Content-Length`), the response sent as it came (not
/// encoded for this client on the fly: its length is unknown) and carries
/// no weak `ETag` (§14.1.1: a client could not tell these bytes from
/// another version's), and `If-Range`, if any, holds.
fn single_range(
    req: &Request<()>,
    rparts: &http::response::Parts,
    compressing: bool,
) -> Option<(u64, RangeOutcome)> {
    if req.method() != Method::GET || rparts.status != StatusCode::OK || compressing {
        return None;
    }
    let value = range::range_field(req.headers())?;
    let len = headers::content_length(&rparts.headers)?;
    let weak = rparts
        .headers
        .get(header::ETAG)
        .is_some_and(|tag| tag.as_bytes().starts_with(b"W/"));
    if weak
        || rparts.headers.contains_key(header::CONTENT_RANGE)
        || !range::if_range_holds(&rparts.headers, req.headers(), true)
    {
        return None;
    }
    Some((len, range::parse_range(value, len)))
}
