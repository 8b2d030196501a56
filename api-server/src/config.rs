//! The server's settings: every one a flag with an environment variable, documented in `--help`.

use clap::{Parser, ValueEnum};

/// The default database: a SQLite file in the working directory, so that one command starts a working
/// service on a fresh machine.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://task-executor.db?mode=rwc";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "api-server",
    version,
    about = "Task executor for AIOpsLab benchmark runs: HTTP API, task queue and worker supervisor.",
    long_about = None
)]
pub struct Config {
    /// Database: `postgres://USER:PASS@HOST:PORT/DB` (production) or `sqlite://PATH?mode=rwc` (embedded,
    /// one process). Migrations are applied at start.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most connections in the PostgreSQL pool (SQLite always uses one).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Address and port to listen on.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "0.0.0.0:8000")]
    pub bind_addr: String,

    /// Timeout of a task, in minutes, when its parameters give none (`parameters.timeout`, in seconds).
    #[arg(long, env = "DEFAULT_TIMEOUT_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10080))]
    pub default_timeout_minutes: u32,

    /// Agent steps of a task when its parameters give none (`parameters.max_steps`).
    #[arg(long, env = "DEFAULT_MAX_STEPS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub default_max_steps: u32,

    /// A worker whose last heartbeat is older than this is offline, and the tasks it held are requeued.
    #[arg(long, env = "WORKER_HEARTBEAT_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub worker_heartbeat_timeout_seconds: u64,

    /// A task claimed less than this long ago is not requeued for being absent from its worker's heartbeat
    /// (the heartbeat may have left before the claim's answer arrived).
    #[arg(long, env = "CLAIM_GRACE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub claim_grace_seconds: u64,

    /// Runs of a task at most: a task whose worker is lost is requeued while it has had fewer attempts, else
    /// it fails.
    #[arg(long, env = "TASK_MAX_ATTEMPTS", default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub task_max_attempts: i32,

    /// Log level: debug, info, warning or error.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LogLevelArg,

    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    Debug,
    Info,
    #[value(alias = "warn")]
    Warning,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The settings a test or an embedding program starts from: the defaults, with the given database.
    pub fn for_database(url: &str) -> Self {
        let mut c = Config::parse_from(["api-server"]);
        c.database_url = url.to_owned();
        c
    }

    pub fn heartbeat_timeout(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.worker_heartbeat_timeout_seconds as i64)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Config::command().debug_assert();
    }
}
