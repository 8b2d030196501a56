//! The execution engine: runs one claimed task to a terminal outcome with the runner chosen by `TASK_RUNNER`.
//! Used by the API server's internal workers and by the worker daemon, so both behave the same.
//!
//! - `aiopslab`: the Python bridge shipped in `deploy/aiopslab_bridge.py`, which drives AIOpsLab.
//! - `exec`: any program (`RUNNER_COMMAND`) speaking the runner protocol (see docs/runner-protocol.md).
//! - `simulate`: a built-in simulation for trying the service, tests and benchmarks; it runs nothing real.
//!
//! The engine streams log entries to a channel as they happen; the caller ships them in batches and, once
//! [`execute`] returns, reports the outcome.

mod logs;
mod process;
mod protocol;
mod simulate;

pub use logs::{LOG_BATCH, LOG_CHANNEL, LOG_LINGER, LogBatches, LogSender, log_channel};

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    FailureKind, LogLevel, Text,
    api::{NewLogEntry, Task},
    params::TaskParams,
};

/// Which runner executes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunnerKind {
    /// Real AIOpsLab problem runs through the Python bridge.
    Aiopslab,
    /// Any program speaking the runner protocol (`RUNNER_COMMAND`).
    Exec,
    /// A built-in simulation: no cluster, no LLM, nothing real is run.
    Simulate,
}

impl RunnerKind {
    /// Its name, as `TASK_RUNNER` takes it.
    pub fn name(self) -> &'static str {
        match self {
            RunnerKind::Aiopslab => "aiopslab",
            RunnerKind::Exec => "exec",
            RunnerKind::Simulate => "simulate",
        }
    }
}

/// Runner settings, shared by the API server (internal workers) and the worker daemon.
#[derive(Debug, Clone, Args)]
pub struct RunnerArgs {
    /// How tasks are executed: `aiopslab` (real runs through the Python bridge), `exec` (RUNNER_COMMAND, a
    /// program speaking the runner protocol) or `simulate` (a built-in simulation that runs nothing real).
    #[arg(
        global = true,
        long = "runner",
        env = "TASK_RUNNER",
        default_value = "aiopslab"
    )]
    pub runner: RunnerKind,

    /// For `exec`: the program to run for each task, with its arguments, split like a shell would (quotes
    /// keep spaces). It is the operator's, never a task's; the task is given in the runner's environment
    /// (see docs/runner-protocol.md).
    #[arg(global = true, long, env = "RUNNER_COMMAND")]
    pub runner_command: Option<String>,

    /// For `aiopslab`: the Python interpreter that has AIOpsLab installed.
    #[arg(
        global = true,
        long,
        env = "AIOPSLAB_PYTHON",
        default_value = "python3"
    )]
    pub aiopslab_python: String,

    /// For `aiopslab`: the bridge program. Default: the one built into this binary, written to a cache
    /// directory at start, so the default works from any directory.
    #[arg(global = true, long, env = "AIOPSLAB_BRIDGE")]
    pub aiopslab_bridge: Option<PathBuf>,

    /// For `aiopslab`: the agents tasks may name, as `name=module:Class` pairs, comma-separated (the
    /// worker's operator's list; a task names an agent, never code). AIOpsLab's own clients are there by
    /// their short names (gpt, qwen, deepseek, vllm, openrouter, generic) without being listed.
    #[arg(global = true, long, env = "AIOPSLAB_AGENTS", value_delimiter = ',', value_parser = parse_agent)]
    pub aiopslab_agents: Vec<String>,

    /// Variables of the worker's environment that runners get besides the task's and a few basics (PATH,
    /// HOME, locale, temporary and XDG directories; KUBECONFIG and DOCKER_HOST for `aiopslab`), e.g.
    /// `OPENAI_API_KEY,OPENAI_BASE_URL`, comma-separated. Nothing else of the worker's reaches a runner.
    #[arg(global = true, long, env = "RUNNER_ENV_PASSTHROUGH", value_delimiter = ',', value_parser = parse_env_name)]
    pub runner_env_passthrough: Vec<String>,

    /// Seconds between SIGTERM and SIGKILL when a runner is stopped (cancel, timeout, shutdown). Default:
    /// 120 for `aiopslab` (its bridge recovers the injected fault and cleans the application up on SIGTERM),
    /// 10 for the others.
    #[arg(global = true, long, env = "RUNNER_KILL_GRACE_SECONDS")]
    pub runner_kill_grace_seconds: Option<u64>,
}

/// Variables of the worker's own environment that every runner gets: where programs and the home are, the
/// locale, temporary and XDG directories. Nothing else of the worker's (its DATABASE_URL, tokens, API keys)
/// unless the operator lists it in `RUNNER_ENV_PASSTHROUGH`.
const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
];
/// What the `aiopslab` runner needs besides: where the clusters are reached (paths and addresses, no
/// secrets).
const AIOPSLAB_ENV: &[&str] = &["KUBECONFIG", "DOCKER_HOST", "DOCKER_CONFIG"];

/// Variables no runner ever gets, even when listed in `RUNNER_ENV_PASSTHROUGH`: the database and the
/// service's own tokens.
const NEVER_PASSED: &[&str] = &[
    "DATABASE_URL",
    "TASK_EXECUTOR_TOKEN",
    "TASK_EXECUTOR_TOKEN_FILE",
    "TOKENS_FILE",
];

/// One name of `RUNNER_ENV_PASSTHROUGH`.
fn parse_env_name(s: &str) -> Result<String, String> {
    if NEVER_PASSED.contains(&s) {
        return Err(format!(
            "`{s}` is never passed to runners: it holds the service's own secrets"
        ));
    }
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}` is not an environment variable name"))
    }
}

/// One `name=module:Class` entry of `AIOPSLAB_AGENTS`.
fn parse_agent(s: &str) -> Result<String, String> {
    let ok = |part: &str, extra: &[char]| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
    };
    match s.split_once('=') {
        Some((name, target))
            if ok(name, &['-'])
                && target
                    .split_once(':')
                    .is_some_and(|(module, class)| ok(module, &['.']) && ok(class, &[])) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "`{s}` is not `name=module:Class` (a name of letters, digits, '_' or '-'; a Python module path and class)"
        )),
    }
}

/// The AIOpsLab bridge built into the binaries.
const EMBEDDED_BRIDGE: &str = include_str!("../../../deploy/aiopslab_bridge.py");

/// Writes the built-in bridge to a cache directory (once per version of its text) and answers its path.
fn embedded_bridge() -> Result<PathBuf, String> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("task-executor");
    let path = dir.join(format!(
        "aiopslab_bridge-{}-{:x}.py",
        env!("CARGO_PKG_VERSION"),
        EMBEDDED_BRIDGE.len()
    ));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(EMBEDDED_BRIDGE) {
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                // A name of this call's own: slots of one process may write it at the same time.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
                std::fs::write(&tmp, EMBEDDED_BRIDGE)?;
                std::fs::rename(&tmp, &path)
            })
            .map_err(|e| {
                format!(
                    "cannot write the built-in AIOpsLab bridge to {}: {e} (set AIOPSLAB_BRIDGE)",
                    path.display()
                )
            })?;
    }
    Ok(path)
}

impl RunnerArgs {
    /// The bridge the `aiopslab` runner runs: the configured one, else the built-in one.
    pub fn bridge(&self) -> Result<PathBuf, String> {
        match &self.aiopslab_bridge {
            Some(p) => Ok(p.clone()),
            None => embedded_bridge(),
        }
    }

    /// The whole environment a runner starts with, besides the task's own variables: the basics, what the
    /// runner kind needs, what the operator passes through, and settings meant for the runner. The runner
    /// never inherits the worker's environment.
    pub fn runner_env(&self) -> Vec<(String, String)> {
        let kind: &[&str] = match self.runner {
            RunnerKind::Aiopslab => AIOPSLAB_ENV,
            _ => &[],
        };
        let mut env: Vec<(String, String)> = BASE_ENV
            .iter()
            .chain(kind)
            .map(|n| n.to_string())
            .chain(self.runner_env_passthrough.iter().cloned())
            .filter_map(|name| std::env::var(&name).ok().map(|v| (name, v)))
            .collect();
        if self.runner == RunnerKind::Aiopslab {
            env.push(("AIOPSLAB_AGENTS".to_owned(), self.aiopslab_agents.join(",")));
        }
        env
    }

    /// The program and arguments that run a task, or why there are none. `RUNNER_COMMAND` is split like a
    /// shell would split it (quotes keep spaces in an argument), but no shell ever runs it.
    pub fn program(&self) -> Result<Option<Vec<String>>, String> {
        match self.runner {
            RunnerKind::Simulate => Ok(None),
            RunnerKind::Exec => {
                let cmd = self
                    .runner_command
                    .as_deref()
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .ok_or("TASK_RUNNER=exec needs RUNNER_COMMAND")?;
                shlex::split(cmd)
                    .filter(|words| !words.is_empty())
                    .map(Some)
                    .ok_or_else(|| {
                        format!(
                            "RUNNER_COMMAND `{cmd}` has an unclosed quote or a trailing backslash"
                        )
                    })
            }
            RunnerKind::Aiopslab => Ok(Some(vec![
                self.aiopslab_python.clone(),
                self.bridge()?.display().to_string(),
            ])),
        }
    }

    /// Checks that the runner can start: the program exists (and, for `aiopslab`, the bridge file).
    pub fn check(&self) -> Result<(), String> {
        let Some(program) = self.program()? else {
            return Ok(());
        };
        if which::which(&program[0]).is_err() {
            return Err(format!("runner program `{}` was not found", program[0]));
        }
        if self.runner == RunnerKind::Aiopslab {
            let bridge = self.bridge()?;
            if !bridge.is_file() {
                return Err(format!(
                    "the AIOpsLab bridge `{}` does not exist (set AIOPSLAB_BRIDGE)",
                    bridge.display()
                ));
            }
        }
        Ok(())
    }

    /// Whether a slot's runner can run problems at all, on its cluster: the program (and bridge) exist and,
    /// for `aiopslab`, the bridge's own check passes (AIOpsLab importable, the cluster there and answering).
    /// Answers why not.
    pub async fn probe(&self, cluster: &str) -> Result<(), String> {
        self.check()?;
        if self.runner != RunnerKind::Aiopslab {
            return Ok(());
        }
        let program = self.program()?.expect("aiopslab runs a program");
        let mut cmd = tokio::process::Command::new(&program[0]);
        cmd.args(&program[1..])
            .arg("--check")
            .env_clear()
            .envs(self.runner_env())
            .env("AIOPSLAB_CLUSTER", cluster)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(120), cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                Err(err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("the AIOpsLab bridge's check failed")
                    .to_owned())
            }
            Ok(Err(e)) => Err(format!("the AIOpsLab bridge's check could not run: {e}")),
            Err(_) => Err("the AIOpsLab bridge's check did not finish within 120 s".to_owned()),
        }
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.runner_kill_grace_seconds.unwrap_or(match self.runner {
            RunnerKind::Aiopslab => 120,
            _ => 10,
        }))
    }
}

/// One claimed task, as the engine needs it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub task_id: Uuid,
    pub problem_id: String,
    pub attempt: i32,
    pub worker_id: String,
    /// The kind cluster this run drives (`AIOPSLAB_CLUSTER`).
    pub cluster: String,
    /// The effective parameters (`max_steps`, `timeout`, `agent_config`, …).
    pub params: TaskParams,
}

impl TaskSpec {
    /// The run of a claimed task by this worker on this cluster.
    pub fn of(task: &Task, worker_id: &str, cluster: &str) -> TaskSpec {
        TaskSpec {
            task_id: task.id,
            problem_id: task.problem_id.clone(),
            attempt: task.attempt,
            worker_id: worker_id.to_owned(),
            cluster: cluster.to_owned(),
            params: TaskParams::of(&Value::Object(
                task.parameters.clone().into_iter().collect(),
            )),
        }
    }

    /// When the run must end: the task's timeout counted from the server's start of the run (`started_at`),
    /// never later than the full timeout from now (clocks of two hosts may differ).
    pub fn deadline(&self, started_at: Option<chrono::DateTime<chrono::Utc>>) -> Instant {
        let timeout = self.params.timeout;
        let now = chrono::Utc::now();
        let end = started_at.unwrap_or(now)
            + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let left = (end - now).to_std().unwrap_or(Duration::ZERO).min(timeout);
        Instant::now() + left
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The runner finished and produced a result (`success` may still be false: the agent did not solve the
    /// problem). `metrics.duration_seconds` and `metrics.steps_taken` are added.
    Completed { result: Map<String, Value> },
    /// The run failed (crash, non-zero exit, no result, too many steps). `kind` is whose failure it is
    /// (`Agent` or `Infrastructure`): what the runner said, else `Agent` once the agent took a step.
    Failed {
        error: String,
        result: Option<Map<String, Value>>,
        kind: FailureKind,
    },
    /// The run passed its timeout and was stopped.
    TimedOut {
        error: String,
        /// What the run left to keep (its provenance).
        result: Option<Map<String, Value>>,
    },
    /// The task was cancelled (or is no longer this worker's) and the run was stopped.
    Cancelled,
    /// The worker is shutting down: the run was stopped and the task should go back to the queue.
    Interrupted,
    /// The runner cannot run problems here at all (the program or the bridge is missing, AIOpsLab is not
    /// importable, the cluster is missing or does not answer): the problem itself was never run, so the task
    /// goes back to the queue without using an attempt, and the worker's slot pauses until it can.
    Unusable { reason: String },
}

/// The exit status by which a runner says it cannot run here at all (EX_TEMPFAIL); the AIOpsLab bridge also
/// uses 3 (AIOpsLab not importable) and 4 (cluster missing or silent).
pub const EXIT_UNUSABLE: i32 = 75;

/// What can end a run from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Cancelled by the server (cancel, timeout seen by the reaper, lost lease).
    pub cancel: CancellationToken,
    /// The worker is stopping: give the task back.
    pub interrupt: CancellationToken,
}

pub(crate) fn entry(
    level: LogLevel,
    message: impl Into<String>,
    context: Option<Value>,
) -> NewLogEntry {
    NewLogEntry {
        timestamp: Some(chrono::Utc::now()),
        level,
        message: Text::from(message.into()),
        context,
    }
}

/// Runs one task to its outcome. `deadline` is when the task's timeout expires (counted from its start).
/// The result of a run that ended (completed, failed, timed out) carries `provenance`: what the runner said
/// (a `provenance` event: for AIOpsLab its version and commit, the agent's class and model) and where it ran
/// (the worker, host, cluster, runner and this executor's version).
pub async fn execute(
    args: &RunnerArgs,
    spec: &TaskSpec,
    deadline: Instant,
    control: &RunControl,
    logs: &LogSender,
) -> RunOutcome {
    let mut outcome = match args.program() {
        Err(e) => RunOutcome::Unusable { reason: e },
        Ok(None) => simulate::run(spec, deadline, control, logs).await,
        Ok(Some(program)) => {
            let env = args.runner_env();
            process::run(
                &program,
                &env,
                spec,
                deadline,
                control,
                logs,
                args.kill_grace(),
            )
            .await
        }
    };
    let result = match &mut outcome {
        RunOutcome::Completed { result } => Some(result),
        RunOutcome::Failed { result, .. } | RunOutcome::TimedOut { result, .. } => {
            Some(result.get_or_insert_with(Map::new))
        }
        _ => None,
    };
    if let Some(result) = result {
        let p = result
            .entry("provenance")
            .or_insert_with(|| Value::Object(Map::new()));
        if !p.is_object() {
            *p = Value::Object(Map::new());
        }
        let p = p.as_object_mut().expect("made an object above");
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        for (k, v) in [
            ("executor_version", Value::from(env!("CARGO_PKG_VERSION"))),
            ("worker_id", Value::from(spec.worker_id.as_str())),
            ("host", Value::from(host)),
            ("cluster", Value::from(spec.cluster.as_str())),
            ("runner", Value::from(args.runner.name())),
        ] {
            p.insert(k.to_owned(), v);
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timeout: u64) -> TaskSpec {
        TaskSpec {
            task_id: Uuid::nil(),
            problem_id: "p".to_owned(),
            attempt: 1,
            worker_id: "w".to_owned(),
            cluster: "kind".to_owned(),
            params: TaskParams::of(&serde_json::json!({"timeout": timeout, "max_steps": 5})),
        }
    }

    #[test]
    fn the_services_own_secrets_cannot_be_passed_through() {
        assert_eq!(
            super::parse_env_name("OPENAI_API_KEY").unwrap(),
            "OPENAI_API_KEY"
        );
        for name in [
            "DATABASE_URL",
            "TASK_EXECUTOR_TOKEN",
            "TASK_EXECUTOR_TOKEN_FILE",
            "TOKENS_FILE",
        ] {
            let err = super::parse_env_name(name).unwrap_err();
            assert!(err.contains("never passed"), "{err}");
        }
        assert!(super::parse_env_name("1BAD").is_err());
    }

    #[test]
    fn deadline_counts_from_the_start_of_the_run_and_never_exceeds_the_timeout() {
        let s = spec(60);
        let now = Instant::now();
        let started = chrono::Utc::now() - chrono::Duration::seconds(50);
        let left = s.deadline(Some(started)) - now;
        assert!(
            left <= Duration::from_millis(10_050) && left > Duration::from_secs(8),
            "{left:?}"
        );
        let ahead = chrono::Utc::now() + chrono::Duration::seconds(500);
        assert!(
            s.deadline(Some(ahead)) - now <= Duration::from_secs(60) + Duration::from_millis(50)
        );
        let long_ago = chrono::Utc::now() - chrono::Duration::seconds(500);
        assert!(s.deadline(Some(long_ago)) <= Instant::now());
        assert_eq!(s.params.max_steps, 5);
    }

    #[test]
    fn runner_command_is_split_like_a_shell_without_one() {
        let mut args = RunnerArgs {
            runner: RunnerKind::Exec,
            runner_command: Some(r#"/opt/harness --name "two words" 'x y' plain"#.to_owned()),
            aiopslab_python: "python3".to_owned(),
            aiopslab_bridge: Some(PathBuf::from("b.py")),
            aiopslab_agents: Vec::new(),
            runner_env_passthrough: Vec::new(),
            runner_kill_grace_seconds: Some(1),
        };
        assert_eq!(
            args.program().unwrap().unwrap(),
            vec!["/opt/harness", "--name", "two words", "x y", "plain"]
        );
        args.runner_command = Some("/opt/harness \"unclosed".to_owned());
        assert!(args.program().unwrap_err().contains("unclosed quote"));
        args.runner_command = Some("sh".to_owned());
        assert!(args.check().is_ok(), "found on PATH");
        args.runner_command = Some("no-such-program-here".to_owned());
        assert!(args.check().unwrap_err().contains("was not found"));
    }

    #[test]
    fn agents_are_names_for_classes() {
        assert!(parse_agent("mine=my_pkg.agents:MyAgent").is_ok());
        assert!(parse_agent("gpt-4o_custom=a:B").is_ok());
        for bad in [
            "mine",
            "mine=pkg",
            "=a:B",
            "m=a:",
            "m=a b:C",
            "m=os:system;x",
            "m=a:B.c",
        ] {
            assert!(parse_agent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_built_in_bridge_is_written_where_it_can_run() {
        let args = RunnerArgs {
            runner: RunnerKind::Aiopslab,
            runner_command: None,
            aiopslab_python: "python3".to_owned(),
            aiopslab_bridge: None,
            aiopslab_agents: Vec::new(),
            runner_env_passthrough: Vec::new(),
            runner_kill_grace_seconds: Some(1),
        };
        let path = args.bridge().unwrap();
        assert!(path.is_absolute() || path.starts_with(std::env::temp_dir()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), EMBEDDED_BRIDGE);
        assert_eq!(args.bridge().unwrap(), path, "written once, then reused");
    }
}
