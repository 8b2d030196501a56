//! A task's log: entries written by the service at each state change, and by workers as their runs go.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;
use task_executor_shared::{LogLevel, TaskStatus, api};
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
    status: Option<TaskStatus>,
) -> Result<(), DbErr> {
    task_log::Entity::insert(task_log::ActiveModel {
        status: Set(status),
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
        status: Set(None),
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

/// The newest entry's id (0 without any): where the event tail starts.
pub async fn max_id(db: &DatabaseConnection) -> StoreResult<i64> {
    let newest = task_log::Entity::find()
        .select_only()
        .column(task_log::Column::Id)
        .order_by_desc(task_log::Column::Id)
        .limit(1)
        .into_tuple::<i64>()
        .one(db)
        .await?;
    Ok(newest.unwrap_or(0))
}

/// What the event tail reads: entries with an id above `after`, oldest first — id, task, whether it records
/// a state change.
pub async fn written_after(
    db: &DatabaseConnection,
    after: i64,
    limit: u64,
) -> StoreResult<Vec<(i64, Uuid, bool)>> {
    let rows: Vec<(i64, Uuid, Option<TaskStatus>)> = task_log::Entity::find()
        .select_only()
        .column(task_log::Column::Id)
        .column(task_log::Column::TaskId)
        .column(task_log::Column::Status)
        .filter(task_log::Column::Id.gt(after))
        .order_by_asc(task_log::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, task, status)| (id, task, status.is_some()))
        .collect())
}

/// A task's entries with `after < id <= upto`, oldest first, at most `limit`.
pub async fn task_entries_between(
    db: &DatabaseConnection,
    task_id: Uuid,
    after: i64,
    upto: i64,
    limit: u64,
) -> StoreResult<Vec<task_log::Model>> {
    Ok(task_log::Entity::find()
        .filter(task_log::Column::TaskId.eq(task_id))
        .filter(task_log::Column::Id.gt(after))
        .filter(task_log::Column::Id.lte(upto))
        .order_by_asc(task_log::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The newest state-change entry of a task at or below `upto`: its id and status.
pub async fn last_status_at(
    db: &DatabaseConnection,
    task_id: Uuid,
    upto: i64,
) -> StoreResult<Option<(i64, TaskStatus)>> {
    let row: Option<(i64, Option<TaskStatus>)> = task_log::Entity::find()
        .select_only()
        .column(task_log::Column::Id)
        .column(task_log::Column::Status)
        .filter(task_log::Column::TaskId.eq(task_id))
        .filter(task_log::Column::Id.lte(upto))
        .filter(task_log::Column::Status.is_not_null())
        .order_by_desc(task_log::Column::Id)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    Ok(row.and_then(|(id, s)| s.map(|s| (id, s))))
}

/// The id of a task's newest entry at or below `upto` (0 without any).
pub async fn last_entry_at(db: &DatabaseConnection, task_id: Uuid, upto: i64) -> StoreResult<i64> {
    let id: Option<i64> = task_log::Entity::find()
        .select_only()
        .column(task_log::Column::Id)
        .filter(task_log::Column::TaskId.eq(task_id))
        .filter(task_log::Column::Id.lte(upto))
        .order_by_desc(task_log::Column::Id)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    Ok(id.unwrap_or(0))
}

/// State-change entries of every task (or of one batch's tasks) with `after < id <= upto`, oldest first.
pub async fn status_entries_between(
    db: &DatabaseConnection,
    after: i64,
    upto: i64,
    batch: Option<Uuid>,
    limit: u64,
) -> StoreResult<Vec<task_log::Model>> {
    let mut q = task_log::Entity::find()
        .filter(task_log::Column::Status.is_not_null())
        .filter(task_log::Column::Id.gt(after))
        .filter(task_log::Column::Id.lte(upto));
    if let Some(b) = batch {
        q = q.filter(
            task_log::Column::TaskId.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(task::Column::Id)
                    .from(task::Entity)
                    .and_where(task::Column::BatchId.eq(b))
                    .to_owned(),
            ),
        );
    }
    Ok(q.order_by_asc(task_log::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The last `n` entries of a task's log up to id `upto`, from `min` severity up, in id order (what the
/// dashboard shows before following the rest live from `upto`), and how many match in all.
pub async fn last_entries(
    db: &DatabaseConnection,
    id: Uuid,
    min: Option<LogLevel>,
    n: u64,
    upto: i64,
) -> StoreResult<(Vec<task_log::Model>, u64)> {
    let mut q = task_log::Entity::find()
        .filter(task_log::Column::TaskId.eq(id))
        .filter(task_log::Column::Id.lte(upto));
    if let Some(min) = min {
        q = q.filter(task_log::Column::Severity.gte(min.severity()));
    }
    let total = q.clone().count(db).await?;
    let mut rows = q
        .order_by_desc(task_log::Column::Id)
        .limit(n)
        .all(db)
        .await?;
    rows.reverse();
    Ok((rows, total))
}

/// A task's state changes (the entries that record one), in order: its timeline.
pub async fn state_changes(db: &DatabaseConnection, id: Uuid) -> StoreResult<Vec<task_log::Model>> {
    Ok(task_log::Entity::find()
        .filter(task_log::Column::TaskId.eq(id))
        .filter(task_log::Column::Status.is_not_null())
        .order_by_asc(task_log::Column::Id)
        .all(db)
        .await?)
}
