//! A campaign's results: one row per task (export as CSV, JSON lines or JSON, streamed a page at a time) and
//! statistics per group (problem, family, task type, agent, model).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures_util::Stream;
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value, json};
use task_executor_shared::{FailureKind, TaskStatus};

use crate::store::{
    StoreResult,
    entity::task,
    tasks::{self, ListFilter},
};

/// Tasks read at once.
const PAGE: u64 = 500;

/// The fixed columns of a row, in order; AIOpsLab's metrics follow as `metrics.<name>`.
pub const COLUMNS: &[&str] = &[
    "task_id",
    "batch_id",
    "problem_id",
    "problem_family",
    "task_type",
    "status",
    "failure_kind",
    "attempt",
    "worker_id",
    "agent",
    "model",
    "repetition",
    "success",
    "duration_seconds",
    "steps",
    "in_tokens",
    "out_tokens",
    "tokens",
    "error",
    // PROVENANCE, in its order:
    "agent_class",
    "aiopslab_version",
    "aiopslab_commit",
    "host",
    "cluster",
    "executor_version",
    "created_at",
    "started_at",
    "completed_at",
];

/// The columns taken from the result's `provenance`: the fixed columns from `agent_class` on.
const PROVENANCE: &[&str] = {
    let (start, n) = (19, 6);
    assert!(matches!(COLUMNS[start].as_bytes(), b"agent_class"));
    COLUMNS.split_at(start).1.split_at(n).0
};

/// Metrics that have a column of their own (not repeated as `metrics.*`).
const OWN_COLUMNS: &[&str] = &[
    "duration_seconds",
    "steps_taken",
    "steps",
    "in_tokens",
    "out_tokens",
];

const TASK_TYPES: &[&str] = &["detection", "localization", "analysis", "mitigation"];

/// AIOpsLab's problem ids are `<fault>-<task type>-<n>` (`k8s_target_port-misconfig-mitigation-1`): the
/// family is the part before the task type, the task type the segment naming one.
pub fn family_and_type(problem_id: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = problem_id.split('-').collect();
    if let Some(i) = parts.iter().rposition(|p| TASK_TYPES.contains(p))
        && i > 0
    {
        return (parts[..i].join("-"), Some(parts[i].to_owned()));
    }
    let base = match problem_id.rsplit_once('-') {
        Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => problem_id,
    };
    (base.to_owned(), None)
}

fn agent_config(t: &task::Model) -> Option<&Map<String, Value>> {
    t.parameters.get("agent_config").and_then(Value::as_object)
}

/// The agent a task ran: `agent_config.agent` (or `.name`).
pub fn agent_of(t: &task::Model) -> Option<String> {
    let c = agent_config(t)?;
    c.get("agent")
        .or_else(|| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub fn model_of(t: &task::Model) -> Option<String> {
    agent_config(t)?
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn metrics(t: &task::Model) -> Option<&Map<String, Value>> {
    t.result.as_ref()?.get("metrics")?.as_object()
}

pub(crate) fn metric_f64(t: &task::Model, keys: &[&str]) -> Option<f64> {
    let m = metrics(t)?;
    keys.iter().find_map(|k| m.get(*k).and_then(Value::as_f64))
}

pub fn success_of(t: &task::Model) -> Option<bool> {
    t.result.as_ref()?.get("success")?.as_bool()
}

/// How long the run took: the runner's measure, else completion minus start.
pub fn duration_of(t: &task::Model) -> Option<f64> {
    metric_f64(t, &["duration_seconds"]).or_else(|| {
        let (s, c) = (t.started_at?, t.completed_at?);
        Some((c - s).num_milliseconds() as f64 / 1000.0)
    })
}

pub fn steps_of(t: &task::Model) -> Option<f64> {
    metric_f64(t, &["steps_taken", "steps"])
}

/// A count as an integer when it is one (`3`, not `3.0`).
fn number(v: Option<f64>) -> Value {
    match v {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
        Some(f) => json!(f),
        None => Value::Null,
    }
}

/// One task's row: the fixed columns, then `metrics` (scalars only, flattened).
pub fn row(t: &task::Model) -> Map<String, Value> {
    let (family, task_type) = family_and_type(&t.problem_id);
    let in_tokens = metric_f64(t, &["in_tokens"]);
    let out_tokens = metric_f64(t, &["out_tokens"]);
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_owned(), v);
    };
    put("task_id", json!(t.id));
    put("batch_id", json!(t.batch_id));
    put("problem_id", json!(t.problem_id));
    put("problem_family", json!(family));
    put("task_type", json!(task_type));
    put("status", json!(t.status));
    put(
        "failure_kind",
        json!(FailureKind::of(t.status, t.result.as_ref())),
    );
    put("attempt", json!(t.attempt));
    put("worker_id", json!(t.worker_id));
    put("agent", json!(agent_of(t)));
    put("model", json!(model_of(t)));
    put(
        "repetition",
        t.parameters
            .get("repetition")
            .cloned()
            .unwrap_or(Value::Null),
    );
    put("success", json!(success_of(t)));
    put("duration_seconds", json!(duration_of(t)));
    put("steps", number(steps_of(t)));
    put("in_tokens", number(in_tokens));
    put("out_tokens", number(out_tokens));
    put(
        "tokens",
        number(in_tokens.zip(out_tokens).map(|(i, o)| i + o)),
    );
    put(
        "error",
        t.result
            .as_ref()
            .and_then(|r| r.get("error"))
            .cloned()
            .unwrap_or(Value::Null),
    );
    let provenance = t.result.as_ref().and_then(|r| r.get("provenance"));
    for k in PROVENANCE {
        put(
            k,
            provenance
                .and_then(|p| p.get(k))
                .filter(|v| !v.is_object() && !v.is_array())
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    put("created_at", json!(t.created_at));
    put("started_at", json!(t.started_at));
    put("completed_at", json!(t.completed_at));
    let mut m = Map::new();
    if let Some(all) = metrics(t) {
        for (k, v) in all {
            if !OWN_COLUMNS.contains(&k.as_str()) && !v.is_object() && !v.is_array() {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    r.insert("metrics".to_owned(), Value::Object(m));
    r
}

/// A CSV field: quoted when it holds a comma, quote, or line break (RFC 4180).
pub(crate) fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        // Text a spreadsheet would take for a formula (runner output, such as an error, can be anything).
        Value::String(s) if s.starts_with(['=', '+', '-', '@']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub(crate) fn csv_line(fields: impl Iterator<Item = String>) -> String {
    let mut line = fields.collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
    Json,
}

/// Every scalar metric name among the tasks of the filter (the CSV's extra columns): a first pass.
async fn metric_names(db: &DatabaseConnection, filter: &ListFilter) -> StoreResult<Vec<String>> {
    let mut names = BTreeSet::new();
    let mut after = None;
    loop {
        let page = tasks::page_after(db, filter, after, PAGE).await?;
        for t in &page {
            if let Some(Value::Object(m)) = row(t).get("metrics") {
                names.extend(m.keys().cloned());
            }
        }
        match page.last() {
            Some(t) if page.len() as u64 == PAGE => after = Some((t.created_at, t.id)),
            _ => break,
        }
    }
    Ok(names.into_iter().collect())
}

struct Export {
    db: DatabaseConnection,
    filter: ListFilter,
    format: Format,
    metrics: Vec<String>,
    after: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>,
    started: bool,
    done: bool,
    first_row: bool,
}

/// The rows of the tasks matching `filter`, oldest first, as a byte stream in `format`: read and written a
/// page at a time, so that any number of tasks is exported in bounded memory.
pub async fn export(
    db: DatabaseConnection,
    filter: ListFilter,
    format: Format,
) -> StoreResult<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let metrics = if format == Format::Csv {
        metric_names(&db, &filter).await?
    } else {
        Vec::new()
    };
    let e = Export {
        db,
        filter,
        format,
        metrics,
        after: None,
        started: false,
        done: false,
        first_row: true,
    };
    Ok(futures_util::stream::unfold(e, |mut e| async move {
        let chunk = e.next().await?;
        Some((chunk, e))
    }))
}

impl Export {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            match self.format {
                Format::Csv => {
                    let header = COLUMNS
                        .iter()
                        .map(|c| c.to_string())
                        .chain(self.metrics.iter().map(|m| format!("metrics.{m}")));
                    out.push_str(&csv_line(header.map(|h| csv_field(&Value::String(h)))));
                }
                Format::Json => out.push('['),
                Format::Jsonl => {}
            }
        }
        let page = match tasks::page_after(&self.db, &self.filter, self.after, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "export failed midway");
                self.done = true;
                return Some(Err(std::io::Error::other("the export failed")));
            }
        };
        for t in &page {
            let r = row(t);
            match self.format {
                Format::Csv => {
                    let m = r.get("metrics").and_then(Value::as_object);
                    let fields =
                        COLUMNS
                            .iter()
                            .map(|c| csv_field(r.get(*c).unwrap_or(&Value::Null)))
                            .chain(self.metrics.iter().map(|k| {
                                csv_field(m.and_then(|m| m.get(k)).unwrap_or(&Value::Null))
                            }));
                    out.push_str(&csv_line(fields));
                }
                Format::Jsonl => {
                    out.push_str(&Value::Object(r).to_string());
                    out.push('\n');
                }
                Format::Json => {
                    if !self.first_row {
                        out.push(',');
                    }
                    out.push_str(&Value::Object(r).to_string());
                }
            }
            self.first_row = false;
        }
        match page.last() {
            Some(t) if page.len() as u64 == PAGE => self.after = Some((t.created_at, t.id)),
            _ => {
                self.done = true;
                if self.format == Format::Json {
                    out.push(']');
                }
            }
        }
        Some(Ok(Bytes::from(out)))
    }
}

/// What statistics are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    ProblemId,
    ProblemFamily,
    TaskType,
    Agent,
    Model,
}

pub(crate) fn key_of(t: &task::Model, by: GroupBy) -> Option<String> {
    match by {
        GroupBy::ProblemId => Some(t.problem_id.clone()),
        GroupBy::ProblemFamily => Some(family_and_type(&t.problem_id).0),
        GroupBy::TaskType => family_and_type(&t.problem_id).1,
        GroupBy::Agent => agent_of(t),
        GroupBy::Model => model_of(t),
    }
}

/// Mean, median and 90th percentile (nearest rank) of some values.
#[derive(Debug, Clone, Default, PartialEq, poem_openapi::Object, serde::Serialize)]
pub struct Summary {
    pub count: i64,
    #[oai(nullable)]
    pub mean: Option<f64>,
    #[oai(nullable)]
    pub median: Option<f64>,
    #[oai(nullable)]
    pub p90: Option<f64>,
}

pub fn summarize(mut v: Vec<f64>) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
    Summary {
        count: n as i64,
        mean: Some(v.iter().sum::<f64>() / n as f64),
        median: Some(median),
        p90: Some(v[rank - 1]),
    }
}

/// One group's figures.
#[derive(Debug, Clone, poem_openapi::Object, serde::Serialize)]
pub struct GroupStats {
    /// The group's value (`null`: tasks without one, e.g. no agent named).
    #[oai(nullable)]
    pub key: Option<String>,
    /// Tasks in the group.
    pub runs: i64,
    /// Of which finished (completed, failed, timeout, cancelled).
    pub finished: i64,
    /// Finished tasks whose result says `success: true`.
    pub succeeded: i64,
    /// Finished tasks that failed for the infrastructure's sake (`failure_kind: infrastructure`).
    pub infrastructure_failures: i64,
    /// `succeeded / finished`, without the infrastructure failures unless `include_infrastructure` was
    /// asked; null while there are none to count.
    #[oai(nullable)]
    pub success_rate: Option<f64>,
    /// Run durations (seconds) of finished tasks.
    pub duration_seconds: Summary,
    /// Agent steps of finished tasks.
    pub steps: Summary,
}

#[derive(Debug, Clone, poem_openapi::Object, serde::Serialize)]
pub struct Stats {
    pub group_by: GroupBy,
    pub groups: Vec<GroupStats>,
}

#[derive(Default)]
struct Acc {
    runs: i64,
    finished: i64,
    succeeded: i64,
    infrastructure: i64,
    durations: Vec<f64>,
    steps: Vec<f64>,
}

/// Statistics of the tasks matching `filter`, per group, groups in key order.
pub async fn stats(
    db: &DatabaseConnection,
    filter: &ListFilter,
    by: GroupBy,
    include_infrastructure: bool,
) -> StoreResult<Stats> {
    let mut groups: BTreeMap<Option<String>, Acc> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = tasks::page_after(db, filter, after, PAGE).await?;
        for t in &page {
            let a = groups.entry(key_of(t, by)).or_default();
            a.runs += 1;
            if t.status.is_terminal() {
                a.finished += 1;
                if success_of(t) == Some(true) && t.status == TaskStatus::Completed {
                    a.succeeded += 1;
                }
                if FailureKind::of(t.status, t.result.as_ref()) == Some(FailureKind::Infrastructure)
                {
                    a.infrastructure += 1;
                }
                a.durations.extend(duration_of(t));
                a.steps.extend(steps_of(t));
            }
        }
        match page.last() {
            Some(t) if page.len() as u64 == PAGE => after = Some((t.created_at, t.id)),
            _ => break,
        }
    }
    Ok(Stats {
        group_by: by,
        groups: groups
            .into_iter()
            .map(|(key, a)| {
                let counted = if include_infrastructure {
                    a.finished
                } else {
                    a.finished - a.infrastructure
                };
                GroupStats {
                    key,
                    runs: a.runs,
                    finished: a.finished,
                    succeeded: a.succeeded,
                    infrastructure_failures: a.infrastructure,
                    success_rate: (counted > 0).then(|| a.succeeded as f64 / counted as f64),
                    duration_seconds: summarize(a.durations),
                    steps: summarize(a.steps),
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_task_types() {
        assert_eq!(
            family_and_type("misconfig_app_hotel_res-detection-1"),
            (
                "misconfig_app_hotel_res".to_owned(),
                Some("detection".to_owned())
            )
        );
        assert_eq!(
            family_and_type("k8s_target_port-misconfig-mitigation-1"),
            (
                "k8s_target_port-misconfig".to_owned(),
                Some("mitigation".to_owned())
            )
        );
        assert_eq!(family_and_type("custom-7"), ("custom".to_owned(), None));
        assert_eq!(family_and_type("plain"), ("plain".to_owned(), None));
    }

    #[test]
    fn summaries() {
        let s = summarize(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, Some(2.5));
        assert_eq!(s.median, Some(2.5));
        assert_eq!(s.p90, Some(4.0));
        let s = summarize((1..=10).map(f64::from).collect());
        assert_eq!((s.median, s.p90), (Some(5.5), Some(9.0)));
        assert_eq!(summarize(vec![]), Summary::default());
    }

    #[test]
    fn csv_quotes_what_it_must() {
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(&json!(null)), "");
        assert_eq!(csv_field(&json!(1.5)), "1.5");
        assert_eq!(csv_field(&json!(true)), "true");
        assert_eq!(csv_field(&json!("=HYPERLINK(1)")), "'=HYPERLINK(1)");
        assert_eq!(csv_field(&json!(-2.5)), "-2.5");
    }
}
