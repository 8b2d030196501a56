//! The built-in simulation (`TASK_RUNNER=simulate`): it deploys nothing and calls no LLM. It walks through
//! steps with short delays and ends with a result shaped like an AIOpsLab one, so the service can be tried,
//! tested and benchmarked without a cluster. `parameters.simulate` drives it:
//! `{"steps": 3, "step_ms": 200, "outcome": "success" | "failure" | "crash" | "infrastructure" | "hang"}`
//! (`crash` fails once the agent is running, `infrastructure` before its first step).

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::{Instant, sleep, sleep_until};

use super::{LogSender, RunControl, RunOutcome, TaskSpec, entry, protocol};
use crate::{FailureKind, LogLevel};

enum Interrupted {
    Deadline,
    Cancel,
    Stop,
}

async fn pause(d: Duration, deadline: Instant, control: &RunControl) -> Result<(), Interrupted> {
    tokio::select! {
        _ = sleep(d) => Ok(()),
        _ = sleep_until(deadline) => Err(Interrupted::Deadline),
        _ = control.cancel.cancelled() => Err(Interrupted::Cancel),
        _ = control.interrupt.cancelled() => Err(Interrupted::Stop),
    }
}

fn ended(why: Interrupted, spec: &TaskSpec) -> RunOutcome {
    match why {
        Interrupted::Deadline => RunOutcome::TimedOut {
            error: format!(
                "the run exceeded its timeout of {} s and was stopped",
                spec.params.timeout.as_secs()
            ),
            result: None,
        },
        Interrupted::Cancel => RunOutcome::Cancelled,
        Interrupted::Stop => RunOutcome::Interrupted,
    }
}

pub(crate) async fn run(
    spec: &TaskSpec,
    deadline: Instant,
    control: &RunControl,
    logs: &LogSender,
) -> RunOutcome {
    let started = Instant::now();
    let sim = spec.params.simulate.clone().unwrap_or(Value::Null);
    let steps = sim
        .get("steps")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .min(100_000);
    let step_ms = sim
        .get("step_ms")
        .and_then(Value::as_u64)
        .unwrap_or(200)
        .min(600_000);
    let outcome = sim
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("success")
        .to_owned();
    let max_steps = spec.params.max_steps;
    logs.send(entry(
        LogLevel::Info,
        format!(
            "[simulation] Simulated run of {} on cluster {}: nothing is deployed, no LLM is called (TASK_RUNNER=simulate)",
            spec.problem_id, spec.cluster
        ),
        Some(json!({"simulated": true, "steps": steps, "step_ms": step_ms, "outcome": outcome})),
    ));
    let actions = [
        "exec_shell(\"kubectl get pods -n test-hotel-reservation\")",
        "get_logs(\"test-hotel-reservation\", \"geo\")",
        "get_metrics(\"test-hotel-reservation\", 5)",
        "exec_shell(\"kubectl describe svc geo\")",
    ];
    if outcome == "infrastructure" {
        logs.send(entry(
            LogLevel::Error,
            "[simulation] the application could not be deployed (simulated)",
            None,
        ));
        return RunOutcome::Failed {
            error: "the application could not be deployed (simulated infrastructure failure)"
                .to_owned(),
            result: None,
            kind: FailureKind::Infrastructure,
        };
    }
    for i in 1..=steps {
        if let Err(why) = pause(Duration::from_millis(step_ms), deadline, control).await {
            return ended(why, spec);
        }
        if i > max_steps {
            logs.send(entry(
                LogLevel::Error,
                format!("[simulation] more steps than max_steps ({max_steps}): stopping"),
                None,
            ));
            return RunOutcome::Failed {
                error: format!(
                    "the runner took more than max_steps ({max_steps}) steps and was stopped"
                ),
                result: None,
                kind: FailureKind::Agent,
            };
        }
        let action = actions[(i as usize - 1) % actions.len()];
        let step = json!({"step": i, "action": action, "simulated": true});
        logs.send(protocol::step_entry(
            i,
            step.as_object().expect("an object"),
        ));
        if outcome == "crash" && i * 2 >= steps {
            logs.send(entry(
                LogLevel::Error,
                "[simulation] the runner crashes (simulated)",
                None,
            ));
            return RunOutcome::Failed {
                error: "the runner exited with status 1 (simulated crash)".to_owned(),
                result: None,
                kind: FailureKind::Agent,
            };
        }
    }
    if outcome == "hang" {
        logs.send(entry(
            LogLevel::Warning,
            "[simulation] the runner hangs (simulated)",
            None,
        ));
        loop {
            if let Err(why) = pause(Duration::from_secs(3600), deadline, control).await {
                return ended(why, spec);
            }
        }
    }
    let success = outcome != "failure";
    let elapsed = started.elapsed().as_secs_f64();
    let mut result: Map<String, Value> = json!({
        "success": success,
        "simulated": true,
        "output": if success {
            "[simulation] Detection Accuracy: Correct"
        } else {
            "[simulation] Detection Accuracy: Incorrect"
        },
        "metrics": {
            "steps": steps,
            "in_tokens": steps * 1200,
            "out_tokens": steps * 80,
            "TTD": (elapsed * 1000.0).round() / 1000.0,
            "Detection Accuracy": if success { "Correct" } else { "Incorrect" },
        }
    })
    .as_object()
    .expect("an object")
    .clone();
    protocol::finish_result(&mut result, steps, started.elapsed());
    logs.send(entry(
        LogLevel::Info,
        format!("[simulation] finished: success = {success}"),
        None,
    ));
    RunOutcome::Completed { result }
}
