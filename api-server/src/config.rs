//! The server's settings: every one a flag with an environment variable, documented in `--help`.

use clap::Parser;
use task_executor_shared::params;
pub use task_executor_shared::telemetry::{LogFormat, LogLevelArg};

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
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most connections in the PostgreSQL pool (SQLite always uses one); the hot paths keep at most three quarters
    /// of them between their statements.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Address and port to listen on. Default: `0.0.0.0:8000` when API tokens exist, else `127.0.0.1:8000`
    /// (without tokens nobody is asked for one, so the server stays on loopback; a non-loopback address
    /// without tokens is refused unless `--insecure-no-auth` is given).
    #[arg(long = "bind", env = "BIND_ADDR")]
    pub bind_addr: Option<String>,

    /// Serve without authentication even on a non-loopback address and even when tokens exist. Only for a
    /// network where everyone who can reach the port may run anything on the workers.
    #[arg(long, env = "INSECURE_NO_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: bool,

    /// A file of API tokens besides those in the database, for provisioning (e.g. systemd
    /// `LoadCredential=`): one a line, `NAME ROLE SECRET [WORKER_PATTERN]`, SECRET being the token or
    /// `sha256:` and its SHA-256 in hex. Reloaded every 2 s.
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// Requests per second one token (or, without a token, one client address) may make on average; beyond,
    /// 429 with `Retry-After`. 0: no limit. `/health` and `/ready` are not limited.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate_limit_per_second: u32,

    /// Requests one token (or client address) may make at once above the average rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_burst: u32,

    /// Pending and running tasks one token may have at once; a create beyond is 429 `too_many_tasks`.
    /// 0: no cap. (Without authentication, no cap applies.)
    #[arg(long, env = "MAX_ACTIVE_TASKS_PER_TOKEN", default_value_t = 10_000)]
    pub max_active_tasks_per_token: u64,

    /// Pending tasks in the whole queue at most; a create beyond is 503 `queue_full` with `Retry-After`.
    /// 0: no cap.
    #[arg(long, env = "MAX_PENDING_TASKS", default_value_t = 100_000)]
    pub max_pending_tasks: u64,

    /// Seconds a request body may take to arrive; a client that trickles it is answered 408 (connections
    /// on which nothing moves for 75 s are closed too).
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_body_timeout_seconds: u64,

    /// Timeout of a task, in minutes, when its parameters give none (`parameters.timeout`, in seconds).
    #[arg(long, env = "DEFAULT_TIMEOUT_MINUTES", default_value_t = params::DEFAULT_TIMEOUT_MINUTES, value_parser = clap::value_parser!(u32).range(1..=10080))]
    pub default_timeout_minutes: u32,

    /// Agent steps of a task when its parameters give none (`parameters.max_steps`).
    #[arg(long, env = "DEFAULT_MAX_STEPS", default_value_t = params::DEFAULT_MAX_STEPS, value_parser = clap::value_parser!(u32).range(1..=10000))]
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

    /// Times a task may go back to the queue without counting an attempt (claims lost on the way, runs given
    /// back by stopping workers) before it fails instead, so that a task that can never be reported does not
    /// loop.
    #[arg(long, env = "MAX_UNCOUNTED_REQUEUES", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub max_uncounted_requeues: i32,

    /// Log entries the workers of one task may write; past that they are dropped and counted (an entry says
    /// how many), so that one runaway runner cannot fill the database.
    #[arg(long, env = "MAX_LOG_ENTRIES_PER_TASK", default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(10..=100_000_000))]
    pub max_log_entries_per_task: i64,

    /// Claims that may wait for a task at once in this server (long polls); beyond, 429 with `Retry-After`.
    /// Each worker may also have at most as many waiting as it has free slots.
    #[arg(long, env = "MAX_WAITING_CLAIMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_waiting_claims: u32,

    /// Milliseconds between two looks at the queue of a claim that waits (long-polls) when nothing wakes it.
    /// Tasks made claimable through this server wake it at once, and on PostgreSQL those of other replicas
    /// too (LISTEN/NOTIFY): the tick is the safety net (a lost notification, a database restart).
    #[arg(long, env = "CLAIM_POLL_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub claim_poll_interval_ms: u64,

    /// Days finished tasks and their logs are kept (counted from when they finished); older ones are deleted
    /// by the reaper, a few thousand at a time. 0: keep everything.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=36500))]
    pub retention_days: u32,

    /// SQLite only: `normal` (the default: WAL with synchronous=NORMAL, durable across a crash of the
    /// process; a power loss may take back the last transactions) or `full` (every commit synced to disk,
    /// durable across a power loss too, slower writes).
    #[arg(long, env = "SQLITE_SYNCHRONOUS", default_value = "normal")]
    pub sqlite_synchronous: SqliteSync,

    /// Internal workers (inside this process) started at boot.
    #[arg(long, env = "NUM_INTERNAL_WORKERS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub num_internal_workers: u32,

    /// Start the internal workers at boot (`true` or `false`).
    #[arg(long, env = "AUTO_START_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_start_workers: bool,

    /// Prefix of internal worker ids (`PREFIX-001-kind`, …). Give each API server replica on one database
    /// its own prefix so that their workers never collide.
    #[arg(long, env = "INTERNAL_WORKER_PREFIX", default_value = "worker", value_parser = parse_prefix)]
    pub internal_worker_prefix: String,

    /// Kind clusters of the internal workers, comma-separated, in worker order (`AIOPSLAB_CLUSTER` of each
    /// run). A worker without one here uses `PREFIX-NNN` (kube context `kind-PREFIX-NNN`).
    #[arg(long, env = "INTERNAL_KIND_CLUSTERS", value_delimiter = ',')]
    pub internal_kind_clusters: Vec<String>,

    #[command(flatten)]
    pub runner: task_executor_shared::runner::RunnerArgs,

    /// Log level: debug, info, warning or error.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LogLevelArg,

    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How SQLite syncs its commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    Normal,
    Full,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Manage API tokens (in the database of DATABASE_URL).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it, once, on standard output (only its SHA-256 is stored).
    Create {
        /// A name for the token (1-64 letters, digits, '.', '_', '-'): tasks it creates record it, and
        /// `revoke` takes it.
        #[arg(long)]
        name: String,
        /// read, submit, worker or admin.
        #[arg(long)]
        role: task_executor_shared::Role,
        /// For a `worker` token: the worker ids it may act as (`*` any run of characters, `?` any one).
        /// Default: the name followed by `-*`.
        #[arg(long)]
        worker_pattern: Option<String>,
    },
    /// List the tokens: name, role, worker pattern, creation time (never the tokens).
    List,
    /// Revoke a token: servers refuse it within 2 seconds.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(s.to_owned())
    } else {
        Err("1-100 letters, digits, '-' or '_'".to_owned())
    }
}

impl Config {
    /// The settings a test or an embedding program starts from: the defaults, with the given database.
    pub fn for_database(url: &str) -> Self {
        let mut c = Config::parse_from(["api-server"]);
        c.database_url = url.to_owned();
        c
    }

    /// What fills in the parameters a new task leaves out.
    pub fn param_defaults(&self) -> params::Defaults {
        params::Defaults {
            max_steps: self.default_max_steps,
            timeout_minutes: self.default_timeout_minutes,
        }
    }

    /// The caps a new task must fit under (the state keeps one, whose counts its requests share).
    pub fn admission(&self) -> crate::store::tasks::Admission {
        let cap = |n: u64| (n > 0).then_some(n);
        crate::store::tasks::Admission::new(
            cap(self.max_pending_tasks),
            cap(self.max_active_tasks_per_token),
        )
    }

    /// How long finished tasks are kept, if not forever.
    pub fn retention(&self) -> Option<chrono::Duration> {
        (self.retention_days > 0).then(|| chrono::Duration::days(i64::from(self.retention_days)))
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
