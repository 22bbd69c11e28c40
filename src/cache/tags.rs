//! Surrogate keys: `Surrogate-Key` / `Cache-Tag` response fields tag an
//! entry for purging and are never sent to clients.

pub const SURROGATE_KEY: &str = "surrogate-key";
pub const CACHE_TAG: &str = "cache-tag";
