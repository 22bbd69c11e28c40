//! Configuration: the TOML file is read in two layers. `config/file.rs` is
//! the serde shape (unknown keys rejected, spans kept); `config/validate.rs`
//! turns it into the typed [`Config`] defined here, which the rest of Strata
//! runs on, filling in every default in one place. Every error names the
//! file, line, column and key.

mod alerts;
pub mod file;
mod server_address;
mod traffic;
pub mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;

use crate::compression::{Coding, CompressionPolicy};
use crate::invalidation::Cascades;
use crate::rules::RuleSet;
use file::FileConfig;
use validate::{Locator, Validator};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub rules: RuleSet,
    /// `None` when compression is disabled.
    pub compression: Option<CompressionPolicy>,
    pub log: LogConfig,
    /// `[[rate_limits]]`, in file order; empty = no limiter at all.
    pub rate_limits: Vec<RateLimitConfig>,
    pub alerts: crate::alerts::AlertsConfig,
    /// `[[invalidation.cascade]]`; empty = off.
    pub invalidation: Cascades,
    /// `[warming]`; `None` = off.
    pub warming: Option<WarmingConfig>,
    /// What the file sets that is accepted but ignored, each as
    /// `file:line:column: key: message` (e.g. `sentinel_master` outside
    /// sentinel mode, as in SPEC §2's example): `check` prints them,
    /// `serve` and reloads log them at `warn`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub drain_timeout: Duration,
    pub header_read_timeout: Duration,
    /// How long a response write may wait for a client that reads nothing
    /// before the connection is closed (nginx's `send_timeout`).
    pub send_timeout: Duration,
    pub max_header_size: usize,
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` is believed; empty = none.
    pub trusted_proxies: crate::traffic::TrustedProxies,
    /// Request fields removed before a request goes upstream (SPEC §10);
    /// default [`crate::proxy::headers::STRIP_BY_DEFAULT`].
    pub strip_request_headers: Vec<http::HeaderName>,
    /// Request fields whose name holds `_` are forwarded (nginx's
    /// `underscores_in_headers`); default off: they are dropped when the
    /// request arrives (SPEC §10).
    pub underscores_in_headers: bool,
    /// Large stored bodies are kept in shared memory and sent to plain
    /// (non-TLS) clients with `sendfile(2)` (Linux; default on, like
    /// nginx's `sendfile on`). Restart-only.
    pub sendfile: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// The default certificate first, then the SNI-selected ones.
    pub certificates: Vec<CertPair>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the config names each file (`strata.toml:5:8:
    /// server.tls.cert`), for errors found when the files are loaded.
    pub cert_at: String,
    pub key_at: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints; `None` disables them.
    pub token: Option<String>,
    /// Bearer token for the read endpoints (`/metrics`, `/stats`,
    /// `/dashboard`, `/events`, `/cache`); `token` is accepted there too.
    /// `None` leaves them open. `/health` is always open.
    pub read_token: Option<String>,
    /// Concurrent admin connections, counted apart from the proxy's
    /// `server.max_connections` so a flood there never blocks `/health`.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port` authorities, in configuration order.
    pub servers: Vec<Authority>,
    /// Each server's weight (1 or more), parallel to `servers`.
    pub weights: Vec<u32>,
    pub balance: Balance,
    /// Ramp-up time of a recovered or added server; zero = off.
    pub slow_start: Duration,
    /// `[upstream.sticky]`; `None` = off.
    pub sticky: Option<StickyConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_server: usize,
    pub health: HealthConfig,
}

/// `upstream.balance` (with `hash_key` for `"hash"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's algorithm).
    RoundRobin,
    /// nginx's `least_conn`: fewest in-flight requests per unit of weight,
    /// ties by smooth weighted round-robin.
    LeastRequest,
    /// Consistent hash ring on a request property.
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The path and query.
    Uri,
    Header(http::HeaderName),
    Cookie(String),
}

/// `[upstream.sticky]`: cookie-based session affinity.
#[derive(Clone)]
pub struct StickyConfig {
    pub cookie: String,
    pub max_age: Duration,
    /// HMAC-SHA256 key for the cookie values (never logged).
    pub secret: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl std::fmt::Debug for StickyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyConfig")
            .field("cookie", &self.cookie)
            .field("max_age", &self.max_age)
            .field("secret", &"<redacted>")
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// One `[[rate_limits]]` entry.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub name: String,
    /// The glob as written (`/**` when absent).
    pub pattern: String,
    /// Matches the path with repeated slashes merged (`rules/path_glob.rs`).
    pub matcher: crate::rules::PathGlob,
    pub key: LimitKey,
    /// Requests allowed per `per`.
    pub rate: u32,
    pub per: Duration,
    /// Requests allowed at once on top of an idle budget (at least 1).
    pub burst: u32,
    pub count: LimitCount,
    pub backend: LimitBackend,
    pub dry_run: bool,
}

/// What a rate limit is kept per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client IP (see `server.trusted_proxies`).
    Ip,
    Header(http::HeaderName),
    Cookie(String),
    /// One budget for every client.
    Global,
}

/// Which requests a limit charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitCount {
    All,
    /// Only requests that go to an upstream (hits are never charged).
    Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    Local,
    /// Shared through the Redis tier; local when Redis is unavailable.
    Redis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// How long connect failures alone take a server out (nginx's
    /// `fail_timeout`, Envoy's `base_ejection_time`); then one request
    /// tries it again. Above zero; default 10 s.
    pub fail_timeout: Duration,
    /// Statuses that count as up; empty = liveness: any status below 500.
    pub expect_status: Vec<crate::upstream::health::StatusMatch>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub memory_capacity: u64,
    /// `cache.max_object_size` as configured, bytes; what may really be
    /// stored is [`CacheConfig::storable_size`].
    pub max_object_size: u64,
    /// How long a collapsed request waits on the leader's fetch before
    /// going to the upstream itself.
    pub collapse_timeout: Duration,
    /// RFC 9111 §4.2.2 heuristic: this fraction of the time since
    /// Last-Modified.
    pub heuristic_fraction: f64,
    pub max_heuristic_lifetime: Duration,
    /// Refresh-ahead: a hit past this fraction of the entry's freshness
    /// lifetime starts a background revalidation (`0` = off).
    pub prefresh: f64,
    /// ... once the entry has had at least this many hits.
    pub prefresh_min_hits: u32,
    /// How long past its freshness lifetime a stale entry may answer when
    /// the upstream fails or answers 5xx (RFC 9111 §4.2.4); zero = off.
    pub grace: Duration,
    /// RFC 9213 targeted fields, in precedence order: the first present and
    /// valid one replaces Cache-Control for Strata's own decision.
    pub targeted_cache_control: Vec<http::HeaderName>,
    pub redis: Option<RedisConfig>,
}

impl CacheConfig {
    /// The largest body, in bytes, a response may have to be stored:
    /// `max_object_size`, and without a Redis tier no more than the memory
    /// tier holds (a larger one was answered `stored` and evicted at once).
    pub fn storable_size(&self) -> u64 {
        if self.redis.is_some() {
            self.max_object_size
        } else {
            self.max_object_size.min(self.memory_capacity)
        }
    }
}

/// `[warming]`: populating the cache at start-up and periodically.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmingConfig {
    pub on_start: bool,
    /// Warm again this often; `None` = start-up only.
    pub interval: Option<Duration>,
    /// One path or absolute URL a line, `#` comments.
    pub urls_file: Option<PathBuf>,
    /// A sitemap or sitemap index URL (`.gz` too).
    pub sitemap: Option<String>,
    /// Pull the fleet's N most requested entries from Redis (0 = off).
    pub redis_hot: usize,
    pub concurrency: usize,
    /// At most `rate_count` warming requests per `rate_per`.
    pub rate_count: u32,
    pub rate_per: Duration,
    /// Also request these encodings (`Accept-Encoding`).
    pub encodings: Vec<Coding>,
    /// The Host for paths (and every URL, when set); default: the proxy
    /// listener's address.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// May carry passwords: written anywhere through
    /// [`crate::telemetry::without_credentials`] only.
    pub urls: Vec<String>,
    pub sentinel_master: Option<String>,
    pub timeout: Duration,
    pub key_prefix: String,
    pub write_queue: usize,
    pub breaker_threshold: u32,
    pub breaker_backoff: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<_> = self
            .urls
            .iter()
            .map(|u| crate::telemetry::without_credentials(u))
            .collect();
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("urls", &urls)
            .field("sentinel_master", &self.sentinel_master)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("write_queue", &self.write_queue)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_backoff", &self.breaker_backoff)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How access lines are written (`[log] access_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// A tracing event in the log's text format.
    Text,
    /// A tracing event as one JSON object.
    Json,
    /// The nginx/Apache combined log format, one bare line.
    Combined,
}

impl AccessFormat {
    /// The access format that follows the log format (no `access_format`).
    pub fn following(log: LogFormat) -> AccessFormat {
        match log {
            LogFormat::Text => AccessFormat::Text,
            LogFormat::Json => AccessFormat::Json,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
    pub access_log: bool,
    /// `None` = the same format as the rest of the log.
    pub access_format: Option<AccessFormat>,
}

/// A configuration error, always naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is part of the message (not a `source`): every place
    /// that reports a config error (`serve`, `check`, a refused reload's
    /// log line, activity entry and alert) shows it once.
    #[error("{path}: cannot read the file ({error})")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        /// The key path followed by ": ", or empty when unknown.
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used for errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let located = Locator { path, text };
        let de = toml::Deserializer::parse(text).map_err(|e| located.toml(String::new(), &e))?;
        let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(&e.path().to_string());
            located.toml(key, e.inner())
        })?;
        Validator {
            at: located,
            warnings: Default::default(),
        }
        .config(file)
    }
}

/// The key path as the file spells it: serde_path_to_error's `.` for the
/// root becomes empty, and the private field names through which
/// `toml::Spanned` deserializes (`$__serde_spanned_private_value`) are
/// dropped, so `upstream.health.interval` reads as written.
fn key_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    // Drop each `.$__name` segment but keep what follows it on the same
    // segment (an index: `servers.$__serde_spanned_private_value[0]`).
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find("$__") {
        let before = &rest[..i];
        out.push_str(before.strip_suffix('.').unwrap_or(before));
        let after = &rest[i..];
        let end = after.find(['.', '[']).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::key_path;

    #[test]
    fn key_paths_hide_serde_internals() {
        assert_eq!(
            key_path("upstream.health.interval.$__serde_spanned_private_value"),
            "upstream.health.interval"
        );
        assert_eq!(key_path("rules[2].match"), "rules[2].match");
        assert_eq!(
            key_path("upstream.servers.$__serde_spanned_private_value[0].wieght"),
            "upstream.servers[0].wieght"
        );
        assert_eq!(key_path("."), "");
    }

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:2\"\n[upstream]\nservers = [\"127.0.0.1:3\"]\n";

    /// `memory_capacity = "0"` without Redis stored nothing while every
    /// miss said `stored`: refused, located. With Redis it is the
    /// Redis-only instance README documents.
    #[test]
    fn a_memory_tier_of_zero_needs_redis() {
        let e = refused("[cache]\nmemory_capacity = \"0\"\n");
        assert!(e.starts_with("t.toml:8:19: cache.memory_capacity: "), "{e}");
        accepted(&format!("[cache]\nmemory_capacity = \"0\"\n{REDIS}"));
        // With caching off the capacity does not matter (a plain load
        // balancer): accepted, as it was before.
        accepted("[cache]\nenabled = false\nmemory_capacity = \"0\"\n");
    }

    const REDIS: &str = "[cache.redis]\nurls = [\"redis://127.0.0.1:6379\"]\n";

    /// The error `check` gives for `BASE` followed by `extra`.
    fn refused(extra: &str) -> String {
        let text = format!("{BASE}{extra}");
        match super::Config::parse(std::path::Path::new("t.toml"), &text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn accepted(extra: &str) -> super::Config {
        let text = format!("{BASE}{extra}");
        super::Config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
    }

    /// An upstream on port 0 can never be connected to; a listener on
    /// port 0 binds a free port (the tests rely on it).
    #[test]
    fn an_upstream_on_port_zero_is_refused_a_listener_on_port_zero_is_not() {
        let parse = |text: &str| super::Config::parse(std::path::Path::new("t.toml"), text);
        let refused = |text: &str| parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"127.0.0.1:3\", \"127.0.0.1:0\"]\n";
        let e = refused(text);
        assert!(
            e.starts_with("t.toml:6:27: upstream.servers[1]: port 0 "),
            "{e}"
        );
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [{ addr = \"http://backend:0\", weight = 2 }]\n";
        let e = refused(text);
        assert!(
            e.starts_with("t.toml:6:12: upstream.servers[0]: port 0 "),
            "{e}"
        );
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"Cargo.toml\"\nkey = \"Cargo.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"127.0.0.1:3\"]\n";
        assert!(parse(text).is_ok());
    }

    /// `content_type` values the matcher can never match (it compares the
    /// response's media type without parameters) are refused, located at
    /// the value; the glob forms it matches stay accepted.
    #[test]
    fn rule_content_types_that_never_match_are_refused() {
        let rule = |types: &str| format!("[[rules]]\nmatch = \"/**\"\ncontent_type = {types}\n");
        let e = refused(&rule(r#"["text/html", "application/json; charset=utf-8"]"#));
        assert!(
            e.starts_with(
                "t.toml:9:30: rules[0].content_type[1]: \"application/json; charset=utf-8\": expected a media type without parameters, such as \"application/json\" (parameters are ignored when matching)"
            ),
            "{e}"
        );
        let e = refused(&rule("[]"));
        assert!(
            e.starts_with("t.toml:9:16: rules[0].content_type: an empty list matches no response"),
            "{e}"
        );
        for (bad, col) in [
            (r#"[""]"#, 17),
            (r#"["notatype"]"#, 17),
            (r#"["json"]"#, 17),
            (r#"["text/"]"#, 17),
            (r#"["/json"]"#, 17),
            (r#"["text / html"]"#, 17),
        ] {
            let e = refused(&rule(bad));
            assert!(
                e.starts_with(&format!("t.toml:9:{col}: rules[0].content_type[0]: ")),
                "{bad}: {e}"
            );
            assert!(
                e.contains("expected a media type such as \"application/json\""),
                "{bad}: {e}"
            );
        }
        for good in [
            r#"["application/json"]"#,
            r#"["Application/JSON"]"#,
            r#"["image/*"]"#,
            r#"["*/*"]"#,
            r#"["*"]"#,
            r#"["application/*+json"]"#,
            r#"["text/{html,plain}"]"#,
            r#"["application/vnd.api+json"]"#,
            r#"[" text/html "]"#,
        ] {
            accepted(&rule(good));
        }
    }

    /// A rate limit keyed on a header that never reaches it is refused:
    /// an underscore header (dropped on arrival by default), or, for
    /// `count = "origin"`, one `strip_request_headers` removes (rate-limit
    /// probe: such limits passed `check` and never counted).
    #[test]
    fn a_limit_keyed_on_a_header_that_never_arrives_is_refused() {
        let parse = |server: &str, key: &str, count: &str| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\n{server}[admin]\nlisten = \"127.0.0.1:2\"\n\
                 [upstream]\nservers = [\"127.0.0.1:3\"]\n\
                 [[rate_limits]]\nname = \"l\"\nrate = \"1/s\"\nkey = \"{key}\"\ncount = \"{count}\"\n"
            );
            super::Config::parse(std::path::Path::new("t.toml"), &text).map_err(|e| e.to_string())
        };
        let e = parse("", "header:X_Tenant", "all").unwrap_err();
        assert!(
            e.contains("rate_limits[0].key: header \"x_tenant\" can never be counted: a header with '_' is dropped on arrival"),
            "{e}"
        );
        let strip = "strip_request_headers = [\"X-Method-Override\"]\n";
        let e = parse(strip, "header:X-Method-Override", "origin").unwrap_err();
        assert!(e.contains("strip_request_headers removes it"), "{e}");
        assert!(parse(strip, "header:X-Method-Override", "all").is_ok());
        assert!(parse("underscores_in_headers = true\n", "header:X_Tenant", "all").is_ok());
        assert!(parse("", "header:X-Tenant", "origin").is_ok());
    }

    /// A status about the request (security probe F3, CPDoS) is never
    /// stored: `status_ttl` naming one with a lifetime is refused, at its
    /// key; `"0s"` (what happens anyway) and a class are accepted.
    #[test]
    fn status_ttl_for_a_status_about_the_request_is_refused() {
        let rule = |ttl: &str| format!("[[rules]]\nmatch = \"/**\"\nstatus_ttl = {ttl}\n");
        for code in [
            "400", "408", "411", "413", "414", "417", "428", "429", "431", "511",
        ] {
            let e = refused(&rule(&format!(
                "{{ \"404\" = \"1m\", \"{code}\" = \"10s\" }}"
            )));
            assert!(
                e.contains(&format!(
                    "rules[0].status_ttl.{code}: {code} is never stored"
                )),
                "{e}"
            );
        }
        accepted(&rule(
            "{ \"400\" = \"0s\", \"4xx\" = \"10s\", \"404\" = \"1m\" }",
        ));
    }

    /// `enabled = false` still validates the other keys: a typo must not
    /// wait for the reload that enables compression.
    #[test]
    fn disabled_compression_still_validates_its_keys() {
        for (keys, want) in [
            (
                "algorithms = [\"zstd\"]\n",
                "t.toml:9:15: compression.algorithms[0]: unknown algorithm \"zstd\"",
            ),
            (
                "types = [\"notatype\"]\n",
                "t.toml:9:10: compression.types[0]: invalid media type rule \"notatype\"",
            ),
            (
                "[compression.store_level]\nbr = 99\n",
                "t.toml:10:6: compression.store_level.br: expected 0 to 11",
            ),
        ] {
            let e = refused(&format!("[compression]\nenabled = false\n{keys}"));
            assert!(e.starts_with(want), "{want} in {e}");
        }
        let c = accepted("[compression]\nenabled = false\nalgorithms = [\"gzip\"]\n");
        assert!(c.compression.is_none());
        let c = accepted("[compression]\nalgorithms = []\ntypes = [\"text/*\"]\n");
        assert!(c.compression.is_none());
        let e = refused("[compression]\nalgorithms = []\ntypes = [\"text\"]\n");
        assert!(e.starts_with("t.toml:9:10: compression.types[0]: "), "{e}");
    }

    /// Without Redis an object larger than the memory tier cannot be
    /// stored, whatever `max_object_size` says.
    #[test]
    fn the_storable_size_is_bounded_by_the_memory_tier_without_redis() {
        let c = accepted("[cache]\nmemory_capacity = \"1MiB\"\n");
        assert_eq!(c.cache.max_object_size, 16 << 20);
        assert_eq!(c.cache.storable_size(), 1 << 20);
        let c = accepted(&format!("[cache]\nmemory_capacity = \"1MiB\"\n{REDIS}"));
        assert_eq!(c.cache.storable_size(), 16 << 20);
    }

    /// `upstream.health.fail_timeout`: 10 s by default, above zero.
    #[test]
    fn fail_timeout_defaults_to_ten_seconds_and_refuses_zero() {
        let parse = |extra: &str| {
            let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nservers = [\"127.0.0.1:3\"]\n{extra}");
            super::Config::parse(std::path::Path::new("t.toml"), &text)
        };
        let c = parse("").unwrap();
        assert_eq!(
            c.upstream.health.fail_timeout,
            super::Duration::from_secs(10)
        );
        let c = parse("[upstream.health]\nfail_timeout = \"2s\"\n").unwrap();
        assert_eq!(
            c.upstream.health.fail_timeout,
            super::Duration::from_secs(2)
        );
        let e = parse("[upstream.health]\nfail_timeout = \"0s\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "t.toml:8:16: upstream.health.fail_timeout: expected a duration above zero"
        );
    }

    /// `cert = ""` said "cannot read : No such file or directory".
    #[test]
    fn an_empty_file_path_is_refused_as_empty() {
        let tls = |cert: &str, key: &str, more: &str| {
            format!("[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{more}")
        };
        for (extra, want) in [
            (tls("", "Cargo.toml", ""), "t.toml:9:8: server.tls.cert: "),
            (tls("Cargo.toml", "", ""), "t.toml:10:7: server.tls.key: "),
            (
                tls(
                    "Cargo.toml",
                    "Cargo.toml",
                    "[[server.tls.certificates]]\ncert = \"Cargo.toml\"\nkey = \"\"\n",
                ),
                "t.toml:13:7: server.tls.certificates[0].key: ",
            ),
            (
                "[warming]\nurls_file = \"\"\n".to_string(),
                "t.toml:8:13: warming.urls_file: ",
            ),
        ] {
            assert_eq!(
                refused(&extra),
                format!("{want}expected a file path, not an empty string")
            );
        }
    }

    /// SPEC §9 names `[log] access_format` alone: choosing a format turns
    /// the access log on (it stayed off, silently); `access_log = false`
    /// still turns it off.
    #[test]
    fn an_access_format_turns_the_access_log_on_unless_told_not() {
        assert!(!accepted("").log.access_log);
        assert!(
            accepted("[log]\naccess_format = \"combined\"\n")
                .log
                .access_log
        );
        let off = accepted("[log]\naccess_format = \"json\"\naccess_log = false\n");
        assert!(!off.log.access_log);
    }
}
