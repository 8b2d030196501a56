//! Workers: the registry, and how a worker's status is derived from its heartbeat and the tasks it holds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, Set, SqlErr, TransactionTrait,
};
use task_executor_shared::{TaskStatus, WorkerStatus, api};

use super::{
    StoreError, StoreResult,
    entity::{task, worker},
    now,
    queue::LeasePolicy,
};

/// The status a client sees: `offline` when the worker said so or its heartbeat is older than the timeout,
/// `stopping` while an internal worker winds down, else `busy` while it holds a running task, else `idle`.
pub fn derive_status(
    w: &worker::Model,
    running: usize,
    now: DateTime<Utc>,
    heartbeat_timeout: chrono::Duration,
) -> WorkerStatus {
    let stored = w.status;
    if stored == WorkerStatus::Offline || w.last_heartbeat + heartbeat_timeout < now {
        WorkerStatus::Offline
    } else if stored == WorkerStatus::Stopping {
        WorkerStatus::Stopping
    } else if stored == WorkerStatus::Degraded {
        WorkerStatus::Degraded
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
        .filter(task::Column::Status.eq(TaskStatus::Running))
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

/// What [`register`] did.
pub struct Registered {
    pub worker: worker::Model,
    /// False when the id was already known (a restarted worker coming back).
    pub created: bool,
    /// Tasks the worker still held, put back in the queue (or failed, out of attempts).
    pub released: Vec<task::Model>,
}

/// Registers a worker, or re-registers a known one: its capabilities are replaced, it is online again, and
/// any task it still held is released, since the process that ran it is gone. An id that a live process of
/// another instance holds (heartbeat within the timeout, not offline) is refused: `worker_id_in_use`.
#[tracing::instrument(skip(db, req, policy), fields(worker_id = %req.worker_id))]
pub async fn register(
    db: &DatabaseConnection,
    req: &api::RegisterWorkerRequest,
    policy: &LeasePolicy,
) -> StoreResult<Registered> {
    let max_attempts = policy.max_attempts;
    let at = now();
    let id = req.worker_id.as_str();
    let txn = db.begin().await?;
    let existing = worker::Entity::find_by_id(id).one(&txn).await?;
    if let Some(w) = &existing
        && let Some(holder) = &w.instance_id
        && req.instance_id.as_ref().map(|i| i.as_str()) != Some(holder.as_str())
        && w.status != WorkerStatus::Offline
        && w.last_heartbeat + policy.heartbeat_timeout > at
    {
        return Err(StoreError::Conflict {
            kind: "worker_id_in_use",
            detail: format!(
                "worker id {id} is in use by another live process (instance {holder}, last heartbeat {}): give \
                 this worker an id of its own (WORKER_ID, or INTERNAL_WORKER_PREFIX for an API server's \
                 internal workers), or stop the other one",
                w.last_heartbeat
            ),
        });
    }
    let mut model = worker::ActiveModel {
        id: Set(id.to_owned()),
        backend_type: Set(req.backend_type.to_string()),
        status: Set(WorkerStatus::Idle),
        max_parallel_tasks: Set(req.capabilities.max_parallel_tasks),
        supported_problems: Set(serde_json::json!(req.capabilities.supported_problems)),
        metadata: Set(req.metadata.clone()),
        last_heartbeat: Set(at),
        instance_id: Set(req.instance_id.as_ref().map(|i| i.to_string())),
        status_reason: Set(None),
        ..Default::default()
    };
    let created = existing.is_none();
    // Tasks first, then the worker row: the same lock order as a report (task row, then worker counters),
    // so a re-registration and a report racing on PostgreSQL cannot deadlock.
    let mut released = Vec::new();
    if !created {
        let held = task::Entity::find()
            .filter(task::Column::WorkerId.eq(id))
            .filter(task::Column::Status.eq(TaskStatus::Running))
            .all(&txn)
            .await?;
        for t in held {
            let reason = format!("worker {id} registered again (restarted) while holding the task");
            if let Some(changed) =
                super::queue::release_lost(&txn, &t, &reason, max_attempts, None).await?
            {
                released.push(changed);
            }
        }
    }
    let worker = if created {
        model.registered_at = Set(at);
        model.tasks_completed = Set(0);
        model.tasks_failed = Set(0);
        match model.insert(&txn).await {
            Ok(w) => w,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(StoreError::Conflict {
                    kind: "worker_registration_conflict",
                    detail: format!("worker {id} registered concurrently; retry"),
                });
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        model.update(&txn).await?
    };
    txn.commit().await?;
    Ok(Registered {
        worker,
        created,
        released,
    })
}

pub async fn get(db: &DatabaseConnection, id: &str) -> StoreResult<worker::Model> {
    worker::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_owned()))
}

/// The wire form of a worker.
pub fn to_api(w: worker::Model, status: WorkerStatus, held: Vec<uuid::Uuid>) -> api::Worker {
    let supported_problems = serde_json::from_value(w.supported_problems).unwrap_or_default();
    api::Worker {
        status_reason: (status == WorkerStatus::Degraded)
            .then(|| w.status_reason.clone())
            .flatten(),
        status,
        current_task_ids: held,
        capabilities: api::WorkerCapabilities {
            max_parallel_tasks: w.max_parallel_tasks,
            supported_problems,
        },
        id: w.id,
        backend_type: w.backend_type,
        last_heartbeat: w.last_heartbeat,
        registered_at: w.registered_at,
        metadata: w.metadata,
        tasks_completed: w.tasks_completed,
        tasks_failed: w.tasks_failed,
    }
}

/// One worker with its derived status and held tasks.
pub async fn one_with_status(
    db: &DatabaseConnection,
    id: &str,
    heartbeat_timeout: chrono::Duration,
) -> StoreResult<(worker::Model, WorkerStatus, Vec<uuid::Uuid>)> {
    let w = get(db, id).await?;
    let held: Vec<uuid::Uuid> = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .filter(task::Column::WorkerId.eq(id))
        .filter(task::Column::Status.eq(TaskStatus::Running))
        .into_tuple()
        .all(db)
        .await?;
    let status = derive_status(&w, held.len(), now(), heartbeat_timeout);
    Ok((w, status, held))
}

/// The first of `ids` that a live process of another instance holds (not offline, heartbeat within
/// `heartbeat_timeout`), with that instance.
pub async fn held_by_another(
    db: &DatabaseConnection,
    ids: &[String],
    instance_id: &str,
    heartbeat_timeout: chrono::Duration,
) -> StoreResult<Option<(String, String)>> {
    let live = worker::Entity::find()
        .filter(worker::Column::Id.is_in(ids.to_vec()))
        .filter(worker::Column::Status.ne(WorkerStatus::Offline))
        .filter(worker::Column::LastHeartbeat.gt(now() - heartbeat_timeout))
        .order_by_asc(worker::Column::Id)
        .all(db)
        .await?;
    Ok(live.into_iter().find_map(|w| match w.instance_id {
        Some(holder) if holder != instance_id => Some((w.id, holder)),
        _ => None,
    }))
}

/// Marks an internal worker that finishes its task before it goes (`stopping`).
pub async fn set_stopping(db: &DatabaseConnection, id: &str) -> StoreResult<()> {
    worker::Entity::update_many()
        .col_expr(
            worker::Column::Status,
            sea_orm::sea_query::Expr::value(WorkerStatus::Stopping),
        )
        .filter(worker::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}
