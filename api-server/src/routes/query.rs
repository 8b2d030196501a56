//! Optional query parameters within bounds, which the OpenAPI schema states and the parser holds to, with a
//! short error when a value is outside them: the paging of the list operations (`limit`, `offset`) and the
//! text filters of the task lists (`problem_id`, `worker_id`).

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};

/// An integer from `MIN` to `MAX`; `DEFAULT` when the parameter is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64, const DEFAULT: u64>(pub u64);

/// How many items one page holds at most: tasks, batches.
pub type Limit = Bounded<1, 1000, 100>;
/// How many log entries one page holds at most.
pub type LogLimit = Bounded<1, 10_000, 1000>;
/// How many items are skipped before the page.
pub type Offset = Bounded<0, 1_000_000_000, 0>;

impl<const MIN: u64, const MAX: u64, const DEFAULT: u64> Bounded<MIN, MAX, DEFAULT> {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64, const DEFAULT: u64> Type for Bounded<MIN, MAX, DEFAULT> {
    const IS_REQUIRED: bool = false;
    type RawValueType = u64;
    type RawElementValueType = u64;

    fn name() -> Cow<'static, str> {
        format!("integer_{MIN}_{MAX}").into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            minimum: Some(MIN as f64),
            maximum: Some(MAX as f64),
            default: Some(DEFAULT.into()),
            ..MetaSchema::new_with_format("integer", "uint64")
        }))
    }

    fn as_raw_value(&self) -> Option<&u64> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a u64> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<const MIN: u64, const MAX: u64, const DEFAULT: u64> ParseFromParameter
    for Bounded<MIN, MAX, DEFAULT>
{
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        match value.parse::<u64>() {
            Ok(n) if (MIN..=MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ParseError::custom(format!(
                "an integer from {MIN} to {MAX} is expected"
            ))),
        }
    }

    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        iter: I,
    ) -> ParseResult<Self> {
        match iter.into_iter().next() {
            Some(value) => Self::parse_from_parameter(value.as_ref()),
            None => Ok(Self(DEFAULT)),
        }
    }
}

/// A text filter of `MIN` to `MAX` characters; `None` when the parameter is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter<const MIN: usize, const MAX: usize>(pub Option<String>);

/// A problem id to filter tasks by.
pub type ProblemFilter = Filter<1, 255>;
/// A worker id to filter tasks by.
pub type WorkerFilter = Filter<1, 128>;

impl<const MIN: usize, const MAX: usize> Filter<MIN, MAX> {
    pub fn into_inner(self) -> Option<String> {
        self.0
    }
}

impl<const MIN: usize, const MAX: usize> Type for Filter<MIN, MAX> {
    const IS_REQUIRED: bool = false;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        format!("string_{MIN}_{MAX}").into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(MIN),
            max_length: Some(MAX),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&String> {
        self.0.as_ref()
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<const MIN: usize, const MAX: usize> ParseFromParameter for Filter<MIN, MAX> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        if (MIN..=MAX).contains(&value.chars().count()) {
            Ok(Self(Some(value.to_owned())))
        } else {
            Err(ParseError::custom(format!(
                "{MIN} to {MAX} characters are expected"
            )))
        }
    }

    fn parse_from_parameters<I: IntoIterator<Item = A>, A: AsRef<str>>(
        iter: I,
    ) -> ParseResult<Self> {
        match iter.into_iter().next() {
            Some(value) => Self::parse_from_parameter(value.as_ref()),
            None => Ok(Self(None)),
        }
    }
}
