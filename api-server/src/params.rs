//! The effective parameters of a new task, and the fingerprint of a create request for idempotency.

use serde_json::Value;
use sha2::{Digest, Sha256};
use task_executor_shared::api::{CreateTaskRequest, JsonObject};

pub const MAX_STEPS_RANGE: (i64, i64) = (1, 10_000);
pub const TIMEOUT_RANGE: (i64, i64) = (1, 604_800);

/// Fills in `max_steps` and `timeout` (seconds) where absent and checks both; other keys are kept as given.
pub fn effective(
    given: &JsonObject,
    default_max_steps: u32,
    default_timeout_minutes: u32,
) -> Result<Value, String> {
    let mut out: serde_json::Map<String, Value> =
        given.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, (lo, hi), default) in [
        ("max_steps", MAX_STEPS_RANGE, i64::from(default_max_steps)),
        (
            "timeout",
            TIMEOUT_RANGE,
            i64::from(default_timeout_minutes) * 60,
        ),
    ] {
        match out.get(key) {
            None | Some(Value::Null) => {
                out.insert(key.to_owned(), Value::from(default));
            }
            Some(v) => match v.as_i64() {
                Some(n) if (lo..=hi).contains(&n) => {}
                _ => {
                    return Err(format!(
                        "parameters.{key} must be an integer from {lo} to {hi}, got {v}"
                    ));
                }
            },
        }
    }
    Ok(Value::Object(out))
}

/// A hash of the request as the client sent it, independent of key order.
pub fn fingerprint(req: &CreateTaskRequest) -> String {
    let v = serde_json::json!({
        "problem_id": req.problem_id,
        "parameters": canonical(&Value::Object(req.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect())),
        "priority": req.priority,
    });
    let digest = Sha256::digest(canonical(&v).to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The same JSON with every object's keys sorted.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
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
        let p = effective(&obj(json!({"agent_config": {"model": "gpt-4"}})), 30, 30).unwrap();
        assert_eq!(
            p,
            json!({"agent_config": {"model": "gpt-4"}, "max_steps": 30, "timeout": 1800})
        );
    }

    #[test]
    fn out_of_range_is_refused() {
        assert!(effective(&obj(json!({"max_steps": 0})), 30, 30).is_err());
        assert!(effective(&obj(json!({"max_steps": 10001})), 30, 30).is_err());
        assert!(effective(&obj(json!({"timeout": 604801})), 30, 30).is_err());
        assert!(effective(&obj(json!({"timeout": "10"})), 30, 30).is_err());
        assert!(effective(&obj(json!({"timeout": 1.5})), 30, 30).is_err());
        assert!(effective(&obj(json!({"max_steps": 10000, "timeout": 604800})), 30, 30).is_ok());
    }

    #[test]
    fn fingerprint_ignores_key_order() {
        let a: CreateTaskRequest = serde_json::from_value(
            json!({"problem_id": "p", "parameters": {"a": {"x": 1, "y": 2}, "b": 1}}),
        )
        .unwrap();
        let b: CreateTaskRequest = serde_json::from_value(
            json!({"parameters": {"b": 1, "a": {"y": 2, "x": 1}}, "problem_id": "p"}),
        )
        .unwrap();
        let c: CreateTaskRequest =
            serde_json::from_value(json!({"problem_id": "p", "parameters": {"b": 2}})).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
