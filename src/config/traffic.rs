//! Validation of the traffic-management keys (SPEC §8): weighted upstream
//! servers, `balance`/`hash_key`, `[upstream.sticky]`,
//! `server.trusted_proxies` and `[[rate_limits]]`. Same contract as
//! `validate.rs`: defaults filled in here, every error located.

use std::time::Duration;

use http::uri::Authority;
use toml::Spanned;

use super::file;
use super::server_address::{canonical, numeric_host};
use super::validate::Validator;
use super::*;

/// Weights above this would make the hash ring and the smooth
/// round-robin arithmetic needlessly large.
const MAX_WEIGHT: u32 = 1000;

impl Validator<'_> {
    pub(super) fn trusted_proxies(
        &self,
        list: Option<Vec<Spanned<String>>>,
    ) -> Result<crate::traffic::TrustedProxies, ConfigError> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let text = item.get_ref().trim();
            // A bare address is a /32 (or /128).
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => out.push(n.trunc()),
                Err(_) => {
                    return Err(self.at.spanned(
                        item,
                        &format!("server.trusted_proxies[{i}]"),
                        format!("invalid CIDR {text:?}, expected e.g. \"10.0.0.0/8\" or \"::1\""),
                    ))
                }
            }
        }
        Ok(crate::traffic::TrustedProxies::new(out))
    }

    /// The servers and their weights, in order.
    pub(super) fn servers(
        &self,
        servers: Spanned<Vec<Spanned<file::UpstreamServerFile>>>,
    ) -> Result<(Vec<Authority>, Vec<u32>), ConfigError> {
        if servers.get_ref().is_empty() {
            return Err(self.at.spanned(
                &servers,
                "upstream.servers",
                "expected at least one server (\"host:port\" or { addr = \"host:port\", weight = N })",
            ));
        }
        let mut parsed: Vec<Authority> = Vec::with_capacity(servers.get_ref().len());
        let mut weights = Vec::with_capacity(servers.get_ref().len());
        for (i, s) in servers.get_ref().iter().enumerate() {
            let key = format!("upstream.servers[{i}]");
            let (addr, weight) = match s.get_ref() {
                file::UpstreamServerFile::Addr(a) => (a.as_str(), 1),
                file::UpstreamServerFile::Weighted(w) => (w.addr.as_str(), w.weight.unwrap_or(1)),
            };
            if weight == 0 || weight > MAX_WEIGHT {
                return Err(self.at.spanned(
                    s,
                    &format!("{key}.weight"),
                    format!("expected a weight from 1 to {MAX_WEIGHT}"),
                ));
            }
            let text = addr.trim();
            // An address is echoed in errors without any userinfo: it may
            // hold a password (`http://u:pw@host:port`).
            let shown = crate::telemetry::without_userinfo(addr);
            // Strata speaks plain HTTP/1.1 to its upstreams: `https://`
            // would be sent in clear text to a TLS port. The scheme is
            // case-insensitive (RFC 3986 §3.1).
            if scheme_of(text, "https://") {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!("{shown:?}: Strata speaks plain HTTP to upstreams, https:// is not supported; give \"host:port\" (or \"http://host:port\") of a plain-HTTP listener"),
                ));
            }
            let text = if scheme_of(text, "http://") {
                &text[7..]
            } else {
                text
            };
            if text.contains('@') {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!("{shown:?}: credentials in an upstream address are not supported (Strata sends none); give \"host:port\""),
                ));
            }
            if let Some(slash) = text.find('/') {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!("{shown:?}: a path ({:?}) is not taken: a server is \"host:port\" and each request's own path is forwarded as sent (unlike nginx's proxy_pass with a URI)", &text[slash..]),
                ));
            }
            let invalid = || {
                self.at.spanned(
                    s,
                    &key,
                    format!("invalid server {shown:?}, expected \"host:port\""),
                )
            };
            let authority: Authority = text.parse().map_err(|_| invalid())?;
            if authority.port_u16().is_none()
                || !authority
                    .port()
                    .is_some_and(|p| p.as_str().bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(invalid());
            }
            // A host that reads as a number is an IPv4 address to every
            // resolver, each its own way (`010.0.0.1` is 8.0.0.1 to
            // glibc; `127.1`, `0x7f.0.0.1`): only the dotted-quad form is
            // taken, so a server has one spelling.
            if numeric_host(authority.host())
                && authority.host().parse::<std::net::Ipv4Addr>().is_err()
            {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!("{shown:?}: {:?} is no IPv4 address in dotted-quad form (a.b.c.d, no leading zeros); resolvers read it differently", authority.host()),
                ));
            }
            // Port 0 means "any free port" to a listener; as a destination
            // it can never be connected to.
            if authority.port_u16() == Some(0) {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!("port 0 in {shown:?} can never be connected to, expected a port from 1 to 65535"),
                ));
            }
            // One spelling per server: `127.0.0.1:080` and `[::0001]:80`
            // are `127.0.0.1:80` and `[::1]:80`, and names are
            // case-insensitive, so a server given twice is refused below
            // (it got two health states, and a drain of one still sent
            // it traffic through the other).
            let authority = canonical(&authority).unwrap_or(authority);
            if let Some(first) = parsed.iter().find(|a| **a == authority) {
                return Err(self.at.spanned(
                    s,
                    &key,
                    format!(
                        "duplicate server {text:?} (the same as {:?})",
                        first.as_str()
                    ),
                ));
            }
            parsed.push(authority);
            weights.push(weight);
        }
        Ok((parsed, weights))
    }

    pub(super) fn balance(
        &self,
        balance: Option<Spanned<String>>,
        hash_key: Option<Spanned<String>>,
    ) -> Result<Balance, ConfigError> {
        let policy = match &balance {
            None => "round_robin",
            Some(b) => b.get_ref().as_str(),
        };
        match policy {
            "round_robin" | "least_request" => {
                // The default `"uri"` is harmless with any policy (SPEC §8's
                // example sets it beside `round_robin`); another key would
                // be silently unused, so it is an error.
                if let Some(k) = hash_key.as_ref().filter(|k| k.get_ref() != "uri") {
                    return Err(self.at.spanned(
                        k,
                        "upstream.hash_key",
                        "only valid with balance = \"hash\"",
                    ));
                }
                Ok(if policy == "round_robin" {
                    Balance::RoundRobin
                } else {
                    Balance::LeastRequest
                })
            }
            "hash" => {
                let Some(k) = hash_key else {
                    return Ok(Balance::Hash(HashKey::Uri));
                };
                let key = match k.get_ref().as_str() {
                    "uri" => Some(HashKey::Uri),
                    other => self.named_source(other).map(|s| match s {
                        Source::Header(h) => HashKey::Header(h),
                        Source::Cookie(c) => HashKey::Cookie(c),
                    }),
                };
                key.ok_or_else(|| {
                    self.at.spanned(
                        &k,
                        "upstream.hash_key",
                        format!(
                            "invalid hash key {:?}, expected \"uri\", \"header:NAME\" or \"cookie:NAME\"",
                            k.get_ref()
                        ),
                    )
                })
                .map(Balance::Hash)
            }
            other => Err(self.at.spanned(
                balance.as_ref().unwrap_or(&Spanned::new(0..0, String::new())),
                "upstream.balance",
                format!(
                    "unknown policy {other:?}, expected \"round_robin\", \"least_request\" or \"hash\""
                ),
            )),
        }
    }

    /// `header:NAME` or `cookie:NAME`.
    fn named_source(&self, text: &str) -> Option<Source> {
        if let Some(name) = text.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(Source::Header);
        }
        let name = text.strip_prefix("cookie:")?.trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        valid.then(|| Source::Cookie(name.to_string()))
    }

    pub(super) fn sticky(&self, s: Spanned<file::StickyFile>) -> Result<StickyConfig, ConfigError> {
        let span = s.span();
        let file::StickyFile {
            cookie,
            max_age,
            secret,
            secure,
            http_only,
            same_site,
        } = s.into_inner();
        let cookie = match cookie {
            None => "strata_srv".to_string(),
            Some(c) => match self.named_source(&format!("cookie:{}", c.get_ref())) {
                Some(Source::Cookie(name)) => name,
                _ => {
                    return Err(self.at.spanned(
                        &c,
                        "upstream.sticky.cookie",
                        "expected a cookie name (letters, digits and -_.!#$%&'*+^`|~)",
                    ))
                }
            },
        };
        let max_age = match max_age {
            Some(d) if d.get_ref().0 < Duration::from_secs(1) => {
                return Err(self
                    .at
                    .spanned(&d, "upstream.sticky.max_age", "expected at least 1s"))
            }
            Some(d) => d.into_inner().0,
            None => Duration::from_secs(3600),
        };
        let secret = match secret {
            Some(s) if s.get_ref().len() >= 8 => s.into_inner(),
            Some(s) => {
                return Err(self.at.spanned(
                    &s,
                    "upstream.sticky.secret",
                    "expected a secret of at least 8 characters",
                ))
            }
            None => {
                return Err(self.at.error(
                    span,
                    "upstream.sticky.secret",
                    "required: the key that signs the cookie values",
                ))
            }
        };
        let secure = secure.unwrap_or(false);
        let same_site = match same_site {
            None => SameSite::Lax,
            Some(v) => match v.get_ref().to_ascii_lowercase().as_str() {
                "strict" => SameSite::Strict,
                "lax" => SameSite::Lax,
                // RFC 6265bis §4.1.2.7: browsers reject `SameSite=None`
                // without `Secure`, so the cookie would never stick.
                "none" if !secure => return Err(self.at.spanned(
                    &v,
                    "upstream.sticky.same_site",
                    "\"None\" needs secure = true (browsers reject SameSite=None without Secure)",
                )),
                "none" => SameSite::None,
                _ => {
                    return Err(self.at.spanned(
                        &v,
                        "upstream.sticky.same_site",
                        "expected \"Strict\", \"Lax\" or \"None\"",
                    ))
                }
            },
        };
        Ok(StickyConfig {
            cookie,
            max_age,
            secret,
            secure,
            http_only: http_only.unwrap_or(true),
            same_site,
        })
    }

    /// `[[rate_limits]]`; `redis`: whether `[cache.redis]` is configured
    /// (`backend = "redis"` needs it).
    pub(super) fn rate_limits(
        &self,
        limits: Vec<file::RateLimitFile>,
        redis: bool,
        server: &ServerConfig,
    ) -> Result<Vec<RateLimitConfig>, ConfigError> {
        let mut out: Vec<RateLimitConfig> = Vec::with_capacity(limits.len());
        for (i, l) in limits.into_iter().enumerate() {
            let at = format!("rate_limits[{i}]");
            let file::RateLimitFile {
                name,
                pattern,
                key,
                rate,
                burst,
                count,
                backend,
                dry_run,
            } = l;
            let name_ok = !name.get_ref().is_empty()
                && name
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !name_ok {
                return Err(self.at.spanned(
                    &name,
                    &format!("{at}.name"),
                    "expected a name of letters, digits, '-', '_' or '.'",
                ));
            }
            if out.iter().any(|o| &o.name == name.get_ref()) {
                return Err(self.at.spanned(
                    &name,
                    &format!("{at}.name"),
                    format!("duplicate rate limit name {:?}", name.get_ref()),
                ));
            }
            let pattern_text = pattern
                .as_ref()
                .map_or("/**".to_string(), |p| p.get_ref().clone());
            let matcher = crate::rules::PathGlob::new(&pattern_text).map_err(|e| {
                let span = pattern.as_ref().map_or(name.span(), |p| p.span());
                self.at.error(
                    span,
                    &format!("{at}.match"),
                    format!("invalid glob {pattern_text:?}: {e}"),
                )
            })?;
            if let Some(p) = &pattern {
                self.path_glob(p, &format!("{at}.match"))?;
            }
            let key_span = key.clone();
            let key = match &key {
                None => LimitKey::Ip,
                Some(k) => match k.get_ref().as_str() {
                    "ip" => LimitKey::Ip,
                    "global" => LimitKey::Global,
                    other => match self.named_source(other) {
                        Some(Source::Header(h)) => LimitKey::Header(h),
                        Some(Source::Cookie(c)) => LimitKey::Cookie(c),
                        None => return Err(self.at.spanned(
                            k,
                            &format!("{at}.key"),
                            format!("invalid key {other:?}, expected \"ip\", \"header:NAME\", \"cookie:NAME\" or \"global\""),
                        )),
                    },
                },
            };
            let (per_count, per) = parse_rate(rate.get_ref()).ok_or_else(|| {
                self.at.spanned(
                    &rate,
                    &format!("{at}.rate"),
                    format!(
                        "invalid rate {:?}, expected \"N/s\", \"N/m\" or \"N/h\" with N from 1 to {}",
                        rate.get_ref(),
                        u32::MAX
                    ),
                )
            })?;
            let burst = self.at_least_one(burst, &format!("{at}.burst"), per_count)?;
            let count = match &count {
                None => LimitCount::All,
                Some(c) => match c.get_ref().as_str() {
                    "all" => LimitCount::All,
                    "origin" => LimitCount::Origin,
                    other => {
                        return Err(self.at.spanned(
                            c,
                            &format!("{at}.count"),
                            format!("unknown count {other:?}, expected \"all\" or \"origin\""),
                        ))
                    }
                },
            };
            if let (LimitKey::Header(h), Some(k)) = (&key, &key_span) {
                let never = if h.as_str().contains('_') && !server.underscores_in_headers {
                    Some("a header with '_' is dropped on arrival (server.underscores_in_headers = false)")
                } else if count == LimitCount::Origin && server.strip_request_headers.contains(h) {
                    Some("server.strip_request_headers removes it before the upstream phase this limit counts in")
                } else {
                    None
                };
                if let Some(why) = never {
                    return Err(self.at.spanned(
                        k,
                        &format!("{at}.key"),
                        format!("header {h:?} can never be counted: {why}"),
                    ));
                }
            }
            let backend = match &backend {
                None => LimitBackend::Local,
                Some(b) => match b.get_ref().as_str() {
                    "local" => LimitBackend::Local,
                    "redis" if !redis => {
                        return Err(self.at.spanned(
                            b,
                            &format!("{at}.backend"),
                            "\"redis\" needs [cache.redis] (the budget is kept there)",
                        ))
                    }
                    "redis" => LimitBackend::Redis,
                    other => {
                        return Err(self.at.spanned(
                            b,
                            &format!("{at}.backend"),
                            format!("unknown backend {other:?}, expected \"local\" or \"redis\""),
                        ))
                    }
                },
            };
            out.push(RateLimitConfig {
                name: name.into_inner(),
                pattern: pattern_text,
                matcher,
                key,
                rate: per_count,
                per,
                burst,
                count,
                backend,
                dry_run: dry_run.unwrap_or(false),
            });
        }
        Ok(out)
    }
}

enum Source {
    Header(http::HeaderName),
    Cookie(String),
}

/// `"100/s"`, `"30/m"`, `"1000/h"` → (count, period).
fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (n, unit) = text.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n >= 1)?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some((n, per))
}

/// Whether `text` starts with `scheme` (case-insensitive, RFC 3986 §3.1).
fn scheme_of(text: &str, scheme: &str) -> bool {
    text.get(..scheme.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra_upstream: &str, tail: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\n{extra_upstream}\n{tail}"
        );
        Config::parse(Path::new("t.toml"), &text)
    }

    #[test]
    fn full_section_eight() {
        let c = parse(
            "servers = [{ addr = \"127.0.0.1:3001\", weight = 3 }, \"127.0.0.1:3002\"]\n\
             balance = \"hash\"\nhash_key = \"cookie:session\"\nslow_start = \"30s\"\n\
             [upstream.sticky]\ncookie = \"strata_srv\"\nmax_age = \"1h\"\nsecret = \"change-me\"\n\
             secure = false\nhttp_only = true\nsame_site = \"Lax\"",
            "[[rate_limits]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"ip\"\nrate = \"100/s\"\n\
             burst = 200\ncount = \"all\"\nbackend = \"local\"\ndry_run = false",
        )
        .unwrap();
        assert_eq!(c.upstream.weights, vec![3, 1]);
        assert_eq!(
            c.upstream.balance,
            Balance::Hash(HashKey::Cookie("session".into()))
        );
        assert_eq!(c.upstream.slow_start, Duration::from_secs(30));
        let s = c.upstream.sticky.as_ref().unwrap();
        assert_eq!(s.max_age, Duration::from_secs(3600));
        assert!(!format!("{s:?}").contains("change-me"));
        assert!(c
            .server
            .trusted_proxies
            .contains("10.1.2.3".parse().unwrap()));
        let r = &c.rate_limits[0];
        assert_eq!((r.rate, r.per, r.burst), (100, Duration::from_secs(1), 200));
        assert!(r.matcher.is_match("/api/x/y"));
        assert!(!r.matcher.is_match("/other"));
        assert!(r.matcher.is_match("//api/x") && r.matcher.is_match("/api//x"));
    }

    /// A server given twice in two spellings was two servers (found by
    /// the upstream probe).
    #[test]
    fn a_server_is_one_server_however_it_is_spelled() {
        for (a, b) in [
            ("127.0.0.1:41001", "127.0.0.1:041001"),
            ("App.Example:80", "app.example:80"),
            ("[::1]:80", "[0:0:0:0:0:0:0:1]:80"),
        ] {
            let e = parse(&format!("servers = [\"{a}\", \"{b}\"]"), "")
                .unwrap_err()
                .to_string();
            assert!(e.contains("duplicate server"), "{e}");
            assert!(e.contains("upstream.servers[1]"), "{e}");
        }
        // Other spellings of IPv4 addresses, and a signed port, are
        // refused (found by the regression probe).
        for bad in [
            "127.000.000.001:80",
            "127.1:80",
            "0x7f.0.0.1:80",
            "010.0.0.1:80",
            "127.0.0.1:+80",
        ] {
            let e = parse(&format!("servers = [\"{bad}\"]"), "")
                .unwrap_err()
                .to_string();
            assert!(e.contains("upstream.servers[0]"), "{bad}: {e}");
        }
        assert!(parse("servers = [\"app1.example:80\", \"10.0.0.1:80\"]", "").is_ok());
        let c = parse("servers = [\"App.Example:080\", \"127.0.0.1:81\"]", "").unwrap();
        let shown: Vec<&str> = c.upstream.servers.iter().map(|a| a.as_str()).collect();
        assert_eq!(shown, ["app.example:80", "127.0.0.1:81"]);
    }

    #[test]
    fn errors_are_located() {
        let e = parse("servers = [{ addr = \"127.0.0.1:1\", weight = 0 }]", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.servers[0].weight"), "{e}");
        let e = parse("servers = [{ addr = \"127.0.0.1:1\", wieght = 2 }]", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.servers[0]"), "{e}");
        assert!(e.contains("wieght"), "{e}");
        let e = parse("servers = [\"127.0.0.1:1\"]\nbalance = \"random\"", "")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:8:"), "{e}");
        assert!(e.contains("upstream.balance"), "{e}");
        let e = parse(
            "servers = [\"127.0.0.1:1\"]",
            "[[rate_limits]]\nname = \"a\"\nrate = \"5/d\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rate_limits[0].rate"), "{e}");
        // Beyond u32: the bound is named (it had said "N at least 1").
        let e = parse(
            "servers = [\"127.0.0.1:1\"]",
            "[[rate_limits]]\nname = \"a\"\nrate = \"100000000000/s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("from 1 to 4294967295"), "{e}");
        let e = parse(
            "servers = [\"127.0.0.1:1\"]\n[upstream.sticky]\ncookie = \"x\"",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream.sticky.secret"), "{e}");
        // RFC 6265bis: SameSite=None needs Secure (browsers drop it).
        let sticky = |tail: &str| {
            parse(
                &format!(
                    "servers = [\"127.0.0.1:1\"]\n[upstream.sticky]\nsecret = \"12345678\"\n{tail}"
                ),
                "",
            )
        };
        let e = sticky("same_site = \"None\"").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:10:"), "{e}");
        assert!(e.contains("upstream.sticky.same_site"), "{e}");
        assert!(e.contains("\"None\" needs secure = true"), "{e}");
        let e = sticky("same_site = \"none\"\nsecure = false").unwrap_err();
        assert!(e.to_string().contains("secure = true"), "{e}");
        let c = sticky("same_site = \"None\"\nsecure = true").unwrap();
        let s = c.upstream.sticky.unwrap();
        assert!(s.secure && s.same_site == SameSite::None);
        let e = parse("servers = [\"127.0.0.1:1\"]", "")
            .map(|c| c.rate_limits.len())
            .unwrap();
        assert_eq!(e, 0);
    }

    /// SPEC §8's example sets the default `hash_key = "uri"` beside
    /// `balance = "round_robin"`: it loads. A non-default key there would
    /// be silently unused: an error naming the key.
    #[test]
    fn the_default_hash_key_is_accepted_with_any_policy() {
        for balance in ["round_robin", "least_request"] {
            let c = parse(
                &format!(
                    "servers = [\"127.0.0.1:1\"]\nbalance = \"{balance}\"\nhash_key = \"uri\""
                ),
                "",
            )
            .unwrap();
            assert!(!matches!(c.upstream.balance, Balance::Hash(_)), "{balance}");
        }
        let e = parse(
            "servers = [\"127.0.0.1:1\"]\nbalance = \"round_robin\"\nhash_key = \"cookie:s\"",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:9:"), "{e}");
        assert!(e.contains("upstream.hash_key"), "{e}");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Some((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("3/m"), Some((3, Duration::from_secs(60))));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("5"), None);
    }
}
