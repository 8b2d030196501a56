//! Batches (campaigns): many tasks created together, all or nothing, and their progress.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, Statement, TransactionTrait,
};
use serde_json::{Value, json};
use task_executor_shared::{LogLevel, TaskStatus, api};
use uuid::Uuid;

use super::{
    StoreError, StoreResult,
    entity::{batch, task, task_log},
    now,
    queue::transition::{self, Change, Entry, Guard},
    tasks::{Admission, Created, admit, admitted, pending_task},
};

/// One task of a new batch, its parameters already made effective.
pub struct NewBatchTask {
    pub problem_id: String,
    pub parameters: Value,
    pub priority: i32,
}

pub struct NewBatch {
    pub name: Option<String>,
    pub created_by: Option<String>,
    /// The client's `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    pub tasks: Vec<NewBatchTask>,
    pub admission: Admission,
}

/// Rows per INSERT: well under SQLite's limit on bound values.
const CHUNK: usize = 200;

/// Creates the batch and all its tasks (each with its first log entry) in one transaction: all or nothing.
/// Tasks get creation times one microsecond apart, so that they list in the order given. With an
/// idempotency key already used, answers the batch made then (same request) or a conflict (another one).
pub async fn create(
    db: &DatabaseConnection,
    new: NewBatch,
) -> StoreResult<(batch::Model, Vec<Uuid>, Created)> {
    if let Some((key, hash)) = &new.idempotency
        && let Some(found) = by_idempotency_key(db, key, hash, new.created_by.as_deref()).await?
    {
        return Ok(found);
    }
    let n = new.tasks.len();
    let txn = db.begin().await?;
    admit(&txn, n as u64, new.created_by.as_deref(), &new.admission).await?;
    let at = now();
    let id = Uuid::new_v4();
    let inserted = batch::ActiveModel {
        id: Set(id),
        name: Set(new.name.clone()),
        created_by: Set(new.created_by.clone()),
        created_at: Set(at),
        idempotency_key: Set(new.idempotency.as_ref().map(|(k, _)| k.clone())),
        request_hash: Set(new.idempotency.as_ref().map(|(_, h)| h.clone())),
        task_count: Set(n as i32),
    }
    .insert(&txn)
    .await;
    let b = match inserted {
        Ok(b) => b,
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            // Another request with the same key won the race: answer what it made.
            drop(txn);
            if let Some((key, hash)) = &new.idempotency
                && let Some(found) =
                    by_idempotency_key(db, key, hash, new.created_by.as_deref()).await?
            {
                return Ok(found);
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for (chunk_no, chunk) in new.tasks.chunks(CHUNK).enumerate() {
        let base = chunk_no * CHUNK;
        let rows = chunk.iter().enumerate().map(|(i, t)| {
            let created = at + chrono::Duration::microseconds((base + i) as i64);
            let mut m = pending_task(
                ids[base + i],
                &t.problem_id,
                t.parameters.clone(),
                t.priority,
                created,
            );
            m.created_by = Set(new.created_by.clone());
            m.batch_id = Set(Some(id));
            m
        });
        task::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await?;
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| task_log::ActiveModel {
                task_id: Set(ids[base + i]),
                timestamp: Set(at),
                level: Set(LogLevel::Info),
                severity: Set(LogLevel::Info.severity()),
                message: Set("Task created".to_owned()),
                context: Set(Some(
                    json!({"event": "created", "priority": t.priority, "batch_id": id}),
                )),
                attempt: Set(None),
                status: Set(Some(TaskStatus::Pending)),
                ..Default::default()
            });
        task_log::Entity::insert_many(entries)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    admitted(&new.admission, n as u64, new.created_by.as_deref());
    Ok((b, ids, Created::New))
}

async fn by_idempotency_key(
    db: &DatabaseConnection,
    key: &str,
    hash: &str,
    owner: Option<&str>,
) -> StoreResult<Option<(batch::Model, Vec<Uuid>, Created)>> {
    let Some(b) = batch::Entity::find()
        .filter(batch::Column::IdempotencyKey.eq(key))
        .filter(match owner {
            Some(o) => batch::Column::CreatedBy.eq(o),
            None => batch::Column::CreatedBy.is_null(),
        })
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if b.request_hash.as_deref() != Some(hash) {
        return Err(StoreError::Conflict {
            kind: "idempotency_key_reused",
            detail: format!(
                "Idempotency-Key `{key}` was used for another batch request (batch {})",
                b.id
            ),
        });
    }
    let ids = task_ids(db, b.id).await?;
    Ok(Some((b, ids, Created::Existing)))
}

/// A batch's task ids, in the order they were given.
pub async fn task_ids(db: &DatabaseConnection, id: Uuid) -> StoreResult<Vec<Uuid>> {
    Ok(task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .filter(task::Column::BatchId.eq(id))
        .order_by_asc(task::Column::CreatedAt)
        .order_by_asc(task::Column::Id)
        .into_tuple()
        .all(db)
        .await?)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> StoreResult<batch::Model> {
    batch::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::BatchNotFound(id))
}

/// Batches, newest first.
pub async fn list(
    db: &DatabaseConnection,
    limit: u64,
    offset: u64,
) -> StoreResult<Vec<batch::Model>> {
    Ok(batch::Entity::find()
        .order_by_desc(batch::Column::CreatedAt)
        .order_by_desc(batch::Column::Id)
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

/// What the progress of a batch is made of, by status.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub counts: HashMap<TaskStatus, i64>,
    pub succeeded: i64,
    pub started_at: Option<DateTime<Utc>>,
    pub last_completed_at: Option<DateTime<Utc>>,
}

/// The SQL that tells whether a task's result says `success: true`, per backend.
pub fn success_sql(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => "COALESCE((result->>'success') = 'true', FALSE)",
        _ => "COALESCE(json_extract(result, '$.success') = 1, 0)",
    }
}

/// The progress of each of these batches: one grouped read over their tasks.
pub async fn progress(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> StoreResult<HashMap<Uuid, Progress>> {
    let mut out: HashMap<Uuid, Progress> =
        ids.iter().map(|id| (*id, Progress::default())).collect();
    if ids.is_empty() {
        return Ok(out);
    }
    let backend = db.get_database_backend();
    let marks: Vec<String> = (1..=ids.len())
        .map(|i| match backend {
            DatabaseBackend::Postgres => format!("${i}"),
            _ => "?".to_owned(),
        })
        .collect();
    let sql = format!(
        "SELECT batch_id, status, COUNT(*) AS n, SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS ok, \
         MIN(started_at) AS started, MAX(completed_at) AS completed \
         FROM tasks WHERE batch_id IN ({}) GROUP BY batch_id, status",
        success_sql(backend),
        marks.join(", ")
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            ids.iter().map(|id| (*id).into()),
        ))
        .await?;
    for r in rows {
        let batch: Uuid = r.try_get("", "batch_id")?;
        let status: String = r.try_get("", "status")?;
        let n: i64 = r.try_get("", "n")?;
        let ok: Option<i64> = r.try_get("", "ok")?;
        let started: Option<DateTime<Utc>> = r.try_get("", "started")?;
        let completed: Option<DateTime<Utc>> = r.try_get("", "completed")?;
        let Ok(status) = status.parse::<TaskStatus>() else {
            continue;
        };
        let p = out.entry(batch).or_default();
        *p.counts.entry(status).or_default() += n;
        if status == TaskStatus::Completed {
            p.succeeded += ok.unwrap_or(0);
        }
        p.started_at = match (p.started_at, started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        p.last_completed_at = p.last_completed_at.max(completed);
    }
    Ok(out)
}

/// A batch as the API shows it.
pub fn to_api(b: batch::Model, p: Progress) -> api::Batch {
    let c = |s: TaskStatus| p.counts.get(&s).copied().unwrap_or(0);
    let counts = api::StatusCounts {
        pending: c(TaskStatus::Pending),
        running: c(TaskStatus::Running),
        completed: c(TaskStatus::Completed),
        failed: c(TaskStatus::Failed),
        timeout: c(TaskStatus::Timeout),
        cancelled: c(TaskStatus::Cancelled),
    };
    let finished = counts.completed + counts.failed + counts.timeout + counts.cancelled;
    let total = i64::from(b.task_count);
    api::Batch {
        id: b.id,
        name: b.name,
        created_by: b.created_by,
        created_at: b.created_at,
        task_count: total,
        finished,
        progress: if total > 0 {
            finished as f64 / total as f64
        } else {
            1.0
        },
        succeeded: p.succeeded,
        success_rate: (finished > 0).then(|| p.succeeded as f64 / finished as f64),
        started_at: p.started_at,
        finished_at: if finished == total {
            p.last_completed_at
        } else {
            None
        },
        counts,
    }
}

/// Cancels every task of the batch that is pending or running, each in its own transaction (a task that
/// finishes meanwhile keeps its outcome). Returns how many were cancelled.
pub async fn cancel(db: &DatabaseConnection, id: Uuid) -> StoreResult<i64> {
    get(db, id).await?;
    let open: Vec<Uuid> = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .filter(task::Column::BatchId.eq(id))
        .filter(task::Column::Status.is_in([TaskStatus::Pending, TaskStatus::Running]))
        .into_tuple()
        .all(db)
        .await?;
    let mut cancelled = 0;
    for task_id in open {
        let txn = db.begin().await?;
        let entry = Entry {
            level: LogLevel::Info,
            message: "Task cancelled (its batch was cancelled)".to_owned(),
            context: json!({"event": "cancelled", "batch_id": id}),
            attempt: None,
        };
        let change = Change::End {
            status: TaskStatus::Cancelled,
            result: None,
        };
        if transition::apply(&txn, Guard::Task(task_id), change, entry)
            .await?
            .is_some()
        {
            cancelled += 1;
        }
        txn.commit().await?;
    }
    Ok(cancelled)
}

/// One problem's finished and succeeded runs in a batch.
#[derive(Debug, Clone, Default)]
pub struct ProblemFigures {
    pub finished: i64,
    pub succeeded: i64,
}

/// Per problem of a batch: its finished runs and those that succeeded (completed with `success: true`), in
/// problem order; one grouped read.
pub async fn per_problem(
    db: &DatabaseConnection,
    id: Uuid,
) -> StoreResult<std::collections::BTreeMap<String, ProblemFigures>> {
    let backend = db.get_database_backend();
    let mark = match backend {
        DatabaseBackend::Postgres => "$1",
        _ => "?1",
    };
    let sql = format!(
        "SELECT problem_id, \
           SUM(CASE WHEN status IN ('completed', 'failed', 'timeout', 'cancelled') THEN 1 ELSE 0 END) AS finished, \
           SUM(CASE WHEN status = 'completed' AND {} THEN 1 ELSE 0 END) AS ok \
         FROM tasks WHERE batch_id = {mark} GROUP BY problem_id",
        success_sql(backend)
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        let problem: String = r.try_get("", "problem_id")?;
        let finished: Option<i64> = r.try_get("", "finished")?;
        let ok: Option<i64> = r.try_get("", "ok")?;
        out.insert(
            problem,
            ProblemFigures {
                finished: finished.unwrap_or(0),
                succeeded: ok.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// The run durations (seconds) of a batch's finished tasks that ran: the runner's measure
/// (`metrics.duration_seconds`), else completion minus start. Only those columns are read.
pub async fn durations(db: &DatabaseConnection, id: Uuid) -> StoreResult<Vec<f64>> {
    let backend = db.get_database_backend();
    let (measured, mark) = match backend {
        DatabaseBackend::Postgres => (
            "CASE WHEN jsonb_typeof(result->'metrics'->'duration_seconds') = 'number' \
             THEN (result->'metrics'->>'duration_seconds')::float8 END",
            "$1",
        ),
        _ => (
            "CASE WHEN json_type(result, '$.metrics.duration_seconds') IN ('integer', 'real') \
             THEN CAST(json_extract(result, '$.metrics.duration_seconds') AS REAL) END",
            "?1",
        ),
    };
    let sql = format!(
        "SELECT {measured} AS measured, started_at, completed_at FROM tasks \
         WHERE batch_id = {mark} AND completed_at IS NOT NULL AND started_at IS NOT NULL"
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let measured: Option<f64> = r.try_get("", "measured")?;
        let started: DateTime<Utc> = r.try_get("", "started_at")?;
        let completed: DateTime<Utc> = r.try_get("", "completed_at")?;
        out.push(measured.unwrap_or((completed - started).num_milliseconds() as f64 / 1000.0));
    }
    Ok(out)
}
