//! The access log: one structured tracing event per client request, target
//! `strata::access`, written with the rest of the logs (text or JSON), or
//! with `[log] access_format = "combined"` one nginx/Apache combined line
//! (`$remote_addr - - [$time_local] "$request" $status $body_bytes_sent
//! "$http_referer" "$http_user_agent"`) as the event's message.
//! `[log] access_log = false` turns it off (reloadable).
//!
//! The path is logged without its query: query strings routinely carry
//! credentials (signed-URL signatures, API keys, reset tokens), and a log
//! is read by more people than the traffic it records. No header value and
//! no body is ever logged.
//!
//! [`Abandoned`] counts and logs a request whose client left before its
//! answer (`499`).

use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;

use super::body::ProxyBody;
use super::cache_status::{CacheStatus, Tier};
use super::{ConnInfo, Shared};
use crate::config::{AccessFormat, LogConfig};
use crate::metrics::{MethodClass, Outcome};
use crate::upstream::ServedBy;

/// The tracing target of access events (filter on it, e.g.
/// `warn,strata::access=info`).
pub const TARGET: &str = "strata::access";

/// What is kept of the request until its response is known.
pub struct Pending {
    method: Method,
    uri: Uri,
    version: Version,
    /// `Referer` and `User-Agent`, for combined lines only.
    combined: Option<(Option<HeaderValue>, Option<HeaderValue>)>,
}

impl Pending {
    /// Captures the request line when access logging is on and the log
    /// filter lets access events through; `None` costs nothing more.
    pub fn capture<B>(req: &Request<B>, log: &LogConfig) -> Option<Pending> {
        if !log.access_log || !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return None;
        }
        let combined = (log.access_format == Some(AccessFormat::Combined)).then(|| {
            (
                req.headers().get(header::REFERER).cloned(),
                req.headers().get(header::USER_AGENT).cloned(),
            )
        });
        Some(Pending {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            combined,
        })
    }

    /// Emits the event for `response`. `duration_ms` is the time to the
    /// response head, as in `strata_request_duration_seconds`.
    pub fn emit(
        &self,
        conn: ConnInfo,
        response: &Response<ProxyBody>,
        outcome: Outcome,
        status: &CacheStatus,
        elapsed: Duration,
    ) {
        let upstream = response
            .extensions()
            .get::<ServedBy>()
            .map(|s| s.0.as_str());
        self.event(
            conn,
            Answer {
                status: response.status().as_u16(),
                bytes: body_bytes(response),
                outcome,
                tier: status.tier(),
                upstream,
            },
            elapsed,
        );
    }

    /// The event for a request whose client went away before its response
    /// head was ready (the request's future was dropped): status `499`, as
    /// nginx logs a client that closed the connection, no bytes, outcome
    /// `error`.
    pub fn emit_abandoned(&self, conn: ConnInfo, elapsed: Duration) {
        let answer = Answer {
            status: CLIENT_CLOSED,
            bytes: Some(0),
            outcome: Outcome::Error,
            tier: None,
            upstream: None,
        };
        self.event(conn, answer, elapsed);
    }

    /// One access event, in the configured format.
    fn event(&self, conn: ConnInfo, a: Answer<'_>, elapsed: Duration) {
        if let Some((referer, agent)) = &self.combined {
            let line = combined_line(
                Some(self),
                conn,
                a.status,
                a.bytes,
                referer.as_ref(),
                agent.as_ref(),
                time::OffsetDateTime::now_utc(),
            );
            tracing::info!(target: TARGET, "{line}");
            return;
        }
        tracing::info!(
            target: TARGET,
            client = %conn.peer,
            client_ip = %conn.client_ip,
            scheme = if conn.https { "https" } else { "http" },
            version = ?self.version,
            method = self.method.as_str(),
            path = self.uri.path(),
            status = a.status,
            bytes = a.bytes,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            cache = a.outcome.as_str(),
            tier = a.tier.map(Tier::as_str),
            upstream = a.upstream,
            "access"
        );
    }
}

/// What an access event says about the answer.
struct Answer<'a> {
    status: u16,
    /// The body's length when known before it is sent.
    bytes: Option<u64>,
    outcome: Outcome,
    tier: Option<Tier>,
    /// The upstream server that answered (or failed).
    upstream: Option<&'a str>,
}

/// nginx's status for a request whose client closed the connection before
/// the response was ready (never sent: there is no one to send it to).
pub const CLIENT_CLOSED: u16 = 499;

/// The event for a request head hyper refused before Strata saw a request
/// (a bad request line or field, a head over the size limits): its
/// `status` (`400`, `431`) with `-` for the method and path, as nothing of
/// the head is trusted; hyper's refusals have no body.
pub fn emit_refused(conn: ConnInfo, status: u16, log: &LogConfig) {
    if !log.access_log || !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    if log.access_format == Some(AccessFormat::Combined) {
        let line = combined_line(
            None,
            conn,
            status,
            Some(0),
            None,
            None,
            time::OffsetDateTime::now_utc(),
        );
        tracing::info!(target: TARGET, "{line}");
        return;
    }
    tracing::info!(
        target: TARGET,
        client = %conn.peer,
        client_ip = %conn.client_ip,
        scheme = if conn.https { "https" } else { "http" },
        method = "-",
        path = "-",
        status,
        bytes = 0,
        cache = Outcome::Error.as_str(),
        "access"
    );
}

/// The response body's length when known before it is sent: exact for
/// stored (`Full`) and empty bodies, else the `Content-Length`. A streamed
/// body of unknown length (chunked, compressed on the fly) logs none.
pub fn body_bytes(response: &Response<ProxyBody>) -> Option<u64> {
    response
        .body()
        .size_hint()
        .exact()
        .or_else(|| super::headers::content_length(response.headers()))
}

/// One combined-format line. `$request` is `METHOD path VERSION` with the
/// path **without its query** (see the module doc: queries carry
/// credentials), `-` without a request (`None`: a head hyper refused); an
/// unknown body length is `-`. The request line and the header values are
/// quoted with `"`, `\\` and bytes outside printable ASCII escaped as
/// `\\xHH`, as nginx escapes `$request` and `$http_*`.
fn combined_line(
    p: Option<&Pending>,
    conn: ConnInfo,
    status: u16,
    bytes: Option<u64>,
    referer: Option<&HeaderValue>,
    agent: Option<&HeaderValue>,
    now: time::OffsetDateTime,
) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(160);
    let _ = write!(
        line,
        "{} - - [{:02}/{}/{}:{:02}:{:02}:{:02} +0000] \"",
        conn.client_ip,
        now.day(),
        MONTHS[usize::from(u8::from(now.month())) - 1],
        now.year(),
        now.hour(),
        now.minute(),
        now.second(),
    );
    match p {
        Some(p) => {
            // hyper accepts `"`, `\` and bytes above 0x7F in the target:
            // escaped like the header values, or one raw `"` would break
            // the quoted field that log parsers split on.
            escape_into(&mut line, p.method.as_str().as_bytes());
            line.push(' ');
            escape_into(&mut line, p.uri.path().as_bytes());
            let _ = write!(line, " {:?}", p.version);
        }
        None => line.push('-'),
    }
    let _ = write!(line, "\" {status} ");
    match bytes {
        Some(n) => {
            let _ = write!(line, "{n}");
        }
        None => line.push('-'),
    }
    for v in [referer, agent] {
        line.push_str(" \"");
        match v {
            Some(v) => escape_into(&mut line, v.as_bytes()),
            None => line.push('-'),
        }
        line.push('"');
    }
    line
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Appends `bytes` with `"`, `\\` and every byte outside printable ASCII
/// (controls, DEL, each byte of a UTF-8 sequence) as `\\xHH`, uppercase
/// hex, as nginx escapes logged variables.
fn escape_into(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write as _;
    for &b in bytes {
        match b {
            b'"' | b'\\' | ..=0x1f | 0x7f.. => {
                let _ = write!(out, "\\x{b:02X}");
            }
            _ => out.push(char::from(b)),
        }
    }
}

impl super::Shared {
    /// Counts and logs a request head hyper answered by itself with
    /// `status` (`400`, `431`: unparseable, or over the size limits), which
    /// never reached [`super::Shared::handle`].
    pub fn refused_head(&self, conn: ConnInfo, status: u16) {
        self.metrics.refused_head(status);
        emit_refused(conn, status, &self.runtime.load().config.log);
    }
}

/// A request being answered: dropped before [`Abandoned::answered`] (the
/// client went away and hyper dropped the request's future), it counts the
/// request as `499` with outcome `error` and logs it, as nginx does. One
/// flag on the way of every request; nothing else.
pub(super) struct Abandoned<'a> {
    pub(super) shared: &'a Shared,
    pub(super) started: Instant,
    /// `None` once answered.
    pub(super) method: Option<MethodClass>,
    pub(super) conn: ConnInfo,
    pub(super) access: Option<Pending>,
}

impl Abandoned<'_> {
    /// The answer is ready: disarms the guard and hands back the method
    /// the normal path counts (the access event is logged from
    /// `self.access` in place, not moved out).
    pub(super) fn answered(&mut self) -> MethodClass {
        self.method.take().unwrap_or(MethodClass::Other)
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(method) = self.method.take() else {
            return;
        };
        let elapsed = self.started.elapsed();
        let metrics = &self.shared.metrics;
        metrics.request(Outcome::Error, CLIENT_CLOSED, elapsed);
        metrics.request_class(method, CLIENT_CLOSED);
        if let Some(access) = &self.access {
            access.emit_abandoned(self.conn, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_line_is_nginx_shaped() {
        let p = Pending {
            method: Method::GET,
            uri: "/a/b.css?token=secret".parse().unwrap(),
            version: Version::HTTP_11,
            combined: None,
        };
        let conn = ConnInfo {
            peer: "10.0.0.2:55000".parse().unwrap(),
            https: false,
            client_ip: "192.0.2.7".parse().unwrap(),
        };
        let now = time::OffsetDateTime::from_unix_timestamp(1_795_976_401).unwrap();
        let agent = HeaderValue::from_static("curl/8.5 \"x\"");
        let line = combined_line(Some(&p), conn, 200, Some(512), None, Some(&agent), now);
        assert_eq!(
            line,
            "192.0.2.7 - - [29/Nov/2026:18:20:01 +0000] \"GET /a/b.css HTTP/1.1\" 200 512 \"-\" \"curl/8.5 \\x22x\\x22\""
        );
        // The request line is escaped like the header values: a raw `"`
        // in the path (hyper accepts one) would end the quoted field.
        let odd = Pending {
            uri: "/a\"b\\c/\u{e9}?q=1".parse().unwrap(),
            ..p
        };
        let line = combined_line(Some(&odd), conn, 200, Some(512), None, None, now);
        assert_eq!(
            line,
            "192.0.2.7 - - [29/Nov/2026:18:20:01 +0000] \"GET /a\\x22b\\x5Cc/\\xC3\\xA9 HTTP/1.1\" 200 512 \"-\" \"-\""
        );
        let refused = combined_line(None, conn, 431, Some(0), None, None, now);
        assert_eq!(
            refused,
            "192.0.2.7 - - [29/Nov/2026:18:20:01 +0000] \"-\" 431 0 \"-\" \"-\""
        );
    }
}
