//! Logging set-up shared by both binaries: `LOG_LEVEL` and a text or JSON format. `RUST_LOG`, when set,
//! refines it per module.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

/// `LOG_LEVEL`: debug, info, warning or error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    Debug,
    Info,
    #[value(alias = "warn")]
    Warning,
    Error,
}

/// `LOG_FORMAT`: text for people, json for log collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr: the given crates at `level`, their dependencies one step quieter (warnings).
pub fn init_logging(level: LogLevelArg, format: LogFormat, crates: &[&str]) {
    let level = match level {
        LogLevelArg::Debug => "debug",
        LogLevelArg::Info => "info",
        LogLevelArg::Warning => "warn",
        LogLevelArg::Error => "error",
    };
    let directives: Vec<String> = std::iter::once("warn".to_owned())
        .chain(
            crates
                .iter()
                .chain(&["task_executor_shared"])
                .map(|c| format!("{c}={level}")),
        )
        .collect();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives.join(",")));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
