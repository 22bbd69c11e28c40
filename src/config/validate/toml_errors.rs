//! toml's parse errors as an operator reads them: the key path of a
//! duplicate (`rules[1].status_ttl.404`, `duplicate table [upstream]`),
//! Rust type names in plain words (`expected a whole number, not
//! negative`), and no secret or password in a quoted value.

use super::super::ConfigError;
use super::Locator;

impl Locator<'_> {
    /// The error for toml's `e`, located, at `key` (the path serde was
    /// at, empty when unknown).
    pub(in crate::config) fn toml(&self, key: String, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        // toml's message can span lines; keep the first, it is the gist.
        let message = e.message().lines().next().unwrap_or("invalid").trim();
        if message == "duplicate key" {
            if let Some(message) = self.duplicate(span.start) {
                return self.error(span, &key, message);
            }
        }
        if message == "invalid type: map, expected a sequence" && !key.is_empty() {
            // `[rules]` written for `[[rules]]`.
            let hint = format!("{message} (write [[{key}]] above each entry: an array of tables)");
            return self.error(span, &key, hint);
        }
        let message = without_quoted_credentials(&plain_types(message));
        let message = if is_secret(&key) {
            without_values(&message)
        } else {
            message
        };
        self.error(span, &key, message)
    }

    /// What a duplicate at `at` duplicates, named from the text (toml
    /// names the place, not the key): `duplicate table [upstream.health]`,
    /// or `duplicate key rules[1].status_ttl.404` with the array index of
    /// an `[[array]]` entry and the key of an inline table.
    fn duplicate(&self, at: usize) -> Option<String> {
        let (before, rest) = (self.text.get(..at)?, self.text.get(at..)?);
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        if rest.starts_with('[') || line.trim_start().starts_with('[') {
            // The whole header, wherever on it toml points.
            let header = format!("{line}{}", rest.split('\n').next().unwrap_or(""));
            let table = header.trim().trim_matches(['[', ']']).trim();
            return Some(format!("duplicate table [{table}]"));
        }
        let unquote = |k: &str| k.trim().replace('"', "");
        // In an inline table, the key the table is the value of, and the
        // name toml points at; else the whole (dotted) key of the line.
        let (inline, name) = if line.contains('{') {
            let name = rest.split(['=', '\n']).next()?;
            (
                Some(unquote(line.split('=').next().unwrap_or(""))),
                unquote(name),
            )
        } else {
            let whole = format!("{line}{rest}");
            (None, unquote(whole.split(['=', '\n']).next()?))
        };
        let header = before.lines().map(str::trim).rfind(|l| l.starts_with('['));
        let table = header.map(|h| self.table_path(before, h));
        let path: Vec<&str> = [table.as_deref(), inline.as_deref(), Some(name.as_str())]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        Some(format!("duplicate key {}", path.join(".")))
    }

    /// The key path of table header `h` (trimmed) with the text `before`
    /// it: `rules[1]` for the second `[[rules]]`, `rules[1].status_ttl`
    /// for a `[rules.status_ttl]` under it, `compression` for
    /// `[compression]`.
    fn table_path(&self, before: &str, h: &str) -> String {
        let count = |header: &str| before.lines().filter(|l| l.trim() == header).count();
        if let Some(array) = h.strip_prefix("[[") {
            let array = array.split("]]").next().unwrap_or(array).trim();
            return format!("{array}[{}]", count(h).saturating_sub(1));
        }
        let table = h
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or(h)
            .trim();
        // A sub-table of the latest entry of an array of tables.
        if let Some((first, sub)) = table.split_once('.') {
            let array = format!("[[{first}]]");
            if count(&array) > 0 {
                return format!("{first}[{}].{sub}", count(&array) - 1);
            }
        }
        table.to_string()
    }
}

/// `message` with every quoted value shown as
/// [`crate::telemetry::without_userinfo`] shows a refused URL: toml quotes
/// a value of the wrong type (`urls = "redis://:pw@h"` for a list), and the
/// error must not carry its password.
fn without_quoted_credentials(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        let inner = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..=open]);
        out.push_str(&crate::telemetry::without_userinfo(inner));
        out.push('"');
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Whether `key` holds a secret (`admin.token`, `admin.read_token`,
/// `upstream.sticky.secret`, a webhook's `secret`, a password): its value
/// never appears in an error, which reaches the log, a `reload_failed`
/// alert and the dashboard's activity list.
fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    last.ends_with("token") || last.ends_with("secret") || last.contains("password")
}

/// `message` with each `` `value` `` serde quotes replaced by `<hidden>`
/// (`invalid type: integer `987654321`, expected a string`).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push_str(if inside { "`<hidden>`" } else { part });
        inside = !inside;
    }
    out
}

/// serde's Rust type names in a message (`expected u32`) as an operator
/// reads them (`expected a whole number`).
fn plain_types(message: &str) -> String {
    // toml reads an integer too large for 64 bits as `i128`.
    let message = &message.replace(" as i128", "").replace(" as u128", "");
    let Some((head, ty)) = message.rsplit_once("expected ") else {
        return message.to_string();
    };
    // An integer that does not fit its type says how ("expected a whole
    // number" is true of -1); the key's own range, narrower than its
    // type's, is checked after and said then.
    let unsigned = matches!(ty, "u8" | "u16" | "u32" | "u64" | "usize");
    let plain = match ty {
        _ if unsigned && head.contains("integer `-") => "a whole number, not negative",
        _ if unsigned && head.contains("integer `") => "a smaller whole number",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        _ => return message.to_string(),
    };
    format!("{head}expected {plain}")
}
