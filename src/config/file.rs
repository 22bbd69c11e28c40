//! The configuration file's shape, exactly as written in TOML.
//!
//! Every table denies unknown keys so that a typo is an error, never a
//! silently ignored setting. Values that can be checked on their own
//! (durations, sizes, addresses) are typed here so that their errors carry
//! the TOML span; checks that involve several keys live in `config.rs`,
//! which turns this shape into the validated [`crate::config::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, Dur, ListenAddr};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerFile,
    pub admin: AdminFile,
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    #[serde(default)]
    pub compression: CompressionFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitFile>,
    #[serde(default)]
    pub alerts: AlertsFile,
    #[serde(default)]
    pub invalidation: InvalidationFile,
    pub warming: Option<WarmingFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: ListenAddr,
    pub tls: Option<TlsFile>,
    pub drain_timeout: Option<Dur>,
    pub header_read_timeout: Option<Spanned<Dur>>,
    pub send_timeout: Option<Spanned<Dur>>,
    pub max_header_size: Option<Spanned<ByteSize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub strip_request_headers: Option<Vec<Spanned<String>>>,
    pub underscores_in_headers: Option<bool>,
    pub sendfile: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Spanned<ListenAddr>,
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
    /// Further certificates, chosen by SNI against their subject names.
    #[serde(default)]
    pub certificates: Vec<CertFile>,
    pub handshake_timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Spanned<ListenAddr>,
    pub token: Option<Spanned<String>>,
    pub read_token: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub servers: Spanned<Vec<Spanned<UpstreamServerFile>>>,
    pub balance: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub slow_start: Option<Dur>,
    pub sticky: Option<Spanned<StickyFile>>,
    pub connect_timeout: Option<Spanned<Dur>>,
    pub response_timeout: Option<Spanned<Dur>>,
    pub body_idle_timeout: Option<Spanned<Dur>>,
    pub pool_idle_timeout: Option<Dur>,
    pub pool_max_idle_per_server: Option<usize>,
    #[serde(default)]
    pub health: HealthFile,
}

/// An upstream server: `"host:port"` or `{ addr = "host:port", weight = 3 }`.
#[derive(Debug)]
pub enum UpstreamServerFile {
    Addr(String),
    Weighted(WeightedServerFile),
}

/// By hand rather than `#[serde(untagged)]`, so that a table's own error
/// (an unknown key, a missing `addr`) reaches the user instead of "did not
/// match any variant".
impl<'de> Deserialize<'de> for UpstreamServerFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamServerFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UpstreamServerFile::Addr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                WeightedServerFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamServerFile::Weighted)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedServerFile {
    pub addr: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    pub cookie: Option<Spanned<String>>,
    pub max_age: Option<Spanned<Dur>>,
    pub secret: Option<Spanned<String>>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub pattern: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u32>>,
    pub count: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub enabled: Option<bool>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub fail_timeout: Option<Spanned<Dur>>,
    /// Statuses that count as up: classes (`"2xx"`) or codes (`"204"`).
    pub expect_status: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub enabled: Option<bool>,
    pub memory_capacity: Option<Spanned<ByteSize>>,
    pub max_object_size: Option<Spanned<ByteSize>>,
    pub collapse_timeout: Option<Dur>,
    pub heuristic_fraction: Option<Spanned<f64>>,
    pub max_heuristic_lifetime: Option<Dur>,
    pub prefresh: Option<Spanned<f64>>,
    pub prefresh_min_hits: Option<u32>,
    pub grace: Option<Dur>,
    pub targeted_cache_control: Option<Vec<Spanned<String>>>,
    pub redis: Option<RedisFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub mode: Option<Spanned<String>>,
    pub urls: Spanned<Vec<Spanned<String>>>,
    pub sentinel_master: Option<Spanned<String>>,
    pub timeout: Option<Spanned<Dur>>,
    pub key_prefix: Option<String>,
    pub write_queue: Option<Spanned<usize>>,
    pub breaker_threshold: Option<Spanned<u32>>,
    pub breaker_backoff: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub cache_control: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub content_type: Option<Spanned<Vec<Spanned<String>>>>,
    pub ttl: Option<Dur>,
    pub min_ttl: Option<Spanned<Dur>>,
    pub max_ttl: Option<Spanned<Dur>>,
    /// Status pattern (`"404"`, `"5xx"`) → lifetime.
    pub status_ttl: Option<BTreeMap<String, Spanned<Dur>>>,
    pub stale_while_revalidate: Option<Dur>,
    pub stale_if_error: Option<Dur>,
    pub key: Option<KeyFile>,
}

/// `key.*` of a rule: how the cache key is built (never the upstream
/// request).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub query: Option<Spanned<String>>,
    pub query_ignore: Option<Spanned<Vec<Spanned<String>>>>,
    pub query_only: Option<Spanned<Vec<Spanned<String>>>>,
    pub headers: Option<Vec<Spanned<String>>>,
    pub cookies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionFile {
    pub enabled: Option<bool>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_size: Option<ByteSize>,
    pub types: Option<Vec<Spanned<String>>>,
    pub store_level: Option<LevelsFile>,
    pub stream_level: Option<LevelsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelsFile {
    pub br: Option<Spanned<u32>>,
    pub gzip: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    /// `"text"`, `"json"` or `"combined"`; absent = the log `format`.
    pub access_format: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    pub instance: Option<Spanned<String>>,
    #[serde(default)]
    pub webhooks: Vec<WebhookFile>,
    pub hit_ratio_low: Option<RatioFile>,
    pub error_ratio_high: Option<RatioFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: Spanned<String>,
    pub format: Option<Spanned<String>>,
    #[serde(default)]
    pub events: Vec<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub batch_window: Option<Dur>,
    pub timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioFile {
    pub threshold: Spanned<f64>,
    pub window: Option<Spanned<Dur>>,
    pub min_rps: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationFile {
    #[serde(default)]
    pub cascade: Vec<CascadeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeFile {
    pub on: Spanned<String>,
    #[serde(default)]
    pub purge_tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub purge_prefixes: Vec<Spanned<String>>,
    pub soft: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmingFile {
    pub on_start: Option<bool>,
    pub interval: Option<Spanned<Dur>>,
    pub urls_file: Option<Spanned<PathBuf>>,
    pub sitemap: Option<Spanned<String>>,
    pub redis_hot: Option<Spanned<usize>>,
    pub concurrency: Option<Spanned<usize>>,
    pub rate: Option<Spanned<String>>,
    pub encodings: Option<Vec<Spanned<String>>>,
    pub host: Option<Spanned<String>>,
}
