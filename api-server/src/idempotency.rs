//! The fingerprint of a create request, for idempotent creation (`Idempotency-Key`).

use poem::{IntoResponse, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaParamIn, MetaSchema, MetaSchemaRef},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use task_executor_shared::api::CreateTaskRequest;

use crate::error::ApiError;

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

/// The `Idempotency-Key` header of a create request (1-255 visible ASCII characters), as an extractor: a key
/// that is present but not visible ASCII is refused (422) rather than ignored, since the client asked for a
/// protection it would silently not get.
pub struct IdempotencyKey(pub Option<String>);

const HEADER: &str = "Idempotency-Key";

impl<'a> ApiExtractor<'a> for IdempotencyKey {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    type ParamType = String;
    type ParamRawType = String;

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Header)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(255),
            pattern: Some(r"^[\x21-\x7e]+$".to_owned()),
            ..MetaSchema::new("string")
        })))
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _opts: ExtractParamOptions<String>,
    ) -> poem::Result<Self> {
        let Some(value) = request.headers().get(HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        match value.to_str() {
            Ok(k)
                if (1..=255).contains(&k.len())
                    && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
            {
                Ok(IdempotencyKey(Some(k.to_owned())))
            }
            _ => Err(poem::Error::from_response(
                ApiError::validation("Idempotency-Key must be 1-255 visible ASCII characters")
                    .into_response(),
            )),
        }
    }
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
