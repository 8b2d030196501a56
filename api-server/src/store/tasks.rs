//! Tasks as researchers see them: creation (idempotent), lookup, listing, cancellation, logs, queue counts.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde_json::Value;
use task_executor_shared::{LogLevel, TaskStatus, api};
use uuid::Uuid;

use super::{
    StoreError, StoreResult,
    entity::{task, task_log},
    now,
};

/// A task to insert, its parameters already made effective.
pub struct NewTask {
    pub problem_id: String,
    pub parameters: Value,
    pub priority: i32,
    /// The client's `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// Whether [`create`] made a new task or found the one an earlier request with the same key made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// Creates a task and its first log entry, in one transaction. With an idempotency key already used, answers
/// the task made then when the request is the same, or a conflict when it is not.
#[tracing::instrument(skip_all, fields(problem_id = %new.problem_id))]
pub async fn create(db: &DatabaseConnection, new: NewTask) -> StoreResult<(task::Model, Created)> {
    if let Some((key, hash)) = &new.idempotency
        && let Some(found) = by_idempotency_key(db, key, hash).await?
    {
        return Ok((found, Created::Existing));
    }
    let at = now();
    let model = task::ActiveModel {
        id: Set(Uuid::new_v4()),
        problem_id: Set(new.problem_id.clone()),
        status: Set(TaskStatus::Pending.as_str().to_owned()),
        priority: Set(new.priority),
        parameters: Set(new.parameters.clone()),
        result: Set(None),
        worker_id: Set(None),
        attempt: Set(0),
        lease_expires_at: Set(None),
        idempotency_key: Set(new.idempotency.as_ref().map(|(k, _)| k.clone())),
        request_hash: Set(new.idempotency.as_ref().map(|(_, h)| h.clone())),
        created_at: Set(at),
        updated_at: Set(at),
        started_at: Set(None),
        completed_at: Set(None),
    };
    let txn = db.begin().await?;
    let inserted = match model.insert(&txn).await {
        Ok(m) => m,
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            // Another request with the same key won the race: answer what it made.
            drop(txn);
            if let Some((key, hash)) = &new.idempotency
                && let Some(found) = by_idempotency_key(db, key, hash).await?
            {
                return Ok((found, Created::Existing));
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    append_log(
        &txn,
        inserted.id,
        None,
        LogLevel::Info,
        "Task created",
        Some(serde_json::json!({"event": "created", "priority": new.priority})),
    )
    .await?;
    txn.commit().await?;
    Ok((inserted, Created::New))
}

async fn by_idempotency_key(
    db: &DatabaseConnection,
    key: &str,
    hash: &str,
) -> StoreResult<Option<task::Model>> {
    let found = task::Entity::find()
        .filter(task::Column::IdempotencyKey.eq(key))
        .one(db)
        .await?;
    match found {
        Some(t) if t.request_hash.as_deref() == Some(hash) => Ok(Some(t)),
        Some(t) => Err(StoreError::Conflict {
            kind: "idempotency_key_reused",
            detail: format!(
                "Idempotency-Key was already used for task {} with a different request body",
                t.id
            ),
        }),
        None => Ok(None),
    }
}

pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> StoreResult<task::Model> {
    task::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::TaskNotFound(id))
}

/// Filters of `GET /api/v1/tasks`.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub status: Option<TaskStatus>,
    pub problem_id: Option<String>,
    pub worker_id: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

/// Tasks matching the filter, newest first.
pub async fn list(db: &DatabaseConnection, f: &ListFilter) -> StoreResult<Vec<task::Model>> {
    let mut q = task::Entity::find();
    if let Some(s) = f.status {
        q = q.filter(task::Column::Status.eq(s.as_str()));
    }
    if let Some(p) = &f.problem_id {
        q = q.filter(task::Column::ProblemId.eq(p.as_str()));
    }
    if let Some(w) = &f.worker_id {
        q = q.filter(task::Column::WorkerId.eq(w.as_str()));
    }
    Ok(q.order_by_desc(task::Column::CreatedAt)
        .order_by_desc(task::Column::Id)
        .limit(f.limit)
        .offset(f.offset)
        .all(db)
        .await?)
}

/// Cancels a pending or running task. A running task keeps its worker, which learns of the cancellation from
/// its next heartbeat or report.
#[tracing::instrument(skip(db), fields(task_id = %id))]
pub async fn cancel(db: &DatabaseConnection, id: Uuid) -> StoreResult<task::Model> {
    let at = now();
    let txn = db.begin().await?;
    let sources: Vec<&str> = TaskStatus::sources_of(TaskStatus::Cancelled)
        .into_iter()
        .map(TaskStatus::as_str)
        .collect();
    let updated = task::Entity::update_many()
        .col_expr(
            task::Column::Status,
            Expr::value(TaskStatus::Cancelled.as_str()),
        )
        .col_expr(task::Column::UpdatedAt, Expr::value(at))
        .col_expr(task::Column::CompletedAt, Expr::value(at))
        .col_expr(
            task::Column::LeaseExpiresAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::Status.is_in(sources))
        .exec_with_returning(&txn)
        .await?;
    let Some(task) = updated.into_iter().next() else {
        drop(txn);
        let existing = get(db, id).await?;
        return Err(StoreError::Conflict {
            kind: "task_not_cancellable",
            detail: format!(
                "task {id} is already {} and cannot be cancelled",
                existing.status
            ),
        });
    };
    append_log(
        &txn,
        id,
        None,
        LogLevel::Info,
        "Task cancelled",
        Some(serde_json::json!({"event": "cancelled", "worker_id": task.worker_id})),
    )
    .await?;
    txn.commit().await?;
    Ok(task)
}

/// Appends one log entry written by the service itself (a state change).
pub async fn append_log(
    conn: &impl ConnectionTrait,
    task_id: Uuid,
    attempt: Option<i32>,
    level: LogLevel,
    message: &str,
    context: Option<Value>,
) -> Result<(), DbErr> {
    task_log::Entity::insert(task_log::ActiveModel {
        task_id: Set(task_id),
        timestamp: Set(now()),
        level: Set(level.as_str().to_owned()),
        severity: Set(level.severity()),
        message: Set(message.to_owned()),
        context: Set(context),
        attempt: Set(attempt),
        ..Default::default()
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Appends a batch of entries sent by a worker, in one statement.
pub async fn append_logs(
    conn: &impl ConnectionTrait,
    task_id: Uuid,
    attempt: i32,
    entries: Vec<api::NewLogEntry>,
) -> Result<u64, DbErr> {
    if entries.is_empty() {
        return Ok(0);
    }
    let at = now();
    let n = entries.len() as u64;
    let rows = entries.into_iter().map(|e| task_log::ActiveModel {
        task_id: Set(task_id),
        timestamp: Set(e
            .timestamp
            .map(|t| chrono::SubsecRound::trunc_subsecs(t, 6))
            .unwrap_or(at)),
        level: Set(e.level.as_str().to_owned()),
        severity: Set(e.level.severity()),
        message: Set(e.message),
        context: Set(e.context),
        attempt: Set(Some(attempt)),
        ..Default::default()
    });
    task_log::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(n)
}

/// A task's log in time order, from `min` severity up, at most `limit` entries.
pub async fn logs(
    db: &DatabaseConnection,
    id: Uuid,
    min: Option<LogLevel>,
    limit: u64,
) -> StoreResult<Vec<task_log::Model>> {
    get(db, id).await?;
    let mut q = task_log::Entity::find().filter(task_log::Column::TaskId.eq(id));
    if let Some(min) = min {
        q = q.filter(task_log::Column::Severity.gte(min.severity()));
    }
    Ok(q.order_by_asc(task_log::Column::Timestamp)
        .order_by_asc(task_log::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

#[derive(FromQueryResult)]
struct StatusCount {
    status: String,
    n: i64,
}

/// How many tasks are in each state (every state present, zero where none).
pub async fn counts_by_status(db: &DatabaseConnection) -> StoreResult<HashMap<TaskStatus, i64>> {
    let rows = task::Entity::find()
        .select_only()
        .column(task::Column::Status)
        .column_as(Expr::col(task::Column::Id).count(), "n")
        .group_by(task::Column::Status)
        .into_model::<StatusCount>()
        .all(db)
        .await?;
    let mut out: HashMap<TaskStatus, i64> = TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for r in rows {
        if let Ok(s) = r.status.parse() {
            out.insert(s, r.n);
        }
    }
    Ok(out)
}

impl task::Model {
    /// The status column as the enum. Only this service writes it; an unknown value is reported as failed.
    pub fn task_status(&self) -> TaskStatus {
        self.status.parse().unwrap_or_else(|_| {
            tracing::error!(task_id = %self.id, status = %self.status, "unknown task status in the database");
            TaskStatus::Failed
        })
    }
}

fn as_object(v: &Value) -> api::JsonObject {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => api::JsonObject::new(),
    }
}

impl From<task::Model> for api::Task {
    fn from(m: task::Model) -> Self {
        api::Task {
            status: m.task_status(),
            parameters: as_object(&m.parameters),
            id: m.id,
            problem_id: m.problem_id,
            priority: m.priority,
            worker_id: m.worker_id,
            result: m.result,
            attempt: m.attempt,
            lease_expires_at: m.lease_expires_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            started_at: m.started_at,
            completed_at: m.completed_at,
        }
    }
}

impl From<task::Model> for api::TaskSummary {
    fn from(m: task::Model) -> Self {
        api::TaskSummary {
            status: m.task_status(),
            id: m.id,
            problem_id: m.problem_id,
            priority: m.priority,
            worker_id: m.worker_id,
            attempt: m.attempt,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<task_log::Model> for api::LogEntry {
    fn from(m: task_log::Model) -> Self {
        api::LogEntry {
            timestamp: m.timestamp,
            level: m.level.parse().unwrap_or(LogLevel::Info),
            message: m.message,
            context: m.context,
            attempt: m.attempt,
        }
    }
}
