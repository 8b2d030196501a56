//! The OpenAPI document as served: poem-openapi's, made plain OpenAPI 3.0 that client generators take.
//!
//! poem-openapi describes a field whose type is a named schema and that carries its own description, default
//! or `nullable` as `allOf: [{$ref}, {description, default, nullable}]`. In 3.0 that is valid, but generators
//! read `allOf` as a merge of objects and give up on a named enum (openapi-python-client drops the field's
//! whole model, and with it every operation that uses it). Such a field becomes `allOf: [{$ref}]` with the
//! extras beside it, or `anyOf: [{$ref}]` when it is nullable (so that `null` is one of its values). A
//! nullable field's object or array default (`{}`, `[]`) is left out: generators check a default against
//! every branch of the nullable union, and the server fills it in anyway (the description says so).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON value whose objects keep their keys' order (serde_json's `Value` sorts them), so that the served
/// document lists paths, properties and media types as poem-openapi does.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
enum Node {
    Object(IndexMap<String, Node>),
    Array(Vec<Node>),
    Scalar(Value),
}

type Map = IndexMap<String, Node>;

fn nullable(map: &Map) -> bool {
    matches!(map.get("nullable"), Some(Node::Scalar(Value::Bool(true))))
}

/// The keys poem-openapi puts in the second member of such an `allOf`.
const EXTRAS: [&str; 4] = ["description", "default", "nullable", "example"];

/// The served document, from poem-openapi's.
pub fn plain(spec: &str) -> String {
    let mut doc: Node = serde_json::from_str(spec).expect("poem-openapi's document is JSON");
    simplify(&mut doc);
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

fn simplify(node: &mut Node) {
    match node {
        Node::Array(items) => items.iter_mut().for_each(simplify),
        Node::Object(map) => {
            map.values_mut().for_each(simplify);
            flatten_ref(map);
            let composite = matches!(map.get("default"), Some(Node::Object(_) | Node::Array(_)));
            if nullable(map) && composite {
                map.shift_remove("default");
            }
        }
        Node::Scalar(_) => {}
    }
}

/// `allOf: [{$ref}, {extras}]` → the extras beside `allOf: [{$ref}]`, or beside `anyOf: [{$ref}]` if nullable.
fn flatten_ref(map: &mut Map) {
    let Some(Node::Array(members)) = map.get("allOf") else {
        return;
    };
    let [Node::Object(reference), Node::Object(extras)] = members.as_slice() else {
        return;
    };
    if reference.len() != 1
        || !reference.contains_key("$ref")
        || !extras.keys().all(|k| EXTRAS.contains(&k.as_str()))
    {
        return;
    }
    let (reference, extras) = (reference.clone(), extras.clone());
    map.shift_remove("allOf");
    for (key, value) in extras {
        map.entry(key).or_insert(value);
    }
    let combinator = if nullable(map) { "anyOf" } else { "allOf" };
    map.insert(
        combinator.to_owned(),
        Node::Array(vec![Node::Object(reference)]),
    );
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::plain;

    #[test]
    fn a_described_nullable_reference_becomes_any_of_one() {
        let spec = json!({"properties": {"role": {
            "description": "The role.", "nullable": true,
            "allOf": [{"$ref": "#/components/schemas/Role"}, {"description": "The role.", "nullable": true}]
        }}});
        let out: Value = serde_json::from_str(&plain(&spec.to_string())).unwrap();
        assert_eq!(
            out["properties"]["role"],
            json!({"description": "The role.", "nullable": true,
                   "anyOf": [{"$ref": "#/components/schemas/Role"}]})
        );
    }

    #[test]
    fn a_reference_with_a_default_keeps_it_beside_all_of_one() {
        let spec = json!({"schema": {"default": "csv",
            "allOf": [{"$ref": "#/components/schemas/Format"}, {"default": "csv"}]}});
        let out: Value = serde_json::from_str(&plain(&spec.to_string())).unwrap();
        assert_eq!(
            out["schema"],
            json!({"default": "csv", "allOf": [{"$ref": "#/components/schemas/Format"}]})
        );
    }

    #[test]
    fn a_nullable_object_loses_its_default_and_a_scalar_keeps_it() {
        let spec = json!({"a": {"type": "object", "nullable": true, "default": {}},
                          "b": {"type": "integer", "nullable": true, "default": 0},
                          "c": {"type": "array", "default": []}});
        let out: Value = serde_json::from_str(&plain(&spec.to_string())).unwrap();
        assert_eq!(out["a"], json!({"type": "object", "nullable": true}));
        assert_eq!(out["b"]["default"], json!(0));
        assert_eq!(out["c"]["default"], json!([]));
    }

    #[test]
    fn keys_keep_their_order() {
        let out = plain(r#"{"paths": {"/b": {}, "/a": {}}, "openapi": "3.0.0"}"#);
        assert!(out.find("/b").unwrap() < out.find("/a").unwrap());
        assert!(out.find("paths").unwrap() < out.find("openapi").unwrap());
    }
}
