//! Retention: finished tasks (and their logs) older than the retention period are deleted, a batch at a time,
//! so that the tables the hot paths read stay small however long the service runs. Never a pending or running
//! task: only those in a final state whose `completed_at` is before the cut-off (read through the partial index
//! on `completed_at`). Batches left without tasks go with them.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, Query},
};
use task_executor_shared::TaskStatus;
use uuid::Uuid;

use super::{
    StoreResult,
    entity::{batch, task, task_log},
};

/// What one [`prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub log_entries: u64,
    pub batches: u64,
}

/// Deletes up to `batches` × `batch_size` finished tasks that ended before `cutoff`, their logs, and the
/// batches created before `cutoff` that no task belongs to any more; one transaction per batch of tasks.
pub async fn prune(
    db: &DatabaseConnection,
    cutoff: DateTime<Utc>,
    batch_size: u64,
    batches: u32,
) -> StoreResult<Pruned> {
    let finished: Vec<TaskStatus> = TaskStatus::all().filter(|s| s.is_terminal()).collect();
    let mut out = Pruned::default();
    for _ in 0..batches {
        let ids: Vec<Uuid> = task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(task::Column::CompletedAt.lt(cutoff))
            .filter(task::Column::Status.is_in(finished.clone()))
            .order_by_asc(task::Column::CompletedAt)
            .limit(batch_size)
            .into_tuple()
            .all(db)
            .await?;
        if ids.is_empty() {
            break;
        }
        let txn = db.begin().await?;
        let logs = task_log::Entity::delete_many()
            .filter(task_log::Column::TaskId.is_in(ids.clone()))
            .exec(&txn)
            .await?;
        // Still finished and still old (a final state is final; the condition says so to the reader).
        let tasks = task::Entity::delete_many()
            .filter(task::Column::Id.is_in(ids.clone()))
            .filter(task::Column::CompletedAt.lt(cutoff))
            .filter(task::Column::Status.is_in(finished.clone()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        out.tasks += tasks.rows_affected;
        out.log_entries += logs.rows_affected;
        if (ids.len() as u64) < batch_size {
            break;
        }
    }
    let emptied = batch::Entity::delete_many()
        .filter(batch::Column::CreatedAt.lt(cutoff))
        .filter(
            Expr::col((batch::Entity, batch::Column::Id)).not_in_subquery(
                Query::select()
                    .column(task::Column::BatchId)
                    .from(task::Entity)
                    .and_where(Expr::col(task::Column::BatchId).is_not_null())
                    .to_owned(),
            ),
        )
        .exec(db)
        .await?;
    out.batches = emptied.rows_affected;
    Ok(out)
}
