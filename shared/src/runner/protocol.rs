//! The runner protocol: JSON lines on the runner's stdout.
//!
//! `{"event":"log","level":…,"message":…,"context":…}`, `{"event":"step","step":N,"action":…,…}`, once
//! `{"event":"result","success":…,"output":…,"metrics":{…}}`, and for a run that fails,
//! `{"event":"failure","kind":"agent"|"infrastructure","message":…}` before it exits non-zero, and
//! `{"event":"provenance",…}` (what the results depend on: versions, the agent). Any other line is an info log
//! entry.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::entry;
use crate::{FailureKind, LogLevel, api::NewLogEntry};

pub(crate) enum Event {
    Log(NewLogEntry),
    Step(Map<String, Value>),
    Result(Map<String, Value>),
    /// Whose failure the run's is, should it fail; logged as an error entry.
    Failure(FailureKind, NewLogEntry),
    /// What the run's results depend on (versions, the agent's class and model): kept in the result.
    Provenance(Map<String, Value>),
}

/// A runner's level name, with the usual aliases; unknown names are info.
fn level_of(name: &str) -> LogLevel {
    match name.to_ascii_lowercase().as_str() {
        "debug" | "trace" => LogLevel::Debug,
        "warn" | "warning" => LogLevel::Warning,
        "error" | "err" => LogLevel::Error,
        "critical" | "fatal" => LogLevel::Critical,
        _ => LogLevel::Info,
    }
}

/// One stdout line of a runner.
pub(crate) fn parse_line(line: &str) -> Event {
    let plain = || Event::Log(entry(LogLevel::Info, line, None));
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return plain();
    };
    match obj.remove("event").as_ref().and_then(Value::as_str) {
        Some("log") => {
            let level = obj
                .get("level")
                .and_then(Value::as_str)
                .map_or(LogLevel::Info, level_of);
            let message = match obj.get("message") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let context = obj.remove("context").filter(|c| !c.is_null());
            Event::Log(entry(level, message, context))
        }
        Some("step") => Event::Step(obj),
        Some("result") => Event::Result(obj),
        Some("provenance") => Event::Provenance(obj),
        Some("failure") => {
            let kind = match obj.get("kind").and_then(Value::as_str) {
                Some("agent") => FailureKind::Agent,
                Some("infrastructure") => FailureKind::Infrastructure,
                _ => return plain(),
            };
            let message = obj.get("message").and_then(Value::as_str).unwrap_or("");
            Event::Failure(
                kind,
                entry(
                    LogLevel::Error,
                    format!("The run failed ({kind} failure): {message}"),
                    Some(Value::Object(obj)),
                ),
            )
        }
        _ => plain(),
    }
}

/// The log entry written for a step event.
pub(crate) fn step_entry(n: u64, step: &Map<String, Value>) -> NewLogEntry {
    let action = step.get("action").map(|a| match a {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let message = match action {
        Some(a) => format!("step {n}: {a}"),
        None => format!("step {n}"),
    };
    entry(LogLevel::Info, message, Some(Value::Object(step.clone())))
}

/// Adds what the engine measured to a result: `metrics.duration_seconds` and `metrics.steps_taken`.
pub(crate) fn finish_result(result: &mut Map<String, Value>, steps: u64, elapsed: Duration) {
    let metrics = result.entry("metrics").or_insert_with(|| json!({}));
    if !metrics.is_object() {
        *metrics = json!({"runner_metrics": metrics.clone()});
    }
    let m = metrics.as_object_mut().expect("made an object above");
    m.insert(
        "duration_seconds".to_owned(),
        json!((elapsed.as_secs_f64() * 1000.0).round() / 1000.0),
    );
    m.insert("steps_taken".to_owned(), json!(steps));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_events() {
        match parse_line(r#"{"event":"log","level":"warning","message":"m","context":{"k":1}}"#) {
            Event::Log(e) => {
                assert_eq!(e.level, LogLevel::Warning);
                assert_eq!(e.message, "m");
                assert_eq!(e.context, Some(json!({"k": 1})));
            }
            _ => panic!("log"),
        }
        match parse_line(r#"{"event":"log","level":"WARN","message":"m"}"#) {
            Event::Log(e) => assert_eq!(e.level, LogLevel::Warning),
            _ => panic!("log"),
        }
        assert!(matches!(
            parse_line(r#"{"event":"step","step":1,"action":"ls"}"#),
            Event::Step(_)
        ));
        assert!(matches!(
            parse_line(r#"{"event":"result","success":true}"#),
            Event::Result(_)
        ));
        match parse_line("plain text {") {
            Event::Log(e) => {
                assert_eq!(e.level, LogLevel::Info);
                assert_eq!(e.message, "plain text {");
            }
            _ => panic!("plain"),
        }
        match parse_line(r#"{"no_event": 1}"#) {
            Event::Log(e) => assert_eq!(e.message, r#"{"no_event": 1}"#),
            _ => panic!("other json"),
        }
    }

    #[test]
    fn run_metrics_are_added() {
        let mut r = json!({"success": true, "metrics": {"TTD": 2.5}})
            .as_object()
            .unwrap()
            .clone();
        finish_result(&mut r, 4, Duration::from_millis(1500));
        assert_eq!(
            r["metrics"],
            json!({"TTD": 2.5, "duration_seconds": 1.5, "steps_taken": 4})
        );
    }
}
