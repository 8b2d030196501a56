//! A task's effective parameters: one typed view, with one source of defaults, used by the API (which fills
//! them in when a task is created), the reaper (which enforces the timeout) and the runner (which gets them).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::api::JsonObject;

/// Agent steps of a task whose parameters give none, unless the server is configured otherwise.
pub const DEFAULT_MAX_STEPS: u32 = 30;
/// Timeout of a task whose parameters give none, in minutes, unless the server is configured otherwise.
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 30;
/// `parameters.max_steps` accepted.
pub const MAX_STEPS_RANGE: (i64, i64) = (1, 10_000);
/// `parameters.timeout` accepted, in seconds (one week at most).
pub const TIMEOUT_RANGE: (i64, i64) = (1, 604_800);

/// What fills in the parameters a task leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub max_steps: u32,
    pub timeout_minutes: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_steps: DEFAULT_MAX_STEPS,
            timeout_minutes: DEFAULT_TIMEOUT_MINUTES,
        }
    }
}

/// The parameters a task is stored with: `max_steps` and `timeout` (seconds) filled in from `defaults` where
/// absent, both checked; every other key (`agent_config`, `simulate`, …) kept as given.
pub fn effective(given: &JsonObject, defaults: Defaults) -> Result<Value, String> {
    let mut out: Map<String, Value> = given.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, (lo, hi), default) in [
        ("max_steps", MAX_STEPS_RANGE, i64::from(defaults.max_steps)),
        (
            "timeout",
            TIMEOUT_RANGE,
            i64::from(defaults.timeout_minutes) * 60,
        ),
    ] {
        match out.get(key) {
            None | Some(Value::Null) => {
                out.insert(key.to_owned(), Value::from(default));
            }
            Some(v) => match v.as_i64() {
                Some(n) if (lo..=hi).contains(&n) => {}
                _ => {
                    let got = match v {
                        Value::Number(n) => n.to_string(),
                        other => crate::validate::json_kind(other).to_owned(),
                    };
                    return Err(format!(
                        "parameters.{key} must be an integer from {lo} to {hi}, got {got}"
                    ));
                }
            },
        }
    }
    Ok(Value::Object(out))
}

/// The typed view of a task's stored (effective) parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskParams {
    /// Agent steps at most.
    pub max_steps: u64,
    /// The whole run's time limit, counted from its start.
    pub timeout: Duration,
    /// The agent and its settings (`parameters.agent_config`).
    pub agent_config: Option<Value>,
    /// What drives the built-in simulation (`parameters.simulate`).
    pub simulate: Option<Value>,
    /// All of them, as stored (what the runner gets in `TASK_PARAMETERS`).
    pub all: Value,
}

impl TaskParams {
    /// Reads stored parameters. They were made effective at creation, so both limits are there; a row written
    /// otherwise falls back to the built-in defaults.
    pub fn of(stored: &Value) -> TaskParams {
        let defaults = Defaults::default();
        let get = |k: &str| stored.get(k).filter(|v| !v.is_null()).cloned();
        TaskParams {
            max_steps: stored
                .get("max_steps")
                .and_then(Value::as_u64)
                .unwrap_or(u64::from(defaults.max_steps)),
            timeout: Duration::from_secs(
                stored
                    .get("timeout")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::from(defaults.timeout_minutes) * 60),
            ),
            agent_config: get("agent_config"),
            simulate: get("simulate"),
            all: stored.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn defaults_are_filled_and_others_kept() {
        let p = effective(
            &obj(json!({"agent_config": {"model": "gpt-4"}})),
            Defaults::default(),
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"agent_config": {"model": "gpt-4"}, "max_steps": 30, "timeout": 1800})
        );
        let typed = TaskParams::of(&p);
        assert_eq!(typed.max_steps, 30);
        assert_eq!(typed.timeout, Duration::from_secs(1800));
        assert_eq!(typed.agent_config, Some(json!({"model": "gpt-4"})));
        assert_eq!(typed.simulate, None);
    }

    #[test]
    fn out_of_range_is_refused() {
        let d = Defaults::default();
        assert!(effective(&obj(json!({"max_steps": 0})), d).is_err());
        assert!(effective(&obj(json!({"max_steps": 10001})), d).is_err());
        assert!(effective(&obj(json!({"timeout": 604801})), d).is_err());
        assert!(effective(&obj(json!({"timeout": "10"})), d).is_err());
        assert!(effective(&obj(json!({"timeout": 1.5})), d).is_err());
        assert!(effective(&obj(json!({"max_steps": 10000, "timeout": 604800})), d).is_ok());
    }

    #[test]
    fn configured_defaults_apply() {
        let p = effective(
            &JsonObject::new(),
            Defaults {
                max_steps: 7,
                timeout_minutes: 2,
            },
        )
        .unwrap();
        assert_eq!(p, json!({"max_steps": 7, "timeout": 120}));
    }
}
