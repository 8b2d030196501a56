//! Request bodies whose validation errors name the field at fault (`tasks[7345].priority: ...`) and never
//! echo what was sent. poem-openapi's own messages name only the type (`occurred while parsing
//! "CreateTaskRequest"`), and for a union the whole body; a 10,000-task batch would come back in `detail`.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, Type},
};
use serde_json::{Map, Value};
use task_executor_shared::{
    FailedBy, ProblemId, Text,
    api::{
        BatchMatrix, BatchOfTasks, CreateBatchRequest, CreateTaskRequest, FailStatus,
        FailTaskRequest, JsonObject,
    },
    validate::{json_kind as kind, plain_reason},
};

/// A body checked field by field before it is parsed as `T`, which the document shows.
pub struct Checked<T>(pub T);

/// How a body is checked: the first field at fault, by path, else the value parsed.
pub trait Check: Sized {
    fn check(value: Value) -> Result<Self, String>;
}

impl<T: Type> Type for Checked<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry)
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_raw_value()
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        self.0.raw_element_iter()
    }
}

impl<T: Type + Check> ParseFromJSON for Checked<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        T::check(value.unwrap_or_default())
            .map(Checked)
            .map_err(ParseError::custom)
    }
}

impl Check for CreateTaskRequest {
    fn check(value: Value) -> Result<Self, String> {
        if let Some(fault) = task_fault(&value, "") {
            return Err(fault);
        }
        parsed(value)
    }
}

impl Check for FailTaskRequest {
    fn check(value: Value) -> Result<Self, String> {
        let Value::Object(o) = &value else {
            return Err(format!("expected an object, found {}", kind(&value)));
        };
        let fault = field::<i32>(o, "attempt", "", true)
            .or_else(|| field::<uuid::Uuid>(o, "lease_id", "", true))
            .or_else(|| field::<Text>(o, "error", "", true))
            .or_else(|| field::<FailStatus>(o, "status", "", false))
            .or_else(|| field::<JsonObject>(o, "result", "", false))
            .or_else(|| field::<FailedBy>(o, "failure_kind", "", false));
        match fault {
            Some(fault) => Err(fault),
            None => parsed(value),
        }
    }
}

impl Check for CreateBatchRequest {
    fn check(value: Value) -> Result<Self, String> {
        let Value::Object(o) = &value else {
            return Err(format!("expected an object, found {}", kind(&value)));
        };
        match (o.get("tasks"), o.get("problems")) {
            (Some(_), Some(_)) => {
                Err("a batch has `tasks` or `problems` (a matrix), not both".into())
            }
            (None, None) => {
                Err("a batch needs `tasks` (one by one) or `problems` (a matrix)".into())
            }
            (Some(tasks), None) => match items(tasks, "tasks", task_fault)
                .or_else(|| field::<Text>(o, "name", "", false))
            {
                Some(fault) => Err(fault),
                None => parsed::<BatchOfTasks>(value).map(CreateBatchRequest::Tasks),
            },
            (None, Some(problems)) => {
                let fault = items(problems, "problems", |p, at| {
                    value_fault::<ProblemId>(p, at.to_owned())
                })
                .or_else(|| match o.get("agent_configs") {
                    None | Some(Value::Null) => None,
                    Some(configs) => items(configs, "agent_configs", |c, at| {
                        value_fault::<JsonObject>(c, at.to_owned())
                    }),
                })
                .or_else(|| field::<Text>(o, "name", "", false))
                .or_else(|| field::<u32>(o, "repetitions", "", false))
                .or_else(|| field::<JsonObject>(o, "parameters", "", false))
                .or_else(|| field::<i32>(o, "priority", "", false));
                match fault {
                    Some(fault) => Err(fault),
                    None => parsed::<BatchMatrix>(value).map(CreateBatchRequest::Matrix),
                }
            }
        }
    }
}

/// The first field of a task (at `at`, e.g. `tasks[3]`) that is not what it should be.
fn task_fault(v: &Value, at: &str) -> Option<String> {
    let Value::Object(o) = v else {
        return Some(format!(
            "{}expected an object, found {}",
            prefix(at),
            kind(v)
        ));
    };
    field::<ProblemId>(o, "problem_id", at, true)
        .or_else(|| field::<JsonObject>(o, "parameters", at, false))
        .or_else(|| field::<i32>(o, "priority", at, false))
}

/// The first item of the list `v` (named `name`) at fault, as `each` judges it.
fn items(v: &Value, name: &str, each: impl Fn(&Value, &str) -> Option<String>) -> Option<String> {
    let Value::Array(list) = v else {
        return Some(format!("{name}: expected an array, found {}", kind(v)));
    };
    list.iter()
        .enumerate()
        .find_map(|(i, item)| each(item, &format!("{name}[{i}]")))
}

/// Whether the field `name` of `o` parses as a `T`; an absent or null one is at fault only when required.
fn field<T: ParseFromJSON>(
    o: &Map<String, Value>,
    name: &str,
    at: &str,
    required: bool,
) -> Option<String> {
    let path = if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    };
    match o.get(name) {
        None | Some(Value::Null) if !required => None,
        None => Some(format!("{path}: required")),
        Some(v) => value_fault::<T>(v, path),
    }
}

fn value_fault<T: ParseFromJSON>(v: &Value, path: String) -> Option<String> {
    let e = T::parse_from_json(Some(v.clone())).err()?;
    let reason = e.into_message();
    // poem-openapi's type mismatch names the type as the document does not (`integer_int32`).
    Some(if reason.starts_with("Expected input type") {
        format!("{path}: expected {}, found {}", expected::<T>(), kind(v))
    } else {
        format!("{path}: {}", plain_reason(&reason))
    })
}

/// The value parsed as `T`, with poem-openapi's message (shortened) if it is refused.
fn parsed<T: ParseFromJSON>(value: Value) -> Result<T, String> {
    T::parse_from_json(Some(value)).map_err(|e| plain_reason(&e.into_message()))
}

fn prefix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    }
}

fn expected<T: Type>() -> String {
    match T::schema_ref() {
        MetaSchemaRef::Inline(s) => match s.format {
            Some(f) => format!("{} ({f})", a(s.ty)),
            None => a(s.ty),
        },
        MetaSchemaRef::Reference(name) => a(&name),
    }
}

fn a(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn batch_error(v: Value) -> String {
        CreateBatchRequest::check(v).expect_err("refused")
    }

    #[test]
    fn a_bad_item_is_named_by_index_and_field() {
        let mut tasks = vec![json!({"problem_id": "p-1"}); 10_000];
        tasks[7345] = json!({"problem_id": "p-1", "priority": "high"});
        assert_eq!(
            batch_error(json!({"tasks": tasks})),
            "tasks[7345].priority: expected an integer (int32), found a string"
        );
        tasks[7345] = json!({"problem_id": ""});
        let e = batch_error(json!({"tasks": tasks}));
        assert!(
            e.starts_with("tasks[7345].problem_id: problem_id must be 1-255"),
            "{e}"
        );
        tasks[7345] = json!("p-1");
        assert_eq!(
            batch_error(json!({"tasks": tasks})),
            "tasks[7345]: expected an object, found a string"
        );
    }

    #[test]
    fn a_matrix_names_its_lists_items_and_its_fields() {
        assert_eq!(
            batch_error(json!({"problems": ["a", 7]})),
            "problems[1]: expected a string, found a number"
        );
        assert_eq!(
            batch_error(json!({"problems": ["a"], "agent_configs": [{}, "gpt"]})),
            "agent_configs[1]: expected an object, found a string"
        );
        let e = batch_error(json!({"problems": ["a"], "repetitions": 0}));
        assert!(e.contains("repetitions") && e.len() < 200, "{e}");
        let e = batch_error(json!({"problems": vec!["a"; 5000], "repetitions": "x"}));
        assert!(e.contains("repetitions") && !e.contains("\"a\""), "{e}");
    }

    #[test]
    fn a_body_that_is_neither_or_both_says_so() {
        assert!(batch_error(json!({"name": "x"})).contains("needs `tasks`"));
        assert!(batch_error(json!({"tasks": [], "problems": []})).contains("not both"));
        assert_eq!(
            batch_error(json!([1])),
            "expected an object, found an array"
        );
    }

    #[test]
    fn a_good_body_parses() {
        let b =
            CreateBatchRequest::check(json!({"problems": ["a", "b"], "repetitions": 2})).unwrap();
        assert!(matches!(b, CreateBatchRequest::Matrix(m) if m.problems.len() == 2));
        let t = CreateTaskRequest::check(json!({"problem_id": "a", "priority": null})).unwrap();
        assert_eq!(t.priority, 0);
    }
}
