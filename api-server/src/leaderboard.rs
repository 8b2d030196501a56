//! The leaderboard: agents (or models) × problems (or families, or task types), each cell a success rate with
//! its 95 % Wilson interval, AIOpsLab's times and the tokens spent, as a paper's table needs them.
//!
//! A cell counts the finished runs of its row and column, except cancelled ones (they say nothing about the
//! agent) and, unless asked, infrastructure failures (the agent never acted); both are reported beside.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::DatabaseConnection;
use serde_json::Value;
use task_executor_shared::{
    FailureKind, TaskStatus,
    interval::{Interval, wilson},
};

use crate::{
    results::{GroupBy, Summary, csv_field, csv_line, key_of, metric_f64, success_of, summarize},
    store::{
        StoreResult,
        tasks::{self, ListFilter},
    },
};

/// Tasks read at once.
const PAGE: u64 = 500;

/// What a matrix's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Rows {
    Agent,
    Model,
}

/// What a matrix's columns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Cols {
    ProblemId,
    ProblemFamily,
    TaskType,
}

impl Rows {
    fn group(self) -> GroupBy {
        match self {
            Rows::Agent => GroupBy::Agent,
            Rows::Model => GroupBy::Model,
        }
    }
    /// Its name, as the query takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rows::Agent => "agent",
            Rows::Model => "model",
        }
    }
}

impl Cols {
    fn group(self) -> GroupBy {
        match self {
            Cols::ProblemId => GroupBy::ProblemId,
            Cols::ProblemFamily => GroupBy::ProblemFamily,
            Cols::TaskType => GroupBy::TaskType,
        }
    }
    /// Its name, as the query takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cols::ProblemId => "problem_id",
            Cols::ProblemFamily => "problem_family",
            Cols::TaskType => "task_type",
        }
    }
}

/// One cell: a row's runs of a column.
#[derive(Debug, Clone, poem_openapi::Object, serde::Serialize)]
pub struct Cell {
    /// The row's value (`null`: runs without one, e.g. no agent named).
    #[oai(nullable)]
    pub row: Option<String>,
    /// The column's value.
    #[oai(nullable)]
    pub col: Option<String>,
    /// Finished runs counted in the rate: not cancelled, and not infrastructure failures unless
    /// `include_infrastructure`.
    pub runs: i64,
    /// Of which completed with `success: true`.
    pub successes: i64,
    /// `successes / runs`; null without runs.
    #[oai(nullable)]
    pub success_rate: Option<f64>,
    /// The rate's 95 % Wilson interval; null without runs.
    #[oai(nullable)]
    pub ci95: Option<Interval>,
    /// Infrastructure failures (left out of `runs` unless `include_infrastructure`).
    pub infrastructure_failures: i64,
    /// Cancelled runs (never in `runs`).
    pub cancelled: i64,
    /// AIOpsLab's time to detect, localise, analyse, mitigate (seconds) of the counted runs that report it.
    pub ttd: Summary,
    pub ttl: Summary,
    pub tta: Summary,
    pub ttm: Summary,
    /// Mean tokens (in + out) of the counted runs that report them.
    #[oai(nullable)]
    pub mean_tokens: Option<f64>,
}

#[derive(Debug, Clone, poem_openapi::Object, serde::Serialize)]
pub struct Matrix {
    pub rows: Rows,
    pub cols: Cols,
    pub include_infrastructure: bool,
    /// The rows' and the columns' values, in order (`None`: runs without one), for drawing; the cells say them.
    #[oai(skip)]
    #[serde(skip)]
    pub row_keys: Vec<Option<String>>,
    #[oai(skip)]
    #[serde(skip)]
    pub col_keys: Vec<Option<String>>,
    /// The cells that have runs, row by row.
    pub cells: Vec<Cell>,
}

#[derive(Default)]
struct Acc {
    runs: i64,
    successes: i64,
    infrastructure: i64,
    cancelled: i64,
    times: [Vec<f64>; 4],
    tokens: Vec<f64>,
}

const TIMES: [&str; 4] = ["TTD", "TTL", "TTA", "TTM"];

/// The matrix of the finished tasks matching `filter`.
pub async fn matrix(
    db: &DatabaseConnection,
    filter: &ListFilter,
    rows: Rows,
    cols: Cols,
    include_infrastructure: bool,
) -> StoreResult<Matrix> {
    let mut cells: BTreeMap<(Option<String>, Option<String>), Acc> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = tasks::page_after(db, filter, after, PAGE).await?;
        for t in &page {
            let Some(kind) = FailureKind::of(t.status, t.result.as_ref()) else {
                continue;
            };
            let a = cells
                .entry((key_of(t, rows.group()), key_of(t, cols.group())))
                .or_default();
            match kind {
                FailureKind::Cancelled => {
                    a.cancelled += 1;
                    continue;
                }
                FailureKind::Infrastructure => {
                    a.infrastructure += 1;
                    if !include_infrastructure {
                        continue;
                    }
                }
                _ => {}
            }
            a.runs += 1;
            if t.status == TaskStatus::Completed && success_of(t) == Some(true) {
                a.successes += 1;
            }
            for (i, name) in TIMES.iter().enumerate() {
                a.times[i].extend(metric_f64(t, &[name]));
            }
            if let (Some(i), Some(o)) = (
                metric_f64(t, &["in_tokens"]),
                metric_f64(t, &["out_tokens"]),
            ) {
                a.tokens.push(i + o);
            }
        }
        match page.last() {
            Some(t) if page.len() as u64 == PAGE => after = Some((t.created_at, t.id)),
            _ => break,
        }
    }
    let row_keys: BTreeSet<_> = cells.keys().map(|(r, _)| r.clone()).collect();
    let col_keys: BTreeSet<_> = cells.keys().map(|(_, c)| c.clone()).collect();
    let cells = cells
        .into_iter()
        .map(|((row, col), a)| {
            let [ttd, ttl, tta, ttm] = a.times.map(summarize);
            Cell {
                row,
                col,
                runs: a.runs,
                successes: a.successes,
                success_rate: (a.runs > 0).then(|| a.successes as f64 / a.runs as f64),
                ci95: wilson(a.successes, a.runs),
                infrastructure_failures: a.infrastructure,
                cancelled: a.cancelled,
                ttd,
                ttl,
                tta,
                ttm,
                mean_tokens: (!a.tokens.is_empty())
                    .then(|| a.tokens.iter().sum::<f64>() / a.tokens.len() as f64),
            }
        })
        .collect();
    Ok(Matrix {
        rows,
        cols,
        include_infrastructure,
        row_keys: row_keys.into_iter().collect(),
        col_keys: col_keys.into_iter().collect(),
        cells,
    })
}

/// The matrix as CSV: a header line, then a line per cell (RFC 4180).
pub fn to_csv(m: &Matrix) -> String {
    let mut header = vec![
        m.rows.as_str().to_owned(),
        m.cols.as_str().to_owned(),
        "runs".into(),
        "successes".into(),
        "success_rate".into(),
        "ci95_low".into(),
        "ci95_high".into(),
        "infrastructure_failures".into(),
        "cancelled".into(),
    ];
    for t in TIMES {
        let t = t.to_lowercase();
        header.push(format!("{t}_mean"));
        header.push(format!("{t}_median"));
    }
    header.push("mean_tokens".into());
    let mut out = csv_line(header.into_iter());
    let num = |v: Option<f64>| v.map_or(Value::Null, Value::from);
    for c in &m.cells {
        let mut fields = vec![
            Value::from(c.row.clone()),
            Value::from(c.col.clone()),
            Value::from(c.runs),
            Value::from(c.successes),
            num(c.success_rate),
            num(c.ci95.map(|i| i.low)),
            num(c.ci95.map(|i| i.high)),
            Value::from(c.infrastructure_failures),
            Value::from(c.cancelled),
        ];
        for s in [&c.ttd, &c.ttl, &c.tta, &c.ttm] {
            fields.push(num(s.mean));
            fields.push(num(s.median));
        }
        fields.push(num(c.mean_tokens));
        out.push_str(&csv_line(fields.iter().map(csv_field)));
    }
    out
}
