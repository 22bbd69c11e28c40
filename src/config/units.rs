//! Human-friendly units used by the configuration file: durations such as
//! `"250ms"`, `"5s"`, `"1h"`, sizes such as `"64KiB"`, `"256MiB"`, and
//! listen addresses such as `"127.0.0.1:8080"`, `"localhost:8080"` or
//! `":8080"`.
//!
//! Both deserialize from strings (and, for sizes, from plain integers meaning
//! bytes), so a bad value is reported by the TOML layer with its line, column
//! and key.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a number and a unit, one of [`DURATION_UNITS`]
/// (`ms`, `s`, `m`, `h`, `d` and their spellings). Several parts may be
/// chained: `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

/// A size in bytes written with an optional unit: `B`, `KiB`, `MiB`, `GiB`
/// (binary), or `KB`, `MB`, `GB` (decimal). A bare integer means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// A listen address: an IP literal with a port (`"127.0.0.1:8080"`,
/// `"[::1]:8080"`), `":8080"` for every IPv4 interface (as nginx's
/// `listen 8080`), or a host name with a port (`"localhost:8080"`),
/// resolved once when the file is read (the first address wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

/// Parses a listen address; the error says what was expected.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let text = s.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected \"IP:port\", \"host:port\" or \":port\", e.g. \"127.0.0.1:8080\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid listen address {s:?}: missing port, {expected}"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid listen address {s:?}: bad port {port:?}, {expected}"))?;
    match host {
        "" | "*" => Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        // Not left to the resolver: some map localhost to ::1 first, and a
        // listener on ::1 is unreachable from 127.0.0.1 clients.
        "localhost" => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        name if name.contains(|c: char| c.is_whitespace() || c == '/' || c == '[') => {
            Err(format!("invalid listen address {s:?}: {expected}"))
        }
        name => (name, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| format!("invalid listen address {s:?}: cannot resolve {name:?}")),
    }
}

/// The longest duration any key takes: 100 years. Longer ones would
/// overflow a clock reading plus the duration (a panic on every request
/// that arms such a timer); no setting needs more.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Every duration unit the parser takes, with its length in seconds: the
/// one list the parser, its errors and the README's list follow.
pub const DURATION_UNITS: [(&str, f64); 15] = [
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("sec", 1.0),
    ("secs", 1.0),
    ("m", 60.0),
    ("min", 60.0),
    ("mins", 60.0),
    ("h", 3600.0),
    ("hr", 3600.0),
    ("hrs", 3600.0),
    ("d", 86_400.0),
    ("day", 86_400.0),
    ("days", 86_400.0),
];

/// [`DURATION_UNITS`] as an error lists them: `us, µs, ms, ...`.
fn duration_units() -> String {
    let names: Vec<&str> = DURATION_UNITS.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// Parses a duration string, at most [`MAX_DURATION`]; the error says what
/// was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration, expected e.g. \"250ms\", \"5s\", \"1h\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number followed by a unit ({})",
                duration_units()
            ));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {:?}", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!(
                "invalid duration {s:?}: missing unit, expected e.g. \"{number}s\" or \"{number}ms\""
            ));
        }
        let Some(&(_, seconds)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?}, expected one of {}",
                duration_units()
            ));
        };
        let part = Duration::try_from_secs_f64(number * seconds)
            .map_err(|_| format!("invalid duration {s:?}: out of range"))?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("invalid duration {s:?}: out of range (at most 36500d)"))?;
    }
    Ok(total)
}

/// Parses a size string; the error says what was expected.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(format!(
            "invalid size {s:?}: expected a number with an optional unit, e.g. \"64KiB\", \"256MiB\""
        ));
    }
    let number: f64 = text[..digits]
        .parse()
        .map_err(|_| format!("invalid size {s:?}: bad number"))?;
    let unit = text[digits..].trim();
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?}, expected B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    let bytes = number * factor;
    // `u64::MAX as f64` is 2^64 itself: that and above do not fit.
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes.round() as u64)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"5s\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ListenAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a listen address such as \"127.0.0.1:8080\", \"localhost:8080\" or \":8080\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenAddr, E> {
                parse_listen(v).map(ListenAddr).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or \"256MiB\", or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        // The error lists every unit the parser takes (it left out `min`,
        // which was accepted, newcomer probe 8).
        let e = parse_duration("2 minutes").unwrap_err();
        assert!(
            e.ends_with("unknown unit \"minutes\", expected one of us, µs, ms, s, sec, secs, m, min, mins, h, hr, hrs, d, day, days"),
            "{e}"
        );
        for (unit, seconds) in DURATION_UNITS {
            assert_eq!(
                parse_duration(&format!("2{unit}")),
                Ok(Duration::from_secs_f64(2.0 * seconds)),
                "{unit}"
            );
        }
        assert_eq!(parse_duration("1 min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ms").is_err());
        // Beyond 100 years a clock reading plus the duration overflows.
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert!(parse_duration("36501d")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_duration("200000000000000d")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok(":8080"), "0.0.0.0:8080");
        assert_eq!(ok("localhost:9090"), "127.0.0.1:9090");
        assert!(parse_listen("8080").unwrap_err().contains("missing port"));
        assert!(parse_listen("localhost:http")
            .unwrap_err()
            .contains("bad port"));
        assert!(parse_listen("localhost:70000")
            .unwrap_err()
            .contains("bad port"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("18446744073709551616").is_err(), "2^64");
        assert_eq!(parse_size("64k"), Ok(64 * 1024), "nginx's units");
    }
}
