//! Validation of the cache-operation sections: `[[invalidation.cascade]]`
//! and `[warming]`.

use std::time::Duration;

use toml::Spanned;

use super::super::file;
use super::super::{ConfigError, WarmingConfig};
use super::Validator;
use crate::compression::Coding;
use crate::invalidation::{Cascade, Cascades};

impl Validator<'_> {
    pub(super) fn invalidation(&self, i: file::InvalidationFile) -> Result<Cascades, ConfigError> {
        let file::InvalidationFile { cascade } = i;
        let mut out = Vec::with_capacity(cascade.len());
        for (n, c) in cascade.into_iter().enumerate() {
            let file::CascadeFile {
                on,
                purge_tags,
                purge_prefixes,
                soft,
            } = c;
            let at = format!("invalidation.cascade[{n}]");
            self.path_glob(&on, &format!("{at}.on"))?;
            if purge_tags.is_empty() && purge_prefixes.is_empty() {
                return Err(self.at.spanned(
                    &on,
                    &at,
                    "a cascade needs purge_tags or purge_prefixes (or both)",
                ));
            }
            let mut tags = Vec::with_capacity(purge_tags.len());
            for (k, t) in purge_tags.iter().enumerate() {
                let tag = crate::cache::tags::checked(t.get_ref())
                    .map_err(|e| self.at.spanned(t, &format!("{at}.purge_tags[{k}]"), e))?;
                tags.push(tag.to_string());
            }
            let mut prefixes = Vec::with_capacity(purge_prefixes.len());
            for (k, p) in purge_prefixes.iter().enumerate() {
                if !p.get_ref().starts_with('/') {
                    return Err(self.at.spanned(
                        p,
                        &format!("{at}.purge_prefixes[{k}]"),
                        "expected a path prefix starting with /",
                    ));
                }
                prefixes.push(p.get_ref().clone());
            }
            let cascade = Cascade::new(on.get_ref(), tags, prefixes, soft.unwrap_or(false))
                .map_err(|e| self.at.spanned(&on, &format!("{at}.on"), e))?;
            out.push(cascade);
        }
        Ok(Cascades::new(out))
    }

    /// `[warming]`; `redis`: whether `[cache.redis]` is configured
    /// (`redis_hot` needs it).
    pub(super) fn warming(
        &self,
        w: file::WarmingFile,
        redis: bool,
    ) -> Result<WarmingConfig, ConfigError> {
        let file::WarmingFile {
            on_start,
            interval,
            urls_file,
            sitemap,
            redis_hot,
            concurrency,
            rate,
            encodings,
            host,
        } = w;
        let interval = match interval {
            Some(d) if d.get_ref().0 < Duration::from_secs(1) => {
                return Err(self.at.spanned(
                    &d,
                    "warming.interval",
                    "expected at least 1s (omit the key to warm at start-up only)",
                ))
            }
            Some(d) => Some(d.into_inner().0),
            None => None,
        };
        if let Some(s) = &sitemap {
            let v = s.get_ref();
            // Fetched with a plain HTTP client (an origin or an internal
            // host serves it): an https:// URL would fail at every run.
            if !v.starts_with("http://") || v.parse::<http::Uri>().is_err() {
                return Err(self.at.spanned(
                    s,
                    "warming.sitemap",
                    "expected an absolute http:// URL such as \"http://127.0.0.1:3001/sitemap.xml\" (https is not fetched)",
                ));
            }
        }
        let concurrency = match concurrency {
            Some(c) if *c.get_ref() == 0 || *c.get_ref() > 1024 => {
                return Err(self.at.spanned(
                    &c,
                    "warming.concurrency",
                    "expected 1 to 1024 requests at a time",
                ))
            }
            Some(c) => c.into_inner(),
            None => 4,
        };
        let (rate_count, rate_per) = match rate {
            None => (50, Duration::from_secs(1)),
            Some(r) => parse_rate(r.get_ref()).ok_or_else(|| {
                self.at.spanned(
                    &r,
                    "warming.rate",
                    format!(
                        "invalid rate {:?}: expected requests per second, minute or hour such as \"50/s\", \"600/m\"",
                        r.get_ref()
                    ),
                )
            })?,
        };
        let mut codings = Vec::new();
        for (i, e) in encodings.unwrap_or_default().iter().enumerate() {
            let c = Coding::from_token(e.get_ref()).ok_or_else(|| {
                self.at.spanned(
                    e,
                    &format!("warming.encodings[{i}]"),
                    format!(
                        "unknown encoding {:?}, expected \"br\" or \"gzip\"",
                        e.get_ref()
                    ),
                )
            })?;
            if !codings.contains(&c) {
                codings.push(c);
            }
        }
        let host = match host {
            Some(h) if h.get_ref().parse::<http::uri::Authority>().is_err() => {
                return Err(self.at.spanned(
                    &h,
                    "warming.host",
                    "expected a host[:port] such as \"www.example.com\"",
                ))
            }
            Some(h) => Some(h.into_inner()),
            None => None,
        };
        Ok(WarmingConfig {
            on_start: on_start.unwrap_or(true),
            interval,
            urls_file: match urls_file {
                Some(p) => Some(self.readable_file(&p, "warming.urls_file")?),
                None => None,
            },
            sitemap: sitemap.map(Spanned::into_inner),
            redis_hot: match redis_hot {
                Some(n) if *n.get_ref() > 0 && !redis => {
                    return Err(self.at.spanned(
                        &n,
                        "warming.redis_hot",
                        "needs [cache.redis] (it reads the fleet's hot entries from Redis)",
                    ))
                }
                Some(n) => n.into_inner(),
                None => 0,
            },
            concurrency,
            rate_count,
            rate_per,
            encodings: codings,
            host,
        })
    }
}

/// `"50/s"`, `"600/m"`, `"1000/h"` (also `sec`, `min`, `hour`) → count and
/// period; `None` when malformed or zero.
fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    };
    Some((n, per))
}

#[cfg(test)]
mod tests {
    use super::parse_rate;
    use std::time::Duration;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s"), Some((50, Duration::from_secs(1))));
        assert_eq!(
            parse_rate(" 600 / m "),
            Some((600, Duration::from_secs(60)))
        );
        assert_eq!(parse_rate("1/hour"), Some((1, Duration::from_secs(3600))));
        for bad in ["", "50", "0/s", "-1/s", "5/d", "x/s"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }
}
