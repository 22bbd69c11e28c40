//! `strata`: parse the command line, set up logging, then `serve` or
//! `check`. The only place `anyhow` is used.

use std::process::ExitCode;

use clap::Parser;

use strata::cli::{Cli, Command, LogFormatArg};
use strata::config::{AccessFormat, Config, LogFormat};
use strata::server::{self, Server};
use strata::telemetry;

/// mimalloc: the request path allocates small, short-lived buffers (header
/// maps, status strings) across threads; measured faster than glibc's
/// allocator for this pattern (see README, Performance). Built with
/// `no_thp`, so its arena is not backed by transparent huge pages (an idle
/// process holds ~10 MiB, not ~42; README, Memory).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => check(&cli.global),
        Command::Healthcheck { url } => healthcheck(&cli.global, url),
        Command::Serve => serve(&cli.global),
    }
}

fn check(global: &strata::cli::Global) -> ExitCode {
    let result = Config::load(&global.config)
        .map_err(anyhow::Error::from)
        .and_then(|c| match &c.server.tls {
            Some(tls) => server::tls::check(tls)
                .map(|expired| [c.warnings, expired].concat())
                .map_err(anyhow::Error::from),
            None => Ok(c.warnings),
        });
    match result {
        Ok(warnings) => {
            // Accepted but ignored keys: the file is valid, and said so on
            // stdout; what it sets for nothing goes to stderr.
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            println!("config ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(global: &strata::cli::Global, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(u) => strata::probe::with_health_path(u),
        None => match Config::load(&global.config) {
            Ok(c) if c.admin.listen.port() == 0 => {
                eprintln!(
                    "{}: admin.listen is port 0 (any free port), so the port is not known here: pass --url http://HOST:PORT/health",
                    global.config.display()
                );
                return ExitCode::FAILURE;
            }
            Ok(c) => strata::probe::health_url(c.admin.listen),
            Err(e) => {
                eprintln!("{e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    match strata::probe::get_status(&url, std::time::Duration::from_secs(3)) {
        Ok(200) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{url}: status {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy. A fatal error is reported once: on stderr when it
/// happens before logging starts (the config), else as one `fatal` log
/// event (JSON-safe for log shippers), never both.
fn serve(global: &strata::cli::Global) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata")
        .on_thread_park(strata::server::keepalive::on_thread_park)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before anything else: a SIGHUP from here on reloads (once serving),
    // never terminates.
    let hup = {
        let _runtime = runtime.enter();
        server::signals::hangup()
    };
    let config = match Config::load(&global.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The certificates and keys are config too: their errors go where the
    // file's do, as `check` says them (loaded again by the listener).
    if let Some(tls) = &config.server.tls {
        if let Err(e) = server::tls::check(tls) {
            eprintln!("strata: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let format = match global.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.log.format.unwrap_or(LogFormat::Text),
    };
    let cli_level = global.log_level.clone();
    let level = cli_level.clone().or_else(|| config.log.level.clone());
    let access = config
        .log
        .access_format
        .unwrap_or(AccessFormat::following(format));
    let (log, _flush_on_exit) = telemetry::init(format, access, level.as_deref());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let cli_format = global.log_format.is_some().then_some(format);
    match run(runtime, hup, config, log, cli_level, cli_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged while the log writer still runs (it stops with `serve`).
            tracing::error!(error = format!("{e:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}

fn run(
    runtime: tokio::runtime::Runtime,
    hup: Option<tokio::signal::unix::Signal>,
    config: Config,
    log: telemetry::LogHandle,
    cli_level: Option<String>,
    cli_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    runtime.block_on(async move {
        let path = config.path.clone();
        let server = Server::bind(config).await?;
        let reloader = server.reloader().with_cli_log_format(cli_format);
        server::signals::spawn_reloader(hup, path, reloader, move |c| {
            // The command line wins over the file, as at start-up; a
            // level removed from the file falls back to RUST_LOG, then info.
            if cli_level.is_none() {
                if let Err(e) = log.set_level(c.log.level.as_deref()) {
                    tracing::warn!(error = %e, "invalid [log] level in reloaded config");
                }
            }
        });
        let (shutdown, force) = server::signals::shutdown();
        // Said once the signal handlers are in place (scripts and tests wait
        // for this line before signalling).
        tracing::info!(
            listen = %server.local_addr(),
            admin = server.admin_addr().map(tracing::field::display),
            tls = server.tls_addr().map(tracing::field::display),
            "strata serving"
        );
        server.run_with_force(shutdown, force).await;
        tracing::info!("stopped");
        Ok(())
    })
}
