//! Runners that are programs (`exec`, `aiopslab`): started in their own process group, read line by line,
//! and stopped as a group — SIGTERM, then SIGKILL after the grace period — so no process outlives its task.
//!
//! Output is read in lines of at most [`limits::MAX_LINE_BYTES`] (the rest of a longer line is skipped and
//! the cut marked) and decoded lossily, so that neither a huge line nor bytes that are not UTF-8 can take the
//! worker's memory or stop the reading. The task's parameters are given in a file (`TASK_PARAMETERS_FILE`),
//! and also in `TASK_PARAMETERS` when they are small enough for an environment variable.

use std::{collections::VecDeque, io::Write, path::PathBuf, process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde_json::{Map, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    time::{Instant, sleep_until},
};

use super::{
    LogSender, RunControl, RunOutcome, TaskSpec, entry,
    protocol::{self, Event},
};
use crate::{FailureKind, LogLevel, limits};

/// Lines of stderr kept for the error of a failed run.
const STDERR_TAIL: usize = 20;
/// Characters of each of those lines kept.
const STDERR_TAIL_LINE: usize = 2_000;
/// `TASK_PARAMETERS` is set only when the parameters are at most this large: environment variables share a
/// limit of their own (a larger one makes the runner fail to start).
pub const PARAMETERS_ENV_MAX: usize = 64 * 1024;

/// Reads lines of at most `max` bytes, decoded lossily. Cancel-safe: a partial line is kept across calls.
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    /// Bytes of the current line skipped past `max`.
    skipped: usize,
    max: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(inner: R, max: usize) -> Self {
        Lines {
            reader: BufReader::new(inner),
            buf: Vec::new(),
            skipped: 0,
            max,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() && self.skipped == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let (chunk, used, end) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            let room = self.max.saturating_sub(self.buf.len());
            let keep = chunk.len().min(room);
            self.buf.extend_from_slice(&chunk[..keep]);
            self.skipped += chunk.len() - keep;
            self.reader.consume(used);
            if end {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut line = String::from_utf8_lossy(&self.buf).into_owned();
        if self.skipped > 0 {
            line.push_str(&format!(
                " …[line truncated: {} bytes skipped]",
                self.skipped
            ));
        }
        self.buf.clear();
        self.skipped = 0;
        line
    }
}

/// The task's parameters in a file readable by the runner only, removed when the run ends.
struct ParametersFile(PathBuf);

impl ParametersFile {
    fn write(spec: &TaskSpec) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "task-executor-{}-{}-{}.json",
            spec.task_id,
            spec.attempt,
            uuid::Uuid::new_v4().simple()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(spec.params.all.to_string().as_bytes())?;
        Ok(ParametersFile(path))
    }
}

impl Drop for ParametersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
/// How long output is still read after the runner exited (its children may hold the pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

enum Stop {
    Cancel,
    Interrupt,
    Timeout,
    TooManySteps,
}

pub(crate) async fn run(
    program: &[String],
    env: &[(String, String)],
    spec: &TaskSpec,
    deadline: Instant,
    control: &RunControl,
    logs: &LogSender,
    grace: Duration,
) -> RunOutcome {
    let started = Instant::now();
    let params_file = match ParametersFile::write(spec) {
        Ok(f) => f,
        Err(e) => {
            return RunOutcome::Failed {
                error: format!("cannot write the task's parameters for the runner: {e}"),
                result: None,
                kind: FailureKind::Infrastructure,
            };
        }
    };
    let params_json = spec.params.all.to_string();
    let mut cmd = Command::new(&program[0]);
    // An explicit environment: the worker's own (its database URL, tokens, keys) never reaches a runner.
    cmd.args(&program[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TASK_ID", spec.task_id.to_string())
        .env("PROBLEM_ID", &spec.problem_id)
        .env("MAX_STEPS", spec.params.max_steps.to_string())
        .env("TIMEOUT_SECONDS", spec.params.timeout.as_secs().to_string())
        .env("ATTEMPT", spec.attempt.to_string())
        .env("WORKER_ID", &spec.worker_id)
        .env("AIOPSLAB_CLUSTER", &spec.cluster)
        .env("TASK_PARAMETERS_FILE", &params_file.0)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if params_json.len() <= PARAMETERS_ENV_MAX {
        cmd.env("TASK_PARAMETERS", &params_json);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return RunOutcome::Unusable {
                reason: format!("cannot start the runner `{}`: {e}", program.join(" ")),
            };
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    logs.send(entry(
        LogLevel::Info,
        format!("Runner started: {}", program.join(" ")),
        Some(serde_json::json!({"pid": child.id(), "cluster": spec.cluster, "attempt": spec.attempt})),
    ));
    let mut stdout = Lines::new(
        child.stdout.take().expect("stdout is piped"),
        limits::MAX_LINE_BYTES,
    );
    let mut stderr = Lines::new(
        child.stderr.take().expect("stderr is piped"),
        limits::MAX_LINE_BYTES,
    );
    let (mut out_open, mut err_open) = (true, true);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut steps: u64 = 0;
    let mut result: Option<Map<String, Value>> = None;
    // Whose failure it is, should the run fail: what the runner said, else the agent's once it took a step.
    let mut said: Option<FailureKind> = None;
    // What the runner said its results depend on (a `provenance` event), kept in the result.
    let mut provenance: Map<String, Value> = Map::new();
    let mut exit: Option<std::process::ExitStatus> = None;
    let mut drain_until = Instant::now() + Duration::from_secs(86400 * 365);
    let max_steps = spec.params.max_steps;

    let stop = loop {
        if exit.is_some() && !out_open && !err_open {
            break None;
        }
        tokio::select! {
            line = stdout.next_line(), if out_open => match line {
                Ok(Some(line)) => match protocol::parse_line(&line) {
                    Event::Log(e) => { logs.send(e); }
                    Event::Step(s) => {
                        steps += 1;
                        if steps > max_steps {
                            logs.send(entry(LogLevel::Error, format!("The runner took more than max_steps ({max_steps}) steps: stopping it"), None));
                            break Some(Stop::TooManySteps);
                        }
                        logs.send(protocol::step_entry(steps, &s));
                    }
                    Event::Failure(kind, e) => {
                        said = Some(kind);
                        logs.send(e);
                    }
                    Event::Provenance(p) => provenance.extend(p),
                    Event::Result(r) => {
                        if result.is_some() {
                            logs.send(entry(LogLevel::Warning, "A second result event was ignored", None));
                        } else {
                            result = Some(r);
                        }
                    }
                },
                _ => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line {
                Ok(Some(line)) => {
                    let mut short = line.clone();
                    limits::fit_head_and_tail(&mut short, STDERR_TAIL_LINE);
                    if tail.len() == STDERR_TAIL { tail.pop_front(); }
                    tail.push_back(short);
                    logs.send(entry(LogLevel::Warning, line, Some(serde_json::json!({"stream": "stderr"}))));
                }
                _ => err_open = false,
            },
            status = child.wait(), if exit.is_none() => {
                match status {
                    Ok(s) => exit = Some(s),
                    Err(e) => {
                        logs.send(entry(LogLevel::Error, format!("waiting for the runner failed: {e}"), None));
                        break Some(Stop::Interrupt);
                    }
                }
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            },
            _ = sleep_until(drain_until), if exit.is_some() => break None,
            _ = sleep_until(deadline) => break Some(Stop::Timeout),
            _ = control.cancel.cancelled() => break Some(Stop::Cancel),
            _ = control.interrupt.cancelled() => break Some(Stop::Interrupt),
        }
    };

    if stop.is_some() && exit.is_none() {
        // SIGTERM, and what the runner says while it stops (what it cleaned up) is still logged.
        let stopping = stop_group(&mut child, pgid, grace);
        tokio::pin!(stopping);
        exit = loop {
            tokio::select! {
                status = &mut stopping => break status,
                line = stdout.next_line(), if out_open => match line {
                    Ok(Some(line)) => {
                        match protocol::parse_line(&line) {
                            Event::Log(e) | Event::Failure(_, e) => logs.send(e),
                            _ => {}
                        }
                    }
                    _ => out_open = false,
                },
                line = stderr.next_line(), if err_open => match line {
                    Ok(Some(line)) => logs.send(entry(LogLevel::Warning, line, Some(serde_json::json!({"stream": "stderr"})))),
                    _ => err_open = false,
                },
            }
        };
    }
    // Whatever the runner left behind in its group goes too.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if exit.is_none() {
        exit = child.wait().await.ok();
    }

    let said_provenance = || {
        (!provenance.is_empty()).then(|| {
            let mut m = Map::new();
            m.insert("provenance".to_owned(), Value::Object(provenance.clone()));
            m
        })
    };
    let with_provenance = |r: Option<Map<String, Value>>| {
        let mut r = r.unwrap_or_default();
        if !provenance.is_empty() {
            r.insert("provenance".to_owned(), Value::Object(provenance.clone()));
        }
        (!r.is_empty()).then_some(r)
    };
    let kind = said.unwrap_or(if steps == 0 {
        FailureKind::Infrastructure
    } else {
        FailureKind::Agent
    });
    let with_tail = |msg: String| {
        if tail.is_empty() {
            msg
        } else {
            format!(
                "{msg}; last stderr lines:\n{}",
                tail.iter().cloned().collect::<Vec<_>>().join("\n")
            )
        }
    };
    match stop {
        Some(Stop::Cancel) => return RunOutcome::Cancelled,
        Some(Stop::Interrupt) => return RunOutcome::Interrupted,
        Some(Stop::Timeout) => {
            return RunOutcome::TimedOut {
                error: format!(
                    "the run exceeded its timeout of {} s and was stopped",
                    spec.params.timeout.as_secs()
                ),
                result: said_provenance(),
            };
        }
        Some(Stop::TooManySteps) => {
            return RunOutcome::Failed {
                error: format!(
                    "the runner took more than max_steps ({max_steps}) steps and was stopped"
                ),
                result: with_provenance(result),
                kind: FailureKind::Agent,
            };
        }
        None => {}
    }
    match (exit, result) {
        (Some(s), Some(r)) if s.success() => {
            let mut r = with_provenance(Some(r)).unwrap_or_default();
            protocol::finish_result(&mut r, steps, started.elapsed());
            RunOutcome::Completed { result: r }
        }
        (Some(s), None) if s.success() => RunOutcome::Failed {
            error: with_tail("the runner exited with status 0 without a result event".to_owned()),
            result: said_provenance(),
            kind,
        },
        (Some(s), _) if unusable(program, s.code()) => RunOutcome::Unusable {
            reason: with_tail(format!(
                "the runner cannot run here (exit status {})",
                s.code().unwrap_or_default()
            )),
        },
        (Some(s), result) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (s.code(), s.signal()) {
                (Some(c), _) => format!("the runner exited with status {c}"),
                (None, Some(sig)) => format!("the runner was killed by signal {sig}"),
                _ => "the runner ended abnormally".to_owned(),
            };
            RunOutcome::Failed {
                error: with_tail(how),
                result: with_provenance(result),
                kind,
            }
        }
        (None, result) => RunOutcome::Failed {
            error: with_tail("the runner's exit status could not be read".to_owned()),
            result: with_provenance(result),
            kind,
        },
    }
}

/// Whether an exit status says the runner cannot run here at all: `EXIT_UNUSABLE` from any runner, and the
/// AIOpsLab bridge's 3 (AIOpsLab not importable) and 4 (cluster missing or silent).
fn unusable(program: &[String], code: Option<i32>) -> bool {
    let bridge = program
        .get(1)
        .is_some_and(|p| p.contains("aiopslab_bridge"));
    match code {
        Some(super::EXIT_UNUSABLE) => true,
        Some(3 | 4) => bridge,
        _ => false,
    }
}

/// SIGTERM to the whole group, then SIGKILL after `grace`.
async fn stop_group(
    child: &mut Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}
