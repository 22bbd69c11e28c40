//! Logging through tracing-subscriber: text or JSON on stdout (written by a
//! background thread), a level filter from `--log-level`, `[log] level` or
//! `RUST_LOG` (in that order), changeable on reload. Access events (target
//! `strata::access`, see `proxy/access.rs`) go through the same filter and
//! format.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

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
pub fn filter(directive: Option<&str>) -> EnvFilter {
    match directive {
        Some(d) => EnvFilter::try_new(d).unwrap_or_else(|e| {
            eprintln!("invalid log level {d:?} ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// Keeps the log writer thread alive; dropping it flushes what is queued.
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the global subscriber (once per process). Keep the guard until
/// the process ends.
///
/// Lines are formatted on the thread that logs and written to stdout by a
/// writer thread that batches them into few `write(2)`s, so an access
/// event costs no system call on the request path. The queue is not lossy:
/// when it is full, logging waits (as nginx does on a slow disk) rather
/// than dropping access lines.
pub fn init(format: LogFormat, directive: Option<&str>) -> (LogHandle, LogGuard) {
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("strata-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let (filter, handle) = reload::Layer::new(filter(directive));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    // Colours for a terminal only, never in a file or a pipe.
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    (LogHandle { filter: handle }, LogGuard { _worker: worker })
}

/// Lines queued for the writer thread before logging waits.
const QUEUED_LINES: usize = 64 * 1024;
