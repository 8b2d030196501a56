//! Logging set-up for the binaries: `LOG_LEVEL` and a text or JSON format. `RUST_LOG`, when set, refines it.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, LogLevelArg};

pub fn init(level: LogLevelArg, format: LogFormat) {
    let level = match level {
        LogLevelArg::Debug => "debug",
        LogLevelArg::Info => "info",
        LogLevelArg::Warning => "warn",
        LogLevelArg::Error => "error",
    };
    // Our crates at the chosen level; dependencies one step quieter unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,api_server={level},task_executor_shared={level}"
        ))
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
