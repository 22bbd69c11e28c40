//! The `Cache-Status` response field (RFC 9211) with cache name `strata`.
//!
//! Examples: `strata; hit; detail=memory`, `strata; fwd=miss; stored`,
//! `strata; fwd=stale; fwd-status=304`, `strata; fwd=bypass`. `ttl` (the
//! remaining freshness, RFC 9211 §2.5) comes last when known.

use http::HeaderValue;

/// Where a hit came from; `detail=` of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// The cache was configured not to handle it (uncacheable URL).
    Bypass,
    /// The method is not cacheable.
    Method,
    /// Nothing stored for the URL.
    UriMiss,
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
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
        }
    }
}

/// One Cache-Status entry.
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    pub hit: Option<Tier>,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(tier: Tier) -> Self {
        CacheStatus {
            hit: Some(tier),
            ..Default::default()
        }
    }

    pub fn fwd(fwd: Fwd) -> Self {
        CacheStatus {
            fwd: Some(fwd),
            ..Default::default()
        }
    }

    pub fn with_ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn to_header(&self) -> HeaderValue {
        // The common, parameter-free forms need no formatting at all.
        if self.ttl.is_none() && self.fwd_status.is_none() && self.detail.is_none() {
            let s = match (self.hit, self.fwd, self.stored, self.collapsed) {
                (None, Some(Fwd::Bypass), false, false) => Some("strata; fwd=bypass"),
                (None, Some(Fwd::Method), false, false) => Some("strata; fwd=method"),
                (None, Some(Fwd::Request), false, false) => Some("strata; fwd=request"),
                (None, Some(Fwd::UriMiss), false, false) => Some("strata; fwd=uri-miss"),
                _ => None,
            };
            if let Some(s) = s {
                return HeaderValue::from_static(s);
            }
        }
        let mut out = bytes::BytesMut::with_capacity(64);
        out.extend_from_slice(b"strata");
        if let Some(tier) = self.hit {
            out.extend_from_slice(b"; hit; detail=");
            out.extend_from_slice(tier.as_str().as_bytes());
        }
        if let Some(fwd) = self.fwd {
            out.extend_from_slice(b"; fwd=");
            out.extend_from_slice(fwd.as_str().as_bytes());
        }
        if let Some(status) = self.fwd_status {
            out.extend_from_slice(b"; fwd-status=");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            out.extend_from_slice(b"; collapsed");
        }
        if self.hit.is_none() {
            if let Some(detail) = self.detail {
                out.extend_from_slice(b"; detail=");
                out.extend_from_slice(detail.as_bytes());
            }
        }
        if let Some(ttl) = self.ttl {
            out.extend_from_slice(b"; ttl=");
            out.extend_from_slice(itoa::Buffer::new().format(ttl).as_bytes());
        }
        // Every piece above is visible ASCII: one allocation, no copy.
        HeaderValue::from_maybe_shared(out.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("strata"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            CacheStatus::hit(Tier::Memory).to_header(),
            "strata; hit; detail=memory"
        );
        assert_eq!(
            CacheStatus::hit(Tier::Redis).with_ttl(42).to_header(),
            "strata; hit; detail=redis; ttl=42"
        );
        let mut s = CacheStatus::fwd(Fwd::UriMiss);
        s.stored = true;
        assert_eq!(s.to_header(), "strata; fwd=uri-miss; stored");
        let mut s = CacheStatus::fwd(Fwd::Stale);
        s.fwd_status = Some(304);
        assert_eq!(s.to_header(), "strata; fwd=stale; fwd-status=304");
        assert_eq!(
            CacheStatus::fwd(Fwd::Bypass).to_header(),
            "strata; fwd=bypass"
        );
        let mut s = CacheStatus::fwd(Fwd::Miss);
        s.collapsed = true;
        assert_eq!(
            s.with_ttl(-3).to_header(),
            "strata; fwd=miss; collapsed; ttl=-3"
        );
    }
}
