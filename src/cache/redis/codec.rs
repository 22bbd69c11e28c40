//! The Redis entry format: a versioned binary encoding of an [`Object`]
//! (every field of every [`Variant`]), sealed with a checksum.
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! "STRC" version:u8                      magic and format version (3)
//! url:str32                              the object's key URL
//! variants:u16  { variant }*
//!   status:u16
//!   times:   request:u64 response:u64 initial_age_ms:u64
//!   policy:  lifetime:u64 swr:u64 sie:u64 grace:u64 flags:u8 (1 must-revalidate, 2 no-cache, 4 soft-purged)
//!   vary:u16 { name:str16 present:u8 [value:str32] }*
//!   headers  body:bytes32
//!   encoded:u8 { coding:u8 (1 br, 2 gzip) headers body:bytes32 }*
//!   tags:u16 { tag:str16 }*
//!   strata_cc:u8 (0 absent, 1 present) [value:bytes32]   Strata-Cache-Control
//! checksum:u64                           xxh3-64 of every byte before it
//! headers = count:u32 { name:str16 value:bytes32 }*   (repeated fields kept, in order)
//! ```
//!
//! Encoding sizes the buffer exactly first, so it allocates once and copies
//! each body once. Decoding checks the checksum before parsing and never
//! trusts a length or count: a corrupt, truncated or other-version payload
//! is a [`DecodeError`], never a panic. Decoded bodies and header values are
//! `Bytes` slices of the one buffer read from Redis (no second copy). An
//! encoded representation's headers are checked but kept unparsed until a
//! hit serves that representation (`cache/fields.rs`), and are written back
//! as the same bytes while unchanged.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use xxhash_rust::xxh3::xxh3_64;

use crate::cache::entry::{Encoded, Object, Variant, VaryKey};
use crate::cache::fields::{self, FieldBlock};
use crate::cache::freshness::{Policy, Times};
use crate::cache::key::CacheKey;
use crate::compression::Coding;

const MAGIC: &[u8; 4] = b"STRC";
/// Bumped on any layout change; other versions decode to an error (a miss).
pub const VERSION: u8 = 3;
const HEADER_LEN: usize = MAGIC.len() + 1;
const CHECKSUM_LEN: usize = 8;

/// Why an object could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} too large for the entry format ({len} bytes or items)")]
    TooLarge { what: &'static str, len: usize },
}

/// Why a payload could not be decoded. Every case is a miss for the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a Strata entry (bad magic)")]
    Magic,
    #[error("entry format version {0}, this build reads version {VERSION}")]
    Version(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error("{0} trailing bytes after the object")]
    Trailing(usize),
    #[error("entry is for {stored}, not {requested} (hash collision)")]
    KeyMismatch { stored: String, requested: String },
}

fn coding_byte(c: Coding) -> u8 {
    match c {
        Coding::Br => 1,
        Coding::Gzip => 2,
    }
}

fn coding_from(b: u8) -> Option<Coding> {
    match b {
        1 => Some(Coding::Br),
        2 => Some(Coding::Gzip),
        _ => None,
    }
}

/// An encoded representation's header section: its stored bytes while
/// unchanged (written back as they are), else its map's encoding.
fn fields_len(e: &Encoded) -> usize {
    e.stored_fields()
        .map_or_else(|| fields::encoded_len(e.headers()), |b| b.as_bytes().len())
}

fn variant_len(v: &Variant) -> usize {
    let vary: usize = v
        .vary
        .0
        .iter()
        .map(|(n, val)| 2 + n.as_str().len() + 1 + val.as_ref().map_or(0, |s| 4 + s.len()))
        .sum();
    let encoded: usize = v
        .encoded
        .iter()
        .map(|e| 1 + fields_len(e) + 4 + e.body.len())
        .sum();
    let tags: usize = v.tags.iter().map(|t| 2 + t.len()).sum();
    let strata_cc = v.strata_cc.as_ref().map_or(0, |s| 4 + s.len());
    // status, times, policy, flags, vary count, body length, encoded
    // count, tag count, strata_cc presence.
    const FIXED: usize = 2 + 3 * 8 + 4 * 8 + 1 + 2 + 4 + 1 + 2 + 1;
    FIXED + vary + fields::encoded_len(&v.headers) + v.body.len() + encoded + tags + strata_cc
}

/// The exact encoded size of `object`.
pub fn encoded_len(object: &Object) -> usize {
    HEADER_LEN
        + 4
        + object.key.url().len()
        + 2
        + object
            .variants
            .iter()
            .map(|v| variant_len(v))
            .sum::<usize>()
        + CHECKSUM_LEN
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn len16(&mut self, what: &'static str, len: usize) -> Result<(), EncodeError> {
        let v = u16::try_from(len).map_err(|_| EncodeError::TooLarge { what, len })?;
        self.u16(v);
        Ok(())
    }
    fn len32(&mut self, what: &'static str, len: usize) -> Result<(), EncodeError> {
        let v = u32::try_from(len).map_err(|_| EncodeError::TooLarge { what, len })?;
        self.u32(v);
        Ok(())
    }
    fn bytes16(&mut self, what: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        self.len16(what, b.len())?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    fn bytes32(&mut self, what: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        self.len32(what, b.len())?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    fn headers(&mut self, h: &HeaderMap) -> Result<(), EncodeError> {
        fields::write(&mut self.buf, h).map_err(|(what, len)| EncodeError::TooLarge { what, len })
    }
    fn variant(&mut self, v: &Variant) -> Result<(), EncodeError> {
        self.u16(v.status.as_u16());
        self.u64(v.times.request);
        self.u64(v.times.response);
        self.u64(v.times.initial_age_ms);
        self.u64(v.policy.lifetime);
        self.u64(v.policy.stale_while_revalidate);
        self.u64(v.policy.stale_if_error);
        self.u64(v.policy.grace);
        self.u8(u8::from(v.policy.must_revalidate)
            | (u8::from(v.policy.no_cache) << 1)
            | (u8::from(v.soft_purged) << 2));
        self.len16("vary field count", v.vary.0.len())?;
        for (name, value) in &v.vary.0 {
            self.bytes16("vary field name", name.as_str().as_bytes())?;
            match value {
                Some(s) => {
                    self.u8(1);
                    self.bytes32("vary value", s.as_bytes())?;
                }
                None => self.u8(0),
            }
        }
        self.headers(&v.headers)?;
        self.bytes32("body", &v.body)?;
        let n = u8::try_from(v.encoded.len()).map_err(|_| EncodeError::TooLarge {
            what: "encoded representations",
            len: v.encoded.len(),
        })?;
        self.u8(n);
        for e in &v.encoded {
            self.u8(coding_byte(e.coding));
            match e.stored_fields() {
                // Read back unchanged: the same bytes, not re-encoded.
                Some(block) => self.buf.extend_from_slice(block.as_bytes()),
                None => self.headers(e.headers())?,
            }
            self.bytes32("encoded body", &e.body)?;
        }
        self.len16("tag count", v.tags.len())?;
        for t in &v.tags {
            self.bytes16("tag", t.as_bytes())?;
        }
        match &v.strata_cc {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                self.bytes32("strata-cache-control", value.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Encodes `object`: one allocation of the exact size, each body copied once.
pub fn encode(object: &Object) -> Result<Vec<u8>, EncodeError> {
    let len = encoded_len(object);
    let mut w = Writer {
        buf: Vec::with_capacity(len),
    };
    w.buf.extend_from_slice(MAGIC);
    w.u8(VERSION);
    w.bytes32("url", object.key.url().as_bytes())?;
    w.len16("variant count", object.variants.len())?;
    for v in &object.variants {
        w.variant(v)?;
    }
    let sum = xxh3_64(&w.buf);
    w.u64(sum);
    debug_assert_eq!(w.buf.len(), len, "encoded_len out of step with encode");
    Ok(w.buf)
}

struct Reader<'a> {
    payload: &'a Bytes,
    /// End of the parsed region (the checksum follows it).
    end: usize,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let start = self.at;
        let stop = start
            .checked_add(n)
            .filter(|&s| s <= self.end)
            .ok_or(DecodeError::Truncated(start))?;
        self.at = stop;
        Ok(start..stop)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let r = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.payload[r]);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.end - self.at
    }
    /// A count of items each at least `min` bytes long, checked against
    /// what is left so a corrupt count cannot make us allocate.
    fn count(&mut self, n: usize, min: usize, what: &'static str) -> Result<usize, DecodeError> {
        if n.saturating_mul(min) > self.remaining() {
            return Err(DecodeError::Invalid { what, at: self.at });
        }
        Ok(n)
    }
    fn slice16(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn slice32(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let n = self.u32()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated(self.at))?;
        self.take(n)
    }
    fn bytes32(&mut self) -> Result<Bytes, DecodeError> {
        let r = self.slice32()?;
        Ok(self.payload.slice(r))
    }
    fn string(
        &mut self,
        r: std::ops::Range<usize>,
        what: &'static str,
    ) -> Result<String, DecodeError> {
        let at = r.start;
        std::str::from_utf8(&self.payload[r])
            .map(str::to_owned)
            .map_err(|_| DecodeError::Invalid { what, at })
    }
    fn name(&mut self, what: &'static str) -> Result<HeaderName, DecodeError> {
        let r = self.slice16()?;
        let at = r.start;
        HeaderName::from_bytes(&self.payload[r]).map_err(|_| DecodeError::Invalid { what, at })
    }
    /// A header section parsed at once (the identity headers).
    fn headers(&mut self) -> Result<HeaderMap, DecodeError> {
        let start = self.at;
        let (map, len) =
            fields::parse(self.payload, start, self.end).map_err(|e| DecodeError::Invalid {
                what: e.what,
                at: start + e.at,
            })?;
        self.at = start + len;
        Ok(map)
    }
    /// A header section checked but not parsed (an encoded
    /// representation's: a hit serves at most one of them).
    fn field_block(&mut self) -> Result<FieldBlock, DecodeError> {
        let start = self.at;
        let (block, len) =
            FieldBlock::check(self.payload, start, self.end).map_err(|e| DecodeError::Invalid {
                what: e.what,
                at: start + e.at,
            })?;
        self.at = start + len;
        Ok(block)
    }
    fn variant(&mut self) -> Result<Variant, DecodeError> {
        let at = self.at;
        let status = StatusCode::from_u16(self.u16()?)
            .map_err(|_| DecodeError::Invalid { what: "status", at })?;
        let times = Times {
            request: self.u64()?,
            response: self.u64()?,
            initial_age_ms: self.u64()?,
        };
        let lifetime = self.u64()?;
        let stale_while_revalidate = self.u64()?;
        let stale_if_error = self.u64()?;
        let grace = self.u64()?;
        let at = self.at;
        let flags = self.u8()?;
        if flags & !0b111 != 0 {
            return Err(DecodeError::Invalid {
                what: "policy flags",
                at,
            });
        }
        let policy = Policy {
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            must_revalidate: flags & 1 != 0,
            no_cache: flags & 2 != 0,
            grace,
        };
        let n = usize::from(self.u16()?);
        let n = self.count(n, 3, "vary field count")?;
        let mut vary = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.name("vary field name")?;
            let at = self.at;
            let value = match self.u8()? {
                0 => None,
                1 => {
                    let r = self.slice32()?;
                    Some(self.string(r, "vary value")?)
                }
                _ => {
                    return Err(DecodeError::Invalid {
                        what: "vary presence",
                        at,
                    })
                }
            };
            vary.push((name, value));
        }
        let headers = self.headers()?;
        let body = self.bytes32()?;
        let n = usize::from(self.u8()?);
        let n = self.count(n, 9, "encoded count")?;
        let mut encoded = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.at;
            let coding =
                coding_from(self.u8()?).ok_or(DecodeError::Invalid { what: "coding", at })?;
            let fields = self.field_block()?;
            let body = self.bytes32()?;
            encoded.push(Encoded::stored(coding, fields, body));
        }
        let n = usize::from(self.u16()?);
        let n = self.count(n, 2, "tag count")?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            let r = self.slice16()?;
            tags.push(self.string(r, "tag")?);
        }
        let at = self.at;
        let strata_cc = match self.u8()? {
            0 => None,
            1 => {
                let r = self.slice32()?;
                let at = r.start;
                Some(
                    HeaderValue::from_maybe_shared(self.payload.slice(r)).map_err(|_| {
                        DecodeError::Invalid {
                            what: "strata-cache-control",
                            at,
                        }
                    })?,
                )
            }
            _ => {
                return Err(DecodeError::Invalid {
                    what: "strata-cache-control presence",
                    at,
                })
            }
        };
        Ok(Variant {
            vary: VaryKey(vary),
            status,
            headers,
            body,
            encoded,
            times,
            policy,
            tags,
            strata_cc,
            soft_purged: flags & 4 != 0,
            hits: Default::default(),
            refresh: Default::default(),
        })
    }
}

/// Checks magic, version and checksum; returns the end of the body region.
fn check(payload: &[u8]) -> Result<usize, DecodeError> {
    if payload.len() < HEADER_LEN || &payload[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if payload[MAGIC.len()] != VERSION {
        return Err(DecodeError::Version(payload[MAGIC.len()]));
    }
    let end = payload
        .len()
        .checked_sub(CHECKSUM_LEN)
        .filter(|&e| e >= HEADER_LEN)
        .ok_or(DecodeError::Truncated(payload.len()))?;
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&payload[end..]);
    if u64::from_le_bytes(sum) != xxh3_64(&payload[..end]) {
        return Err(DecodeError::Checksum);
    }
    Ok(end)
}

/// Checks `payload` ([`check`]) and reads its URL: a reader at the
/// variants, and where the URL's bytes are.
fn open(payload: &Bytes) -> Result<(Reader<'_>, std::ops::Range<usize>), DecodeError> {
    let end = check(payload)?;
    let mut r = Reader {
        payload,
        end,
        at: HEADER_LEN,
    };
    let url = r.slice32()?;
    Ok((r, url))
}

/// Parses the variants after the URL, to the end of the region.
fn variants(r: &mut Reader<'_>) -> Result<Vec<Arc<Variant>>, DecodeError> {
    let n = usize::from(r.u16()?);
    let n = r.count(n, 64, "variant count")?;
    let mut variants = Vec::with_capacity(n);
    for _ in 0..n {
        variants.push(Arc::new(r.variant()?));
    }
    if r.remaining() != 0 {
        return Err(DecodeError::Trailing(r.remaining()));
    }
    Ok(variants)
}

/// Decodes the entry stored for `key`. A well-formed entry for another URL
/// (a hash collision) is [`DecodeError::KeyMismatch`], found before its
/// variants are parsed; the URL is compared as bytes, not copied.
pub fn decode_for(payload: &Bytes, key: &CacheKey) -> Result<Object, DecodeError> {
    let (mut r, url) = open(payload)?;
    if &payload[url.clone()] != key.url().as_bytes() {
        return Err(DecodeError::KeyMismatch {
            stored: r.string(url, "url")?,
            requested: key.url().to_string(),
        });
    }
    let variants = variants(&mut r)?;
    Ok(Object {
        key: key.clone(),
        variants,
    })
}

/// Decodes an entry whatever its URL (for tools and tests).
pub fn decode(payload: &Bytes) -> Result<Object, DecodeError> {
    let (mut r, url) = open(payload)?;
    let url = r.string(url, "url")?;
    let variants = variants(&mut r)?;
    let key = CacheKey::from_url(&url).ok_or(DecodeError::Invalid {
        what: "url",
        at: HEADER_LEN,
    })?;
    Ok(Object { key, variants })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fields::MAX_FIELDS;
    use http::header::HeaderValue;

    fn hv(v: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(v).unwrap()
    }

    fn rich() -> Object {
        let mut h1 = HeaderMap::new();
        h1.append("content-type", hv(b"text/html; charset=utf-8"));
        h1.append("set-cookie", hv(b"a=1"));
        h1.append("set-cookie", hv(b"b=2"));
        h1.append("x-latin1", hv(b"caf\xe9 \xff"));
        h1.append("etag", hv(b"\"v1\""));
        h1.append("vary", hv(b"Accept-Encoding, Accept-Language"));
        let mut br_headers = h1.clone();
        br_headers.insert("content-encoding", hv(b"br"));
        br_headers.insert("etag", hv(b"\"v1-br\""));
        let mut gz_headers = h1.clone();
        gz_headers.insert("content-encoding", hv(b"gzip"));
        let v1 = Variant {
            vary: VaryKey(vec![
                (
                    HeaderName::from_static("accept-encoding"),
                    Some("br".into()),
                ),
                (
                    HeaderName::from_static("accept-language"),
                    Some("en, fr".into()),
                ),
            ]),
            status: StatusCode::OK,
            headers: h1,
            body: Bytes::from(vec![7u8; 3000]),
            encoded: vec![
                Encoded::new(
                    Coding::Br,
                    br_headers,
                    Bytes::from_static(b"\x00\x01brotli"),
                ),
                Encoded::new(
                    Coding::Gzip,
                    gz_headers,
                    Bytes::from_static(b"\x1f\x8bgzip"),
                ),
            ],
            times: Times {
                request: 1_700_000_000_000,
                response: 1_700_000_000_123,
                initial_age_ms: 5000,
            },
            policy: Policy {
                lifetime: 3600,
                stale_while_revalidate: 60,
                stale_if_error: 600,
                must_revalidate: false,
                no_cache: true,
                grace: 0,
            },
            tags: vec!["product".into(), "page:1".into(), "ünï".into()],
            strata_cc: Some(hv(b"max-age=1, must-revalidate")),
            soft_purged: true,
            hits: Default::default(),
            refresh: Default::default(),
        };
        let mut h2 = HeaderMap::new();
        h2.append("content-length", hv(b"0"));
        let v2 = Variant {
            vary: VaryKey(vec![
                (HeaderName::from_static("accept-encoding"), None),
                (
                    HeaderName::from_static("accept-language"),
                    Some(String::new()),
                ),
            ]),
            status: StatusCode::NOT_FOUND,
            headers: h2,
            body: Bytes::new(),
            encoded: vec![],
            times: Times {
                request: 1,
                response: 2,
                initial_age_ms: 0,
            },
            policy: Policy {
                lifetime: 0,
                stale_while_revalidate: 0,
                stale_if_error: u64::MAX,
                must_revalidate: true,
                no_cache: false,
                grace: 0,
            },
            tags: vec![],
            strata_cc: None,
            soft_purged: false,
            hits: Default::default(),
            refresh: Default::default(),
        };
        Object {
            key: CacheKey::new(true, "Example.COM:8443", "/a/b?x=1&y=%20"),
            variants: vec![Arc::new(v1), Arc::new(v2)],
        }
    }

    fn headers_eq(a: &HeaderMap, b: &HeaderMap) {
        let a: Vec<_> = a.iter().collect();
        let b: Vec<_> = b.iter().collect();
        assert_eq!(a, b, "headers differ (order and repetition count)");
    }

    fn assert_same(a: &Object, b: &Object) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.variants.len(), b.variants.len());
        for (x, y) in a.variants.iter().zip(&b.variants) {
            assert_eq!(x.vary, y.vary);
            assert_eq!(x.status, y.status);
            headers_eq(&x.headers, &y.headers);
            assert_eq!(x.body, y.body);
            assert_eq!(x.times, y.times);
            assert_eq!(x.policy, y.policy);
            assert_eq!(x.tags, y.tags);
            assert_eq!(x.strata_cc, y.strata_cc);
            assert_eq!(x.soft_purged, y.soft_purged);
            assert_eq!(x.encoded.len(), y.encoded.len());
            for (e, f) in x.encoded.iter().zip(&y.encoded) {
                assert_eq!(e.coding, f.coding);
                headers_eq(e.headers(), f.headers());
                assert_eq!(e.body, f.body);
            }
        }
    }

    #[test]
    fn round_trip_rich_object() {
        let obj = rich();
        let bytes = encode(&obj).unwrap();
        assert_eq!(bytes.len(), encoded_len(&obj));
        assert_eq!(bytes.capacity(), bytes.len(), "one exact allocation");
        let payload = Bytes::from(bytes);
        let back = decode_for(&payload, &obj.key).unwrap();
        assert_same(&obj, &back);
        assert_same(&obj, &decode(&payload).unwrap());
        // Re-encoding the decoded object gives the same bytes.
        assert_eq!(encode(&back).unwrap(), payload);
        // Bodies are slices of the payload, not copies.
        let body = &back.variants[0].body;
        let base = payload.as_ptr() as usize;
        let p = body.as_ptr() as usize;
        assert!(p >= base && p + body.len() <= base + payload.len());
    }

    #[test]
    fn encoded_fields_stay_unparsed_until_read_or_changed() {
        let obj = rich();
        let payload = Bytes::from(encode(&obj).unwrap());
        let back = decode_for(&payload, &obj.key).unwrap();
        let mut br = back.variants[0].encoded[0].clone();
        assert!(br.stored_fields().is_some(), "kept as stored bytes");
        headers_eq(br.headers(), obj.variants[0].encoded[0].headers());
        assert!(br.stored_fields().is_some(), "reading keeps the bytes");
        br.modify_headers(|h| {
            h.insert("etag", hv(b"\"v2-br\""));
        });
        assert!(br.stored_fields().is_none(), "a change drops them");
        let mut changed = (*back.variants[0]).clone();
        changed.encoded[0] = br;
        let changed = Object {
            key: back.key.clone(),
            variants: vec![Arc::new(changed)],
        };
        let bytes = encode(&changed).unwrap();
        assert_eq!(bytes.len(), encoded_len(&changed));
        let again = decode(&Bytes::from(bytes)).unwrap();
        let etag = again.variants[0].encoded[0].headers().get("etag");
        assert_eq!(etag.unwrap(), "\"v2-br\"");
        assert_eq!(again.variants[0].weight(), changed.variants[0].weight());
    }

    #[test]
    fn a_header_count_a_map_cannot_hold_is_an_error() {
        // 24,577 fields would make `HeaderMap::with_capacity` panic: the
        // count is refused first (the checksum is no defence against a
        // forged entry).
        let mut obj = rich();
        let mut v = (*obj.variants[1]).clone();
        for i in 0..=MAX_FIELDS {
            v.headers.append("x-n", HeaderValue::from(i));
        }
        obj.variants[1] = Arc::new(v);
        let payload = Bytes::from(encode(&obj).unwrap());
        assert!(matches!(
            decode(&payload),
            Err(DecodeError::Invalid {
                what: "header count",
                ..
            })
        ));
    }

    #[test]
    fn empty_object_round_trips() {
        let obj = Object {
            key: CacheKey::new(false, "h", "/"),
            variants: vec![],
        };
        let payload = Bytes::from(encode(&obj).unwrap());
        assert_same(&obj, &decode_for(&payload, &obj.key).unwrap());
    }

    #[test]
    fn other_key_is_a_mismatch() {
        let obj = rich();
        let payload = Bytes::from(encode(&obj).unwrap());
        let other = CacheKey::new(true, "example.com:8443", "/a/b?x=2");
        assert!(matches!(
            decode_for(&payload, &other),
            Err(DecodeError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn version_magic_and_checksum_are_checked() {
        let obj = rich();
        let good = encode(&obj).unwrap();
        let mut v = good.clone();
        v[4] = VERSION + 1;
        assert_eq!(
            decode(&Bytes::from(v)).unwrap_err(),
            DecodeError::Version(VERSION + 1)
        );
        let mut m = good.clone();
        m[0] = b'X';
        assert_eq!(decode(&Bytes::from(m)).unwrap_err(), DecodeError::Magic);
        let mut c = good.clone();
        let mid = c.len() / 2;
        c[mid] ^= 0x10;
        assert_eq!(decode(&Bytes::from(c)).unwrap_err(), DecodeError::Checksum);
        assert_eq!(decode(&Bytes::new()).unwrap_err(), DecodeError::Magic);
        assert_eq!(
            decode(&Bytes::from_static(b"STRC\x03")).unwrap_err(),
            DecodeError::Truncated(5)
        );
        // An entry of the previous format (without `strata_cc`) is a miss.
        assert_eq!(
            decode(&Bytes::from_static(b"STRC\x02")).unwrap_err(),
            DecodeError::Version(2)
        );
        assert!(decode(&Bytes::from_static(b"hello world, not an entry")).is_err());
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Replaces the trailing checksum so corruption reaches the parser.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        if b.len() >= HEADER_LEN + CHECKSUM_LEN {
            let end = b.len() - CHECKSUM_LEN;
            let sum = xxh3_64(&b[..end]).to_le_bytes();
            b[end..].copy_from_slice(&sum);
        }
        b
    }

    #[test]
    fn fuzzed_payloads_are_errors_never_panics() {
        let obj = rich();
        let good = encode(&obj).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..4000 {
            let mut b = good.clone();
            match round % 4 {
                0 => b.truncate(rng.below(good.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    // Truncate the body region but keep a valid checksum.
                    let keep = HEADER_LEN + rng.below(good.len() - HEADER_LEN - CHECKSUM_LEN);
                    b.truncate(keep);
                    b.extend_from_slice(&[0; CHECKSUM_LEN]);
                    b = reseal(b);
                }
                _ => {
                    // Flip bits in the body region (lengths, counts, bytes)
                    // and re-seal, so the parser itself is exercised.
                    for _ in 0..1 + rng.below(3) {
                        let i = HEADER_LEN + rng.below(good.len() - HEADER_LEN - CHECKSUM_LEN);
                        b[i] = rng.next() as u8;
                    }
                    b = reseal(b);
                }
            }
            if b == good {
                continue;
            }
            let payload = Bytes::from(b);
            // Resealed flips may still decode (a flipped body byte is a
            // valid, different object); unchecked ones must not.
            let res = decode_for(&payload, &obj.key);
            if round % 4 < 2 {
                assert!(res.is_err(), "round {round}: corruption went unnoticed");
            }
            // What decodes is whole: an encoded representation's fields,
            // parsed only now, are all there.
            for v in res.iter().flat_map(|o| &o.variants) {
                for e in &v.encoded {
                    let raw = e.stored_fields().unwrap().as_bytes();
                    let count = u32::from_le_bytes(raw[..4].try_into().unwrap());
                    assert_eq!(e.headers().len(), count as usize, "round {round}");
                }
            }
        }
    }
}
