//! A stored header section that is parsed only when it is read: the
//! [`LazyFields`] of an encoded representation ([`Encoded`]) read back from
//! the Redis tier.
//!
//! A Redis entry holds every representation of a response (identity, gzip,
//! br), and a hit serves one. Building a `HeaderMap` costs about 600
//! instructions per field (name lookup, value check, a `Bytes` slice, the
//! map's hash and insert); with three representations of nine fields that
//! was two fifths of a Redis hit's own work. The entry decoder therefore
//! checks an encoded representation's fields once (cheap byte scans, so a
//! bad entry is still a decode error, never a panic or a bad field) and
//! keeps them as a [`FieldBlock`], a slice of the payload already read;
//! the map is built on first read and kept. The identity headers, which
//! every hit serves, are parsed at once by the same [`parse`].
//!
//! [`Encoded`]: crate::cache::entry::Encoded

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header section in the Redis entry layout (`count:u32 { name:str16
/// value:bytes32 }*`, little-endian; see `cache/redis/codec.rs`), checked
/// by [`FieldBlock::check`]: every name a token (RFC 9110 §5.1), every
/// value bytes a field value may hold (§5.5, as `http` accepts them).
#[derive(Debug, Clone)]
pub struct FieldBlock {
    raw: Bytes,
    /// Bytes of names and values (the block's framing excluded).
    size: u64,
    fields: u32,
}

/// The most fields a stored header section may have. `http`'s `HeaderMap`
/// panics when asked for room for more than 24,576; no response comes
/// near this (hyper's client refuses more than 100 fields), so a larger
/// count is a corrupt or forged entry, refused before any map is built.
pub const MAX_FIELDS: u32 = 16_384;

/// Why a block failed [`FieldBlock::check`]: what, and the byte offset
/// within the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadBlock {
    pub what: &'static str,
    pub at: usize,
}

/// `tchar` (RFC 9110 §5.6.2), the bytes of a field name.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// The bytes `http` accepts in a field value: visible, space, tab and
/// obs-text (RFC 9110 §5.5).
fn value_byte(b: u8) -> bool {
    (b >= 32 && b != 127) || b == b'\t'
}

/// Whether every byte of `v` is a [`value_byte`], eight at a time: a
/// word with no byte below 0x20 and none equal to 0x7f is all valid (the
/// usual case); any other word is checked byte by byte (a tab is valid).
fn valid_value(v: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = v.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // A lane's high bit is set for a byte below 0x20 (or for any lane
        // above such a byte, through the borrow): never for a word
        // without one.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let d = x ^ (ONES * 0x7f);
        let delete = d.wrapping_sub(ONES) & !d & HIGH;
        if control | delete != 0 && !w.iter().all(|&b| value_byte(b)) {
            return false;
        }
    }
    words.remainder().iter().all(|&b| value_byte(b))
}

/// The field starting at byte `at` of a block: its name's and value's
/// ranges and where the next field starts; `None` when the block ends
/// inside it.
fn field_at(raw: &[u8], at: usize) -> Option<(Range<usize>, Range<usize>, usize)> {
    let n = raw.get(at..at.checked_add(2)?)?;
    let name = at + 2..at + 2 + usize::from(u16::from_le_bytes([n[0], n[1]]));
    let v = raw.get(name.end..name.end.checked_add(4)?)?;
    let len = u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize;
    let value = name.end + 4..(name.end + 4).checked_add(len)?;
    if value.end > raw.len() {
        return None;
    }
    Some((name, value.clone(), value.end))
}

/// The block starting at byte `start` of `payload` (which may go on past
/// it up to `end`) and its field count, checked against [`MAX_FIELDS`]
/// and against the bytes left (each field takes at least 6 bytes of
/// framing), so a corrupt count fails before any work.
fn counted(payload: &Bytes, start: usize, end: usize) -> Result<(&[u8], u32), BadBlock> {
    let truncated = BadBlock {
        what: "truncated header block",
        at: 0,
    };
    let raw = payload.get(start..end).ok_or(truncated)?;
    let count = raw.get(..4).ok_or(truncated)?;
    let fields = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    if fields > MAX_FIELDS || (fields as usize).saturating_mul(6) > raw.len() - 4 {
        return Err(BadBlock {
            what: "header count",
            at: 0,
        });
    }
    Ok((raw, fields))
}

/// The encoded size of `h` as a block, in bytes.
pub fn encoded_len(h: &HeaderMap) -> usize {
    4 + h
        .iter()
        .map(|(k, v)| 2 + k.as_str().len() + 4 + v.len())
        .sum::<usize>()
}

/// Appends `h` to `buf` as a block; `Err((what, len))` when a count or
/// length does not fit its field.
pub fn write(buf: &mut Vec<u8>, h: &HeaderMap) -> Result<(), (&'static str, usize)> {
    let count = u32::try_from(h.len()).map_err(|_| ("header count", h.len()))?;
    buf.extend_from_slice(&count.to_le_bytes());
    for (name, value) in h {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        let n = u16::try_from(name.len()).map_err(|_| ("header name", name.len()))?;
        let v = u32::try_from(value.len()).map_err(|_| ("header value", value.len()))?;
        buf.extend_from_slice(&n.to_le_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(&v.to_le_bytes());
        buf.extend_from_slice(value);
    }
    Ok(())
}

/// Parses the block starting at byte `start` of `payload` (which may go on
/// past it up to `end`) into a map at once: repeated fields kept, in
/// order; values are slices of `payload`, not copies. Returns the map and
/// the number of bytes the block spans.
pub fn parse(payload: &Bytes, start: usize, end: usize) -> Result<(HeaderMap, usize), BadBlock> {
    let (raw, fields) = counted(payload, start, end)?;
    // Room for what a hit adds (see `entry::room_to_serve`).
    let mut map = HeaderMap::with_capacity(fields as usize + super::entry::SERVED_FIELDS);
    let mut at = 4;
    for _ in 0..fields {
        let (name, value, next) = field_at(raw, at).ok_or(BadBlock {
            what: "truncated header field",
            at,
        })?;
        let name = HeaderName::from_bytes(&raw[name]).map_err(|_| BadBlock {
            what: "header name",
            at,
        })?;
        let value_at = value.start - 4;
        let value =
            HeaderValue::from_maybe_shared(payload.slice(start + value.start..start + value.end))
                .map_err(|_| BadBlock {
                what: "header value",
                at: value_at,
            })?;
        map.append(name, value);
        at = next;
    }
    Ok((map, at))
}

impl FieldBlock {
    /// Checks the block starting at byte `start` of `payload`, which may
    /// go on past it up to `end`, without parsing it; returns it (a slice
    /// of `payload`) with the number of bytes it spans.
    pub fn check(
        payload: &Bytes,
        start: usize,
        end: usize,
    ) -> Result<(FieldBlock, usize), BadBlock> {
        let (raw, fields) = counted(payload, start, end)?;
        let mut at = 4;
        let mut size = 0u64;
        for _ in 0..fields {
            let (name, value, next) = field_at(raw, at).ok_or(BadBlock {
                what: "truncated header field",
                at,
            })?;
            if name.is_empty() || !raw[name.clone()].iter().all(|&b| TOKEN[usize::from(b)]) {
                return Err(BadBlock {
                    what: "header name",
                    at,
                });
            }
            if !valid_value(&raw[value.clone()]) {
                return Err(BadBlock {
                    what: "header value",
                    at: name.end,
                });
            }
            size += (name.len() + value.len()) as u64;
            at = next;
        }
        Ok((
            FieldBlock {
                raw: payload.slice(start..start + at),
                size,
                fields,
            },
            at,
        ))
    }

    /// The block's bytes, framing included (what an encoder writes back).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Builds the map ([`parse`]). [`FieldBlock::check`] accepted every
    /// field, so it parses; a block that did not would give an empty map,
    /// never a panic.
    pub fn to_map(&self) -> HeaderMap {
        parse(&self.raw, 0, self.raw.len())
            .map(|(map, _)| map)
            .unwrap_or_default()
    }
}

/// An encoded representation's header fields: a map (made at admission,
/// or changed since) or a checked [`FieldBlock`] parsed on first read.
#[derive(Debug, Clone)]
pub enum LazyFields {
    Map(HeaderMap),
    Stored {
        block: FieldBlock,
        map: OnceLock<HeaderMap>,
    },
}

impl LazyFields {
    pub fn stored(block: FieldBlock) -> LazyFields {
        LazyFields::Stored {
            block,
            map: OnceLock::new(),
        }
    }

    /// The fields (built from the block on the first call).
    pub fn get(&self) -> &HeaderMap {
        match self {
            LazyFields::Map(m) => m,
            LazyFields::Stored { block, map } => map.get_or_init(|| block.to_map()),
        }
    }

    /// Changes the fields: a stored block becomes a map for good.
    pub fn modify(&mut self, change: impl FnOnce(&mut HeaderMap)) {
        let mut fields = match std::mem::replace(self, LazyFields::Map(HeaderMap::new())) {
            LazyFields::Map(m) => m,
            LazyFields::Stored { block, map } => map.into_inner().unwrap_or_else(|| block.to_map()),
        };
        change(&mut fields);
        super::entry::room_to_serve(&mut fields);
        *self = LazyFields::Map(fields);
    }

    /// Bytes of names and values, and the number of fields, without
    /// building the map (for [`Variant::weight`]).
    ///
    /// [`Variant::weight`]: crate::cache::entry::Variant::weight
    pub fn size(&self) -> (u64, u64) {
        match self {
            LazyFields::Map(m) => (
                m.iter()
                    .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
                    .sum(),
                m.len() as u64,
            ),
            LazyFields::Stored { block, .. } => (block.size, u64::from(block.fields)),
        }
    }

    /// The stored block, while the fields have not been changed.
    pub fn block(&self) -> Option<&FieldBlock> {
        match self {
            LazyFields::Map(_) => None,
            LazyFields::Stored { block, .. } => Some(block),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (fields.len() as u32).to_le_bytes().to_vec();
        for (name, value) in fields {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
            b.extend_from_slice(&(value.len() as u32).to_le_bytes());
            b.extend_from_slice(value);
        }
        b
    }

    #[test]
    fn a_block_parses_in_order_with_repeats() {
        let mut raw = block(&[
            (b"content-encoding", b"gzip"),
            (b"set-cookie", b"a=1"),
            (b"x-Custom", b"caf\xe9\t1"),
            (b"set-cookie", b"b=2"),
        ]);
        let len = raw.len();
        raw.extend_from_slice(b"trailing");
        let raw = Bytes::from(raw);
        let (b, spans) = FieldBlock::check(&raw, 0, raw.len()).unwrap();
        assert_eq!(spans, len);
        assert_eq!(b.as_bytes().len(), len);
        let m = b.to_map();
        let got: Vec<_> = m.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        assert_eq!(
            got,
            [
                ("content-encoding", &b"gzip"[..]),
                ("set-cookie", b"a=1"),
                ("set-cookie", b"b=2"),
                ("x-custom", b"caf\xe9\t1"),
            ]
        );
        let lazy = LazyFields::stored(b);
        assert_eq!(lazy.size(), (16 + 4 + 10 + 3 + 8 + 6 + 10 + 3, 4));
        assert_eq!(lazy.get().len(), 4);
    }

    #[test]
    fn bad_blocks_are_errors() {
        let check = |raw: Vec<u8>| FieldBlock::check(&Bytes::from(raw.clone()), 0, raw.len());
        let bad = |fields: &[(&[u8], &[u8])]| check(block(fields));
        assert_eq!(bad(&[(b"", b"v")]).unwrap_err().what, "header name");
        assert_eq!(bad(&[(b"a b", b"v")]).unwrap_err().what, "header name");
        assert_eq!(bad(&[(b"a:", b"v")]).unwrap_err().what, "header name");
        assert_eq!(bad(&[(b"a", b"x\ny")]).unwrap_err().what, "header value");
        assert_eq!(bad(&[(b"a", b"x\x7f")]).unwrap_err().what, "header value");
        let err = bad(&[(b"ok", b"1"), (b"a", b"\r")]).unwrap_err();
        assert_eq!(
            err,
            BadBlock {
                what: "header value",
                at: 4 + 2 + 2 + 4 + 1 + 2 + 1
            }
        );
        let good = block(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..good.len() {
            let r = check(good[..cut].to_vec());
            assert!(r.is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check(huge).unwrap_err().what, "header count");
        // Framing for them all is there, but a map that large would panic.
        let many: Vec<(&[u8], &[u8])> = vec![(b"a", b""); MAX_FIELDS as usize + 1];
        assert_eq!(bad(&many).unwrap_err().what, "header count");
        let most: Vec<(&[u8], &[u8])> = vec![(b"a", b""); MAX_FIELDS as usize];
        let (most, _) = check(block(&most)).unwrap();
        assert_eq!(most.to_map().len(), MAX_FIELDS as usize);
        // Offsets are the block's own, wherever it starts.
        let mut framed = b"xyz".to_vec();
        framed.extend_from_slice(&block(&[(b"a", b"\x00")]));
        let framed = Bytes::from(framed);
        let err = FieldBlock::check(&framed, 3, framed.len()).unwrap_err();
        assert_eq!(
            err,
            BadBlock {
                what: "header value",
                at: 7
            }
        );
    }

    #[test]
    fn the_word_check_agrees_with_the_byte_check() {
        // Every byte value in every lane of a 19-byte value (two words and
        // a remainder), on a background of each kind of byte.
        for background in [b'a', b'\t', 0x80, 0xff, b' '] {
            for at in 0..19 {
                for b in 0..=255u8 {
                    let mut v = [background; 19];
                    v[at] = b;
                    let slow = v.iter().all(|&b| value_byte(b));
                    assert_eq!(valid_value(&v), slow, "{background:#x} {at} {b:#x}");
                }
            }
        }
    }

    #[test]
    fn a_change_makes_a_map() {
        let raw = Bytes::from(block(&[(b"a", b"1")]));
        let (b, _) = FieldBlock::check(&raw, 0, raw.len()).unwrap();
        let mut lazy = LazyFields::stored(b);
        lazy.modify(|h| {
            h.insert("b", HeaderValue::from_static("2"));
        });
        assert!(lazy.block().is_none());
        assert_eq!(lazy.get().len(), 2);
        assert_eq!(lazy.size(), (4, 2));
    }
}
