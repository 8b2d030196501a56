//! What workers report: heartbeats (leases, cancellations, reconciliation), log entries, the outcome of a run
//! and the release of a run the worker stopped. Each is fenced by the run the worker holds.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;
use task_executor_shared::{LogLevel, TaskStatus, WorkerStatus, api};
use uuid::Uuid;

use super::{
    LeasePolicy,
    transition::{self, Change, Entry, Guard, RunRef},
};
use crate::store::{
    StoreError, StoreResult, absent_or_offline,
    entity::{task, worker},
    logs, now,
};

/// What a heartbeat changed.
pub struct HeartbeatOutcome {
    pub at: DateTime<Utc>,
    /// Reported tasks the worker must stop: cancelled, timed out, or no longer its own.
    pub cancel_task_ids: Vec<Uuid>,
    /// Tasks the server thought the worker held but the heartbeat did not list: released.
    pub released: Vec<task::Model>,
}

/// The status a heartbeat leaves on the worker's row: `offline`, `stopping` or `degraded` when it says so;
/// `stopping` when it was marked so (an internal worker scaled down); else `idle` (`busy` is derived from the
/// tasks held).
fn stored_status(said: WorkerStatus) -> Expr {
    match said {
        WorkerStatus::Offline | WorkerStatus::Stopping | WorkerStatus::Degraded => {
            Expr::value(said)
        }
        WorkerStatus::Idle | WorkerStatus::Busy => Expr::case(
            worker::Column::Status.eq(WorkerStatus::Stopping),
            WorkerStatus::Stopping,
        )
        .finally(WorkerStatus::Idle)
        .into(),
    }
}

/// Records a heartbeat: extends the lease of the reported tasks, tells which of them to stop, and releases
/// tasks the worker holds on the server but no longer reports (lost on the way to it) once past the claim
/// grace period.
#[tracing::instrument(skip(db, req, policy), fields(worker_id = %worker_id))]
pub async fn heartbeat(
    db: &DatabaseConnection,
    worker_id: &str,
    req: &api::HeartbeatRequest,
    policy: &LeasePolicy,
) -> StoreResult<HeartbeatOutcome> {
    let at = now();
    let mut reported: Vec<Uuid> = req.running_task_ids.clone();
    if let Some(id) = req.current_task_id
        && !reported.contains(&id)
    {
        reported.push(id);
    }
    let goodbye = req.status == WorkerStatus::Offline;
    let mut update = worker::Entity::update_many()
        .col_expr(worker::Column::LastHeartbeat, Expr::value(at))
        .col_expr(worker::Column::Status, stored_status(req.status))
        .col_expr(
            worker::Column::StatusReason,
            Expr::value(
                (req.status == WorkerStatus::Degraded)
                    .then(|| req.reason.as_ref().map(|r| r.to_string()))
                    .flatten(),
            ),
        )
        .filter(worker::Column::Id.eq(worker_id));
    if !goodbye {
        // Offline stays offline until the worker registers again.
        update = update.filter(worker::Column::Status.ne(WorkerStatus::Offline));
    }
    if update.exec(db).await?.rows_affected == 0 {
        return Err(absent_or_offline(db, worker_id).await);
    }
    if !reported.is_empty() {
        task::Entity::update_many()
            .col_expr(
                task::Column::LeaseExpiresAt,
                Expr::value(at + policy.heartbeat_timeout),
            )
            .filter(task::Column::Id.is_in(reported.clone()))
            .filter(task::Column::WorkerId.eq(worker_id))
            .filter(task::Column::Status.eq(TaskStatus::Running))
            .exec(db)
            .await?;
    }
    // The worker's running tasks (through the index on `(worker_id, status)`), and the reported ones it may no
    // longer hold (by id). Two reads, not one with OR: SQLite's planner scans the whole table for that.
    let mut rows = task::Entity::find()
        .filter(task::Column::WorkerId.eq(worker_id))
        .filter(task::Column::Status.eq(TaskStatus::Running))
        .all(db)
        .await?;
    let unseen: Vec<Uuid> = reported
        .iter()
        .copied()
        .filter(|id| !rows.iter().any(|t| t.id == *id))
        .collect();
    if !unseen.is_empty() {
        rows.extend(
            task::Entity::find()
                .filter(task::Column::Id.is_in(unseen))
                .all(db)
                .await?,
        );
    }
    let holds = |t: &task::Model| {
        t.worker_id.as_deref() == Some(worker_id) && t.status == TaskStatus::Running
    };
    let mut cancel_task_ids: Vec<Uuid> = reported
        .iter()
        .copied()
        .filter(|id| !rows.iter().any(|t| t.id == *id && holds(t)))
        .collect();
    cancel_task_ids.sort();
    let mut released = Vec::new();
    for t in rows
        .iter()
        .filter(|t| holds(t) && !reported.contains(&t.id))
    {
        // A claim answer may still be on its way to a worker that is staying; one that says goodbye runs
        // nothing it did not list.
        let held_since = t.started_at.unwrap_or(t.updated_at);
        if !goodbye && held_since + policy.claim_grace > at {
            continue;
        }
        // The worker never had the task (a claim answer that did not arrive, a long poll whose client went
        // away): the run did not happen, so it does not count as an attempt.
        let reason =
            format!("worker {worker_id} never received it (the claim was lost on the way)");
        let run = RunRef::of(t);
        if let Some(changed) =
            requeue_uncounted(db, t.id, run, &reason, "claim lost", policy).await?
        {
            released.push(changed);
        }
    }
    Ok(HeartbeatOutcome {
        at,
        cancel_task_ids,
        released,
    })
}

/// Why a report was refused: the task's state as it is now, turned into the error a worker sees.
async fn refusal(db: &impl ConnectionTrait, task_id: Uuid, run: RunRef<'_>) -> StoreError {
    let RunRef {
        worker_id,
        attempt,
        lease_id,
    } = run;
    let t = match task::Entity::find_by_id(task_id).one(db).await {
        Ok(Some(t)) => t,
        Ok(None) => return StoreError::TaskNotFound(task_id),
        Err(e) => return e.into(),
    };
    match worker::Entity::find_by_id(worker_id).one(db).await {
        Ok(Some(_)) => {}
        Ok(None) => return StoreError::WorkerNotFound(worker_id.to_owned()),
        Err(e) => return e.into(),
    }
    let status = t.status;
    let (kind, detail) = if t.worker_id.as_deref() != Some(worker_id)
        || status == TaskStatus::Pending
    {
        (
            "task_not_held",
            format!("task {task_id} is not held by worker {worker_id} (it is {status})"),
        )
    } else if t.attempt != attempt {
        (
            "stale_attempt",
            format!(
                "attempt {attempt} of task {task_id} is over; the current attempt is {}",
                t.attempt
            ),
        )
    } else if t.lease_id != lease_id {
        (
            "stale_attempt",
            format!(
                "the run of task {task_id} with this lease is over; the task was claimed again since"
            ),
        )
    } else if status == TaskStatus::Cancelled {
        ("task_cancelled", format!("task {task_id} was cancelled"))
    } else if status == TaskStatus::Timeout {
        ("task_timed_out", format!("task {task_id} timed out"))
    } else {
        (
            "task_finished",
            format!("task {task_id} is already {status}"),
        )
    };
    StoreError::Conflict { kind, detail }
}

/// Appends a batch of log entries from the worker that holds the run. A task's workers write at most
/// `policy.max_log_entries` entries: past that they are dropped and counted (an entry says so when the cap
/// is reached, another how many were dropped when the run ends). Answers how many were kept.
pub async fn report_logs(
    db: &DatabaseConnection,
    worker_id: &str,
    task_id: Uuid,
    req: api::ReportLogsRequest,
    policy: &LeasePolicy,
) -> StoreResult<u64> {
    let run = RunRef::reported(worker_id, req.attempt, req.lease_id);
    let mut entries = req.entries;
    let n = entries.len() as i64;
    let txn = db.begin().await?;
    // The fence and the count of entries so far, in one statement (the row stays locked until commit).
    let counted = run
        .filter(
            task::Entity::update_many()
                .col_expr(
                    task::Column::LogEntries,
                    Expr::col(task::Column::LogEntries).add(n),
                )
                .filter(task::Column::Id.eq(task_id)),
        )
        .exec_with_returning(&txn)
        .await?;
    let Some(t) = counted.into_iter().next() else {
        drop(txn);
        return Err(refusal(db, task_id, run).await);
    };
    let before = t.log_entries - n;
    let keep = (policy.max_log_entries - before).clamp(0, n);
    let dropped = n - keep;
    if dropped > 0 {
        task::Entity::update_many()
            .col_expr(
                task::Column::LogEntries,
                Expr::col(task::Column::LogEntries).sub(dropped),
            )
            .col_expr(
                task::Column::LogDropped,
                Expr::col(task::Column::LogDropped).add(dropped),
            )
            .filter(task::Column::Id.eq(task_id))
            .exec(&txn)
            .await?;
        if before < policy.max_log_entries {
            logs::append_log(
                &txn,
                task_id,
                Some(req.attempt),
                LogLevel::Warning,
                &format!(
                    "The log of this task reached its cap of {} entries from workers: further entries are \
                     dropped and counted",
                    policy.max_log_entries
                ),
                Some(json!({"event": "log_capped", "max_log_entries": policy.max_log_entries})),
                None,
            )
            .await?;
        }
        entries.truncate(keep as usize);
    }
    let kept = logs::append_logs(&txn, task_id, req.attempt, entries).await?;
    txn.commit().await?;
    Ok(kept)
}

/// How a run ended, as its worker reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed(api::JsonObject),
    Failed {
        status: TaskStatus,
        error: String,
        result: Option<api::JsonObject>,
    },
}

/// Records the end of a run: the task's final state and result with its log entry, and the worker's
/// counters, in one transaction, fenced by the run.
#[tracing::instrument(skip(db, run, outcome), fields(worker_id = %run.worker_id, task_id = %task_id, attempt = run.attempt))]
pub async fn finish(
    db: &DatabaseConnection,
    task_id: Uuid,
    run: RunRef<'_>,
    outcome: Outcome,
) -> StoreResult<task::Model> {
    let RunRef {
        worker_id, attempt, ..
    } = run;
    let (status, result, message, level) = match outcome {
        Outcome::Completed(r) => {
            let msg = match r.get("success").and_then(|v| v.as_bool()) {
                Some(false) => {
                    "Task completed: the run finished, the agent did not succeed".to_owned()
                }
                _ => "Task completed".to_owned(),
            };
            (
                TaskStatus::Completed,
                serde_json::Value::Object(r.into_iter().collect()),
                msg,
                LogLevel::Info,
            )
        }
        Outcome::Failed {
            status,
            error,
            result,
        } => {
            let mut r: serde_json::Map<String, serde_json::Value> =
                result.unwrap_or_default().into_iter().collect();
            r.entry("success").or_insert(json!(false));
            r.insert("error".to_owned(), json!(error));
            let verb = if status == TaskStatus::Timeout {
                "timed out"
            } else {
                "failed"
            };
            (
                status,
                serde_json::Value::Object(r),
                format!("Task {verb}: {error}"),
                LogLevel::Error,
            )
        }
    };
    let txn = db.begin().await?;
    let guard = Guard::Run { run, task_id };
    let entry = Entry {
        level,
        message,
        context: json!({"event": status.as_str(), "worker_id": worker_id, "attempt": attempt}),
        attempt: Some(attempt),
    };
    let change = Change::End {
        status,
        result: Some(result),
    };
    let Some(t) = transition::apply(&txn, guard, change, entry).await? else {
        drop(txn);
        return Err(refusal(db, task_id, run).await);
    };
    if t.log_dropped > 0 {
        logs::append_log(
            &txn,
            task_id,
            Some(attempt),
            LogLevel::Warning,
            &format!(
                "{} log entries were dropped past the cap on entries per task",
                t.log_dropped
            ),
            Some(json!({"event": "log_dropped", "dropped": t.log_dropped})),
            None,
        )
        .await?;
    }
    let counter = if status == TaskStatus::Completed {
        worker::Column::TasksCompleted
    } else {
        worker::Column::TasksFailed
    };
    worker::Entity::update_many()
        .col_expr(counter, Expr::col(counter).add(1))
        .filter(worker::Column::Id.eq(worker_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(t)
}

/// Gives a run back to the queue without counting it: the worker is stopping (shutdown, stop of the internal
/// workers) and the run was interrupted, not lost. Status `pending`, attempt decremented so that the next
/// claim gets the same number. Fenced like every report.
pub async fn give_back(
    db: &DatabaseConnection,
    task_id: Uuid,
    run: RunRef<'_>,
    policy: &LeasePolicy,
    why: Option<&str>,
) -> StoreResult<task::Model> {
    let (reason, kind) = match why {
        Some(w) => (
            format!("worker {} gave it back: {w}", run.worker_id),
            "runner unusable",
        ),
        None => (
            format!("worker {} stopped it", run.worker_id),
            "worker stopping",
        ),
    };
    match requeue_uncounted(db, task_id, run, &reason, kind, policy).await? {
        Some(t) => Ok(t),
        None => Err(refusal(db, task_id, run).await),
    }
}

/// Puts a run back to `pending` with its attempt given back (the run never happened, or was interrupted by
/// its worker). A task that went back this way `max_uncounted_requeues` times already fails instead, with an
/// error that says so: something keeps it from ever being reported, and it must not loop. Returns the task
/// as changed, if the run was still held.
async fn requeue_uncounted(
    db: &DatabaseConnection,
    task_id: Uuid,
    run: RunRef<'_>,
    reason: &str,
    why: &str,
    policy: &LeasePolicy,
) -> StoreResult<Option<task::Model>> {
    let RunRef {
        worker_id, attempt, ..
    } = run;
    let txn = db.begin().await?;
    let times = task::Entity::find_by_id(task_id)
        .one(&txn)
        .await?
        .map_or(0, |t| t.uncounted_requeues);
    let guard = Guard::Run { run, task_id };
    let changed = if times >= policy.max_uncounted_requeues {
        let error = format!(
            "the task went back to the queue {times} times without its run being counted or reported \
             (claims lost on the way, or runs given back); the last time: {reason}. Giving up."
        );
        transition::apply(
            &txn,
            guard,
            Change::End {
                status: TaskStatus::Failed,
                result: Some(json!({"success": false, "error": error})),
            },
            Entry {
                level: LogLevel::Error,
                message: format!("Task failed: {error}"),
                context: json!({"event": "failed", "worker_id": worker_id, "attempt": attempt, "uncounted_requeues": times}),
                attempt: Some(attempt),
            },
        )
        .await?
    } else {
        transition::apply(
            &txn,
            guard,
            Change::Requeue { counted: false },
            Entry {
                level: LogLevel::Warning,
                message: format!(
                    "Task returned to the queue: {reason} (attempt {attempt} not counted)"
                ),
                context: json!({"event": "requeued", "worker_id": worker_id, "attempt": attempt, "reason": why}),
                attempt: Some(attempt),
            },
        )
        .await?
    };
    txn.commit().await?;
    Ok(changed)
}
