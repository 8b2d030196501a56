//! The fingerprint of a create request, for idempotent creation (`Idempotency-Key`).

use serde_json::Value;
use sha2::{Digest, Sha256};
use task_executor_shared::api::CreateTaskRequest;

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

/// The `Idempotency-Key` of a create request, checked: a key that is not visible ASCII never reaches the
/// typed header (it is not text), so its presence in the raw request is refused rather than ignored — the
/// client asked for a protection it would silently not get.
pub fn key(
    typed: Option<String>,
    raw: &poem::Request,
) -> Result<Option<String>, crate::error::ApiError> {
    if typed.is_none() && raw.headers().contains_key("idempotency-key") {
        return Err(crate::error::ApiError::validation(
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ));
    }
    Ok(typed)
}

/// A hash of any request body as the client sent it, independent of key order.
pub fn fingerprint_of(body: &impl serde::Serialize) -> String {
    let v = serde_json::to_value(body).unwrap_or(Value::Null);
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
