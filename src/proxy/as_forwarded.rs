//! A request as the origin receives it, for `Vary` (RFC 9111 §4.1: a
//! stored response is selected by the nominated fields of the request it
//! answered, and the only request an origin's `Vary` can describe is the
//! one it received).
//!
//! Strata sets some fields itself on the way upstream
//! ([`super::forward::forward_fields`]): `X-Forwarded-For`, `Forwarded`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host` from the connection (the
//! peer address, the listener's scheme, `server.trusted_proxies`), `Via`
//! by the client's HTTP version, `Host` from an absolute-form target, and
//! an HTTP/1.0 `Expect` goes. Their values upstream are not a function of
//! what the client wrote: two clients sending the same (usually none) get
//! different values upstream, and an origin answering `Vary:
//! X-Forwarded-For` (per-client content) or `Vary: X-Forwarded-Proto` (an
//! http → https redirect) must not have one's response served to the
//! other. [`AsForwarded`] reads those fields as they are sent, and every
//! other field as the client sent it: fields Strata only removes
//! (`server.strip_request_headers`, the sticky cookie, hop-by-hop and
//! `Connection`-nominated ones, removed before this is read) go upstream
//! as the same value for every client, so a variant keyed by the client's
//! value only splits the cache, never serves another's response.
//!
//! Lazy: the forwarded values are computed (into a map of a few fields)
//! only when a stored variant's `Vary` names one of these fields, and once
//! per view. The hit path otherwise pays one name comparison per `Vary`
//! member.

use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Uri, Version};

use super::{forward, headers, ConnInfo};
use crate::cache::vary::{normalized, RequestFields};
use crate::config::ServerConfig;

/// A request's fields as the origin receives them (see the module doc).
pub struct AsForwarded<'a> {
    headers: &'a HeaderMap,
    uri: &'a Uri,
    version: Version,
    conn: ConnInfo,
    server: &'a ServerConfig,
    /// The rewritten fields as they are sent, once a `Vary` asks for one.
    rewritten: OnceLock<HeaderMap>,
}

impl<'a> AsForwarded<'a> {
    /// The view of `req`, received on `conn`, forwarded under `server`.
    pub fn new<B>(req: &'a Request<B>, conn: ConnInfo, server: &'a ServerConfig) -> Self {
        AsForwarded::of_parts(req.uri(), req.headers(), req.version(), conn, server)
    }

    /// The view of a request's parts.
    pub fn of_parts(
        uri: &'a Uri,
        headers: &'a HeaderMap,
        version: Version,
        conn: ConnInfo,
        server: &'a ServerConfig,
    ) -> Self {
        AsForwarded {
            headers,
            uri,
            version,
            conn,
            server,
            rewritten: OnceLock::new(),
        }
    }

    /// The rewritten fields of the request, as they go upstream: the
    /// client's values of those fields run through the same rewriting as
    /// the request itself.
    fn rewritten(&self) -> &HeaderMap {
        self.rewritten.get_or_init(|| {
            let mut fields = HeaderMap::new();
            for (name, value) in self.headers {
                if rewritten_field(name) {
                    fields.append(name.clone(), value.clone());
                }
            }
            let authority = forward::target_host(self.uri);
            forward::forward_fields(
                &mut fields,
                authority,
                self.version,
                self.conn,
                self.server,
                false,
            );
            fields
        })
    }
}

impl RequestFields for AsForwarded<'_> {
    fn vary_value(&self, name: &HeaderName) -> Option<String> {
        if rewritten_field(name) {
            normalized(self.rewritten(), name)
        } else {
            normalized(self.headers, name)
        }
    }
}

/// Whether Strata sets or rewrites `name` from something other than the
/// field's own value on the way upstream: the forwarding fields (any
/// `X-Forwarded-*` and `Forwarded`, see [`headers::forwarding_field`]),
/// `Via`, `Host` and `Expect`.
fn rewritten_field(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::VIA
        || name == header::EXPECT
        || headers::forwarding_field(name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The `[server]` of a configuration trusting `trusted` (a TOML list).
    fn server(trusted: &str) -> ServerConfig {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = {trusted}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nservers = [\"127.0.0.1:1\"]\n"
        );
        crate::config::Config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .server
    }

    fn conn(peer: &str, https: bool) -> ConnInfo {
        ConnInfo::new(format!("{peer}:5000").parse().unwrap(), https)
    }

    fn request(fields: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::builder()
            .uri("/x")
            .header(header::HOST, "shop.example")
            .body(())
            .unwrap();
        for (n, v) in fields {
            req.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        req
    }

    #[test]
    fn rewritten_fields_read_as_sent() {
        let s = server("[]");
        let xff = HeaderName::from_static("x-forwarded-for");
        let proto = HeaderName::from_static("x-forwarded-proto");
        let req = request(&[("x-forwarded-for", "10.9.9.9"), ("accept-language", "fr")]);
        let a = AsForwarded::new(&req, conn("127.0.0.2", false), &s);
        assert_eq!(a.vary_value(&xff).as_deref(), Some("127.0.0.2"));
        assert_eq!(a.vary_value(&proto).as_deref(), Some("http"));
        assert_eq!(
            a.vary_value(&header::FORWARDED).as_deref(),
            Some("for=127.0.0.2;host=shop.example;proto=http")
        );
        assert_eq!(a.vary_value(&header::VIA).as_deref(), Some("1.1 strata"));
        // Other fields as the client sent them; an untrusted client's own
        // X-Forwarded-Scheme never reaches the origin.
        let lang = HeaderName::from_static("accept-language");
        assert_eq!(a.vary_value(&lang).as_deref(), Some("fr"));
        let scheme = HeaderName::from_static("x-forwarded-scheme");
        let req = request(&[("x-forwarded-scheme", "https")]);
        let a = AsForwarded::new(&req, conn("127.0.0.2", true), &s);
        assert_eq!(a.vary_value(&scheme), None);
        assert_eq!(a.vary_value(&proto).as_deref(), Some("https"));
    }

    #[test]
    fn a_trusted_proxys_values_are_kept_as_they_are_forwarded() {
        let s = server("[\"127.0.0.0/8\"]");
        let proto = HeaderName::from_static("x-forwarded-proto");
        let xff = HeaderName::from_static("x-forwarded-for");
        let req = request(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let a = AsForwarded::new(&req, conn("127.0.0.3", false), &s);
        assert_eq!(a.vary_value(&proto).as_deref(), Some("https"));
        assert_eq!(a.vary_value(&xff).as_deref(), Some("10.0.0.1, 127.0.0.3"));
    }
}
