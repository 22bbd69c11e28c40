//! The `Cache-Status` response field (RFC 9211) with cache name `strata`,
//! and the metrics outcome derived from it.
//!
//! Examples: `strata; hit; detail=memory`, `strata; fwd=miss; stored`,
//! `strata; fwd=stale; fwd-status=304`, `strata; fwd=bypass`. `ttl` (the
//! remaining freshness, RFC 9211 §2.5) comes last when known.

use http::HeaderValue;

/// The field's name (RFC 9211 §2).
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

pub use crate::cache::Tier;
use crate::metrics::Outcome;

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// The cache was configured not to handle it (uncacheable URL).
    Bypass,
    /// The method is not cacheable.
    Method,
    /// Stored responses exist, none matches the request's Vary fields.
    VaryMiss,
    /// Stored but not usable (e.g. Vary: *).
    Miss,
    /// The request's own directives (no-cache, no-store, max-age=0).
    Request,
    /// Stored but stale: validated with the upstream.
    Stale,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
        }
    }
}

/// Why a stale stored response was served on a forward (`detail=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedStale {
    /// RFC 5861 `stale-if-error`: the upstream failed or answered 5xx.
    StaleIfError,
    /// Marked stale by a soft purge; a background revalidation runs.
    SoftPurge,
    /// `[cache] grace`: the upstream failed or answered 5xx and the entry
    /// is within the configured grace.
    Grace,
}

impl From<crate::cache::freshness::Fallback> for ServedStale {
    fn from(f: crate::cache::freshness::Fallback) -> Self {
        match f {
            crate::cache::freshness::Fallback::StaleIfError => ServedStale::StaleIfError,
            crate::cache::freshness::Fallback::Grace => ServedStale::Grace,
        }
    }
}

impl ServedStale {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedStale::StaleIfError => "stale-if-error",
            ServedStale::SoftPurge => "soft-purge",
            ServedStale::Grace => "grace",
        }
    }
}

/// A forward's parameters (RFC 9211 §2.2–§2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub fwd: Fwd,
    /// The upstream's status, when a stored response was involved.
    pub fwd_status: Option<u16>,
    /// The response was stored.
    pub stored: bool,
    /// The request waited on another request's fetch.
    pub collapsed: bool,
    /// A stale copy was served instead of the upstream's answer.
    pub stale: Option<ServedStale>,
    /// Remaining freshness of what was served or stored, in seconds.
    pub ttl: Option<i64>,
}

/// One Cache-Status entry: a hit or a forward, never both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from a tier without going upstream. `ttl` is the remaining
    /// freshness in seconds (≤ 0 when a stale copy was allowed).
    Hit { tier: Tier, ttl: i64 },
    /// The request went (or would have gone) upstream.
    Forward(Forward),
    /// Neither: `only-if-cached` and nothing usable stored (RFC 9111
    /// §5.2.1.7), so the request did not go forward and the answer has no
    /// `fwd` (RFC 9211 §2.2): `strata; detail=only-if-cached`.
    OnlyIfCached,
}

impl CacheStatus {
    pub fn hit(tier: Tier, ttl: i64) -> Self {
        CacheStatus::Hit { tier, ttl }
    }

    /// A forward with no parameters yet.
    pub fn fwd(fwd: Fwd) -> Self {
        CacheStatus::Forward(Forward {
            fwd,
            fwd_status: None,
            stored: false,
            collapsed: false,
            stale: None,
            ttl: None,
        })
    }

    /// Changes a forward's parameters; a hit is left as it is.
    pub fn map(mut self, f: impl FnOnce(&mut Forward)) -> Self {
        if let CacheStatus::Forward(fw) = &mut self {
            f(fw);
        }
        self
    }

    /// The tier of a hit.
    pub fn tier(&self) -> Option<Tier> {
        match self {
            CacheStatus::Hit { tier, .. } => Some(*tier),
            CacheStatus::Forward(_) | CacheStatus::OnlyIfCached => None,
        }
    }

    /// The `outcome` label of a successful answer (errors are counted as
    /// `error` by [`crate::proxy::Answered::outcome`]).
    pub fn outcome(&self) -> Outcome {
        match self {
            CacheStatus::Hit { ttl, .. } if *ttl > 0 => Outcome::Hit,
            CacheStatus::Hit { .. } => Outcome::Stale,
            CacheStatus::Forward(f) if f.stale.is_some() => Outcome::Stale,
            CacheStatus::Forward(f) if f.fwd_status == Some(304) => Outcome::Revalidated,
            CacheStatus::Forward(f) if matches!(f.fwd, Fwd::Bypass | Fwd::Method) => {
                Outcome::Bypass
            }
            CacheStatus::Forward(_) | CacheStatus::OnlyIfCached => Outcome::Miss,
        }
    }

    pub fn to_header(&self) -> HeaderValue {
        if let CacheStatus::OnlyIfCached = self {
            return HeaderValue::from_static("strata; detail=only-if-cached");
        }
        let mut out = bytes::BytesMut::with_capacity(64);
        out.extend_from_slice(b"strata");
        match self {
            CacheStatus::Hit { tier, ttl } => {
                out.extend_from_slice(b"; hit; detail=");
                out.extend_from_slice(tier.as_str().as_bytes());
                push_ttl(&mut out, Some(*ttl));
            }
            CacheStatus::Forward(f) => {
                // The common, parameter-free forms need no formatting.
                let plain = Forward {
                    fwd: f.fwd,
                    fwd_status: None,
                    stored: false,
                    collapsed: false,
                    stale: None,
                    ttl: None,
                };
                if *f == plain {
                    match f.fwd {
                        Fwd::Bypass => return HeaderValue::from_static("strata; fwd=bypass"),
                        Fwd::Method => return HeaderValue::from_static("strata; fwd=method"),
                        Fwd::Request => return HeaderValue::from_static("strata; fwd=request"),
                        _ => {}
                    }
                }
                out.extend_from_slice(b"; fwd=");
                out.extend_from_slice(f.fwd.as_str().as_bytes());
                // Right after `fwd`, as SPEC §6 writes it (`strata;
                // fwd=stale; detail=grace`), whatever follows.
                if let Some(stale) = f.stale {
                    out.extend_from_slice(b"; detail=");
                    out.extend_from_slice(stale.as_str().as_bytes());
                }
                if let Some(status) = f.fwd_status {
                    out.extend_from_slice(b"; fwd-status=");
                    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                }
                if f.stored {
                    out.extend_from_slice(b"; stored");
                }
                if f.collapsed {
                    out.extend_from_slice(b"; collapsed");
                }
                push_ttl(&mut out, f.ttl);
            }
            CacheStatus::OnlyIfCached => {}
        }
        // Every piece above is visible ASCII: one allocation, no copy.
        HeaderValue::from_maybe_shared(out.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("strata"))
    }
}

fn push_ttl(out: &mut bytes::BytesMut, ttl: Option<i64>) {
    if let Some(ttl) = ttl {
        out.extend_from_slice(b"; ttl=");
        out.extend_from_slice(itoa::Buffer::new().format(ttl).as_bytes());
    }
}

/// An upstream cache's `Cache-Status` lines followed by Strata's member
/// `ours`, as one field line (RFC 9211 §2: the chain is kept, so a client
/// reading one value sees all of it). Empty members, and members that
/// cannot begin an RFC 8941 list member naming a cache (a token or a
/// quoted string), are dropped: one would make the whole field invalid
/// and a strict parser throw Strata's member away with it.
pub fn chain<'a>(
    upstream: impl Iterator<Item = &'a HeaderValue>,
    ours: &HeaderValue,
) -> HeaderValue {
    let mut members: Vec<String> = Vec::new();
    for v in upstream {
        crate::cache::vary::split_members(&String::from_utf8_lossy(v.as_bytes()), &mut members);
    }
    members.retain(|m| m.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*' || c == '"'));
    if members.is_empty() {
        return ours.clone();
    }
    let mut chain = members.join(", ");
    chain.push_str(", ");
    chain.push_str(ours.to_str().unwrap_or("strata"));
    HeaderValue::from_str(&chain).unwrap_or_else(|_| ours.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty or unparsable upstream members are dropped: `, strata; ...`
    /// made the whole field an invalid list.
    #[test]
    fn the_chain_keeps_only_members_that_parse() {
        let ours = HeaderValue::from_static("strata; hit");
        let chain = |lines: &[&str]| {
            let values: Vec<HeaderValue> = lines
                .iter()
                .map(|l| HeaderValue::from_str(l).unwrap())
                .collect();
            chain(values.iter(), &ours)
        };
        assert_eq!(chain(&[""]), "strata; hit");
        assert_eq!(chain(&["", "A; hit"]), "A; hit, strata; hit");
        assert_eq!(
            chain(&["A; hit, , B; fwd=miss"]),
            "A; hit, B; fwd=miss, strata; hit"
        );
        assert_eq!(chain(&[";;;garbage\""]), "strata; hit");
        assert_eq!(
            chain(&["\"Edge, Inc\"; hit"]),
            "\"Edge, Inc\"; hit, strata; hit"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(
            CacheStatus::hit(Tier::Memory, 5).to_header(),
            "strata; hit; detail=memory; ttl=5"
        );
        assert_eq!(
            CacheStatus::hit(Tier::Redis, 42).to_header(),
            "strata; hit; detail=redis; ttl=42"
        );
        let s = CacheStatus::fwd(Fwd::Miss).map(|f| f.stored = true);
        assert_eq!(s.to_header(), "strata; fwd=miss; stored");
        let s = CacheStatus::fwd(Fwd::Stale).map(|f| f.fwd_status = Some(304));
        assert_eq!(s.to_header(), "strata; fwd=stale; fwd-status=304");
        assert_eq!(s.outcome(), Outcome::Revalidated);
        assert_eq!(
            CacheStatus::fwd(Fwd::Bypass).to_header(),
            "strata; fwd=bypass"
        );
        let s = CacheStatus::fwd(Fwd::Miss).map(|f| f.collapsed = true);
        assert_eq!(
            s.map(|f| f.ttl = Some(-3)).to_header(),
            "strata; fwd=miss; collapsed; ttl=-3"
        );
        let s = CacheStatus::fwd(Fwd::Stale).map(|f| {
            f.fwd_status = Some(503);
            f.stale = Some(ServedStale::StaleIfError);
        });
        assert_eq!(
            s.to_header(),
            "strata; fwd=stale; detail=stale-if-error; fwd-status=503"
        );
        assert_eq!(s.outcome(), Outcome::Stale);
        assert_eq!(CacheStatus::hit(Tier::Memory, 0).outcome(), Outcome::Stale);
        let s = CacheStatus::fwd(Fwd::Stale).map(|f| f.stale = Some(ServedStale::SoftPurge));
        assert_eq!(s.to_header(), "strata; fwd=stale; detail=soft-purge");
        assert_eq!(s.outcome(), Outcome::Stale);
    }
}
