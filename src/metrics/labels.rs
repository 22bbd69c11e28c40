//! The bounded label values of the request metrics: `outcome` (how a
//! request was answered), `method_class` and `status_class`; and of the
//! cache's: `cause` of a purge, `reason` of what an admission shed. Each
//! enum's `index` (or discriminant) addresses the counters pre-resolved
//! for it.

use http::Method;

/// How a request was answered; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Fresh response from a cache tier.
    Hit,
    /// Stale response served (stale-while-revalidate, stale-if-error).
    Stale,
    /// Stored response validated with the upstream (304).
    Revalidated,
    /// Fetched from the upstream for the cache.
    Miss,
    /// Not handled by the cache (method, request directives, uncacheable).
    Bypass,
    /// Strata answered with an error (4xx it generated, 502/503/504).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Miss,
        Outcome::Bypass,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The `method_class` label: the common methods by name, every other token
/// as `OTHER` (clients may send any method; the label set must stay
/// bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodClass {
    pub const ALL: [MethodClass; 8] = [
        MethodClass::Get,
        MethodClass::Head,
        MethodClass::Post,
        MethodClass::Put,
        MethodClass::Delete,
        MethodClass::Patch,
        MethodClass::Options,
        MethodClass::Other,
    ];

    pub fn of(m: &Method) -> MethodClass {
        match *m {
            Method::GET => MethodClass::Get,
            Method::HEAD => MethodClass::Head,
            Method::POST => MethodClass::Post,
            Method::PUT => MethodClass::Put,
            Method::DELETE => MethodClass::Delete,
            Method::PATCH => MethodClass::Patch,
            Method::OPTIONS => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "GET",
            MethodClass::Head => "HEAD",
            MethodClass::Post => "POST",
            MethodClass::Put => "PUT",
            MethodClass::Delete => "DELETE",
            MethodClass::Patch => "PATCH",
            MethodClass::Options => "OPTIONS",
            MethodClass::Other => "OTHER",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The `status_class` label values, `1xx` to `5xx` (index = status / 100 - 1).
pub(super) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why entries were purged: the `cause` label of `strata_purged_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeCause {
    /// `POST /purge`.
    Api = 0,
    /// A successful unsafe method (RFC 9111 §4.4).
    UnsafeMethod = 1,
    /// An `[[invalidation.cascade]]` set off by either of the above.
    Cascade = 2,
}

impl PurgeCause {
    pub const ALL: [PurgeCause; 3] = [
        PurgeCause::Api,
        PurgeCause::UnsafeMethod,
        PurgeCause::Cascade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PurgeCause::Api => "api",
            PurgeCause::UnsafeMethod => "unsafe_method",
            PurgeCause::Cascade => "cascade",
        }
    }
}

/// What an admission left out for lack of memory: the `reason` label of
/// `strata_admission_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A storable response streamed without being stored: the bodies
    /// being collected filled their budget.
    Busy = 0,
    /// Stored without encoded representations: the encoding backlog was
    /// full.
    EncodingBacklog = 1,
    /// Stored without `br`: no room for brotli's working memory.
    BrotliMemory = 2,
}

impl Shed {
    pub const ALL: [Shed; 3] = [Shed::Busy, Shed::EncodingBacklog, Shed::BrotliMemory];

    pub fn as_str(self) -> &'static str {
        match self {
            Shed::Busy => "busy",
            Shed::EncodingBacklog => "encoding_backlog",
            Shed::BrotliMemory => "brotli_memory",
        }
    }
}
