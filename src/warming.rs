//! Cache warming (`[warming]`): populating the cache at start-up and every
//! `interval`, from a URL file, a sitemap (or sitemap index, `.gz` too), and
//! `redis_hot` — the fleet's most requested entries, copied from Redis into
//! memory without any upstream request.
//!
//! URL warming sends real requests to Strata's own proxy listener, with
//! `User-Agent: strata-warmer`, so that they take exactly the path a
//! client's miss takes (rules, collapsing, storage, compression, metrics)
//! and nothing is special-cased. At most `concurrency` are in flight and
//! they start no faster than `rate` (a `governor` GCRA limiter, burst 1, so
//! the rate holds over any window). One request per URL, or one per
//! configured encoding (`Accept-Encoding: br`, `gzip`) when `encodings` is
//! set. A warming failure is logged and counted; it never stops serving.
//!
//! Progress is shared with `GET /health` ([`Progress`]); each request is
//! counted in `strata_warm_requests_total{source,result}`.
//!
//! - `warming/sources.rs`: the URL file and the sitemap (quick-xml, flate2).
//! - `warming/progress.rs`: the state `GET /health` shows, and whether a
//!   reload's `[warming]` needs a restart.

mod progress;
mod sources;
mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::{Quota, RateLimiter};
use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::cache::key::CacheKey;
use crate::compression::Coding;
use crate::config::WarmingConfig;
use crate::proxy::Shared;
pub use progress::{Progress, Schedule};
pub use sources::SourceError;

/// The `User-Agent` of warming requests.
pub const USER_AGENT: &str = "strata-warmer";
/// A warming request that takes longer than this is given up (counted as
/// an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a round waits for a just-started instance's Redis connection
/// before reading the popularity set (`redis_hot`).
const REDIS_CONNECT: Duration = Duration::from_secs(5);

/// Where a warming item came from: the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    UrlsFile,
    Sitemap,
    RedisHot,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::UrlsFile => "urls_file",
            Source::Sitemap => "sitemap",
            Source::RedisHot => "redis_hot",
        }
    }
}

/// How one warming item ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fetched and stored (or, for `redis_hot`, copied into memory).
    Stored,
    /// Already cached: nothing to do.
    Hit,
    /// Answered but not storable (or gone from Redis).
    Uncached,
    /// Failed: connection, timeout, or a 5xx.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Hit => "hit",
            Outcome::Uncached => "uncached",
            Outcome::Error => "error",
        }
    }
}

/// One URL to warm, as sent to the proxy listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// `Host` of the request.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// An `https://` URL: warmed through the TLS listener (when there is
    /// one), under the `https` key.
    pub https: bool,
}

impl Target {
    /// A line of the URL file or a sitemap `<loc>`: a path, or an absolute
    /// http(s) URL. `host` (the `[warming] host` key) overrides the URL's
    /// own authority; `default_host` is used for paths without it.
    pub fn parse(line: &str, host: Option<&str>, default_host: &str) -> Option<Target> {
        let line = line.trim();
        if line.starts_with('/') {
            let uri: Uri = line.parse().ok()?;
            let path = uri.path_and_query()?.as_str().to_string();
            return Some(Target {
                host: host.unwrap_or(default_host).to_string(),
                path,
                https: false,
            });
        }
        let key = CacheKey::from_url(line)?;
        let uri: Uri = line.parse().ok()?;
        let authority = uri.authority()?.as_str().to_string();
        Some(Target {
            host: host.map_or(authority, str::to_string),
            path: key.path().to_string(),
            https: uri.scheme() == Some(&http::uri::Scheme::HTTPS),
        })
    }
}

/// Starts the warming loop when `[warming]` is configured: a round at once
/// (`on_start`), then every `interval` (read from the current
/// configuration after each round, so a reload changes it). Stops with
/// `stop`, when a reload removes `[warming]`, or after the start-up round
/// when there is no `interval`; [`Progress::schedule`] says which.
/// `listener` is the proxy listener's bound address, `tls` the TLS
/// listener's, if any (`https://` URLs are warmed through it).
pub fn spawn(
    shared: Arc<Shared>,
    listener: SocketAddr,
    tls: Option<SocketAddr>,
    stop: CancellationToken,
) {
    let Some(config) = shared.runtime.load().config.warming.clone() else {
        return;
    };
    // Before the task starts, so that a reload at once sees it running.
    shared.warming.set_schedule(Schedule::Running);
    let target = Listeners {
        plain: loopback(listener),
        tls: tls.map(loopback),
    };
    tokio::spawn(async move {
        let end = run(&shared, config, target, &stop).await;
        shared.warming.set_schedule(end);
    });
}

/// The warming loop; returns how it ended.
async fn run(
    shared: &Arc<Shared>,
    config: WarmingConfig,
    target: Listeners,
    stop: &CancellationToken,
) -> Schedule {
    let mut first = true;
    loop {
        let current = shared.runtime.load().config.warming.clone();
        let Some(w) = current.or_else(|| first.then(|| config.clone())) else {
            tracing::info!("warming: [warming] removed from the configuration; stopping");
            return Schedule::Stopped;
        };
        if !first || w.on_start {
            tokio::select! {
                _ = stop.cancelled() => return Schedule::Stopped,
                _ = round(shared, &w, target) => {}
            }
        }
        first = false;
        // A reload during the round counts (one that removed the section
        // is seen at the top of the loop).
        let interval = match &shared.runtime.load().config.warming {
            Some(now) => now.interval,
            None => w.interval,
        };
        let Some(every) = interval else {
            return Schedule::Finished;
        };
        tokio::select! {
            _ = stop.cancelled() => return Schedule::Stopped,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Where warming requests go (loopback addresses of Strata's listeners).
#[derive(Clone, Copy)]
pub struct Listeners {
    pub plain: SocketAddr,
    pub tls: Option<SocketAddr>,
}

/// The address to reach a listener bound to `addr` (a wildcard address
/// is reached on loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

type WarmClient = Client<HttpConnector, Empty<Bytes>>;

/// One warming round: every source, then the URLs at the configured pace.
pub async fn round(shared: &Arc<Shared>, w: &WarmingConfig, listeners: Listeners) {
    let progress = &shared.warming;
    progress.start();
    tracing::info!("warming: round starting");
    let listener = listeners.plain;
    let client: WarmClient = Client::builder(TokioExecutor::new()).build_http();
    // Certificates as configured now (a reload may have replaced them).
    let tls = match (listeners.tls, &shared.runtime.load().config.server.tls) {
        (Some(addr), Some(config)) => tls::TlsTarget::new(addr, config),
        _ => None,
    };
    let default_host = listener.to_string();
    let mut targets: Vec<(Source, Target)> = Vec::new();
    if let Some(path) = &w.urls_file {
        match sources::urls_file(path, w.host.as_deref(), &default_host) {
            Ok(found) => targets.extend(found.into_iter().map(|t| (Source::UrlsFile, t))),
            Err(e) => {
                progress.error();
                shared
                    .metrics
                    .warm_request(Source::UrlsFile.as_str(), Outcome::Error.as_str());
                tracing::warn!(error = %e, "warming: urls_file skipped");
            }
        }
    }
    if let Some(url) = &w.sitemap {
        let (found, errors) = sources::sitemap(&client, url, w.host.as_deref()).await;
        for e in &errors {
            progress.error();
            shared
                .metrics
                .warm_request(Source::Sitemap.as_str(), Outcome::Error.as_str());
            tracing::warn!(error = %e, "warming: sitemap");
        }
        targets.extend(found.into_iter().map(|t| (Source::Sitemap, t)));
    }
    // Each URL once, whichever source named it first.
    let mut seen = std::collections::HashSet::new();
    targets.retain(|(_, t)| seen.insert(t.clone()));
    let hot = if w.redis_hot > 0 {
        match shared.cache.hot_urls(w.redis_hot, REDIS_CONNECT).await {
            Ok(urls) => urls,
            Err(e) => {
                progress.error();
                shared
                    .metrics
                    .warm_request(Source::RedisHot.as_str(), Outcome::Error.as_str());
                tracing::warn!(error = %e, "warming: cannot read the popularity set from Redis");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let encodings: Vec<Option<Coding>> = if w.encodings.is_empty() {
        vec![None]
    } else {
        w.encodings.iter().copied().map(Some).collect()
    };
    progress.add_total(targets.len() * encodings.len() + hot.len());

    // redis_hot: no upstream request, so not paced by `rate`.
    futures_util::stream::iter(hot)
        .for_each_concurrent(w.concurrency, |url| {
            let shared = shared.clone();
            async move {
                let outcome = warm_from_redis(&shared, &url).await;
                record(&shared, Source::RedisHot, outcome);
            }
        })
        .await;

    let per_request = w.rate_per / w.rate_count.max(1);
    let limiter = Quota::with_period(per_request.max(Duration::from_nanos(1)))
        .map(|q| Arc::new(RateLimiter::direct(q.allow_burst(NonZeroU32::MIN))));
    let items: Vec<(Source, Target, Option<Coding>)> = targets
        .into_iter()
        .flat_map(|(s, t)| encodings.iter().map(move |e| (s, t.clone(), *e)))
        .collect();
    futures_util::stream::iter(items)
        .for_each_concurrent(w.concurrency, |(source, target, coding)| {
            let (shared, client, limiter) = (shared.clone(), client.clone(), limiter.clone());
            let tls = tls.as_ref().filter(|_| target.https);
            async move {
                if let Some(l) = &limiter {
                    l.until_ready().await;
                }
                let outcome = warm_one(&client, tls, listener, &target, coding).await;
                record(&shared, source, outcome);
            }
        })
        .await;
    progress.finish();
    tracing::info!(
        progress = %progress.to_json(),
        "warming: round done"
    );
}

/// One `redis_hot` URL: its object copied from Redis into memory.
async fn warm_from_redis(shared: &Shared, url: &str) -> Outcome {
    let Some(key) = CacheKey::from_url(url) else {
        return Outcome::Error;
    };
    match shared.cache.warm_from_redis(&key).await {
        Ok(true) => Outcome::Stored,
        Ok(false) if shared.cache.memory().get_key(&key).is_some() => Outcome::Hit,
        Ok(false) => Outcome::Uncached,
        Err(e) => {
            tracing::debug!(%url, error = %e, "warming: redis_hot entry failed");
            Outcome::Error
        }
    }
}

fn record(shared: &Shared, source: Source, outcome: Outcome) {
    shared
        .metrics
        .warm_request(source.as_str(), outcome.as_str());
    shared.warming.finish_item(outcome);
}

/// Sends one warming request through the proxy listener and reads the
/// body to the end (so the miss is stored before the next one starts).
async fn warm_one(
    client: &WarmClient,
    tls: Option<&tls::TlsTarget>,
    listener: SocketAddr,
    target: &Target,
    coding: Option<Coding>,
) -> Outcome {
    let uri = match tls {
        Some(_) => target.path.clone(),
        None => format!("http://{listener}{}", target.path),
    };
    let mut req = match Request::get(uri).body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(_) => return Outcome::Error,
    };
    let h = req.headers_mut();
    match HeaderValue::from_str(&target.host) {
        Ok(v) => h.insert(header::HOST, v),
        Err(_) => return Outcome::Error,
    };
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    if let Some(c) = coding {
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(c.as_str()),
        );
    }
    let exchange = async {
        let resp = match tls {
            Some(tls) => tls.send(req).await?,
            None => client.request(req).await.ok()?,
        };
        let status = resp.status();
        // Strata's own member, the last: an upstream cache's come first
        // (RFC 9211 §2).
        let cache_status = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.rfind("strata").map_or(v, |i| &v[i..]))
            .unwrap_or("")
            .to_string();
        resp.into_body().collect().await.ok()?;
        Some((status, cache_status))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Some((status, _))) if status.is_server_error() => Outcome::Error,
        Ok(Some((_, cs))) if cs.contains("; hit") => Outcome::Hit,
        Ok(Some((_, cs))) if cs.contains("; stored") || cs.contains("fwd-status=304") => {
            Outcome::Stored
        }
        Ok(Some(_)) => Outcome::Uncached,
        Ok(None) | Err(_) => Outcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("/a?b=1", None, "127.0.0.1:8080").unwrap();
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");
        let t = Target::parse("http://www.example.com/x/y", None, "d").unwrap();
        assert_eq!(t.host, "www.example.com");
        assert_eq!(t.path, "/x/y");
        let t = Target::parse("https://www.example.com", Some("h.example"), "d").unwrap();
        assert_eq!(t.host, "h.example");
        assert_eq!(t.path, "/");
        assert!(Target::parse("ftp://x/y", None, "d").is_none());
        assert!(Target::parse("not a url", None, "d").is_none());
    }
}
