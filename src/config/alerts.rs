//! Validation of `[alerts]`: webhooks (URL, format, events, secret,
//! windows) and the ratio alerts, into [`AlertsConfig`]. Kept apart from
//! `validate.rs` (one section, one file).

use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use percent_encoding::percent_decode_str;

use super::file::{AlertsFile, RatioFile, WebhookFile};
use super::validate::Validator;
use super::{ConfigError, ServerConfig};
use crate::alerts::{AlertsConfig, Event, Format, RatioAlert, WebhookConfig};

/// `cert_expiring` fires this long before a certificate ends.
pub const CERT_EXPIRY: Duration = Duration::from_secs(14 * 86_400);

impl Validator<'_> {
    pub(super) fn alerts(
        &self,
        a: AlertsFile,
        server: &ServerConfig,
    ) -> Result<AlertsConfig, ConfigError> {
        let AlertsFile {
            instance,
            webhooks,
            hit_ratio_low,
            error_ratio_high,
        } = a;
        let instance = match instance {
            Some(i) if i.get_ref().trim().is_empty() => {
                return Err(self.at.spanned(
                    &i,
                    "alerts.instance",
                    "expected a non-empty name (omit the key for hostname:port)",
                ))
            }
            Some(i) => i.into_inner(),
            None => default_instance(server),
        };
        let mut hooks = Vec::with_capacity(webhooks.len());
        for (i, w) in webhooks.into_iter().enumerate() {
            hooks.push(self.webhook(w, &format!("alerts.webhooks[{i}]"))?);
        }
        Ok(AlertsConfig {
            instance,
            webhooks: hooks,
            hit_ratio_low: hit_ratio_low
                .map(|r| self.ratio(r, "alerts.hit_ratio_low"))
                .transpose()?,
            error_ratio_high: error_ratio_high
                .map(|r| self.ratio(r, "alerts.error_ratio_high"))
                .transpose()?,
            cert_expiry: CERT_EXPIRY,
        })
    }

    fn webhook(&self, w: WebhookFile, at: &str) -> Result<WebhookConfig, ConfigError> {
        let WebhookFile {
            url,
            format,
            events,
            secret,
            batch_window,
            timeout,
        } = w;
        let parsed: http::Uri = url.get_ref().parse().map_err(|_| {
            self.at.spanned(
                &url,
                &format!("{at}.url"),
                "invalid URL, expected http:// or https://",
            )
        })?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(self.at.spanned(
                &url,
                &format!("{at}.url"),
                "expected an http:// or https:// URL with a host",
            ));
        }
        // `http` reads a port it cannot hold as absent: look at the text.
        let port_written = parsed.authority().is_some_and(|a| {
            let host_port = a.as_str().rsplit('@').next().unwrap_or("");
            host_port.rsplit(']').next().unwrap_or("").contains(':')
        });
        if port_written && parsed.port_u16().is_none_or(|p| p == 0) {
            return Err(self.at.spanned(
                &url,
                &format!("{at}.url"),
                "invalid port, expected 1 to 65535",
            ));
        }
        let (parsed, authorization) = take_userinfo(parsed)
            .map_err(|why| self.at.spanned(&url, &format!("{at}.url"), why))?;
        let format = match format {
            None => Format::Json,
            Some(f) => Format::parse(f.get_ref()).ok_or_else(|| {
                self.at.spanned(
                    &f,
                    &format!("{at}.format"),
                    format!(
                        "unknown format {:?}, expected \"json\", \"slack\" or \"alertmanager\"",
                        f.get_ref()
                    ),
                )
            })?,
        };
        let mut list = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let event = Event::parse(e.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
                self.at.spanned(
                    e,
                    &format!("{at}.events[{i}]"),
                    format!(
                        "unknown event {:?}, expected one of {}",
                        e.get_ref(),
                        names.join(", ")
                    ),
                )
            })?;
            if !list.contains(&event) {
                list.push(event);
            }
        }
        let secret = match secret {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.at.spanned(
                    &s,
                    &format!("{at}.secret"),
                    "expected a non-empty secret (omit the key to send unsigned)",
                ))
            }
            Some(s) => Some(s.into_inner()),
            None => None,
        };
        let timeout = self.nonzero(timeout, &format!("{at}.timeout"), Duration::from_secs(5))?;
        Ok(WebhookConfig {
            url: parsed,
            authorization,
            format,
            events: list,
            secret,
            batch_window: batch_window.map_or(Duration::from_secs(10), |d| d.0),
            timeout,
        })
    }

    fn ratio(&self, r: RatioFile, at: &str) -> Result<RatioAlert, ConfigError> {
        let RatioFile {
            threshold,
            window,
            min_rps,
        } = r;
        if !(0.0..=1.0).contains(threshold.get_ref()) {
            return Err(self.at.spanned(
                &threshold,
                &format!("{at}.threshold"),
                "expected a fraction between 0.0 and 1.0",
            ));
        }
        let min_rps = match min_rps {
            Some(m) if !m.get_ref().is_finite() || *m.get_ref() < 0.0 => {
                return Err(self.at.spanned(
                    &m,
                    &format!("{at}.min_rps"),
                    "expected a number of requests per second, 0 or more",
                ))
            }
            Some(m) => m.into_inner(),
            None => 1.0,
        };
        Ok(RatioAlert {
            threshold: threshold.into_inner(),
            window: self.nonzero(window, &format!("{at}.window"), Duration::from_secs(300))?,
            min_rps,
        })
    }
}

/// Splits `user:password@` off `url`: the URL without it (what the HTTP
/// client sees, and could log) and the `Authorization: Basic` value of the
/// percent-decoded user and password (RFC 7617; as curl and Alertmanager
/// send URL credentials), marked sensitive. A user without `:` has an
/// empty password.
fn take_userinfo(url: http::Uri) -> Result<(http::Uri, Option<HeaderValue>), &'static str> {
    let Some((userinfo, host)) = url.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Ok((url, None));
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user: Vec<u8> = percent_decode_str(user).collect();
    if user.contains(&b':') {
        return Err("the user name must not contain ':' (RFC 7617), even encoded as %3A");
    }
    let mut pair = user;
    pair.push(b':');
    pair.extend(percent_decode_str(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| "invalid user or password")?;
    value.set_sensitive(true);
    let authority = host
        .parse()
        .map_err(|_| "invalid URL, expected http:// or https://")?;
    let mut parts = url.into_parts();
    parts.authority = Some(authority);
    let url =
        http::Uri::from_parts(parts).map_err(|_| "invalid URL, expected http:// or https://")?;
    Ok((url, Some(value)))
}

/// `hostname:port` (the proxy listener's port): unique per instance even
/// with several on one host.
fn default_instance(server: &ServerConfig) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "strata".to_string());
    format!("{host}:{}", server.listen.port())
}

#[cfg(test)]
mod tests {
    use super::take_userinfo;

    #[test]
    fn userinfo_becomes_basic_authorization_and_leaves_the_url() {
        let (url, auth) = take_userinfo(
            "http://alice:HOOK%2FPASS@127.0.0.1:24050/c11?x=1"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:24050/c11?x=1");
        let auth = auth.unwrap();
        assert!(auth.is_sensitive());
        // base64("alice:HOOK/PASS")
        assert_eq!(auth, "Basic YWxpY2U6SE9PSy9QQVNT");
        assert_eq!(format!("{auth:?}"), "Sensitive");
        let (url, auth) = take_userinfo("https://token@h.example/x".parse().unwrap()).unwrap();
        assert_eq!(url.to_string(), "https://h.example/x");
        assert_eq!(auth.unwrap(), "Basic dG9rZW46"); // "token:"
        let (url, auth) = take_userinfo("http://h:1/".parse().unwrap()).unwrap();
        assert_eq!((url.to_string().as_str(), auth), ("http://h:1/", None));
        assert!(take_userinfo("http://a%3Ab:c@h/".parse().unwrap()).is_err());
    }
}
