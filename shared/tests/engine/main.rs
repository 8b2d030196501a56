//! The execution engine with real child processes: every outcome of the `exec` runner (a fixture script),
//! of the simulation, and of the AIOpsLab bridge against a fake `aiopslab` package; and no process left.

use std::{
    path::PathBuf,
    time::{Duration, Instant as StdInstant},
};

use serde_json::{Value, json};
use task_executor_shared::{
    FailureKind, LogLevel,
    api::NewLogEntry,
    params::TaskParams,
    runner::{
        LOG_CHANNEL, RunControl, RunOutcome, RunnerArgs, RunnerKind, TaskSpec, execute, log_channel,
    },
};
use tokio::time::Instant;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn args(kind: RunnerKind) -> RunnerArgs {
    RunnerArgs {
        runner: kind,
        runner_command: Some(fixtures().join("runner.sh").display().to_string()),
        aiopslab_python: fixtures()
            .join("python_with_fake_aiopslab.sh")
            .display()
            .to_string(),
        aiopslab_bridge: None,
        aiopslab_agents: vec![
            "scripted=fake_agent:ScriptedAgent".to_owned(),
            "looper=fake_agent:Looper".to_owned(),
            "sleeper=fake_agent:Sleeper".to_owned(),
            "chatty=fake_agent:Chatty".to_owned(),
            "fixed=fake_agent:FixedModel".to_owned(),
            "crasher=fake_agent:Crasher".to_owned(),
        ],
        runner_env_passthrough: Vec::new(),
        runner_kill_grace_seconds: Some(1),
    }
}

fn spec(problem: &str, parameters: Value) -> TaskSpec {
    let mut p = parameters;
    let obj = p.as_object_mut().unwrap();
    obj.entry("max_steps").or_insert(json!(30));
    obj.entry("timeout").or_insert(json!(60));
    TaskSpec {
        task_id: uuid::Uuid::new_v4(),
        problem_id: problem.to_owned(),
        attempt: 2,
        worker_id: "worker-007-kind".to_owned(),
        // One cluster per run, as on a worker: two runs never share one.
        cluster: unique("aiops"),
        params: TaskParams::of(&p),
    }
}

struct Run {
    outcome: RunOutcome,
    logs: Vec<NewLogEntry>,
}

async fn run_with(
    args: &RunnerArgs,
    spec: &TaskSpec,
    deadline: Duration,
    control: RunControl,
) -> Run {
    let (tx, mut rx) = log_channel(LOG_CHANNEL);
    let outcome = execute(args, spec, Instant::now() + deadline, &control, &tx).await;
    drop(tx);
    let mut logs = Vec::new();
    while let Some(batch) = rx.next_batch().await {
        logs.extend(batch);
    }
    Run { outcome, logs }
}

async fn run(args: &RunnerArgs, spec: &TaskSpec) -> Run {
    run_with(args, spec, Duration::from_secs(60), RunControl::default()).await
}

fn messages(r: &Run) -> Vec<&str> {
    r.logs.iter().map(|e| e.message.as_str()).collect()
}

/// Whether a process is gone (or a zombie waiting for its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn assert_gone(pid_file: &std::path::Path) {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .expect("the runner wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    let start = StdInstant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "process {pid} survived its task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn exec_success_streams_logs_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let s = spec(
        "p-1",
        json!({"mode": "success", "pid_file": pid_file, "max_steps": 7, "timeout": 90}),
    );
    let r = run(&args(RunnerKind::Exec), &s).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["success"], true);
    assert_eq!(result["output"], "Detection Accuracy: Correct");
    assert_eq!(result["metrics"]["TTD"], 1.5);
    assert_eq!(result["metrics"]["steps_taken"], 2);
    assert!(result["metrics"]["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        result["env"],
        json!({"task_id": s.task_id.to_string(), "problem_id": "p-1", "max_steps": "7", "timeout": "90",
               "attempt": "2", "worker_id": "worker-007-kind", "cluster": s.cluster})
    );
    let m = messages(&r);
    assert!(
        m.contains(&"deploying") && m.contains(&"plain output line"),
        "{m:?}"
    );
    assert!(
        m.contains(&"step 1: kubectl get pods") && m.contains(&"step 2: submit(\"Yes\")"),
        "{m:?}"
    );
    let warn = r
        .logs
        .iter()
        .find(|e| e.message == "a warning on stderr")
        .expect("stderr line logged");
    assert_eq!(warn.level, LogLevel::Warning);
    let deploying = r.logs.iter().find(|e| e.message == "deploying").unwrap();
    assert_eq!(deploying.context, Some(json!({"phase": "init"})));
    assert_gone(&pid_file).await;
}

#[tokio::test]
async fn exec_unsolved_problem_completes_with_success_false() {
    let r = run(
        &args(RunnerKind::Exec),
        &spec("p", json!({"mode": "unsolved"})),
    )
    .await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["success"], false);
    assert_eq!(result["metrics"]["steps_taken"], 1);
}

#[tokio::test]
async fn exec_nonzero_exit_fails_with_status_and_stderr() {
    let r = run(&args(RunnerKind::Exec), &spec("p", json!({"mode": "fail"}))).await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(
        error.contains("RuntimeError: cluster unreachable"),
        "{error}"
    );
}

#[tokio::test]
async fn exec_without_result_fails() {
    let r = run(
        &args(RunnerKind::Exec),
        &spec("p", json!({"mode": "noresult"})),
    )
    .await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(error.contains("without a result"), "{error}");
}

#[tokio::test]
async fn exec_crash_fails_with_the_signal() {
    let r = run(
        &args(RunnerKind::Exec),
        &spec("p", json!({"mode": "crash"})),
    )
    .await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(error.contains("killed by signal 9"), "{error}");
}

/// Whose failure a failed run is: what the runner said (a `failure` event), else the infrastructure's when
/// the run failed before the agent's first step and the agent's after it; too many steps are the agent's.
#[tokio::test]
async fn exec_failures_say_whose_they_are() {
    let a = args(RunnerKind::Exec);
    for (mode, expected) in [
        ("crash_early", FailureKind::Infrastructure),
        ("fail", FailureKind::Infrastructure),
        ("crash", FailureKind::Agent),
        ("says_infrastructure", FailureKind::Infrastructure),
    ] {
        let r = run(&a, &spec("p", json!({"mode": mode}))).await;
        let RunOutcome::Failed { kind, .. } = &r.outcome else {
            panic!("{mode}: {:?}", r.outcome)
        };
        assert_eq!(*kind, expected, "{mode}");
    }
    let r = run(&a, &spec("p", json!({"mode": "says_infrastructure"}))).await;
    assert!(
        r.logs.iter().any(|e| e.level == LogLevel::Error
            && e.message.contains("infrastructure failure")
            && e.message.contains("the cluster stopped answering")),
        "the runner's word is logged: {:?}",
        messages(&r)
    );
    let r = run(&a, &spec("p", json!({"mode": "steps", "max_steps": 2}))).await;
    assert!(
        matches!(
            r.outcome,
            RunOutcome::Failed {
                kind: FailureKind::Agent,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn exec_too_many_steps_is_stopped_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let r = run(
        &args(RunnerKind::Exec),
        &spec(
            "p",
            json!({"mode": "steps", "max_steps": 5, "pid_file": pid_file}),
        ),
    )
    .await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(error.contains("more than max_steps (5)"), "{error}");
    assert_eq!(
        r.logs
            .iter()
            .filter(|e| e.message.starts_with("step "))
            .count(),
        5
    );
    assert_gone(&pid_file).await;
}

#[tokio::test]
async fn exec_past_timeout_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let s = spec("p", json!({"mode": "hang", "pid_file": pid_file}));
    let r = run_with(
        &args(RunnerKind::Exec),
        &s,
        Duration::from_secs(5),
        RunControl::default(),
    )
    .await;
    assert!(
        matches!(r.outcome, RunOutcome::TimedOut { .. }),
        "{:?}",
        r.outcome
    );
    assert!(messages(&r).contains(&"hanging"));
    assert_gone(&pid_file).await;
}

#[tokio::test]
async fn exec_cancel_stops_a_runner_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let s = spec("p", json!({"mode": "stubborn", "pid_file": pid_file}));
    let control = RunControl::default();
    let cancel = control.cancel.clone();
    let started = pid_file.clone();
    tokio::spawn(async move {
        // Cancel once the runner is up (its child's pid written), however slow the machine is.
        while !started.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let r = run_with(
        &args(RunnerKind::Exec),
        &s,
        Duration::from_secs(60),
        control,
    )
    .await;
    assert_eq!(r.outcome, RunOutcome::Cancelled);
    assert_gone(&pid_file).await;
}

#[tokio::test]
async fn exec_interrupt_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let control = RunControl::default();
    control.interrupt.cancel();
    let s = spec("p", json!({"mode": "hang", "pid_file": pid_file}));
    let r = run_with(
        &args(RunnerKind::Exec),
        &s,
        Duration::from_secs(60),
        control,
    )
    .await;
    assert_eq!(r.outcome, RunOutcome::Interrupted);
}

#[tokio::test]
async fn exec_missing_program_fails_clearly() {
    let mut a = args(RunnerKind::Exec);
    a.runner_command = Some("/nonexistent/runner --flag".to_owned());
    assert!(a.check().unwrap_err().contains("/nonexistent/runner"));
    let r = run(&a, &spec("p", json!({}))).await;
    let RunOutcome::Unusable { reason } = &r.outcome else {
        panic!(
            "a runner that cannot start is an infrastructure failure, not the task's: {:?}",
            r.outcome
        )
    };
    assert!(reason.contains("cannot start the runner"), "{reason}");
    a.runner_command = None;
    assert!(a.check().unwrap_err().contains("RUNNER_COMMAND"));
}

#[tokio::test]
async fn simulation_outcomes() {
    let a = args(RunnerKind::Simulate);
    let sim = |outcome: &str, steps: u64| json!({"simulate": {"steps": steps, "step_ms": 10, "outcome": outcome}});

    let r = run(&a, &spec("p", sim("success", 4))).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["success"], true);
    assert_eq!(result["simulated"], true);
    assert_eq!(result["metrics"]["steps_taken"], 4);
    assert_eq!(result["metrics"]["Detection Accuracy"], "Correct");
    assert!(
        messages(&r)[0].starts_with("[simulation]"),
        "named as a simulation in the logs"
    );
    assert_eq!(
        r.logs
            .iter()
            .filter(|e| e.message.starts_with("step "))
            .count(),
        4
    );

    let r = run(&a, &spec("p", sim("failure", 2))).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["success"], false);

    let r = run(&a, &spec("p", sim("crash", 4))).await;
    assert!(
        matches!(&r.outcome, RunOutcome::Failed { error, kind: FailureKind::Agent, .. } if error.contains("crash")),
        "{:?}",
        r.outcome
    );
    let r = run(&a, &spec("p", sim("infrastructure", 4))).await;
    assert!(
        matches!(
            &r.outcome,
            RunOutcome::Failed {
                kind: FailureKind::Infrastructure,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    assert_eq!(
        r.logs
            .iter()
            .filter(|e| e.message.starts_with("step "))
            .count(),
        0,
        "before the agent's first step"
    );

    let r = run_with(
        &a,
        &spec("p", sim("hang", 1)),
        Duration::from_millis(300),
        RunControl::default(),
    )
    .await;
    assert!(
        matches!(r.outcome, RunOutcome::TimedOut { .. }),
        "{:?}",
        r.outcome
    );

    let mut p = sim("success", 10);
    p["max_steps"] = json!(3);
    let s = spec("p", p);
    let r = run(&a, &s).await;
    assert!(
        matches!(&r.outcome, RunOutcome::Failed { error, .. } if error.contains("max_steps (3)")),
        "{:?}",
        r.outcome
    );

    let control = RunControl::default();
    control.cancel.cancel();
    let r = run_with(
        &a,
        &spec("p", sim("success", 5)),
        Duration::from_secs(60),
        control,
    )
    .await;
    assert_eq!(r.outcome, RunOutcome::Cancelled);
}

#[tokio::test]
async fn aiopslab_bridge_runs_a_problem_against_the_fake_package() {
    let a = args(RunnerKind::Aiopslab);
    a.check().expect("the bridge and python are found");
    let s = spec(
        "misconfig_app_hotel_res-detection-1",
        json!({"agent_config": {"agent": "scripted", "answer": "Yes"}, "max_steps": 10}),
    );
    let r = run(&a, &s).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?} {:?}", r.outcome, messages(&r))
    };
    assert_eq!(
        result["success"], true,
        "success follows AIOpsLab's evaluation"
    );
    let m = &result["metrics"];
    assert_eq!(m["Detection Accuracy"], "Correct");
    assert_eq!(m["TTD"], 1.25);
    assert_eq!(m["steps"], 3);
    assert_eq!(m["in_tokens"], 300);
    assert_eq!(m["steps_taken"], 3, "one step event per agent action");
    assert_eq!(
        m["cluster"],
        s.cluster.as_str(),
        "the run drives its worker's cluster"
    );
    let steps: Vec<&str> = r
        .logs
        .iter()
        .filter(|e| e.message.starts_with("step "))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(steps.len(), 3);
    // The result keeps its link to AIOpsLab's session, and the agent's trajectory.
    let session_id = result["session_id"].as_str().expect("the session id");
    let file = result["session_file"].as_str().expect("the session file");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(saved["session_id"], session_id);
    assert_eq!(result["history"].as_array().unwrap().len(), 3);
    assert_eq!(result["history"][2]["content"], "submit(\"Yes\")");
    assert_eq!(steps[2], "step 3: submit(\"Yes\")");
    // What the result depends on: AIOpsLab's version (no git checkout here: no commit), the agent, and where
    // it ran.
    let p = &result["provenance"];
    assert_eq!(p["aiopslab_version"], "0.0.0+fake", "{p}");
    assert_eq!(p["aiopslab_commit"], Value::Null);
    assert_eq!(p["agent"], "scripted");
    assert_eq!(p["agent_class"], "fake_agent.ScriptedAgent");
    assert_eq!(p["runner"], "aiopslab");
    assert_eq!(p["cluster"], s.cluster.as_str());
    assert_eq!(p["worker_id"], s.worker_id.as_str());
    assert_eq!(p["executor_version"], env!("CARGO_PKG_VERSION"));
    assert!(p["host"].as_str().is_some_and(|h| !h.is_empty()), "{p}");

    let wrong = spec(
        "p-detection-1",
        json!({"agent_config": {"agent": "scripted", "answer": "No"}}),
    );
    let r = run(&a, &wrong).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["success"], false);
    assert_eq!(result["metrics"]["Detection Accuracy"], "Incorrect");

    let looping = spec(
        "p",
        json!({"agent_config": {"agent": "looper"}, "max_steps": 4}),
    );
    let r = run(&a, &looping).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(result["metrics"]["steps_taken"], 4);
    assert_eq!(result["metrics"]["Detection Accuracy"], "Invalid Format");

    let unknown = spec(
        "unknown-problem",
        json!({"agent_config": {"agent": "scripted"}}),
    );
    let r = run(&a, &unknown).await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(
        error.contains("exited with status 1") && error.contains("not found"),
        "{error}"
    );
}

/// The bridge says whose failure a run's is by where it stopped: deployment or fault injection (before the
/// agent acts) is the infrastructure's; an agent that breaks once it runs, or an agent configuration that
/// names no agent, is the agent's.
#[tokio::test]
async fn aiopslab_bridge_classifies_failures_by_stage() {
    let a = args(RunnerKind::Aiopslab);
    for (problem, agent, expected, said) in [
        (
            "deployfail-detection-1",
            "scripted",
            FailureKind::Infrastructure,
            "helm install failed",
        ),
        (
            "injectfail-detection-1",
            "scripted",
            FailureKind::Infrastructure,
            "could not be injected",
        ),
        (
            "unknown-problem",
            "scripted",
            FailureKind::Infrastructure,
            "not found",
        ),
        (
            "p-detection-1",
            "crasher",
            FailureKind::Agent,
            "parser choked",
        ),
        (
            "p-detection-1",
            "not-listed",
            FailureKind::Agent,
            "is not registered",
        ),
    ] {
        let r = run(
            &a,
            &spec(problem, json!({"agent_config": {"agent": agent}})),
        )
        .await;
        let RunOutcome::Failed { kind, error, .. } = &r.outcome else {
            panic!("{problem}/{agent}: {:?} {:?}", r.outcome, messages(&r))
        };
        assert_eq!(*kind, expected, "{problem}/{agent}: {error}");
        assert!(
            r.logs
                .iter()
                .any(|e| e.message.contains(&format!("({expected} failure)"))
                    && e.message.contains(said)),
            "{problem}/{agent}: {:?}",
            messages(&r)
        );
    }
}

/// An agent configuration's keys that the named agent does not take (AIOpsLab's `GPTAgent()` takes none) are
/// named in a warning and in the result, never dropped without a word; `agent` and `name` are the bridge's.
#[tokio::test]
async fn aiopslab_bridge_names_the_agent_config_keys_an_agent_does_not_take() {
    let a = args(RunnerKind::Aiopslab);
    let config =
        json!({"agent": "fixed", "name": "fixed-run", "model": "gpt-4o-mini", "temperature": 0.2});
    let r = run(&a, &spec("p-detection-1", json!({"agent_config": config}))).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?} {:?}", r.outcome, messages(&r))
    };
    assert_eq!(
        result["ignored_agent_config"],
        json!(["model", "temperature"])
    );
    assert_eq!(
        result["provenance"]["model"],
        Value::Null,
        "an ignored model is not the run's model"
    );
    let warning = r
        .logs
        .iter()
        .find(|e| e.level == LogLevel::Warning && e.message.contains("does not take"))
        .unwrap_or_else(|| panic!("a warning: {:?}", messages(&r)));
    assert!(
        warning
            .message
            .contains("agent fixed (fake_agent.FixedModel) does not take model, temperature"),
        "{}",
        warning.message
    );
    // An agent that takes what it is given: no warning, nothing ignored.
    let r = run(
        &a,
        &spec(
            "p-detection-1",
            json!({"agent_config": {"agent": "scripted", "answer": "Yes"}}),
        ),
    )
    .await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(result.get("ignored_agent_config").is_none(), "{result:?}");
    assert!(!r.logs.iter().any(|e| e.message.contains("does not take")));
}

/// A task names an agent the worker's operator registered, never code: a `module:Class` (here one that
/// would run a shell command) or an unlisted name fails the run with a clear error, and nothing is imported.
#[tokio::test]
async fn aiopslab_bridge_refuses_agents_that_are_not_registered() {
    let a = args(RunnerKind::Aiopslab);
    for agent in [
        "fake_agent:ScriptedAgent",
        "subprocess:run",
        "os:system",
        "not-listed",
    ] {
        let s = spec("p-detection-1", json!({"agent_config": {"agent": agent}}));
        let r = run(&a, &s).await;
        let RunOutcome::Failed { error, .. } = &r.outcome else {
            panic!("{agent}: {:?}", r.outcome)
        };
        assert!(
            error.contains("is not registered on this worker") && error.contains("AIOPSLAB_AGENTS"),
            "{agent}: {error}"
        );
        assert!(
            error.contains("scripted"),
            "the known agents are named: {error}"
        );
    }
}

#[tokio::test]
async fn aiopslab_bridge_without_aiopslab_fails_at_once_saying_how_to_install() {
    let mut a = args(RunnerKind::Aiopslab);
    a.aiopslab_python = "python3".to_owned();
    let r = run(&a, &spec("p", json!({"agent_config": {"model": "gpt-4"}}))).await;
    let RunOutcome::Unusable { reason } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(reason.contains("exit status 3"), "{reason}");
    assert!(
        reason.contains("AIOpsLab is not importable") && reason.contains("pip install"),
        "{reason}"
    );
    assert!(
        r.logs.iter().any(|e| e.level == LogLevel::Critical),
        "a critical log entry says it too"
    );
    let probe = a.probe(&unique("aiops")).await.unwrap_err();
    assert!(
        probe.contains("AIOpsLab is not importable"),
        "the probe says why: {probe}"
    );
}

#[tokio::test]
async fn aiopslab_bridge_chat_agent_needs_an_api_key() {
    let mut a = args(RunnerKind::Aiopslab);
    // A wrapper that clears the key, so the test does not depend on the caller's environment.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("py.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nunset OPENAI_API_KEY\nexec {} \"$@\"\n",
            fixtures().join("python_with_fake_aiopslab.sh").display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    a.aiopslab_python = wrapper.display().to_string();
    let r = run(
        &a,
        &spec(
            "p",
            json!({"agent_config": {"model": "gpt-4", "temperature": 0.7}}),
        ),
    )
    .await;
    let RunOutcome::Failed { error, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(error.contains("OPENAI_API_KEY"), "{error}");
}

/// What the fake AIOpsLab and its fake kubectl, helm and docker recorded for a run.
fn record_of(spec: &TaskSpec) -> Vec<String> {
    std::fs::read_to_string(format!("/tmp/fake-aiopslab-{}.log", spec.task_id))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn on_cluster(problem: &str, parameters: Value, cluster: &str) -> TaskSpec {
    let mut s = spec(problem, parameters);
    s.cluster = cluster.to_owned();
    s
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Two runs at once on two clusters: each one's kubectl and helm act on its own context (its KUBECONFIG's
/// current context), its agent's commands go to its own node container, its Python client loads its own
/// context, and neither touches the other's.
#[tokio::test]
async fn parallel_aiopslab_runs_each_touch_only_their_own_cluster() {
    let a = args(RunnerKind::Aiopslab);
    let agent = json!({"agent_config": {"agent": "scripted", "answer": "Yes"}});
    let (one, two) = (unique("par-a"), unique("par-b"));
    let s1 = on_cluster("p1-detection-1", agent.clone(), &one);
    let s2 = on_cluster("p2-detection-1", agent, &two);
    let (r1, r2) = tokio::join!(run(&a, &s1), run(&a, &s2));
    for (r, s, mine, other) in [(&r1, &s1, &one, &two), (&r2, &s2, &two, &one)] {
        assert!(
            matches!(r.outcome, RunOutcome::Completed { .. }),
            "{:?} {:?}",
            r.outcome,
            messages(r)
        );
        let record = record_of(s);
        assert!(
            record.contains(&format!("client-context kind-{mine}")),
            "{record:?}"
        );
        let kubectl: Vec<&String> = record
            .iter()
            .filter(|l| l.starts_with("kubectl "))
            .collect();
        let helm: Vec<&String> = record.iter().filter(|l| l.starts_with("helm ")).collect();
        let docker: Vec<&String> = record.iter().filter(|l| l.starts_with("docker ")).collect();
        assert!(
            !kubectl.is_empty() && !helm.is_empty() && docker.len() == 2,
            "{record:?}"
        );
        for l in kubectl.iter().chain(&helm) {
            assert!(l.split(' ').nth(1) == Some(&format!("kind-{mine}")), "{l}");
        }
        for l in &docker {
            assert_eq!(**l, format!("docker exec {mine}-control-plane"));
        }
        assert!(
            !record.iter().any(|l| l.contains(other.as_str())),
            "{record:?}"
        );
    }
}

/// A run stopped from outside (SIGTERM: cancel, timeout, a stopping worker) recovers its fault and cleans the
/// application up before it exits, and says so.
#[tokio::test]
async fn a_cancelled_aiopslab_run_recovers_its_fault_and_cleans_up() {
    let a = args(RunnerKind::Aiopslab);
    let cluster = unique("stop");
    let s = on_cluster(
        "stop-detection-1",
        json!({"agent_config": {"agent": "sleeper"}, "max_steps": 1000}),
        &cluster,
    );
    let control = RunControl::default();
    let cancel = control.cancel.clone();
    let watched = s.clone();
    tokio::spawn(async move {
        while !record_of(&watched).iter().any(|l| l.starts_with("inject ")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let r = run_with(&a, &s, Duration::from_secs(60), control).await;
    assert_eq!(r.outcome, RunOutcome::Cancelled);
    let record = record_of(&s);
    let at = |prefix: &str| record.iter().position(|l| l.starts_with(prefix));
    let (inject, recover, cleanup) = (at("inject "), at("recover "), at("cleanup "));
    assert!(
        inject.is_some() && recover > inject && cleanup > recover,
        "{record:?}"
    );
    assert!(
        messages(&r)
            .iter()
            .any(|m| m.contains("stopped: fault recovered, application cleaned up")),
        "{:?}",
        messages(&r)
    );
}

/// A run killed (SIGKILL) before it could clean up leaves its cluster marked; the next run on that cluster
/// recovers the fault and cleans the application up first.
#[tokio::test]
async fn the_run_after_a_killed_one_cleans_up_first() {
    let a = args(RunnerKind::Aiopslab);
    let cluster = unique("killed");
    let s = on_cluster(
        "killed-detection-1",
        json!({"agent_config": {"agent": "sleeper"}, "max_steps": 1000}),
        &cluster,
    );
    let watched = s.clone();
    tokio::spawn(async move {
        loop {
            if let Some(pid) = record_of(&watched)
                .iter()
                .find(|l| l.starts_with("inject "))
                .and_then(|l| l.rsplit(' ').next().and_then(|p| p.parse::<i32>().ok()))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let r = run(&a, &s).await;
    assert!(
        matches!(&r.outcome, RunOutcome::Failed { error, .. } if error.contains("signal 9")),
        "{:?}",
        r.outcome
    );
    assert!(
        !record_of(&s).iter().any(|l| l.starts_with("cleanup ")),
        "killed before it could clean up"
    );

    let next = on_cluster(
        "next-detection-1",
        json!({"agent_config": {"agent": "scripted"}}),
        &cluster,
    );
    let r = run(&a, &next).await;
    assert!(
        matches!(r.outcome, RunOutcome::Completed { .. }),
        "{:?}",
        r.outcome
    );
    let record = record_of(&next);
    let at = |line: &str| record.iter().position(|l| l == line);
    let first = (
        at("recover killed-detection-1"),
        at("cleanup killed-detection-1"),
    );
    let own = record
        .iter()
        .position(|l| l.starts_with("inject next-detection-1"));
    assert!(
        first.0.is_some() && first.1 > first.0 && own > first.1,
        "cleaned up first: {record:?}"
    );
    assert!(
        messages(&r)
            .iter()
            .any(|m| m.contains("was killed before it cleaned up")),
        "{:?}",
        messages(&r)
    );
}

/// A cluster that is missing makes the run "unusable" at once (exit status 4), with a message that says so,
/// and the worker's probe of that cluster fails the same way.
#[tokio::test]
async fn an_aiopslab_run_on_a_missing_cluster_fails_clearly() {
    let a = args(RunnerKind::Aiopslab);
    let s = on_cluster(
        "p-detection-1",
        json!({"agent_config": {"agent": "scripted"}}),
        &unique("missing"),
    );
    let r = run(&a, &s).await;
    let RunOutcome::Unusable { reason } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(
        reason.contains("exit status 4") && reason.contains("is not available"),
        "{reason}"
    );
    let probe = a.probe(&s.cluster).await.unwrap_err();
    assert!(probe.contains("is not available"), "{probe}");
    assert!(
        a.probe(&unique("there")).await.is_ok(),
        "a cluster that is there passes"
    );
    assert!(
        !record_of(&s).iter().any(|l| l.starts_with("inject ")),
        "nothing was set up"
    );
}

/// A trajectory larger than a result may hold keeps its first and last entries, and says how many were cut
/// (the whole session stays in AIOpsLab's results directory).
#[tokio::test]
async fn a_long_trajectory_is_cut_with_a_marker() {
    let a = args(RunnerKind::Aiopslab);
    let s = on_cluster(
        "long-detection-1",
        json!({"agent_config": {"agent": "chatty"}, "max_steps": 150}),
        &unique("long"),
    );
    let r = run(&a, &s).await;
    let RunOutcome::Completed { result } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    let history = result["history"].as_array().unwrap();
    assert!(history.len() < 150, "{}", history.len());
    assert_eq!(history[5]["truncated"], true, "{:?}", &history[5]);
    assert!(history[5]["entries_cut"].as_u64().unwrap() > 0);
    assert!(
        history.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with("exec_shell(\"echo 150 ")
    );
    assert!(serde_json::to_vec(history).unwrap().len() <= 160_000);
    assert!(std::path::Path::new(result["session_file"].as_str().unwrap()).is_file());
}
