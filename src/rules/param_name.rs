//! How origin frameworks read a query parameter's name, for the key
//! options that keep, drop or reorder parameters by name (`key.query_only`,
//! `key.query_ignore`, `key.query = "sorted"`; SPEC §7).
//!
//! The key holds parameters as sent, but an origin reads each name after
//! its own decoding (parameter cloaking: `?q=shoes&%71=EVIL` is read by
//! PHP, Django and Rack as `q = EVIL`, last wins). The readings considered:
//!
//! - percent-decoded, `+` as a space (the `application/x-www-form-urlencoded`
//!   parsing of the WHATWG URL standard: Django, Rack, PHP, Go, servlets),
//!   and `%uXXXX` (ASP.NET's `HttpUtility.UrlDecode`);
//! - cut at a NUL (PHP registers names as C strings);
//! - PHP's `php_register_variable_ex`: leading spaces stripped, ` ` and
//!   `.` read as `_`, `q[...]` read as the array `q`, an unclosed `[`
//!   read as `_`;
//! - Rack's and Express `qs`'s nested names: leading `[`/`]` dropped, the
//!   name cut at the first `[` or `]` (`q[]`, `q[x]` are `q`);
//! - case-insensitive (ASP.NET's `Request.QueryString`), Unicode
//!   upper-casing included (`ı` is `I` there): for keeping only, see
//!   [`any_reading`].
//!
//! A name of ASCII letters, digits, `-` and `_` alone is read as itself by
//! all of them (up to case): that usual case is checked without
//! allocating.

use std::borrow::Cow;

/// Whether every framework reads `name` as itself (up to ASCII case).
pub fn is_plain(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `matches` holds for some reading of the sent name `raw` (the
/// name as sent included). For `key.query_only`, whose globs are matched
/// case-insensitively: a parameter that any framework could read as a
/// kept name stays in the key.
pub fn any_reading(raw: &str, mut matches: impl FnMut(&str) -> bool) -> bool {
    if is_plain(raw) {
        return matches(raw);
    }
    readings(raw, true).iter().any(|r| matches(r))
}

/// Whether `matches` holds for every reading of the sent name `raw`. For
/// `key.query_ignore`: a parameter is dropped from the key only when no
/// framework could read it as a name that is not ignored (`%75tm_x` is
/// kept under `utm_*`: a reading of it, the name as sent, is not ignored).
/// Case is not a reading here: a case-sensitive origin reads `UTM_X` as
/// itself.
pub fn every_reading(raw: &str, mut matches: impl FnMut(&str) -> bool) -> bool {
    if is_plain(raw) {
        return matches(raw);
    }
    readings(raw, false).iter().all(|r| matches(r))
}

/// The names `raw` may be read as (see the module doc), `raw` first;
/// `case`: also the upper-cased non-ASCII ones (ASCII case is left to the
/// caller's case-insensitive match).
fn readings(raw: &str, case: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(8);
    let mut push = |s: Cow<'_, str>| {
        if !out.iter().any(|o| *o == s) {
            out.push(s.into_owned());
        }
    };
    push(Cow::Borrowed(raw));
    let decoded = decode(raw);
    let cut = decoded.split('\0').next().unwrap_or("");
    for name in [decoded.as_str(), cut] {
        push(Cow::Borrowed(name));
        push(Cow::Owned(php(name, true)));
        push(Cow::Owned(php(name, false)));
        push(Cow::Borrowed(nested_base(name)));
    }
    if case {
        let upper: Vec<String> = out
            .iter()
            .filter(|r| !r.is_ascii())
            .map(|r| r.to_uppercase())
            .collect();
        for u in upper {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    out
}

/// Percent-decodes a name as form decoders do: `+` is a space, `%XX` a
/// byte and `%uXXXX` a UTF-16 unit (ASP.NET); a malformed escape stays as
/// it is. Invalid UTF-8 becomes U+FFFD.
fn decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some((Some(h), Some(l))) =
                    b.get(i + 1..i + 3).map(|d| (hex(d[0]), hex(d[1])))
                {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                let unit = b
                    .get(i + 1..i + 6)
                    .filter(|u| u[0] == b'u' || u[0] == b'U')
                    .and_then(|u| u[1..].iter().try_fold(0u32, |n, &d| Some(n * 16 + hex(d)?)))
                    .and_then(char::from_u32);
                if let Some(c) = unit {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name PHP registers for a decoded `name`: leading spaces stripped,
/// ` ` and `.` as `_`; `a[...]` is the array `a`; an unclosed `[` is read
/// as `_`, and with `mangle_rest` so are the ` ` and `.` after it (PHP 8;
/// earlier versions left them).
fn php(name: &str, mangle_rest: bool) -> String {
    let name = name.trim_start_matches(' ');
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        match c {
            '[' if name[i..].contains(']') => break,
            '[' if !mangle_rest => {
                out.push('_');
                out.push_str(&name[i + 1..]);
                break;
            }
            ' ' | '.' | '[' => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// The base of a nested name as Rack and `qs` read it: leading `[` and `]`
/// dropped, then up to the first `[` or `]` (`q[]`, `q[a][b]` are `q`).
fn nested_base(name: &str) -> &str {
    let name = name.trim_start_matches(['[', ']']);
    name.split(['[', ']']).next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_is(raw: &str, kept: &str) -> bool {
        any_reading(raw, |r| r.eq_ignore_ascii_case(kept))
    }

    #[test]
    fn spellings_frameworks_read_as_the_name_are_readings_of_it() {
        for raw in [
            "q", "Q", "%71", "%51", "+q", "%20q", "q%00", "q%00x", "q[]", "q[x]", "q%5B%5D", "[q]",
            "%u0071", "%U0051", "ı", "Q%5b0%5d",
        ] {
            assert!(any_is(raw, "q") || raw == "ı", "{raw}");
        }
        // PHP reads ` `, `.` and an unclosed `[` as `_`.
        for raw in ["a.b", "a+b", "a%20b", "a[b", "a%2Eb", " a.b"] {
            assert!(any_is(raw, "a_b"), "{raw}");
        }
        // ASP.NET compares by upper case: `ı` is `I`.
        assert!(any_is("%C4%B1d", "id"));
        assert!(any_is("ıd", "id"));
        for other in ["qq", "x", "%72", "q_", "aq", "q%01"] {
            assert!(!any_is(other, "q"), "{other}");
        }
    }

    #[test]
    fn every_reading_must_match_to_drop() {
        let utm = |r: &str| r.starts_with("utm_");
        assert!(every_reading("utm_source", utm));
        assert!(every_reading("utm_a.b", utm));
        assert!(every_reading("utm_x[]", |r| r.starts_with("utm_")));
        // Read as something else by some framework: kept.
        assert!(!every_reading("%75tm_x", utm));
        assert!(!every_reading("UTM_X", utm));
        let fbclid = |r: &str| r == "fbclid";
        assert!(every_reading("fbclid", fbclid));
        assert!(!every_reading("fbclid%00", fbclid));
        assert!(!every_reading("fbclid[]", fbclid));
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("a+b%41%zz%u0041%u00"), "a bA%zzA%u00");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%FF"), "\u{FFFD}");
        assert_eq!(php("  a b.c", true), "a_b_c");
        assert_eq!(php("a[b].c", true), "a");
        assert_eq!(php("a[b.c", true), "a_b_c");
        assert_eq!(php("a[b.c", false), "a_b.c");
        assert_eq!(nested_base("[]a[b]"), "a");
        assert!(is_plain("utm_source-2") && !is_plain("a.b") && !is_plain("é"));
    }
}
