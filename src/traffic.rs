//! Traffic management on the request path that is not about choosing an
//! upstream (that is `upstream/balancer.rs` and `upstream/sticky.rs`):
//!
//! - `traffic/client_ip.rs`: the client IP behind trusted proxies
//!   (`server.trusted_proxies`), for rate limits, logs and forwarding
//!   headers.
//! - `traffic/rate_limit.rs`: `[[rate_limits]]`, local GCRA (`governor`)
//!   or fleet-wide through Redis (`rate_limit/shared.rs`).

pub mod client_ip;
pub mod rate_limit;

pub use client_ip::TrustedProxies;
pub use rate_limit::{ClientIp, Limited, RateLimits, Subject};
