//! The command line (SPEC §1): `strata [serve|check] --config PATH`, with
//! `--log-format` and `--log-level` accepted before or after the
//! subcommand; plus `strata healthcheck` for container health checks.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "A caching reverse proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, default_value = "config/strata.toml")]
    pub config: PathBuf,
    /// Log output format (overrides `[log] format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Log level or filter, e.g. `info` or `strata=debug` (overrides
    /// `[log] level`; RUST_LOG is used when neither is set).
    #[arg(long, global = true, value_parser = log_filter)]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Validate the configuration: prints "config ok" or the error.
    Check,
    /// Probe the admin `/health` endpoint, for container HEALTHCHECKs: exit
    /// 0 when it answers 200, else 1 (no curl needed in the image).
    Healthcheck {
        /// URL to probe; default `http://<admin.listen>/health` from the
        /// config (an unspecified address such as 0.0.0.0 means loopback).
        #[arg(long)]
        url: Option<String>,
    },
}

/// `--log-level`: a typo is a usage error, not a filter that logs nothing.
fn log_filter(value: &str) -> Result<String, String> {
    crate::telemetry::check_filter(value).map(|()| value.to_string())
}
