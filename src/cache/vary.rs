//! Request field values normalised for `Vary` matching (RFC 9111 §4.1):
//! two requests select the same stored variant only when their values of
//! every field the response names are equal after a normalisation that
//! keeps their meaning.
//!
//! - Any field: its lines are combined into one list, each member trimmed
//!   and runs of whitespace outside quoted strings made one space
//!   (whitespace inside a quoted string is content and kept, as are the
//!   commas there).
//! - `Accept-Encoding` (RFC 9110 §12.5.3): its codings lowercased, `x-gzip`
//!   read as `gzip` (§8.4.1.3), each coding's qvalue in thousandths (`1`
//!   left out), sorted by coding. Only the order of the members and the
//!   spelling of their weights are dropped: a member's order carries no
//!   preference, its qvalue does. Reducing the field to the coding Strata
//!   itself would choose (as before) let a variant the origin encoded in
//!   another coding (`zstd`, `deflate`) reach clients that never accepted
//!   it.
//!
//! The values compared are those of the request the origin received
//! (§4.1 matches against the request the stored response answered): a
//! caller whose requests go upstream with some fields rewritten reads
//! them through [`RequestFields`] as they are sent, not as the client
//! wrote them.

use http::header::{self, HeaderMap, HeaderName};

use crate::compression::parse_qvalue;

/// A request's fields as Vary matching reads them (RFC 9111 §4.1). A
/// `HeaderMap` is read as it is; the proxy's view of a request as it is
/// forwarded (`proxy::as_forwarded`) reads the fields Strata rewrites on
/// the way upstream as the origin gets them.
pub trait RequestFields {
    /// The request's value of the field `name`, normalised as
    /// [`normalized`] does; `None` when the request does not carry it.
    fn vary_value(&self, name: &HeaderName) -> Option<String>;
}

impl RequestFields for HeaderMap {
    fn vary_value(&self, name: &HeaderName) -> Option<String> {
        normalized(self, name)
    }
}

/// `request`'s value of the field `name`, normalised as the module says;
/// `None` when the request does not carry the field (distinct from an
/// empty value).
pub fn normalized(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let mut members: Vec<String> = Vec::new();
    for v in values {
        split_members(&String::from_utf8_lossy(v.as_bytes()), &mut members);
    }
    if name == header::ACCEPT_ENCODING {
        return Some(accept_encoding(members));
    }
    Some(members.join(", "))
}

/// Appends the members of the list `value` to `out`: split on commas
/// outside quoted strings, trimmed, inner whitespace outside quotes
/// collapsed to one space; empty members dropped (RFC 9110 §5.6.1).
pub(crate) fn split_members(value: &str, out: &mut Vec<String>) {
    let mut member = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut space = false;
    for c in value.chars() {
        if quoted {
            member.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            ',' => {
                push_member(&mut member, out);
                space = false;
            }
            ' ' | '\t' => space = true,
            _ => {
                if space && !member.is_empty() {
                    member.push(' ');
                }
                space = false;
                if c == '"' {
                    quoted = true;
                }
                member.push(c);
            }
        }
    }
    push_member(&mut member, out);
}

fn push_member(member: &mut String, out: &mut Vec<String>) {
    if !member.is_empty() {
        out.push(std::mem::take(member));
    }
}

/// The canonical form of an `Accept-Encoding` list: `coding[;q=0.xyz]`
/// sorted by coding; a coding named twice keeps its lowest weight (as
/// negotiation reads it); members with a parameter other than `q`, or an
/// invalid qvalue, are kept as written (lowercased) so that they still
/// tell requests apart.
fn accept_encoding(members: Vec<String>) -> String {
    let mut codings: Vec<(String, Option<u16>)> = Vec::with_capacity(members.len());
    for member in members {
        let lower = member.to_ascii_lowercase();
        let mut parts = lower.split(';');
        let token = parts.next().unwrap_or("").trim();
        let token = match token {
            "x-gzip" => "gzip",
            "x-compress" => "compress",
            t => t,
        };
        let params: Vec<&str> = parts.map(str::trim).collect();
        let q = match params.as_slice() {
            [] => Some(1000),
            [p] => p
                .split_once('=')
                .filter(|(n, _)| n.trim() == "q")
                .and_then(|(_, v)| parse_qvalue(v.trim())),
            _ => None,
        };
        let (name, q) = match q {
            Some(q) => (token.to_string(), Some(q)),
            None => (lower.split_whitespace().collect::<Vec<_>>().join(""), None),
        };
        match codings.iter_mut().find(|(n, _)| *n == name) {
            Some((_, Some(old))) => *old = (*old).min(q.unwrap_or(*old)),
            Some((_, None)) => {}
            None => codings.push((name, q)),
        }
    }
    codings.sort();
    let mut out = String::new();
    for (name, q) in codings {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&name);
        if let Some(q) = q.filter(|&q| q != 1000) {
            out.push_str(&format!(";q=0.{q:03}"));
        }
    }
    out
}

/// Whether a response's `Vary` names `*` (on any of its lines), or a
/// member that is not a field name (`Origin;`, `Origin Cookie`): either
/// way no later request can be selected for it (RFC 9111 §4.1), and it is
/// never stored. A malformed list cannot be matched, so it is read as `*`,
/// as Varnish does ("Malformed Vary header": a pass); dropping the member
/// shared a CORS answer or a cookie page across the values the origin
/// meant to vary on. Empty list elements are allowed (RFC 9110 §5.6.1).
pub fn varies_on_everything(response: &HeaderMap) -> bool {
    response.get_all(header::VARY).iter().any(|line| {
        let Ok(line) = line.to_str() else {
            return true;
        };
        line.split(',').map(str::trim).any(|member| {
            member == "*"
                || (!member.is_empty() && HeaderName::from_bytes(member.as_bytes()).is_err())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::test_headers as h;

    #[test]
    fn a_malformed_vary_varies_on_everything() {
        for vary in ["*", "Origin, *", "Origin;", "Accept-Encoding Origin", "a;b"] {
            assert!(varies_on_everything(&h(&[("vary", vary)])), "{vary}");
        }
        for vary in ["Origin", ", Origin,", "Accept-Encoding , Origin", ""] {
            assert!(!varies_on_everything(&h(&[("vary", vary)])), "{vary}");
        }
        assert!(varies_on_everything(&h(&[
            ("vary", "Origin"),
            ("vary", "x y")
        ])));
    }

    fn ae(values: &[&str]) -> Option<String> {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("accept-encoding", *v)).collect();
        normalized(&h(&pairs), &header::ACCEPT_ENCODING)
    }

    /// Spellings of one preference share a variant; different sets of
    /// acceptable codings (or weights) never do. `zstd`, `deflate` and
    /// `identity` were all read as "identity", and `gzip, deflate, br,
    /// zstd` as `gzip, deflate, br`: a client got a `zstd` body it never
    /// accepted.
    #[test]
    fn accept_encoding_keeps_its_meaning() {
        let same = [
            "gzip, deflate, br",
            "br,gzip,deflate",
            "GZIP , Deflate ,  br",
            "x-gzip, deflate, br;q=1",
            "br;q=1.0, gzip;Q=1.000, deflate",
        ];
        for v in same {
            assert_eq!(ae(&[v]).as_deref(), Some("br,deflate,gzip"), "{v}");
        }
        assert_eq!(
            ae(&["gzip, deflate", "br"]).as_deref(),
            Some("br,deflate,gzip")
        );
        let different = [
            "gzip, deflate, br, zstd",
            "identity",
            "deflate",
            "zstd",
            "identity;q=1, *;q=0",
            "gzip;q=0.5, br",
            "gzip",
            "br",
            "",
        ];
        let mut seen = vec![ae(&["gzip, deflate, br"])];
        for v in different {
            let n = ae(&[v]);
            assert!(!seen.contains(&n), "{v} collides: {n:?}");
            seen.push(n);
        }
        assert_eq!(ae(&["gzip;q=0.5, br"]).as_deref(), Some("br,gzip;q=0.500"));
        assert_eq!(
            ae(&["gzip;q=0.5, gzip;q=0.2"]).as_deref(),
            Some("gzip;q=0.200")
        );
        // An invalid weight is kept as written, never read as another.
        assert_ne!(ae(&["gzip;q=2"]), ae(&["gzip"]));
        assert_eq!(normalized(&h(&[]), &header::ACCEPT_ENCODING), None);
    }

    /// Whitespace and commas inside a quoted string are content (RFC 9111
    /// §4.1 allows only the normalisation the field's syntax permits):
    /// `"a,b"` and `"a, b"`, `"a   b"` and `"a b"` were one variant.
    #[test]
    fn quoted_strings_are_kept_as_sent() {
        let n = HeaderName::from_static("x-token");
        let norm = |v: &str| normalized(&h(&[("x-token", v)]), &n);
        assert_ne!(norm("\"a,b\""), norm("\"a, b\""));
        assert_ne!(norm("\"a   b\""), norm("\"a b\""));
        assert_eq!(norm("\"a, b\"").as_deref(), Some("\"a, b\""));
        assert_eq!(
            norm("x;  p=\"q\\\" ,z\" , y").as_deref(),
            Some("x; p=\"q\\\" ,z\", y")
        );
        // Outside quotes, list whitespace is not content.
        assert_eq!(norm("en,  fr"), norm("en, fr"));
        assert_eq!(norm("en ,fr"), norm("en, fr"));
        assert_eq!(
            normalized(&h(&[("x-token", "en"), ("x-token", "fr")]), &n),
            norm("en, fr")
        );
        assert_eq!(norm("").as_deref(), Some(""));
    }
}
