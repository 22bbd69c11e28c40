//! The RFC 9111 shared cache (placeholder while the memory tier lands).

pub mod directives;
pub mod flow;
pub mod tags;

use http::{HeaderMap, Request, Uri};

use crate::config::CacheConfig;
use crate::metrics::Metrics;

pub struct Cache {
    enabled: bool,
    _metrics: Metrics,
}

impl Cache {
    pub fn new(config: &CacheConfig, metrics: Metrics) -> Cache {
        Cache {
            enabled: config.enabled && cfg!(any()),
            _metrics: metrics,
        }
    }

    pub fn handles<B>(&self, req: &Request<B>) -> bool {
        self.enabled && (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
    }

    pub fn export_sizes(&self) {}

    pub async fn purge(&self, _purge: &Purge) -> Result<u64, PurgeError> {
        Ok(0)
    }

    pub fn invalidate_after_unsafe(
        &self,
        _uri: &Uri,
        _authority: Option<&http::uri::Authority>,
        _https: bool,
        _headers: &HeaderMap,
    ) {
    }
}

/// What an admin purge removes.
#[derive(Debug, Clone)]
pub enum Purge {
    Url(String),
    Prefix(String),
    Tags(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("invalid url {0:?}: expected an absolute URL or a path starting with /")]
    BadUrl(String),
}
