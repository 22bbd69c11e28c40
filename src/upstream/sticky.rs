//! Sticky sessions (`[upstream.sticky]`, nginx's `sticky cookie`, HAProxy's
//! `cookie ... insert`): a signed cookie names the server that answered a
//! client, and the client's later requests go back to it while it is
//! eligible.
//!
//! The value is `ID.EXPIRES.MAC`: `ID` the server's stable id (a hash of
//! its address, so the address itself is not disclosed), `EXPIRES` a Unix
//! time, `MAC` the hex HMAC-SHA256 (crates `hmac`, `sha2`) of `ID.EXPIRES`
//! under `secret`. A value that does not parse, whose MAC does not verify
//! (compared in constant time by `Mac::verify_slice`) or that has expired
//! is ignored: the request is balanced as if it had none and the response
//! re-issues the cookie. Parsing and formatting go through the `cookie`
//! crate.
//!
//! The cookie is Strata's: [`Sticky::take`] removes it from the request
//! before it goes upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie::Cookie;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::{SameSite, StickyConfig};

type HmacSha256 = Hmac<Sha256>;

/// The sticky-cookie codec for one configuration.
pub struct Sticky {
    config: StickyConfig,
    /// The keyed MAC, cloned per use (keying once).
    mac: HmacSha256,
}

/// Response extension: the `Set-Cookie` value to add once the response is
/// on its way to the client (after anything is stored, so no cache entry
/// ever holds it).
#[derive(Debug, Clone)]
pub struct SetSticky(pub HeaderValue);

impl Sticky {
    /// `None` only if the HMAC refuses the key, which HMAC-SHA256 never
    /// does (keys of any length are accepted).
    pub fn new(config: &StickyConfig) -> Option<Sticky> {
        let mac = <HmacSha256 as KeyInit>::new_from_slice(config.secret.as_bytes()).ok()?;
        Some(Sticky {
            config: config.clone(),
            mac,
        })
    }

    /// Removes the sticky cookie from `headers` and returns the server id
    /// it names when it is valid and unexpired at `now`.
    pub fn take(&self, headers: &mut HeaderMap, now: SystemTime) -> Option<u64> {
        let name = self.config.cookie.as_str();
        let mut found: Option<u64> = None;
        let mut present = false;
        for v in headers.get_all(header::COOKIE) {
            let Ok(text) = v.to_str() else { continue };
            for c in Cookie::split_parse(text).flatten() {
                if c.name() == name {
                    present = true;
                    found = found.or_else(|| self.verify(c.value(), now));
                }
            }
        }
        if present {
            strip(headers, name);
        }
        found
    }

    /// The server id in `value` if it is authentic and unexpired.
    fn verify(&self, value: &str, now: SystemTime) -> Option<u64> {
        let mut parts = value.splitn(3, '.');
        let (id, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let tag = decode_hex(tag)?;
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(expires.as_bytes());
        mac.verify_slice(&tag).ok()?;
        let expires: u64 = expires.parse().ok()?;
        if unix(now) >= expires {
            return None;
        }
        u64::from_str_radix(id, 16).ok()
    }

    /// The `Set-Cookie` value naming server `id`, valid for `max_age`.
    pub fn issue(&self, id: u64, now: SystemTime) -> Option<SetSticky> {
        let expires = unix(now) + self.config.max_age.as_secs();
        let payload = format!("{id:016x}.{expires}");
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        let value = format!("{payload}.{}", encode_hex(&tag));
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        let cookie = Cookie::build((self.config.cookie.as_str(), value))
            .path("/")
            .max_age(cookie::time::Duration::seconds(max_age))
            .secure(self.config.secure)
            .http_only(self.config.http_only)
            .same_site(match self.config.same_site {
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::None => cookie::SameSite::None,
            })
            .build();
        HeaderValue::from_str(&cookie.to_string())
            .ok()
            .map(SetSticky)
    }

    pub fn max_age(&self) -> Duration {
        self.config.max_age
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Rewrites every `Cookie` field without the cookie `name` (fields left
/// empty are removed).
fn strip(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let text = v.to_str().ok()?;
            let rest: Vec<String> = Cookie::split_parse(text)
                .flatten()
                .filter(|c| c.name() != name)
                .map(|c| c.stripped().to_string())
                .collect();
            if rest.is_empty() {
                None
            } else {
                HeaderValue::from_str(&rest.join("; ")).ok()
            }
        })
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(secret: &str) -> Sticky {
        Sticky::new(&StickyConfig {
            cookie: "strata_srv".into(),
            max_age: Duration::from_secs(3600),
            secret: secret.into(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
        })
        .unwrap()
    }

    fn value_of(set: &SetSticky) -> String {
        let text = set.0.to_str().unwrap();
        Cookie::parse(text).unwrap().value().to_string()
    }

    #[test]
    fn round_trip_strip_and_attributes() {
        let s = sticky("s3cret-key");
        let now = SystemTime::now();
        let set = s.issue(0xabc, now).unwrap();
        let text = set.0.to_str().unwrap();
        for attr in [
            "Max-Age=3600",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
        ] {
            assert!(text.contains(attr), "{text}");
        }
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; strata_srv={}; b=2", value_of(&set))).unwrap(),
        );
        assert_eq!(s.take(&mut h, now), Some(0xabc));
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
    }

    #[test]
    fn forged_tampered_and_expired_are_ignored() {
        let s = sticky("s3cret-key");
        let now = SystemTime::now();
        let good = value_of(&s.issue(7, now).unwrap());
        let other = value_of(&sticky("another-key").issue(7, now).unwrap());
        let tampered = good.replacen("0000000000000007", "0000000000000008", 1);
        let later = now + Duration::from_secs(3601);
        for (value, at) in [
            (other.as_str(), now),
            (tampered.as_str(), now),
            ("garbage", now),
            ("1.2.zz", now),
            (good.as_str(), later),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("strata_srv={value}")).unwrap(),
            );
            assert_eq!(s.take(&mut h, at), None, "{value}");
            assert!(h.get(header::COOKIE).is_none());
        }
    }
}
