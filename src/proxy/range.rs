//! Single byte ranges (RFC 9110 §14): the `Range` field, `If-Range`
//! (§13.1.5), and the `206` and `416` answers, cut from stored bytes (a
//! hit: a slice, no copy) or from a response streaming through that is not
//! stored ([`Ranged`]: the bytes before the range read and dropped, the
//! stream ended after it).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::body::ProxyBody;
use super::stored::{age_value, date_field, etag_list_matches};

/// RFC 9110 §13.1.5. `dates`: whether `Last-Modified` may validate these
/// bytes (not for a representation Strata encoded). A date holds only when
/// it equals `Last-Modified` and is a strong validator for a cache
/// (§8.8.2.2): the stored `Date` at least 60 seconds after it, so that two
/// versions changed within one clock second cannot be spliced together.
pub(super) fn if_range_holds(headers: &HeaderMap, req: &HeaderMap, dates: bool) -> bool {
    let Some(cond) = req.get(header::IF_RANGE) else {
        return true;
    };
    // Bytes: a tag may hold obs-text (RFC 9110 §8.8.3).
    let cond = cond.as_bytes().trim_ascii();
    if cond.starts_with(b"\"") || cond.starts_with(b"W/") {
        // A strong comparison; a weak tag never satisfies If-Range.
        let etag = headers.get(header::ETAG).map(HeaderValue::as_bytes);
        return etag_list_matches(cond, etag, true) && !cond.starts_with(b"W/");
    }
    let date = std::str::from_utf8(cond).ok();
    match (
        date.and_then(crate::cache::http_date::parse_exact),
        date_field(headers, header::LAST_MODIFIED),
    ) {
        (Some(a), Some(b)) => {
            dates
                && a == b
                && date_field(headers, header::DATE).is_some_and(|sent| {
                    sent.duration_since(b)
                        .is_ok_and(|gap| gap >= std::time::Duration::from_secs(60))
                })
        }
        _ => false,
    }
}

/// The request's `Range` when it has one field line: two lines do not
/// combine into a valid `ranges-specifier` (`bytes=0-9, bytes=20-29`), so
/// the field is ignored (RFC 9110 §14.2), as nginx does.
pub(super) fn range_field(req: &HeaderMap) -> Option<&HeaderValue> {
    let mut lines = req.get_all(header::RANGE).iter();
    let first = lines.next()?;
    lines.next().is_none().then_some(first)
}

pub(super) enum RangeOutcome {
    Ignore,
    Unsatisfiable,
    /// Inclusive first and last byte.
    Single(u64, u64),
}

/// One `bytes=` range (`a-b`, `a-`, `-n`; the unit case-insensitive, RFC
/// 9110 §14.1); several ranges or another unit are ignored (a full 200 is
/// a valid answer to them).
pub(super) fn parse_range(value: &HeaderValue, len: u64) -> RangeOutcome {
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once('='))
        .and_then(|(unit, spec)| unit.eq_ignore_ascii_case("bytes").then_some(spec))
    else {
        return RangeOutcome::Ignore;
    };
    // Empty list elements are no ranges (RFC 9110 §5.6.1: `bytes=0-9,`
    // is one range); several ranges are ignored.
    let mut ranges = spec.split(',').map(str::trim).filter(|r| !r.is_empty());
    let (Some(spec), None) = (ranges.next(), ranges.next()) else {
        return RangeOutcome::Ignore;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return RangeOutcome::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    // Digits beyond u64 are a position past any length (nginx: 416 for
    // such a first position), not an invalid field.
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            Some(s.parse().unwrap_or(u64::MAX))
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeOutcome::Ignore,
        (true, false) => match num(b) {
            None => RangeOutcome::Ignore,
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Single(len.saturating_sub(n), len - 1),
        },
        (false, _) => {
            let Some(first) = num(a) else {
                return RangeOutcome::Ignore;
            };
            let last = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            let Some(last) = last else {
                return RangeOutcome::Ignore;
            };
            if last < first {
                return RangeOutcome::Ignore;
            }
            if first >= len {
                return RangeOutcome::Unsatisfiable;
            }
            RangeOutcome::Single(first, last.min(len - 1))
        }
    }
}

pub(super) fn partial(
    headers: &HeaderMap,
    body: &Bytes,
    first: u64,
    last: u64,
    age: u64,
) -> Response<ProxyBody> {
    let slice = body.slice(first as usize..=last as usize);
    let mut resp = Response::new(ProxyBody::full(slice));
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = resp.headers_mut();
    *h = headers.clone();
    drop_content_digests(h);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", body.len())) {
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::AGE, age_value(age));
    resp
}

pub(super) fn unsatisfiable(headers: &HeaderMap, len: u64, age: u64) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let h = resp.headers_mut();
    for name in [
        header::DATE,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
        // The Content-Range length is of this representation (an encoded
        // copy's, say): a downstream cache must not give it to others.
        header::VARY,
    ] {
        if let Some(v) = headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::AGE, age_value(age));
    resp
}

/// Digests of the whole content (`Content-Digest`, RFC 9530 §2;
/// `Content-MD5`, RFC 1864) do not describe a part of it; `Repr-Digest`
/// is of the representation and stays.
fn drop_content_digests(h: &mut HeaderMap) {
    static CONTENT_DIGEST: header::HeaderName = header::HeaderName::from_static("content-digest");
    static CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");
    h.remove(&CONTENT_DIGEST);
    h.remove(&CONTENT_MD5);
}

/// A `206` of bytes `first..=last` (inclusive) of a `200` of `len` bytes
/// streaming through: `parts` are the `200`'s, `body` its whole body.
pub(super) fn partial_stream(
    mut parts: http::response::Parts,
    body: ProxyBody,
    first: u64,
    last: u64,
    len: u64,
) -> Response<ProxyBody> {
    let count = last - first + 1;
    parts.status = StatusCode::PARTIAL_CONTENT;
    drop_content_digests(&mut parts.headers);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
        parts.headers.insert(header::CONTENT_RANGE, v);
    }
    Response::from_parts(parts, ProxyBody::boxed(Ranged::new(body, first, count)))
}

/// The bytes `skip..skip + count` of `inner`'s data frames (byte offsets
/// from the start of the body); trailers are dropped. Ends once they are
/// sent, or early, when `inner` does (a body shorter than its declared
/// length: the client sees it cut short, as it would the whole body).
pub struct Ranged<B> {
    inner: B,
    /// Bytes still to drop before the range.
    skip: u64,
    /// Bytes of the range still to send.
    remaining: u64,
}

impl<B> Ranged<B> {
    pub fn new(inner: B, skip: u64, count: u64) -> Self {
        Ranged {
            inner,
            skip,
            remaining: count,
        }
    }
}

impl<B> Body for Ranged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        while this.remaining > 0 {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => break,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            if this.skip >= len {
                this.skip -= len;
                continue;
            }
            // Both below `len`, a `usize`.
            data.advance(this.skip as usize);
            this.skip = 0;
            if data.len() as u64 > this.remaining {
                data.truncate(this.remaining as usize);
            }
            this.remaining -= data.len() as u64;
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_range_is_cut_from_the_frames_of_a_stream() {
        let frames = ["0123", "4567", "89"];
        let whole: &[u8] = b"0123456789";
        for first in 0..10u64 {
            for last in first..10u64 {
                let stream = futures_util::stream::iter(
                    frames.map(|f| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(f)))),
                );
                let body = http_body_util::StreamBody::new(stream);
                let ranged = Ranged::new(body, first, last - first + 1);
                let got = ranged.collect().await.map(|c| c.to_bytes());
                assert_eq!(
                    got.ok().as_deref(),
                    Some(&whole[first as usize..=last as usize]),
                    "{first}-{last}"
                );
            }
        }
    }

    #[test]
    fn ranges() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(matches!(
            parse_range(&v("bytes=0-9"), 100),
            RangeOutcome::Single(0, 9)
        ));
        assert!(matches!(
            parse_range(&v("BYTES=90-"), 100),
            RangeOutcome::Single(90, 99)
        ));
        assert!(matches!(
            parse_range(&v("bytes=-10"), 100),
            RangeOutcome::Single(90, 99)
        ));
        assert!(matches!(
            parse_range(&v("bytes=-200"), 100),
            RangeOutcome::Single(0, 99)
        ));
        assert!(matches!(
            parse_range(&v("bytes=50-500"), 100),
            RangeOutcome::Single(50, 99)
        ));
        assert!(matches!(
            parse_range(&v("bytes=100-"), 100),
            RangeOutcome::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(&v("bytes=0-1,5-6"), 100),
            RangeOutcome::Ignore
        ));
        // Empty list elements (found by the regression probe: 200).
        assert!(matches!(
            parse_range(&v("bytes=0-9,"), 100),
            RangeOutcome::Single(0, 9)
        ));
        assert!(matches!(
            parse_range(&v("bytes=, 0-9 ,,"), 100),
            RangeOutcome::Single(0, 9)
        ));
        assert!(matches!(
            parse_range(&v("bytes=,"), 100),
            RangeOutcome::Ignore
        ));
        // Positions beyond u64 (found by the content-coding probe: 200).
        assert!(matches!(
            parse_range(&v("bytes=99999999999999999999999-"), 100),
            RangeOutcome::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(&v("bytes=10-99999999999999999999999"), 100),
            RangeOutcome::Single(10, 99)
        ));
        assert!(matches!(
            parse_range(&v("bytes=-99999999999999999999999"), 100),
            RangeOutcome::Single(0, 99)
        ));
        // Two field lines make no valid field: ignored.
        let mut h = HeaderMap::new();
        h.append(header::RANGE, v("bytes=0-9"));
        assert!(range_field(&h).is_some());
        h.append(header::RANGE, v("bytes=20-29"));
        assert!(range_field(&h).is_none());
        assert!(matches!(
            parse_range(&v("items=0-1"), 100),
            RangeOutcome::Ignore
        ));
        assert!(matches!(
            parse_range(&v("bytes=5-1"), 100),
            RangeOutcome::Ignore
        ));
    }
}
