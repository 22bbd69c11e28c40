//! Bearer tokens on the admin API (RFC 6750 §2.1 `Authorization: Bearer
//! TOKEN`): `[admin] token` for `POST /purge`, `[admin] read_token` (or
//! `token`) for the read endpoints when a read token is set.
//!
//! Tokens are compared in constant time with the `subtle` crate, the
//! length included: the loop runs over the bytes the client sent (which it
//! knows), never over the secret, so neither the secret's bytes nor its
//! length show in the timing.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use subtle::{Choice, ConstantTimeEq};

use super::text;
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
/// else it needs `read_token` or `token` as its bearer token.
pub fn may_read<B>(req: &Request<B>, admin: &AdminConfig) -> bool {
    let Some(read) = &admin.read_token else {
        return true;
    };
    let Some(given) = bearer(req) else {
        return false;
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

/// `401` with `WWW-Authenticate: Bearer` (RFC 6750 §3).
pub fn unauthorized() -> Response<ProxyBody> {
    let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"strata-admin\""),
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
    }
}
