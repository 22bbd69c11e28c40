//! Sticky sessions (`[upstream.sticky]`, nginx's `sticky cookie`, HAProxy's
//! `cookie ... insert`): a signed cookie names the server that answered a
//! client, and the client's later requests go back to it while it is
//! eligible.
//!
//! The value is `ID.EXPIRES.MAC`: `ID` the server's stable id, `EXPIRES` a
//! Unix time, `MAC` the hex HMAC-SHA256 (crates `hmac`, `sha2`) of
//! `ID.EXPIRES` under `secret`. The id is keyed too: the first 64 bits of
//! HMAC-SHA256 under `secret` of a label and the server's `host:port`, so
//! it is stable across reloads, reordering and instances sharing the
//! secret, yet does not disclose the address (an unkeyed hash of it would:
//! hashing `127.0.0.1:1` to `:65535` finds it in milliseconds). A value
//! that does not parse, whose MAC does not verify (compared in constant
//! time by `Mac::verify_slice`) or that has expired is ignored: the
//! request is balanced as if it had none and the response re-issues the
//! cookie. Parsing and formatting go through the `cookie`
//! crate.
//!
//! The cookie is Strata's: [`Sticky::take`] removes it from the request
//! before it goes upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::uri::Authority;

use cookie::Cookie;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::{SameSite, StickyConfig};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: the id MAC's input never looks like a cookie
/// payload (`ID.EXPIRES`).
const ID_LABEL: &[u8] = b"strata sticky server id\0";

/// The sticky-cookie codec for one configuration and pool.
pub struct Sticky {
    config: StickyConfig,
    /// The keyed MAC, cloned per use (keying once).
    mac: HmacSha256,
    /// Each server's cookie id, in the balancer's order.
    ids: Vec<u64>,
}

/// Response extension: the `Set-Cookie` value to add once the response is
/// on its way to the client (after anything is stored, so no cache entry
/// ever holds it).
#[derive(Debug, Clone)]
pub struct SetSticky(pub HeaderValue);

impl Sticky {
    /// The codec for `servers` (in the balancer's order). `None` only if
    /// the HMAC refuses the key, which HMAC-SHA256 never does (keys of any
    /// length are accepted).
    pub fn new<'a>(
        config: &StickyConfig,
        servers: impl Iterator<Item = &'a Authority>,
    ) -> Option<Sticky> {
        let mac = <HmacSha256 as KeyInit>::new_from_slice(config.secret.as_bytes()).ok()?;
        let ids = servers.map(|a| server_id(&mac, a)).collect();
        Some(Sticky {
            config: config.clone(),
            mac,
            ids,
        })
    }

    /// Removes the sticky cookie from `headers` and returns the index of
    /// the server it names when it is valid, unexpired at `now`, and names
    /// a configured server.
    pub fn take(&self, headers: &mut HeaderMap, now: SystemTime) -> Option<usize> {
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
        found.and_then(|id| self.ids.iter().position(|&i| i == id))
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

    /// The `Set-Cookie` value naming server `server` (its index in the
    /// balancer's order), valid for `max_age`.
    pub fn issue(&self, server: usize, now: SystemTime) -> Option<SetSticky> {
        let id = *self.ids.get(server)?;
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

/// The cookie id of the server `authority`: the first 64 bits of
/// HMAC-SHA256 under the secret (`mac` is keyed) of [`ID_LABEL`] and
/// `host:port`.
fn server_id(mac: &HmacSha256, authority: &Authority) -> u64 {
    let mut mac = mac.clone();
    mac.update(ID_LABEL);
    mac.update(authority.as_str().as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag[..8]);
    u64::from_be_bytes(first)
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

    const SERVERS: [&str; 3] = ["127.0.0.1:3001", "127.0.0.1:3002", "10.0.0.7:80"];

    fn sticky(secret: &str) -> Sticky {
        let servers: Vec<Authority> = SERVERS.iter().map(|s| s.parse().unwrap()).collect();
        Sticky::new(
            &StickyConfig {
                cookie: "strata_srv".into(),
                max_age: Duration::from_secs(3600),
                secret: secret.into(),
                secure: true,
                http_only: true,
                same_site: SameSite::Lax,
            },
            servers.iter(),
        )
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
        let set = s.issue(1, now).unwrap();
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
        assert_eq!(s.take(&mut h, now), Some(1));
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
    }

    #[test]
    fn forged_tampered_and_expired_are_ignored() {
        let s = sticky("s3cret-key");
        let now = SystemTime::now();
        let good = value_of(&s.issue(2, now).unwrap());
        let other = value_of(&sticky("another-key").issue(2, now).unwrap());
        let (id, rest) = good.split_once('.').unwrap();
        let flipped = u64::from_str_radix(id, 16).unwrap() ^ 1;
        let tampered = format!("{flipped:016x}.{rest}");
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

    /// The id names no address: it is not the unkeyed hash of
    /// `host:port` (which a client can invert by hashing every port), and
    /// another secret gives other ids.
    #[test]
    fn the_id_is_keyed_by_the_secret() {
        let now = SystemTime::now();
        let id_of = |s: &Sticky, server: usize| {
            let value = value_of(&s.issue(server, now).unwrap());
            u64::from_str_radix(value.split('.').next().unwrap(), 16).unwrap()
        };
        let (a, b) = (sticky("s3cret-key"), sticky("another-key"));
        for (i, addr) in SERVERS.iter().enumerate() {
            let id = id_of(&a, i);
            assert_ne!(id, xxhash_rust::xxh3::xxh3_64(addr.as_bytes()), "{addr}");
            assert_ne!(id, id_of(&b, i), "{addr}");
            // Stable: the same secret and address give the same id.
            assert_eq!(id, id_of(&sticky("s3cret-key"), i));
        }
        assert_eq!(a.issue(SERVERS.len(), now).map(|_| ()), None);
    }
}
