//! Logging through tracing-subscriber: text or JSON on stdout (written by a
//! background thread), a level filter from `--log-level`, `[log] level` or
//! `RUST_LOG` (in that order), changeable on reload. Access events (target
//! `strata::access`, see `proxy/access.rs`) go through the same filter, in
//! their own format (`[log] access_format`: text, JSON or combined lines).
//! [`without_credentials`] is how a URL that may carry a password (Redis,
//! webhooks) is written into a log line or an error.

use std::io::{BufWriter, IsTerminal};

use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::{AccessFormat, LogFormat};
use crate::proxy::access::TARGET as ACCESS;

/// Changes the level filter after start-up (SIGHUP).
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    /// Replaces the filter: `directive`, or RUST_LOG then `info` when
    /// `None`. An invalid directive is an error and changes nothing.
    pub fn set_level(&self, directive: Option<&str>) -> Result<(), String> {
        let filter = match directive {
            Some(d) => EnvFilter::try_new(d).map_err(|e| e.to_string())?,
            None => filter(None),
        };
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Builds the filter: an explicit directive, else RUST_LOG, else `info`.
/// One that [`check_filter`] refuses is said on stderr and replaced by
/// `info`, never obeyed silently (`RUST_LOG=verbose` would log nothing).
pub fn filter(directive: Option<&str>) -> EnvFilter {
    let env = std::env::var("RUST_LOG").ok();
    let (source, chosen) = match (directive, env.as_deref().map(str::trim)) {
        (Some(d), _) => ("log level", d),
        (None, Some(e)) if !e.is_empty() => ("RUST_LOG", e),
        (None, _) => return EnvFilter::new("info"),
    };
    check_filter(chosen)
        .and_then(|()| EnvFilter::try_new(chosen).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            eprintln!("strata: {source}: {e}; using info");
            EnvFilter::new("info")
        })
}

/// A log filter (`[log] level`, `--log-level`, RUST_LOG): what the
/// logger's parser accepts, and no bare word that is not a level
/// (`"verbose"` parses as a filter for a target of that name, which
/// silences every other event, Strata's own included). `Err` says why.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if let Err(e) = EnvFilter::try_new(filter) {
        return Err(format!("invalid filter {filter:?} ({e})"));
    }
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', ':', '[']);
        if bare && !LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l)) {
            return Err(format!(
                "unknown level {directive:?}: expected trace, debug, info, warn, error or off, or target=level such as \"strata::access=off\""
            ));
        }
    }
    Ok(())
}

/// Keeps the log writer thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the global subscriber (once per process). Keep the guard until
/// the process ends. `access` is how access events (target
/// `strata::access`) are written: as events in the text or JSON format, or
/// as bare nginx-style `combined` lines.
///
/// Lines are formatted on the thread that logs and written to stdout by a
/// writer thread that batches them into few `write(2)`s, so an access
/// event costs no system call on the request path. The queue is not lossy:
/// when it is full, logging waits (as nginx does on a slow disk) rather
/// than dropping access lines.
pub fn init(
    format: LogFormat,
    access: AccessFormat,
    directive: Option<&str>,
) -> (LogHandle, LogGuard) {
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("strata-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let (filter, handle) = reload::Layer::new(filter(directive));
    let layers = vec![
        event_layer(format, writer.clone(), filter_fn(not_access)),
        match access {
            AccessFormat::Text => event_layer(LogFormat::Text, writer, filter_fn(is_access)),
            AccessFormat::Json => event_layer(LogFormat::Json, writer, filter_fn(is_access)),
            AccessFormat::Combined => fmt::layer()
                .event_format(BareLine)
                .with_writer(writer)
                .with_filter(filter_fn(is_access))
                .boxed(),
        },
    ];
    if let Err(e) = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
    {
        eprintln!("logging already initialised: {e}");
    }
    (LogHandle { filter: handle }, LogGuard { _worker: worker })
}

fn is_access(m: &tracing::Metadata<'_>) -> bool {
    m.target() == ACCESS
}

fn not_access(m: &tracing::Metadata<'_>) -> bool {
    m.target() != ACCESS
}

type Subscriber = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// A fmt layer writing events in `format`, for the targets `keep` lets by.
fn event_layer(
    format: LogFormat,
    writer: NonBlocking,
    keep: FilterFn<fn(&tracing::Metadata<'_>) -> bool>,
) -> Box<dyn Layer<Subscriber> + Send + Sync> {
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .with_filter(keep)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_target(false)
            // Colours for a terminal only, never in a file or a pipe.
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(writer)
            .with_filter(keep)
            .boxed(),
    }
}

/// Writes an event's message alone, as one line: the access log's
/// `combined` lines are formatted in full by `proxy/access.rs`.
struct BareLine;

impl<S, N> FormatEvent<S, N> for BareLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut message = Message(&mut writer, Ok(()));
        event.record(&mut message);
        message.1?;
        writeln!(writer)
    }
}

struct Message<'a, 'w>(&'a mut format::Writer<'w>, std::fmt::Result);

impl Visit for Message<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.1 = write!(self.0, "{value:?}");
        }
    }
}

/// Lines queued for the writer thread before logging waits.
const QUEUED_LINES: usize = 64 * 1024;

/// `url` with the password of its userinfo (`scheme://user:PASSWORD@host`)
/// replaced by `***`, for logs and error messages: secrets never reach a
/// log. The userinfo is taken to end at the last `@`, so a password
/// pasted with a `/`, `?` or `#` unencoded (a malformed URL, reported in an
/// error) is hidden too; an `@` in a path is over-hidden, never leaked.
/// When what precedes the last `@` is not `scheme://user:...` (a mistyped
/// `redis:/:pw@host`, `rediss//:pw@host`), all of it is hidden: `***@host`.
/// A URL without `@` is returned as it is (no allocation).
pub fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    without_password_query(masked_userinfo(url, true))
}

/// `url` as an error about a refused value shows it: as
/// [`without_credentials`], but the user name is hidden with the password
/// (`redis://***@host`): in a URL that does not parse, where the user name
/// ends is a guess (`redis://pa:ss@word@host`), and a guess must not show
/// part of a password.
pub fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    without_password_query(masked_userinfo(url, false))
}

/// `masked` with the values of its password query parameters hidden.
fn without_password_query(masked: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    match masked.find('?') {
        Some(q) if has_password_parameter(&masked[q + 1..]) => {
            without_password_parameters(&masked, q).into()
        }
        _ => masked,
    }
}

/// The names of query parameters that carry a password in a Redis URL
/// (redis-rs reads `pass` for `redis+unix://` and `unix://` URLs).
const PASSWORD_PARAMETERS: [&str; 2] = ["pass", "password"];

fn has_password_parameter(query: &str) -> bool {
    query.split(['&', '#']).any(|p| {
        let name = p.split_once('=').map_or(p, |(n, _)| n);
        PASSWORD_PARAMETERS
            .iter()
            .any(|w| name.eq_ignore_ascii_case(w))
    })
}

/// `url` (its query starting after byte `q`) with the values of
/// [`PASSWORD_PARAMETERS`] shown as `***`.
fn without_password_parameters(url: &str, q: usize) -> String {
    let (head, query) = url.split_at(q + 1);
    let (query, fragment) = query
        .split_once('#')
        .map_or((query, None), |(a, b)| (a, Some(b)));
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((n, _))
                if PASSWORD_PARAMETERS
                    .iter()
                    .any(|w| n.eq_ignore_ascii_case(w)) =>
            {
                format!("{n}=***")
            }
            _ => p.to_string(),
        })
        .collect();
    let mut out = format!("{head}{}", params.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// [`without_credentials`] (`keep_user`) or [`without_userinfo`] for the
/// userinfo part only.
fn masked_userinfo(url: &str, keep_user: bool) -> std::borrow::Cow<'_, str> {
    let Some(at) = url.rfind('@') else {
        return url.into();
    };
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    let scheme = url[..at].find("://").filter(|&end| {
        let s = &url[..end];
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(end) = scheme else {
        return format!("***{}", &url[at..]).into();
    };
    let start = end + 3;
    if !keep_user {
        return format!("{}***{}", &url[..start], &url[at..]).into();
    }
    let userinfo = &url[start..at];
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    format!("{}{user}:***{}", &url[..start], &url[at..]).into()
}

#[cfg(test)]
mod credential_tests {
    use super::without_credentials;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        for (url, shown) in [
            (
                "redis://:secretpw@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            ("redis://default:pw@h:1/0", "redis://default:***@h:1/0"),
            ("rediss://u:p@ss@h", "rediss://u:***@h"),
            ("redis://:PWs/x@127.0.0.1:1", "redis://:***@127.0.0.1:1"),
            ("redis://:p?w#d@h:1/0", "redis://:***@h:1/0"),
            ("redis://token@h", "redis://:***@h"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            // An `@` after the host is hidden with what precedes it.
            ("http://h/a@b", "http://:***@b"),
            ("not a url", "not a url"),
            // Malformed: everything before the last `@` is hidden.
            ("redis:/:REDISPASS@127.0.0.1:6379", "***@127.0.0.1:6379"),
            ("rediss//:REDISPASS@127.0.0.1:6379", "***@127.0.0.1:6379"),
            ("redis:/:PASS@h/x://y", "***@h/x://y"),
            ("redis:/:PASS@h/x://u@y", "***@y"),
            ("://:PASS@h", "***@h"),
            ("re dis://:PASS@h", "***@h"),
            // A password given as a query parameter (Unix sockets).
            (
                "redis+unix:///tmp/r.sock?pass=S3cretU",
                "redis+unix:///tmp/r.sock?pass=***",
            ),
            (
                "unix:///tmp/x?db=1&PASS=LeakU2&x=y",
                "unix:///tmp/x?db=1&PASS=***&x=y",
            ),
            ("redis://h/?password=p#f", "redis://h/?password=***#f"),
            ("redis://h/?passenger=1", "redis://h/?passenger=1"),
        ] {
            assert_eq!(without_credentials(url), shown, "{url}");
        }
    }

    /// A refused URL hides its user name too: where it ends is a guess.
    #[test]
    fn refused_urls_hide_the_whole_userinfo() {
        for (url, shown) in [
            ("redis://user:pa@ss@[bad", "redis://***@[bad"),
            ("redis://pa:ss@h:1/x", "redis://***@h:1/x"),
            ("rediss//:PW@h", "***@h"),
            ("unix:///tmp/x?pass=PW", "unix:///tmp/x?pass=***"),
            ("redis://h:1", "redis://h:1"),
        ] {
            assert_eq!(super::without_userinfo(url), shown, "{url}");
        }
    }
}
