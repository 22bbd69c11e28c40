//! Bearer tokens on the admin API (RFC 6750 §2.1 `Authorization: Bearer
//! TOKEN`): `[admin] token` for `POST /purge` and the drain endpoints
//! (`401` for every request while it is unset), `[admin] read_token` (or
//! `token`) for the read endpoints when a read token is set.
//!
//! The read endpoints also take the token as the password of HTTP Basic
//! authentication (RFC 7617, any user name), and their `401` offers it: a
//! browser cannot add a bearer header to a page load or to an
//! `EventSource`, but it prompts for Basic credentials and then sends them
//! with `/dashboard` and `/events` itself.
//!
//! A wrong token is logged (method and path, never the token; the first
//! and every 100th at warn), so that guessing shows.
//!
//! Tokens are compared in constant time with the `subtle` crate, the
//! length included: the loop runs over the bytes the client sent (which it
//! knows), never over the secret, so neither the secret's bytes nor its
//! length show in the timing.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use subtle::{Choice, ConstantTimeEq};

use crate::config::AdminConfig;
use crate::proxy::body::ProxyBody;

/// The token of an `Authorization: Bearer TOKEN` header, if any (scheme
/// case-insensitive, surrounding spaces ignored).
pub fn bearer<B>(req: &Request<B>) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, given) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| given.trim().as_bytes())
}

/// The password of an `Authorization: Basic` header (RFC 7617 §2:
/// base64 of `user-id ":" password`), if any.
pub fn basic_password<B>(req: &Request<B>) -> Option<Vec<u8>> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// `given == expected`, in time that depends only on `given.len()`.
pub fn token_eq(given: &[u8], expected: &[u8]) -> bool {
    if expected.is_empty() {
        // Config validation refuses empty tokens; never match one.
        return false;
    }
    let same_len = (given.len() as u64).ct_eq(&(expected.len() as u64));
    let bytes = given
        .iter()
        .enumerate()
        .fold(Choice::from(1), |acc, (i, g)| {
            acc & g.ct_eq(&expected[i % expected.len()])
        });
    bool::from(same_len & bytes)
}

/// May this request use a read endpoint? Yes when no `read_token` is set;
/// else it needs `read_token` or `token` as its bearer token or Basic
/// password.
pub fn may_read<B>(req: &Request<B>, admin: &AdminConfig) -> bool {
    admin.read_token.is_none() || read_credential(req).is_some_and(|c| allows_read(&c, admin))
}

/// The token a read request carries (bearer, else Basic password), kept
/// by an `/events` stream to check it again after a reload.
pub fn read_credential<B>(req: &Request<B>) -> Option<Vec<u8>> {
    bearer(req)
        .map(<[u8]>::to_vec)
        .or_else(|| basic_password(req))
}

/// Whether `given` opens the read endpoints under `admin` (any token does
/// when no `read_token` is set).
pub fn allows_read(given: &[u8], admin: &AdminConfig) -> bool {
    let Some(read) = &admin.read_token else {
        return true;
    };
    // Both compared, always, so the timing does not tell which matched.
    let with_read = token_eq(given, read.as_bytes());
    let with_admin = admin
        .token
        .as_deref()
        .is_some_and(|t| token_eq(given, t.as_bytes()));
    with_read | with_admin
}

/// May this request purge? It needs `token` as its bearer token.
pub fn may_write<B>(req: &Request<B>, token: &str) -> bool {
    bearer(req).is_some_and(|given| token_eq(given, token.as_bytes()))
}

/// `401` for a missing or wrong token: `WWW-Authenticate: Bearer
/// realm="strata-admin"`, with `error="invalid_token"` when the request
/// carried a bearer token (RFC 6750 §3.1: no error code when it carried
/// none), and a JSON `{"error": ...}` body with `Cache-Control: no-store`,
/// as `/purge` answers a bad body.
pub fn unauthorized<B>(req: &Request<B>) -> Response<ProxyBody> {
    refused(req, false)
}

/// [`unauthorized`]; "wrong token" only when the request carried one this
/// endpoint takes (a bearer token; for a read endpoint, `basic`, a Basic
/// password too), else "missing token", saying so when the
/// `Authorization` field uses another scheme (`Basic` on `/purge`,
/// `Token ...`): it said "wrong token" for a right token in the wrong
/// scheme.
fn refused<B>(req: &Request<B>, basic: bool) -> Response<ProxyBody> {
    let field = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let empty_bearer = bearer(req).is_some_and(<[u8]>::is_empty)
        || field.is_some_and(|f| f.eq_ignore_ascii_case("bearer"));
    let given = bearer(req).is_some() || (basic && basic_password(req).is_some());
    if given && !empty_bearer {
        wrong_token(req);
    }
    let message = if empty_bearer {
        // What `curl -H "Authorization: Bearer $TOKEN"` sends with TOKEN unset.
        "missing token: the Bearer token sent is empty"
    } else if given {
        "wrong token"
    } else if req.headers().contains_key(header::AUTHORIZATION) {
        "missing token: send Authorization: Bearer TOKEN (the Authorization field sent uses another scheme)"
    } else {
        "missing token: send Authorization: Bearer TOKEN"
    };
    let mut r = super::json_response(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": message }),
    );
    let challenge = if bearer(req).is_some() {
        "Bearer realm=\"strata-admin\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"strata-admin\""
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

/// Logs a request refused for a wrong token (never the token): the first
/// and then every 100th at warn, the rest at debug, so that token guessing
/// shows in the log without flooding it. It left no trace at any level.
fn wrong_token<B>(req: &Request<B>) {
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    let (method, path) = (req.method().as_str(), req.uri().path());
    if n == 1 || n.is_multiple_of(100) {
        tracing::warn!(
            method,
            path,
            refused_so_far = n,
            "admin: request refused for a wrong token"
        );
    } else {
        tracing::debug!(
            method,
            path,
            refused_so_far = n,
            "admin: request refused for a wrong token"
        );
    }
}

/// `401` for a mutating endpoint (`what`: "purge", "drain") while no
/// `[admin] token` is configured: SPEC §4 says `401` without the token,
/// and none can be right. `WWW-Authenticate: Bearer` as for a wrong token
/// (RFC 6750 §3), with a JSON body saying why no token will do.
pub fn disabled(what: &str) -> Response<ProxyBody> {
    let mut r = super::json_response(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({
            "error": format!("{what} is disabled: no admin.token configured")
        }),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"strata-admin\""),
    );
    r
}

/// `401` for a read endpoint: offers Bearer and Basic (so that a browser
/// prompts for the token).
pub fn unauthorized_read<B>(req: &Request<B>) -> Response<ProxyBody> {
    let mut r = refused(req, true);
    r.headers_mut().append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"strata-admin\", charset=\"UTF-8\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(token_eq(b"secret", b"secret"));
        assert!(!token_eq(b"secreT", b"secret"));
        assert!(!token_eq(b"secret-and-more", b"secret"));
        assert!(!token_eq(b"secretsecret", b"secret"));
        assert!(!token_eq(b"sec", b"secret"));
        assert!(!token_eq(b"", b"secret"));
        assert!(!token_eq(b"", b""));
    }

    #[test]
    fn parses_bearer() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&Request::new(())), None);
        // "any:to:ken" → password "to:ken" (RFC 7617: the user id has no colon).
        assert_eq!(
            basic_password(&req("Basic YW55OnRvOmtlbg==")),
            Some(b"to:ken".to_vec())
        );
        assert_eq!(basic_password(&req("Basic !!")), None);
        assert_eq!(basic_password(&req("Bearer YW55OnRva2Vu")), None);
    }
}
