//! Identifiers that are checked once, where they enter: a `ProblemId` or `WorkerId` that exists is valid.
//! Parsing from JSON is strict (a number is not a problem id) and the OpenAPI schema carries the rules.

use std::{borrow::Cow, fmt};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::validate;

/// poem-openapi's traits for a newtype over a `String` that parses only from a JSON string (`$parse` checks
/// it) and is documented by `$schema`.
macro_rules! string_type {
    ($name:ident, $schema:expr, $parse:expr) => {
        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::String(s)) => ($parse)(s),
                    other => Err(ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $check:path, $pattern:expr, $max:expr, $example:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, String> {
                let s = s.into();
                $check(&s)?;
                Ok($name(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(s).map_err(serde::de::Error::custom)
            }
        }

        string_type!(
            $name,
            MetaSchema {
                min_length: Some(1),
                max_length: Some($max),
                pattern: Some($pattern.to_owned()),
                example: Some(Value::String($example.to_owned())),
                ..MetaSchema::new("string")
            },
            |s: String| $name::parse(s).map_err(ParseError::custom)
        );

        impl ParseFromParameter for $name {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                $name::parse(value).map_err(ParseError::custom)
            }
        }
    };
}

checked_id!(
    /// An AIOpsLab problem id: 1–255 of letters, digits, `-`, `_`, `.`, starting with a letter or digit.
    ProblemId,
    validate::problem_id,
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    validate::PROBLEM_ID_MAX,
    "misconfig_app_hotel_res-detection-1"
);

checked_id!(
    /// A worker id: 1–128 of letters, digits, `.`, `_`, `-`.
    WorkerId,
    validate::worker_id,
    r"^[A-Za-z0-9._-]+$",
    validate::WORKER_ID_MAX,
    "worker-001-kind"
);

checked_id!(
    /// A `supported_problems` pattern: the characters of a problem id plus the wildcards `*` and `?`.
    ProblemGlob,
    validate::problem_glob,
    r"^[A-Za-z0-9._*?-]+$",
    validate::PROBLEM_ID_MAX,
    "*-detection-*"
);

checked_id!(
    /// The instance of a worker process: 1-128 visible ASCII characters, stable across its restarts.
    InstanceId,
    validate::instance_id,
    r"^[\x21-\x7e]+$",
    validate::INSTANCE_ID_MAX,
    "3f2c8a1e-6b7d-4c55-9a0e-2f1d8c7b6a59"
);

/// A string that is a JSON string: poem-openapi's own `String` also accepts numbers and booleans (turning
/// `5` into `"5"`), which the OpenAPI document does not allow. Length and pattern validators apply as to a
/// `String`; it derefs to one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(String);

impl Text {
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::ops::Deref for Text {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::ops::DerefMut for Text {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_owned())
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.0
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

string_type!(
    Text,
    MetaSchema::new("string"),
    |s: String| -> ParseResult<Text> { Ok(Text(s)) }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_parsing_is_strict() {
        assert!(ProblemId::parse_from_json(Some(serde_json::json!(42))).is_err());
        assert!(ProblemId::parse_from_json(Some(serde_json::json!(true))).is_err());
        assert!(ProblemId::parse_from_json(Some(serde_json::json!("-x"))).is_err());
        assert!(ProblemId::parse_from_json(None).is_err());
        assert_eq!(
            ProblemId::parse_from_json(Some(serde_json::json!("p-1")))
                .unwrap()
                .as_str(),
            "p-1"
        );
        assert!(serde_json::from_value::<WorkerId>(serde_json::json!("a/b")).is_err());
        assert!(Text::parse_from_json(Some(serde_json::json!(5))).is_err());
        assert!(Text::parse_from_json(Some(serde_json::json!(false))).is_err());
        assert_eq!(
            Text::parse_from_json(Some(serde_json::json!("x"))).unwrap(),
            "x"
        );
        assert!(InstanceId::parse("has space").is_err());
    }
}
