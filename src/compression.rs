//! Response compression: content-coding negotiation (RFC 9110 §12.5.3), the
//! eligibility rules for compressing a response, one-shot encoding of bodies
//! admitted into the cache, streaming encoding of uncached bodies, and the
//! header bookkeeping that goes with an encoded variant (`Vary`, `ETag`,
//! `Content-Encoding`, `Content-Length`).
//!
//! How the proxy is expected to use it:
//! 1. [`CompressionPolicy::eligible`] on the upstream response parts, plus the
//!    checks this module cannot see: the request method is not `HEAD` (headers
//!    may still be negotiated, but no body is encoded) and the body length is at
//!    least `min_size` ([`CompressionPolicy::large_enough`]).
//! 2. For every eligible response, whatever coding is chosen (identity too), add
//!    `Vary: Accept-Encoding` with [`merge_vary_accept_encoding`].
//! 3. [`CompressionPolicy::negotiate`] picks the coding for the request.
//! 4. Cached objects are encoded once at admission with [`encode`] at
//!    `store_level` (CPU-bound: run it in `spawn_blocking`) and the encoded
//!    variant is stored; uncached responses are wrapped in [`compress_body`] at
//!    `stream_level`. Either way [`mark_encoded`] fixes up the headers.
//!
//! Responses that the upstream already encoded pass through untouched.
//!
//! - `compression/stream.rs`: the flushing streaming encoder
//!   ([`compress_body`]).
//! - `compression/representation.rs`: the headers of an encoded variant
//!   ([`mark_encoded`], [`encoded_etag`], [`merge_vary_accept_encoding`]).
//! - `compression/tables.rs`: the brotli encoder's large tables in mappings
//!   of their own, so that encoding at admission leaves no memory behind.

mod representation;
mod stream;
#[allow(unsafe_code)]
mod tables;

use std::io::{self, Read, Write};

pub use representation::{
    encoded_etag, mark_encoded, merge_vary_accept_encoding, strip_etag_suffix, unmap_etag_list,
};
pub use stream::{compress_body, CompressedBody};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Deserializer};

/// Boxed error type of [`CompressedBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A content coding this proxy can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    /// Brotli (RFC 7932), token `br`.
    Br,
    /// Gzip (RFC 1952), token `gzip`.
    Gzip,
}

impl Coding {
    /// The content-coding token: `"br"` or `"gzip"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The token as a static header value, for `Content-Encoding`.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// Parses a coding token, case-insensitively. `x-gzip` is accepted as
    /// `gzip` (RFC 9110 §8.4.1.3); anything else is `None`.
    pub fn from_token(token: &str) -> Option<Coding> {
        let token = token.trim();
        if token.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Coding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Coding {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Coding::from_token(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown compression algorithm {s:?}: expected \"br\" or \"gzip\""
            ))
        })
    }
}

/// A compression level outside the range its coding supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// Brotli quality must be within 0..=11.
    #[error("brotli level {0} is out of range 0..=11")]
    Brotli(u32),
    /// Gzip level must be within 1..=9.
    #[error("gzip level {0} is out of range 1..=9")]
    Gzip(u32),
}

/// Compression levels for both codings (brotli quality 0..=11, gzip 1..=9).
///
/// Defaults, chosen from measurements (release build, rust `brotli` 8 and
/// `flate2` with miniz_oxide, on minified JS and HTML from the rustdoc output
/// and on synthetic JS and HTML, three runs on a shared 2-core machine; see
/// the REPORT that came with this module):
/// - [`Levels::STORE`] = `br 8, gzip 9`: paid once per cached object, so ratio
///   matters within a budget of ~200 ms per MiB. Brotli 8 took 27-97 ms/MiB
///   and its ratio is within 0.2-2.5 % of brotli 9, which took 101-271 ms/MiB;
///   brotli 10 and 11 compress 5-16 % better but cost 0.4-2.6 s per MiB. Gzip
///   9 took at most 68 ms/MiB and is never worse than 6.
/// - [`Levels::STREAM`] = `br 3, gzip 3`: on the response path, so speed
///   matters. They ran at 71-153 and 62-145 MiB/s even with the machine
///   overloaded. Brotli 4 gains 1-6 % in ratio but ran at 54-112 MiB/s and holds
///   up to 2.3x the memory per stream; gzip 4 ties with 3; gzip 1 loses 19-32 %
///   of the ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// Brotli quality, 0..=11.
    pub br: u32,
    /// Gzip level, 1..=9.
    pub gzip: u32,
}

impl Levels {
    /// Default levels for one-shot encoding at cache admission.
    pub const STORE: Levels = Levels { br: 8, gzip: 9 };
    /// Default levels for streaming encoding of uncached responses.
    pub const STREAM: Levels = Levels { br: 3, gzip: 3 };

    /// The level for `coding`.
    pub fn for_coding(&self, coding: Coding) -> u32 {
        match coding {
            Coding::Br => self.br,
            Coding::Gzip => self.gzip,
        }
    }

    /// Checks both levels are in range (brotli 0..=11, gzip 1..=9).
    pub fn validate(&self) -> Result<(), LevelError> {
        check_level(Coding::Br, self.br)?;
        check_level(Coding::Gzip, self.gzip)
    }

    /// The levels clamped into their valid ranges.
    pub fn clamped(&self) -> Levels {
        Levels {
            br: self.br.min(11),
            gzip: self.gzip.clamp(1, 9),
        }
    }
}

fn check_level(coding: Coding, level: u32) -> Result<(), LevelError> {
    match coding {
        Coding::Br if level > 11 => Err(LevelError::Brotli(level)),
        Coding::Gzip if !(1..=9).contains(&level) => Err(LevelError::Gzip(level)),
        _ => Ok(()),
    }
}

/// Default compressible media types. Rule forms: `type/*` (any subtype),
/// `+suffix` (structured syntax suffix, e.g. `+json`), `*/*`, or an exact
/// `type/subtype`.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "+xml",
    "image/svg+xml",
    "application/wasm",
    "font/ttf",
    "font/otf",
    "font/collection",
    "application/x-font-ttf",
    "application/x-font-otf",
    "application/vnd.ms-fontobject",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
];

/// What to compress and how. Built from the `[compression]` config section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionPolicy {
    /// Codings offered, in order of preference (breaks q-value ties).
    pub algorithms: Vec<Coding>,
    /// Smallest body, in bytes, worth compressing.
    pub min_size: u64,
    /// Compressible media type rules, see [`DEFAULT_TYPES`] for the syntax.
    pub types: Vec<String>,
    /// Levels for one-shot encoding at cache admission.
    pub store_level: Levels,
    /// Levels for streaming encoding of uncached responses.
    pub stream_level: Levels,
}

impl Default for CompressionPolicy {
    /// `algorithms = [br, gzip]`, `min_size = 1024`, [`DEFAULT_TYPES`],
    /// [`Levels::STORE`] and [`Levels::STREAM`] (see [`Levels`] for why).
    fn default() -> Self {
        CompressionPolicy {
            algorithms: vec![Coding::Br, Coding::Gzip],
            min_size: 1024,
            types: DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            store_level: Levels::STORE,
            stream_level: Levels::STREAM,
        }
    }
}

/// RFC 9110 §12.5.3 negotiation over `algorithms` (in order of
/// preference); see [`CompressionPolicy::negotiate`]. Returns `None` for
/// identity.
pub fn negotiate<'a>(
    algorithms: &[Coding],
    accept: impl Iterator<Item = &'a HeaderValue>,
) -> Option<Coding> {
    // Weights in thousandths: `*`, `identity`, then one per `Coding`.
    let (mut star, mut identity) = (None, None);
    let mut explicit: [Option<u16>; 2] = [None; 2];
    for value in accept {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let mut parts = element.split(';');
            let token = parts.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for (name, val) in parts.filter_map(|p| p.split_once('=')) {
                if name.trim().eq_ignore_ascii_case("q") {
                    q = parse_qvalue(val.trim());
                }
            }
            let Some(q) = q else { continue };
            let slot = if token == "*" {
                &mut star
            } else if token.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if let Some(coding) = Coding::from_token(token) {
                &mut explicit[coding as usize]
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old: u16| old.min(q)));
        }
    }
    let mut best: Option<(Coding, u16)> = None;
    for &coding in algorithms {
        let q = explicit[coding as usize].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    match (best, identity) {
        (Some((_, q)), Some(id)) if id > q => None,
        (best, _) => best.map(|(c, _)| c),
    }
}

/// An RFC 9110 §12.4.2 qvalue in thousandths, 0..=1000. `None` for an
/// invalid qvalue (digits past the third are ignored, as negotiation reads
/// them).
pub fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut millis: u16 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    for (i, b) in frac.bytes().take(3).enumerate() {
        millis += u16::from(b - b'0') * [100, 10, 1][i];
    }
    (millis <= 1000 && !(int == "1" && frac.bytes().any(|b| b != b'0'))).then_some(millis)
}

impl CompressionPolicy {
    /// Checks the configured levels.
    pub fn validate(&self) -> Result<(), LevelError> {
        self.store_level.validate()?;
        self.stream_level.validate()
    }

    /// RFC 9110 §12.5.3 negotiation. `accept` is every Accept-Encoding field
    /// value of the request (there may be several header lines). Returns
    /// `None` for identity.
    ///
    /// A coding's weight is its own q-value, else that of `*`, else 0; the
    /// highest non-zero weight wins and ties go to the earlier entry of
    /// `algorithms`. No header or an empty one means identity. An element with
    /// an invalid q-value is ignored; a coding listed twice gets the lower
    /// weight. An explicit `identity;q=X` is honoured when X beats every coding.
    pub fn negotiate<'a>(&self, accept: impl Iterator<Item = &'a HeaderValue>) -> Option<Coding> {
        negotiate(&self.algorithms, accept)
    }

    /// Whether a response with these parts is eligible for compression at all:
    /// status not 1xx/204/206/304, no `Content-Encoding` other than identity,
    /// no `Content-Range`, no `no-transform` in `Cache-Control`, and a
    /// compressible `Content-Type`. Body length and request method (HEAD) are
    /// the caller's checks.
    pub fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
            || headers.contains_key(CONTENT_RANGE)
        {
            return false;
        }
        let encoded = list_elements(headers, CONTENT_ENCODING)
            .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        let no_transform =
            list_elements(headers, CACHE_CONTROL).any(|e| e.eq_ignore_ascii_case("no-transform"));
        !encoded && !no_transform && self.is_compressible_type(headers.get(CONTENT_TYPE))
    }

    /// Whether `content_type` matches one of `types`. Parameters such as
    /// `charset` are ignored and matching is case-insensitive; a missing or
    /// malformed type is not compressible.
    pub fn is_compressible_type(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(Ok(ct)) = content_type.map(|v| v.to_str()) else {
            return false;
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((ty, sub)) = essence.split_once('/') else {
            return false;
        };
        if ty.is_empty() || sub.is_empty() {
            return false;
        }
        self.types.iter().any(|rule| {
            let rule = rule.trim();
            if let Some(suffix) = rule.strip_prefix('+') {
                sub.rsplit_once('+')
                    .is_some_and(|(_, s)| s.eq_ignore_ascii_case(suffix))
            } else if rule == "*/*" {
                true
            } else if let Some(rule_ty) = rule.strip_suffix("/*") {
                ty.eq_ignore_ascii_case(rule_ty)
            } else {
                essence.eq_ignore_ascii_case(rule)
            }
        })
    }

    /// Body length check: `true` if `len` is at least `min_size`, or unknown
    /// (a streamed body of unknown length is assumed worth compressing).
    pub fn large_enough(&self, len: Option<u64>) -> bool {
        len.is_none_or(|len| len >= self.min_size)
    }

    /// Whether a stored response of `status` and `headers` with a body of
    /// `len` bytes gets encoded representations: eligible and at least
    /// `min_size`. Its identity copy then carries `Vary: Accept-Encoding`
    /// like the encoded ones, from admission on and after every `304` that
    /// brings a `Vary` of its own (SPEC §6).
    pub fn encodes_stored(&self, status: StatusCode, headers: &HeaderMap, len: u64) -> bool {
        self.eligible(status, headers) && self.large_enough(Some(len))
    }
}

/// Comma-separated list elements of every value of header `name`, trimmed.
pub(crate) fn list_elements(
    headers: &HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(name)
        .into_iter()
        // An unreadable value becomes an element that matches nothing, so an
        // unreadable Content-Encoding still counts as an encoding.
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Inputs from this size up leave the encoder's freed memory given back
/// at once ([`crate::heap::release_freed`]); below it the call would cost more
/// than the memory it saves.
const RELEASE_AFTER: usize = 64 << 10;

/// One-shot encoding at the given level, for admission into the cache (may be
/// called in `spawn_blocking`). An out-of-range level is an `InvalidInput` error.
pub fn encode(coding: Coding, level: u32, input: &[u8]) -> io::Result<Bytes> {
    check_level(coding, level).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut out = Vec::with_capacity(input.len() / 4 + 64);
    match coding {
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: level as i32,
                lgwin: 22,
                size_hint: input.len(),
                ..Default::default()
            };
            let (mut inbuf, mut outbuf) = ([0u8; 4096], [0u8; 4096]);
            brotli::BrotliCompressCustomAlloc(
                &mut &input[..],
                &mut out,
                &mut inbuf,
                &mut outbuf,
                &params,
                tables::TableAlloc,
            )?;
        }
        Coding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            enc.write_all(input)?;
            out = enc.finish()?;
        }
    }
    // Stored for the entry's lifetime: give back the unused capacity.
    out.shrink_to_fit();
    Ok(Bytes::from(out))
}

/// After encoding `input_len` bytes with [`encode`] and dropping what is
/// not kept (the output, once copied where it is stored): gives back to the
/// kernel what the calling thread's heap holds freed, when the input was
/// large enough for it to matter ([`crate::heap::release_freed`]).
pub fn release_after_encoding(input_len: usize) {
    if input_len >= RELEASE_AFTER {
        crate::heap::release_freed();
    }
}

/// Decodes a whole `br` or `gzip` body (tests, and serving identity from an
/// encoded-only cache entry). Input is trusted: there is no output limit.
pub fn decode(coding: Coding, input: &[u8]) -> io::Result<Bytes> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(4));
    match coding {
        Coding::Br => brotli::BrotliDecompress(&mut &input[..], &mut out)?,
        Coding::Gzip => {
            flate2::read::GzDecoder::new(input).read_to_end(&mut out)?;
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, ETAG, VARY};
    use http_body::{Body, Frame};
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn neg(values: &[&str]) -> Option<Coding> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        CompressionPolicy::default().negotiate(values.iter())
    }

    #[test]
    fn negotiation() {
        use Coding::*;
        assert_eq!(neg(&["gzip;q=1, br;q=0.5"]), Some(Gzip));
        assert_eq!(neg(&["br;q=0"]), None);
        assert_eq!(neg(&["br;q=0, gzip"]), Some(Gzip));
        assert_eq!(neg(&["br;q=0, *"]), Some(Gzip));
        assert_eq!(neg(&["*"]), Some(Br));
        assert_eq!(neg(&["*;q=0, gzip"]), Some(Gzip));
        assert_eq!(neg(&["*;q=0"]), None);
        assert_eq!(neg(&["identity"]), None);
        assert_eq!(neg(&["br;q=0, gzip;q=0"]), None);
        assert_eq!(neg(&[""]), None);
        assert_eq!(neg(&[]), None);
        assert_eq!(neg(&["deflate, compress"]), None);
        // Several header lines.
        assert_eq!(neg(&["deflate", "gzip"]), Some(Gzip));
        assert_eq!(neg(&["gzip;q=0.2", "br;q=0.8"]), Some(Br));
        // Ties go to `algorithms` order, whatever the header order.
        assert_eq!(neg(&["gzip, deflate, br"]), Some(Br));
        assert_eq!(neg(&["gzip;q=0.5, br;q=0.5"]), Some(Br));
        let gzip_first = CompressionPolicy {
            algorithms: vec![Gzip, Br],
            ..Default::default()
        };
        let v = [HeaderValue::from_static("br, gzip")];
        assert_eq!(gzip_first.negotiate(v.iter()), Some(Gzip));
        let br_only = CompressionPolicy {
            algorithms: vec![Br],
            ..Default::default()
        };
        let v = [HeaderValue::from_static("gzip")];
        assert_eq!(br_only.negotiate(v.iter()), None);
        // Invalid q-values drop the element.
        assert_eq!(neg(&["br;q=abc, gzip"]), Some(Gzip));
        assert_eq!(neg(&["br;q=2, gzip;q=0.1"]), Some(Gzip));
        assert_eq!(neg(&["br;q=1.5"]), None);
        assert_eq!(neg(&["br;q=-1"]), None);
        assert_eq!(neg(&["br;q="]), None);
        assert_eq!(neg(&["br;q=1.000, gzip;q=0.999"]), Some(Br));
        assert_eq!(neg(&["br;q=0.001"]), Some(Br));
        // Case and whitespace.
        assert_eq!(neg(&["  GZIP ; Q = 0.9 ,BR;q=0.1"]), Some(Gzip));
        assert_eq!(neg(&["Br"]), Some(Br));
        assert_eq!(neg(&["x-gzip"]), Some(Gzip));
        assert_eq!(neg(&[" , ,gzip,,"]), Some(Gzip));
        // Other parameters are ignored.
        assert_eq!(neg(&["br;level=5;q=0.5, gzip;q=0.4"]), Some(Br));
        // Duplicates: the lower weight wins; explicit identity preference.
        assert_eq!(neg(&["br, br;q=0"]), None);
        assert_eq!(neg(&["gzip;q=0.5, identity;q=1"]), None);
        assert_eq!(neg(&["gzip;q=0.5, identity;q=0.5"]), Some(Gzip));
        assert_eq!(neg(&["gzip;q=0.5, identity;q=0"]), Some(Gzip));
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.123"), Some(123));
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.0"), Some(1000));
        assert_eq!(parse_qvalue("1.01"), None);
        assert_eq!(parse_qvalue("0.5x"), None);
        assert_eq!(parse_qvalue(".5"), None);
        assert_eq!(parse_qvalue("01"), None);
    }

    fn ct(policy: &CompressionPolicy, value: &str) -> bool {
        policy.is_compressible_type(Some(&HeaderValue::from_str(value).unwrap()))
    }

    #[test]
    fn compressible_types() {
        let p = CompressionPolicy::default();
        for yes in [
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "text/css",
            "application/json",
            "application/JSON ; charset=UTF-8",
            "application/ld+json",
            "application/problem+json",
            "image/svg+xml",
            "application/atom+xml",
            "application/javascript",
            "application/wasm",
            "font/ttf",
            "font/otf",
        ] {
            assert!(ct(&p, yes), "{yes} should be compressible");
        }
        for no in [
            "image/png",
            "image/jpeg",
            "font/woff2",
            "application/octet-stream",
            "application/zip",
            "video/mp4",
            "text",
            "/json",
            "application/jsonx",
        ] {
            assert!(!ct(&p, no), "{no} should not be compressible");
        }
        assert!(!p.is_compressible_type(None));
        let custom = CompressionPolicy {
            types: vec!["image/*".into()],
            ..Default::default()
        };
        assert!(ct(&custom, "image/png"));
        assert!(!ct(&custom, "text/html"));
        let all = CompressionPolicy {
            types: vec!["*/*".into()],
            ..Default::default()
        };
        assert!(ct(&all, "application/octet-stream"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn eligibility() {
        let p = CompressionPolicy::default();
        let html = headers(&[("content-type", "text/html")]);
        assert!(p.eligible(StatusCode::OK, &html));
        assert!(p.eligible(StatusCode::NOT_FOUND, &html));
        for status in [204, 206, 304, 100, 103] {
            assert!(
                !p.eligible(StatusCode::from_u16(status).unwrap(), &html),
                "{status}"
            );
        }
        let h = headers(&[("content-type", "text/html"), ("content-encoding", "gzip")]);
        assert!(!p.eligible(StatusCode::OK, &h));
        let h = headers(&[
            ("content-type", "text/html"),
            ("content-encoding", "identity"),
        ]);
        assert!(p.eligible(StatusCode::OK, &h));
        let h = headers(&[
            ("content-type", "text/html"),
            ("content-range", "bytes 0-1/10"),
        ]);
        assert!(!p.eligible(StatusCode::OK, &h));
        let h = headers(&[
            ("content-type", "text/html"),
            ("cache-control", "public"),
            ("cache-control", "max-age=60, No-Transform"),
        ]);
        assert!(!p.eligible(StatusCode::OK, &h));
        let h = headers(&[
            ("content-type", "text/html"),
            ("cache-control", "public, max-age=60"),
        ]);
        assert!(p.eligible(StatusCode::OK, &h));
        assert!(!p.eligible(StatusCode::OK, &headers(&[("content-type", "image/png")])));
        assert!(!p.eligible(StatusCode::OK, &HeaderMap::new()));
        assert!(p.large_enough(Some(1024)) && !p.large_enough(Some(1023)) && p.large_enough(None));
    }

    #[test]
    fn coding_basics_and_serde() {
        assert_eq!(Coding::Br.as_str(), "br");
        assert_eq!(Coding::Gzip.header_value(), "gzip");
        assert_eq!(Coding::from_token("GZip"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token("BR"), Some(Coding::Br));
        assert_eq!(Coding::from_token("deflate"), None);
        let v: Vec<Coding> = serde_json::from_str(r#"["br", "gzip"]"#).unwrap();
        assert_eq!(v, vec![Coding::Br, Coding::Gzip]);
        let err = serde_json::from_str::<Coding>(r#""zstd""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zstd") && err.contains("expected \"br\" or \"gzip\""),
            "{err}"
        );
        let l: Levels = serde_json::from_str(r#"{"br": 5, "gzip": 6}"#).unwrap();
        assert_eq!(l, Levels { br: 5, gzip: 6 });
    }

    #[test]
    fn levels() {
        assert!(Levels::STORE.validate().is_ok() && Levels::STREAM.validate().is_ok());
        assert!(CompressionPolicy::default().validate().is_ok());
        assert_eq!(
            Levels { br: 12, gzip: 5 }.validate(),
            Err(LevelError::Brotli(12))
        );
        assert_eq!(
            Levels { br: 0, gzip: 0 }.validate(),
            Err(LevelError::Gzip(0))
        );
        assert_eq!(
            Levels { br: 11, gzip: 10 }.validate(),
            Err(LevelError::Gzip(10))
        );
        assert_eq!(
            Levels { br: 99, gzip: 0 }.clamped(),
            Levels { br: 11, gzip: 1 }
        );
        assert_eq!(Levels::STORE.for_coding(Coding::Br), Levels::STORE.br);
        assert!(encode(Coding::Gzip, 10, b"x").is_err());
        assert!(encode(Coding::Br, 12, b"x").is_err());
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!(
                    "function f{i}(a) {{ return a * {} + \"{i:x}\"; }}\n",
                    i % 97
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trip() {
        let input = sample(200_000);
        for coding in [Coding::Br, Coding::Gzip] {
            for level in [1, 5, 9] {
                let enc = encode(coding, level, &input).unwrap();
                assert!(
                    enc.len() < input.len() / 4,
                    "{coding} {level}: {}",
                    enc.len()
                );
                assert_eq!(decode(coding, &enc).unwrap(), input);
            }
            assert_eq!(
                decode(coding, &encode(coding, 1, b"").unwrap()).unwrap(),
                Bytes::new()
            );
            assert!(decode(coding, b"definitely not compressed").is_err());
        }
        assert_eq!(
            decode(Coding::Br, &encode(Coding::Br, 0, &input).unwrap()).unwrap(),
            input
        );
    }

    #[test]
    fn vary() {
        let mut h = HeaderMap::new();
        merge_vary_accept_encoding(&mut h);
        assert_eq!(
            h.get_all(VARY).iter().collect::<Vec<_>>(),
            ["Accept-Encoding"]
        );
        merge_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1);

        let mut h = headers(&[("vary", "Origin"), ("vary", "Accept-Language, ")]);
        merge_vary_accept_encoding(&mut h);
        assert_eq!(
            h.get_all(VARY).iter().collect::<Vec<_>>(),
            ["Origin, Accept-Language, Accept-Encoding"]
        );

        let mut h = headers(&[("vary", "origin, accept-encoding")]);
        merge_vary_accept_encoding(&mut h);
        assert_eq!(
            h.get_all(VARY).iter().collect::<Vec<_>>(),
            ["origin, accept-encoding"]
        );

        let mut h = headers(&[("vary", "Origin"), ("vary", "*")]);
        merge_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().collect::<Vec<_>>(), ["Origin", "*"]);

        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_bytes(b"x-\xff").unwrap());
        merge_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 2);
    }

    #[test]
    fn etags() {
        let e = |s: &str, c| encoded_etag(&HeaderValue::from_str(s).unwrap(), c, false);
        let streamed = encoded_etag(&HeaderValue::from_static("\"abc\""), Coding::Br, true);
        assert_eq!(streamed.unwrap(), "W/\"abc-br\"");
        assert_eq!(e("\"abc\"", Coding::Br).unwrap(), "\"abc-br\"");
        assert_eq!(e("\"abc\"", Coding::Gzip).unwrap(), "\"abc-gzip\"");
        assert_eq!(e("W/\"abc\"", Coding::Br).unwrap(), "W/\"abc-br\"");
        assert_eq!(e("\"\"", Coding::Br).unwrap(), "\"-br\"");
        for bad in ["abc", "\"abc", "W/abc", "\"a\"b\"", "w/\"abc\""] {
            assert_eq!(e(bad, Coding::Br), None, "{bad}");
        }
        assert_eq!(
            strip_etag_suffix("\"abc-br\"", Coding::Br).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(
            strip_etag_suffix(" W/\"abc-gzip\"", Coding::Gzip).as_deref(),
            Some("W/\"abc\"")
        );
        assert_eq!(strip_etag_suffix("\"abc-br\"", Coding::Gzip), None);
        assert_eq!(strip_etag_suffix("\"abcbr\"", Coding::Br), None);
        assert_eq!(strip_etag_suffix("abc-br", Coding::Br), None);
        let inm = HeaderValue::from_static("\"a-br\", W/\"b-br\", \"c\", \"d-gzip\"");
        // Only the codings given are mapped, each to its strong base.
        assert_eq!(
            unmap_etag_list(&inm, &[Coding::Br], true).unwrap(),
            "\"a\", \"b\", \"c\", \"d-gzip\""
        );
        assert_eq!(
            unmap_etag_list(&inm, &[Coding::Br, Coding::Gzip], true).unwrap(),
            "\"a\", \"b\", \"c\", \"d\""
        );
        // For If-Match a weak tag stays weak: it matches nothing.
        assert_eq!(
            unmap_etag_list(&inm, &[Coding::Br, Coding::Gzip], false).unwrap(),
            "\"a\", W/\"b\", \"c\", \"d\""
        );
        assert_eq!(
            unmap_etag_list(&HeaderValue::from_static("*"), &[Coding::Br], true),
            None
        );
        assert_eq!(
            unmap_etag_list(&HeaderValue::from_static("\"c\""), &[Coding::Br], true),
            None
        );
    }

    #[test]
    fn mark_encoded_headers() {
        let mut h = headers(&[
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ]);
        mark_encoded(&mut h, Coding::Br, Some(1234));
        assert_eq!(h[CONTENT_ENCODING], "br");
        assert_eq!(h[CONTENT_LENGTH], "1234");
        assert_eq!(h[ETAG], "\"v1-br\"");
        assert_eq!(h[VARY], "Origin, Accept-Encoding");
        assert_eq!(h[ACCEPT_RANGES], "bytes", "stored: ranges are served");
        let mut h = headers(&[("content-length", "5000"), ("etag", "bogus")]);
        mark_encoded(&mut h, Coding::Gzip, None);
        assert!(!h.contains_key(CONTENT_LENGTH) && !h.contains_key(ETAG));
        // Streamed: a weak tag; digests of the identity bytes dropped.
        let mut h = headers(&[
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("content-digest", "sha-256=:AAAA:"),
            ("repr-digest", "sha-256=:AAAA:"),
            ("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
        ]);
        mark_encoded(&mut h, Coding::Gzip, None);
        assert_eq!(h[ETAG], "W/\"v1-gzip\"");
        assert!(!h.contains_key(ACCEPT_RANGES));
        for name in ["content-digest", "repr-digest", "content-md5"] {
            assert!(!h.contains_key(name), "{name}");
        }
    }

    /// Streaming decoder, so output can be checked as it arrives.
    enum Dec<W: Write> {
        Br(Box<brotli::DecompressorWriter<W>>),
        Gzip(Box<flate2::write::GzDecoder<W>>),
    }

    trait Written {
        fn written(&self) -> u64;
    }

    impl Written for Vec<u8> {
        fn written(&self) -> u64 {
            self.len() as u64
        }
    }

    impl<W: Write + Written> Dec<W> {
        fn new(coding: Coding, sink: W) -> Self {
            match coding {
                Coding::Br => Dec::Br(Box::new(brotli::DecompressorWriter::new(sink, 4096))),
                Coding::Gzip => Dec::Gzip(Box::new(flate2::write::GzDecoder::new(sink))),
            }
        }
        fn feed(&mut self, data: &[u8]) {
            match self {
                Dec::Br(d) => {
                    d.write_all(data).unwrap();
                    // The writer can stop with decoded output still pending
                    // when its buffer fills up: drain it with empty writes.
                    loop {
                        let before = d.get_ref().written();
                        let _ = d.write(&[]).unwrap();
                        if d.get_ref().written() == before {
                            break;
                        }
                    }
                }
                Dec::Gzip(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                }
            }
        }
        fn sink(&self) -> &W {
            match self {
                Dec::Br(d) => d.get_ref(),
                Dec::Gzip(d) => d.get_ref(),
            }
        }
    }

    type Tx = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

    fn channel_body(cap: usize) -> (Tx, CompressedBodyFactory) {
        let (tx, rx) = mpsc::channel(cap);
        (tx, CompressedBodyFactory(rx))
    }

    struct CompressedBodyFactory(mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

    impl CompressedBodyFactory {
        fn compress(self, coding: Coding, level: u32) -> CompressedBody {
            let mut rx = self.0;
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            compress_body(coding, level, StreamBody::new(stream))
        }
    }

    async fn next_data(body: &mut CompressedBody) -> Option<Bytes> {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("timed out");
        frame.map(|f| f.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn trickling_body_is_flushed_before_end() {
        let input = sample(20_000);
        for coding in [Coding::Br, Coding::Gzip] {
            let (tx, factory) = channel_body(4);
            let mut body = factory.compress(coding, Levels::STREAM.for_coding(coding));
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(&input[..5000]))))
                .await
                .unwrap();
            // The inner body is now pending: the first chunk must come out anyway.
            let first = next_data(&mut body).await.unwrap();
            let mut dec = Dec::new(coding, Vec::new());
            dec.feed(&first);
            let got = dec.sink().as_slice();
            assert!(
                got == &input[..5000],
                "{coding}: first frame {} B decodes to {} B",
                first.len(),
                got.len()
            );
            let mut all = first.to_vec();
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(&input[5000..]))))
                .await
                .unwrap();
            tx.send(Ok(Frame::trailers(HeaderMap::new())))
                .await
                .unwrap();
            drop(tx);
            while let Some(data) = next_data(&mut body).await {
                all.extend_from_slice(&data);
            }
            assert!(body.is_end_stream());
            assert_eq!(decode(coding, &all).unwrap(), input);
        }
    }

    #[test]
    fn compressed_body_is_send_and_unpin() {
        fn check<T: Send + Unpin + 'static>() {}
        check::<CompressedBody>();
    }

    #[tokio::test]
    async fn empty_and_full_bodies() {
        for coding in [Coding::Br, Coding::Gzip] {
            let out = compress_body(coding, 5, Empty::<Bytes>::new())
                .collect()
                .await
                .unwrap();
            assert_eq!(decode(coding, &out.to_bytes()).unwrap(), Bytes::new());
            let input = sample(300_000);
            let body = compress_body(coding, 99, Full::new(Bytes::from(input.clone())));
            let out = body.collect().await.unwrap().to_bytes();
            assert_eq!(decode(coding, &out).unwrap(), input);
        }
    }

    #[tokio::test]
    async fn inner_error_is_propagated() {
        let (tx, factory) = channel_body(4);
        let mut body = factory.compress(Coding::Gzip, 1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        tx.send(Err(io::Error::other("upstream reset")))
            .await
            .unwrap();
        let mut err = None;
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err.unwrap().to_string(), "upstream reset");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    /// Counts and checksums decoded output.
    #[derive(Default)]
    struct Tally {
        len: u64,
        crc: flate2::Crc,
    }

    impl Written for Tally {
        fn written(&self) -> u64 {
            self.len
        }
    }

    impl Write for Tally {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.len += buf.len() as u64;
            self.crc.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_stream_has_bounded_lag() {
        const TOTAL: u64 = 64 << 20;
        const CHUNK: usize = 64 << 10;
        for coding in [Coding::Br, Coding::Gzip] {
            let (tx, factory) = channel_body(4);
            let mut body = factory.compress(coding, Levels::STREAM.for_coding(coding));
            let sent = Arc::new(AtomicU64::new(0));
            let producer = tokio::spawn({
                let sent = sent.clone();
                async move {
                    let mut crc = flate2::Crc::new();
                    let mut i = 0u64;
                    while sent.load(Ordering::SeqCst) < TOTAL {
                        let mut chunk = Vec::with_capacity(CHUNK);
                        while chunk.len() < CHUNK {
                            chunk.extend_from_slice(
                                format!("<li id=\"item-{i}\">row {} of {}</li>\n", i * 7 % 1000, i)
                                    .as_bytes(),
                            );
                            i += 1;
                        }
                        chunk.truncate(CHUNK);
                        crc.update(&chunk);
                        sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
                        tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.unwrap();
                    }
                    crc.sum()
                }
            });
            let mut dec = Dec::new(coding, Tally::default());
            let (mut frames, mut max_frame, mut max_lag) = (0u64, 0usize, 0u64);
            while let Some(data) = next_data(&mut body).await {
                dec.feed(&data);
                frames += 1;
                max_frame = max_frame.max(data.len());
                max_lag = max_lag.max(sent.load(Ordering::SeqCst) - dec.sink().len);
            }
            let expected_crc = producer.await.unwrap();
            eprintln!(
                "{coding}: {frames} frames, largest {max_frame} B, max lag {} KiB",
                max_lag >> 10
            );
            assert_eq!(dec.sink().len, TOTAL);
            assert_eq!(dec.sink().crc.sum(), expected_crc);
            // Never more than a few MiB in flight (channel + encoder window), out of 64.
            assert!(max_lag < 8 << 20, "{coding}: lag {max_lag}");
            assert!(frames > 16, "{coding}: only {frames} frames");
            assert!(max_frame <= 1 << 20, "{coding}: frame of {max_frame} bytes");
        }
    }
}
