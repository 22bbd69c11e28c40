//! HTTP-date parsing (RFC 9110 §5.6.7): the `httpdate` crate, which is
//! exact about the three formats, plus the RFC's rule for the rfc850-date's
//! two-digit year. httpdate reads `00`–`69` as 20xx and `70`–`99` as 19xx
//! whatever the date today; the RFC says a year that would be more than 50
//! years in the future is the most recent past year with those digits, so
//! in 2026 `70` is 2070 and `80` is 1980.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `s` as an HTTP-date; `None` when it is not a valid one.
pub fn parse(s: &str) -> Option<SystemTime> {
    parse_at(s, current_year())
}

/// [`parse`], with the rfc850 year placed relative to `this_year`.
fn parse_at(s: &str, this_year: u64) -> Option<SystemTime> {
    match rfc850_as_imf(s, this_year) {
        Some(imf) => httpdate::parse_http_date(&imf).ok(),
        None => httpdate::parse_http_date(s).ok(),
    }
}

/// An rfc850-date (`Sunday, 06-Nov-94 08:49:37 GMT`) rewritten as the
/// IMF-fixdate it means, with its year in (`this_year` − 50,
/// `this_year` + 50]; `None` for anything not shaped like one (left to
/// httpdate, which rejects what no format allows). httpdate then checks
/// the rest, the day name against the date included.
fn rfc850_as_imf(s: &str, this_year: u64) -> Option<String> {
    let (day_name, rest) = s.split_once(", ")?;
    if !DAY_NAMES.contains(&day_name) {
        return None;
    }
    let b = rest.as_bytes();
    if rest.len() != 22 || b[2] != b'-' || b[6] != b'-' || b[9] != b' ' {
        return None;
    }
    let digits = &rest[7..9];
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let yy: u64 = digits.parse().ok()?;
    let mut year = this_year / 100 * 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    } else if year + 50 <= this_year {
        year += 100;
    }
    Some(format!(
        "{}, {} {} {year} {}",
        &day_name[..3],
        &rest[0..2],
        &rest[3..6],
        &rest[10..]
    ))
}

/// The current year (UTC), to within a day at New Year: the window's
/// edges are 50 years away, so that day never matters.
fn current_year() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + secs * 400 / (146_097 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn year(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)[12..16].to_string()
    }

    #[test]
    fn two_digit_years_fall_within_fifty_years_of_now() {
        let at = |s| parse_at(s, 2026).map(year);
        assert_eq!(
            at("Sunday, 30-Nov-70 14:00:00 GMT").as_deref(),
            Some("2070")
        );
        assert_eq!(
            at("Sunday, 30-Nov-80 14:00:00 GMT").as_deref(),
            Some("1980")
        );
        assert_eq!(
            at("Sunday, 06-Nov-94 08:49:37 GMT").as_deref(),
            Some("1994")
        );
        assert_eq!(
            at("Tuesday, 30-Nov-60 14:00:00 GMT").as_deref(),
            Some("2060")
        );
        assert_eq!(
            at("Monday, 30-Nov-26 14:00:00 GMT").as_deref(),
            Some("2026")
        );
        // 2076 is exactly 50 years ahead: not more, so it stays.
        assert_eq!(
            at("Monday, 30-Nov-76 14:00:00 GMT").as_deref(),
            Some("2076")
        );
        // A day name that does not fit the placed year is invalid.
        assert_eq!(at("Monday, 30-Nov-70 14:00:00 GMT"), None);
        // The other formats are httpdate's alone.
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT").as_deref(), Some("1994"));
        assert_eq!(at("Sun Nov  6 08:49:37 1994").as_deref(), Some("1994"));
        assert_eq!(at("Sunday, 06-Nov-94 8:49:37 GMT"), None);
        assert_eq!(at("Sunday, 06 Nov 94 08:49:37 GMT"), None);
    }

    #[test]
    fn the_current_year_is_this_year() {
        let now = httpdate::fmt_http_date(SystemTime::now());
        assert_eq!(current_year().to_string(), now[12..16]);
    }
}
