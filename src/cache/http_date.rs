//! HTTP-date parsing (RFC 9110 §5.6.7): the `httpdate` crate, which is
//! exact about the three formats, plus the RFC's rule for the rfc850-date's
//! two-digit year. httpdate reads `00`–`69` as 20xx and `70`–`99` as 19xx
//! whatever the date today; the RFC says a year that would be more than 50
//! years in the future is the most recent past year with those digits, so
//! in 2026 `70` is 2070 and `80` is 1980.
//!
//! A date httpdate refuses gets a second, lenient reading, as §5.6.7
//! encourages ("recipients … are encouraged to be robust in parsing
//! timestamps") and as nginx and Varnish read dates: names in any case
//! (`THU`, `aug`, `gMT`), and a day name that does not fit the date
//! (`Thu, 18 Aug 2050`, a Monday; origins with a buggy formatter send
//! these). The day name must still be one; the numbers and the layout are
//! as exact as before. The lenient reading costs nothing on valid dates.

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

/// `s` as an HTTP-date read exactly, without the lenient second reading:
/// for a request's preconditions (`If-Modified-Since`,
/// `If-Unmodified-Since`, `If-Range`), which RFC 9110 §13.1.3–§13.1.5
/// say to ignore when they are not valid HTTP-dates.
pub fn parse_exact(s: &str) -> Option<SystemTime> {
    strict(s, current_year())
}

/// [`parse`], with the rfc850 year placed relative to `this_year`.
fn parse_at(s: &str, this_year: u64) -> Option<SystemTime> {
    strict(s, this_year).or_else(|| lenient(s, this_year))
}

/// The three formats exactly as RFC 9110 §5.6.7 writes them.
fn strict(s: &str, this_year: u64) -> Option<SystemTime> {
    match rfc850_as_imf(s, this_year) {
        Some(imf) => httpdate::parse_http_date(&imf).ok(),
        None => httpdate::parse_http_date(s).ok(),
    }
}

/// `s` with its names in their canonical case (`Thu`, `Aug`, `GMT`) and
/// its day name replaced by each day's in turn: the first that makes a
/// valid date is the one that fits it. `None` when `s` does not start
/// with a day name (in any case), or no day makes it valid.
fn lenient(s: &str, this_year: u64) -> Option<SystemTime> {
    let canonical = canonical_case(s)?;
    let day_len = canonical
        .bytes()
        .take_while(u8::is_ascii_alphabetic)
        .count();
    let day = &canonical[..day_len];
    let long = DAY_NAMES.contains(&day);
    if !long && !DAY_NAMES.iter().any(|d| &d[..3] == day) {
        return None;
    }
    let rest = &canonical[day_len..];
    DAY_NAMES.iter().find_map(|name| {
        let name = if long { name } else { &name[..3] };
        strict(&format!("{name}{rest}"), this_year)
    })
}

/// `s` with each run of letters in the case HTTP-date writes it: `GMT`
/// upper case, any other word capitalised. `None` for non-ASCII input.
fn canonical_case(s: &str) -> Option<String> {
    if !s.is_ascii() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (word, after) = rest.split_at(letters);
        if word.eq_ignore_ascii_case("GMT") {
            out.push_str("GMT");
        } else if let Some(first) = word.chars().next() {
            out.push(first.to_ascii_uppercase());
            out.push_str(&word[1..].to_ascii_lowercase());
        }
        let others = after
            .bytes()
            .take_while(|b| !b.is_ascii_alphabetic())
            .count();
        out.push_str(&after[..others]);
        rest = &after[others..];
    }
    Some(out)
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
        // A day name that does not fit the placed year is read leniently:
        // the year is still placed by the window, not by the day name.
        assert_eq!(
            at("Monday, 30-Nov-70 14:00:00 GMT").as_deref(),
            Some("2070")
        );
        // The other formats are httpdate's alone.
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT").as_deref(), Some("1994"));
        assert_eq!(at("Sun Nov  6 08:49:37 1994").as_deref(), Some("1994"));
        assert_eq!(at("Sunday, 06-Nov-94 8:49:37 GMT"), None);
        assert_eq!(at("Sunday, 06 Nov 94 08:49:37 GMT"), None);
    }

    #[test]
    fn names_in_any_case_and_a_wrong_day_name_are_read_leniently() {
        let exact = parse_at("Mon, 08 Aug 2050 02:01:18 GMT", 2026);
        assert!(exact.is_some());
        // cache-tests.fyi's expires-parse cases, and a wrong day name in
        // each of the three formats (8 August 2050 is a Monday).
        for s in [
            "THU, 08 Aug 2050 02:01:18 GMT",
            "Mon, 08 AUG 2050 02:01:18 GMT",
            "Mon, 08 Aug 2050 02:01:18 gMT",
            "mon, 08 aug 2050 02:01:18 gmt",
            "Thu, 08 Aug 2050 02:01:18 GMT",
            "Thu Aug  8 02:01:18 2050",
            "Thursday, 08-Aug-50 02:01:18 GMT",
        ] {
            assert_eq!(parse_at(s, 2026), exact, "{s}");
        }
        // Still refused: no day name, a name that is no day's, numbers or
        // layout out of the grammar, another zone, non-ASCII.
        for s in [
            "08 Aug 2050 02:01:18 GMT",
            "Xyz, 08 Aug 2050 02:01:18 GMT",
            "Mon, 8 Aug 2050 02:01:18 GMT",
            "Mon, 08 Aug 2050 2:01:18 GMT",
            "Mon, 08 Aug 2050 02:01:18 UTC",
            "Mon, 08 Aug 2050 02:01:61 GMT",
            "Mon, 32 Aug 2050 02:01:18 GMT",
            "Mon, 08 Agu 2050 02:01:18 GMT",
            "Mön, 08 Aug 2050 02:01:18 GMT",
            "",
        ] {
            assert_eq!(parse_at(s, 2026), None, "{s}");
        }
    }

    #[test]
    fn the_exact_reading_has_no_second_chance() {
        let wrong_day = "Thu, 08 Aug 2050 02:01:18 GMT";
        assert!(parse(wrong_day).is_some());
        assert!(parse_exact(wrong_day).is_none());
        assert!(parse_exact("Mon, 08 Aug 2050 02:01:18 GMT").is_some());
        assert!(parse_exact("mon, 08 Aug 2050 02:01:18 GMT").is_none());
    }

    #[test]
    fn the_current_year_is_this_year() {
        let now = httpdate::fmt_http_date(SystemTime::now());
        assert_eq!(current_year().to_string(), now[12..16]);
    }
}
