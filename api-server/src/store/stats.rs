//! Counts for `/health` and `/metrics`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QuerySelect,
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
