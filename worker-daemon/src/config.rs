//! The daemon's settings: every one a flag with an environment variable (`worker-daemon --help`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use task_executor_shared::runner::RunnerArgs;
pub use task_executor_shared::telemetry::{LogFormat, LogLevelArg};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker-daemon",
    version,
    about = "Worker daemon of the AIOpsLab task executor: registers with the API server, heartbeats, claims \
             tasks and runs them on this host's kind clusters."
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub api: ServerArgs,

    /// This worker's id (1-128 of letters, digits, '.', '_', '-'). Default: derived from the host name, so
    /// it is stable across restarts.
    #[arg(global = true, long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// The backend this worker runs tasks on.
    #[arg(global = true, long, env = "BACKEND_TYPE", default_value = "kind")]
    pub backend_type: String,

    /// Tasks run at once (1-256); each drives its own kind cluster.
    #[arg(global = true, long, env = "MAX_PARALLEL_TASKS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_parallel_tasks: u16,

    /// Problem ids this worker takes, as comma-separated globs (`*`, `?`); empty takes every problem.
    #[arg(global = true, long, env = "SUPPORTED_PROBLEMS", value_delimiter = ',')]
    pub supported_problems: Vec<String>,

    /// The kind cluster each parallel slot drives, comma-separated, one per slot (AIOPSLAB_CLUSTER of its
    /// runs). Default: `kind` for one slot; with several, the `aiopslab` runner needs one name per slot.
    #[arg(global = true, long, env = "KIND_CLUSTERS", value_delimiter = ',')]
    pub kind_clusters: Vec<String>,

    #[command(flatten)]
    pub runner: RunnerArgs,

    /// Seconds between heartbeats (keep well under the server's WORKER_HEARTBEAT_TIMEOUT_SECONDS).
    #[arg(global = true, long = "heartbeat-interval", env = "HEARTBEAT_INTERVAL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval_seconds: u64,

    /// Seconds a claim waits on the server for a task (long poll, 0-60).
    #[arg(global = true, long, env = "CLAIM_WAIT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub claim_wait_seconds: u64,

    /// Seconds running tasks get to finish after SIGTERM/SIGINT before they are stopped and released.
    #[arg(
        global = true,
        long,
        env = "SHUTDOWN_GRACE_SECONDS",
        default_value_t = 300
    )]
    pub shutdown_grace_seconds: u64,

    /// Timeout of each HTTP request to the server, in seconds (a long poll gets its wait on top).
    #[arg(global = true, long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout_seconds: u64,

    /// This worker's state directory: its instance id (which makes a restart take over its worker id at once,
    /// while another process with the same id elsewhere is refused), a lock that keeps a second daemon off it,
    /// and the spool of reports not yet delivered. Default: `$XDG_STATE_HOME` (or `~/.local/state`)
    /// `/task-executor-worker/WORKER_ID`.
    #[arg(global = true, long, env = "STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Address to serve this daemon's Prometheus metrics on (`GET /metrics`), e.g. `0.0.0.0:9101`. Off when unset.
    #[arg(global = true, long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Log level: debug, info, warning or error.
    #[arg(global = true, long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LogLevelArg,

    /// Log format: text or json.
    #[arg(global = true, long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Where the API server is and how to authenticate to it: the settings the daemon and the `task-executor`
/// command line share.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the API server.
    #[arg(
        global = true,
        long,
        env = "TASK_EXECUTOR_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub server_url: String,

    /// The API token, when the server asks for tokens (a daemon needs a `worker` token whose pattern covers
    /// WORKER_ID; the command line `submit` or `read`). Prefer TASK_EXECUTOR_TOKEN_FILE: an environment
    /// variable is visible to whatever reads this process's environment. The token never reaches a runner.
    #[arg(
        global = true,
        long = "token",
        env = "TASK_EXECUTOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,

    /// A file holding the API token (e.g. `$CREDENTIALS_DIRECTORY/token` with systemd `LoadCredential=`);
    /// surrounding whitespace is ignored, and an empty file means no token.
    #[arg(global = true, long, env = "TASK_EXECUTOR_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The API token: TASK_EXECUTOR_TOKEN, or the content of TASK_EXECUTOR_TOKEN_FILE (not both).
    pub fn token(&self) -> anyhow::Result<Option<Secret>> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "give the token once: TASK_EXECUTOR_TOKEN or TASK_EXECUTOR_TOKEN_FILE, not both"
            ),
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the token file {}: {e}", path.display())
                })?;
                if text.trim().is_empty() {
                    return Ok(None);
                }
                text.parse()
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))
            }
            (None, None) => Ok(None),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn server(&self) -> String {
        self.server_url.trim_end_matches('/').to_owned()
    }
}

/// A secret setting: shown as `***` by `Debug`, so that it cannot reach a log by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is visible ASCII characters, not empty".to_owned());
        }
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the configuration and what it depends on (API server reachable, runner present, kind clusters
    /// existing for the aiopslab runner); exit non-zero with a message when something is missing.
    Check,
}

impl Config {
    /// The worker id: the configured one, else the host name (made valid) and the backend type.
    pub fn worker_id(&self) -> String {
        if let Some(id) = &self.worker_id {
            return id.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".to_owned());
        let clean: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(100)
            .collect();
        format!("{clean}-{}", self.backend_type)
    }

    /// The cluster of each slot.
    pub fn clusters(&self) -> Vec<String> {
        (0..self.max_parallel_tasks as usize)
            .map(|i| match self.kind_clusters.get(i) {
                Some(c) => c.clone(),
                None if i == 0 && self.kind_clusters.is_empty() => "kind".to_owned(),
                None => format!("kind-{}", i + 1),
            })
            .collect()
    }

    /// The state directory: the configured one, else under the user's state home, by worker id.
    pub fn state_dir(&self) -> std::path::PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let home = std::env::var_os("XDG_STATE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
            })
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        home.join("task-executor-worker").join(self.worker_id())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_seconds)
    }

    /// The API token (see [`ServerArgs::token`]).
    pub fn token(&self) -> anyhow::Result<Option<Secret>> {
        self.api.token()
    }

    pub fn server(&self) -> String {
        self.api.server()
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn the_token_does_not_show_in_debug() {
        let c = Config::parse_from(["worker-daemon", "--token", "tex_secret"]);
        assert!(!format!("{c:?}").contains("tex_secret"));
        assert_eq!(c.token().unwrap().unwrap().expose(), "tex_secret");
    }

    #[test]
    fn clusters_per_slot() {
        let c = Config::parse_from([
            "worker-daemon",
            "--max-parallel-tasks",
            "3",
            "--kind-clusters",
            "a,b",
        ]);
        assert_eq!(c.clusters(), vec!["a", "b", "kind-3"]);
        let one = Config::parse_from(["worker-daemon"]);
        assert_eq!(one.clusters(), vec!["kind"]);
        assert!(task_executor_shared::validate::worker_id(&one.worker_id()).is_ok());
    }
}
