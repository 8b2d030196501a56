//! Counts for `/health`, `/metrics` and the dashboard's overview.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use task_executor_shared::TaskStatus;

use super::{StoreResult, entity::task};

#[derive(FromQueryResult)]
struct StatusCount {
    status: TaskStatus,
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
    let mut out: HashMap<TaskStatus, i64> = TaskStatus::all().map(|s| (s, 0)).collect();
    for r in rows {
        out.insert(r.status, r.n);
    }
    Ok(out)
}

/// The live part of the queue: pending and running tasks, and when the oldest pending one was created.
pub struct LiveQueue {
    pub pending: u64,
    pub running: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Reads [`LiveQueue`]. Both states are served by indexes and stay small, however many finished tasks the
/// table keeps.
pub async fn live_queue(db: &DatabaseConnection) -> StoreResult<LiveQueue> {
    let count = |status: TaskStatus| {
        task::Entity::find()
            .filter(task::Column::Status.eq(status))
            .count(db)
    };
    let pending = count(TaskStatus::Pending).await?;
    let running = count(TaskStatus::Running).await?;
    let oldest: Option<Option<DateTime<Utc>>> = task::Entity::find()
        .select_only()
        .column_as(Expr::col(task::Column::CreatedAt).min(), "oldest")
        .filter(task::Column::Status.eq(TaskStatus::Pending))
        .into_tuple()
        .one(db)
        .await?;
    Ok(LiveQueue {
        pending,
        running,
        oldest_pending: oldest.flatten(),
    })
}

/// Tasks that finished in one minute, by final state.
#[derive(Debug, Clone, FromQueryResult)]
pub struct MinuteCount {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub status: TaskStatus,
    pub n: i64,
}

/// Tasks finished since `since`, counted per minute and final state (one grouped read over the index on
/// `completed_at`).
pub async fn finished_per_minute(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
) -> StoreResult<Vec<MinuteCount>> {
    let minute = if super::is_postgres(db) {
        "CAST(FLOOR(EXTRACT(EPOCH FROM completed_at) / 60) AS BIGINT)"
    } else {
        "CAST(strftime('%s', completed_at) AS INTEGER) / 60"
    };
    let param = if super::is_postgres(db) { "$1" } else { "?" };
    let sql = format!(
        "SELECT {minute} AS minute, status, COUNT(*) AS n FROM tasks \
         WHERE completed_at IS NOT NULL AND completed_at >= {param} GROUP BY 1, 2"
    );
    Ok(
        MinuteCount::find_by_statement(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [since.into()],
        ))
        .all(db)
        .await?,
    )
}

/// The newest tasks that ended `failed` or `timeout` since `since`, newest first.
pub async fn recent_failures(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
    limit: u64,
) -> StoreResult<Vec<task::Model>> {
    Ok(task::Entity::find()
        .filter(task::Column::CompletedAt.gte(since))
        .filter(task::Column::Status.is_in([TaskStatus::Failed, TaskStatus::Timeout]))
        .order_by_desc(task::Column::CompletedAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// When the oldest pending task was created (through the partial index of pending tasks).
pub async fn oldest_pending(db: &DatabaseConnection) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(task::Entity::find()
        .select_only()
        .column(task::Column::CreatedAt)
        .filter(task::Column::Status.eq(TaskStatus::Pending))
        .order_by_asc(task::Column::CreatedAt)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?)
}
