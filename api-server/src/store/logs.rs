//! A task's log: entries written by the service at each state change, and by workers as their runs go.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;
use task_executor_shared::{LogLevel, api};
use uuid::Uuid;

use super::{
    StoreError, StoreResult,
    entity::{task, task_log},
    now,
};

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
        level: Set(level),
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
        level: Set(e.level),
        severity: Set(e.level.severity()),
        message: Set(e.message.into()),
        context: Set(e.context),
        attempt: Set(Some(attempt)),
        ..Default::default()
    });
    task_log::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(n)
}

/// A task's log in time order, from `min` severity up: at most `limit` entries after skipping `offset`.
pub async fn list(
    db: &DatabaseConnection,
    id: Uuid,
    min: Option<LogLevel>,
    limit: u64,
    offset: u64,
) -> StoreResult<Vec<task_log::Model>> {
    if task::Entity::find_by_id(id).count(db).await? == 0 {
        return Err(StoreError::TaskNotFound(id));
    }
    let mut q = task_log::Entity::find().filter(task_log::Column::TaskId.eq(id));
    if let Some(min) = min {
        q = q.filter(task_log::Column::Severity.gte(min.severity()));
    }
    Ok(q.order_by_asc(task_log::Column::Timestamp)
        .order_by_asc(task_log::Column::Id)
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

impl From<task_log::Model> for api::LogEntry {
    fn from(m: task_log::Model) -> Self {
        api::LogEntry {
            timestamp: m.timestamp,
            level: m.level,
            message: m.message,
            context: m.context,
            attempt: m.attempt,
        }
    }
}
