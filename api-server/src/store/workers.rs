//! Workers: the registry, and how a worker's status is derived from its heartbeat and the tasks it holds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter, QuerySelect,
};
use task_executor_shared::{TaskStatus, WorkerStatus};

use super::{
    StoreResult,
    entity::{task, worker},
};

/// The status a client sees: `offline` when the worker said so or its heartbeat is older than the timeout,
/// `stopping` while an internal worker winds down, else `busy` while it holds a running task, else `idle`.
pub fn derive_status(
    w: &worker::Model,
    running: usize,
    now: DateTime<Utc>,
    heartbeat_timeout: chrono::Duration,
) -> WorkerStatus {
    let stored = w.status.parse().unwrap_or(WorkerStatus::Offline);
    if stored == WorkerStatus::Offline || w.last_heartbeat + heartbeat_timeout < now {
        WorkerStatus::Offline
    } else if stored == WorkerStatus::Stopping {
        WorkerStatus::Stopping
    } else if running > 0 {
        WorkerStatus::Busy
    } else {
        WorkerStatus::Idle
    }
}

#[derive(FromQueryResult)]
struct Held {
    id: uuid::Uuid,
    worker_id: Option<String>,
}

/// The running tasks held by each worker.
pub async fn running_by_worker(
    db: &DatabaseConnection,
) -> StoreResult<HashMap<String, Vec<uuid::Uuid>>> {
    let rows = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .column(task::Column::WorkerId)
        .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
        .filter(task::Column::WorkerId.is_not_null())
        .into_model::<Held>()
        .all(db)
        .await?;
    let mut out: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for r in rows {
        if let Some(w) = r.worker_id {
            out.entry(w).or_default().push(r.id);
        }
    }
    Ok(out)
}

/// Every worker with its derived status and held tasks, in id order.
pub async fn list_with_status(
    db: &DatabaseConnection,
    heartbeat_timeout: chrono::Duration,
) -> StoreResult<Vec<(worker::Model, WorkerStatus, Vec<uuid::Uuid>)>> {
    let workers = worker::Entity::find().all(db).await?;
    let mut held = running_by_worker(db).await?;
    let at = super::now();
    let mut out: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let tasks = held.remove(&w.id).unwrap_or_default();
            let status = derive_status(&w, tasks.len(), at, heartbeat_timeout);
            (w, status, tasks)
        })
        .collect();
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    Ok(out)
}
