//! The queue: claiming, leases, reports from workers, and recovery from lost workers and overdue tasks.
//!
//! Every write a worker makes to a task is fenced by the attempt it holds:
//! `WHERE id = … AND worker_id = … AND attempt = … AND status = 'running'`. Zero rows updated means the
//! worker no longer holds that run, and the answer says why; the task is left unchanged. So a worker that
//! lost its lease can never overwrite the outcome of a newer attempt.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, Statement, TransactionTrait, Value,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;
use task_executor_shared::{LogLevel, TaskStatus, WorkerStatus, api};
use uuid::Uuid;

use super::{
    StoreError, StoreResult,
    entity::{task, worker},
    is_postgres, now,
    tasks::append_log,
};

/// Timing of leases and recovery.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A worker silent this long is offline; a claim or heartbeat extends a task's lease by this much.
    pub heartbeat_timeout: Duration,
    /// A task held for less than this is not requeued for being absent from a heartbeat (the heartbeat may
    /// have been sent just before the claim's answer arrived).
    pub claim_grace: Duration,
    /// Runs of a task at most when its worker is lost.
    pub max_attempts: i32,
}

fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        // Numbered, never bare `?`: sqlx counts bare and numbered SQLite parameters separately.
        _ => format!("?{n}"),
    }
}

/// Translates `supported_problems` globs into SQL conditions: `LIKE` on PostgreSQL (with `_` escaped),
/// `GLOB` on SQLite (whose `LIKE` ignores case). Patterns were checked to hold only id characters, `*`, `?`.
fn problem_filter(backend: DbBackend, patterns: &[String], values: &mut Vec<Value>) -> String {
    if patterns.is_empty() || patterns.iter().any(|p| p == "*") {
        return String::new();
    }
    let mut parts = Vec::new();
    for p in patterns {
        let (op, pat) = match backend {
            DbBackend::Postgres => (
                "LIKE",
                p.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
                    .replace('*', "%")
                    .replace('?', "_"),
            ),
            _ => ("GLOB", p.clone()),
        };
        values.push(pat.into());
        let escape = if op == "LIKE" { " ESCAPE '\\'" } else { "" };
        parts.push(format!(
            "problem_id {op} {}{escape}",
            placeholder(backend, values.len())
        ));
    }
    format!(" AND ({})", parts.join(" OR "))
}

/// Claims the next task for a worker: highest priority first, then oldest, among the problems it supports.
///
/// One transaction: the worker's row is updated (a sign of life, and a row lock that serializes claims of
/// one worker so that its `max_parallel_tasks` holds), its running tasks are counted, and one statement
/// selects and marks the task — on PostgreSQL a `FOR UPDATE SKIP LOCKED` CTE, so concurrent claimers never
/// wait for or take the same row; on SQLite one `UPDATE … WHERE id = (SELECT …)`, writers being serialized.
#[tracing::instrument(skip(db, policy), fields(worker_id = %worker_id))]
pub async fn claim(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Option<task::Model>> {
    let at = now();
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    let w = touch_worker(&txn, worker_id, at).await?;
    let running = task::Entity::find()
        .filter(task::Column::WorkerId.eq(worker_id))
        .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
        .count(&txn)
        .await?;
    if running >= Ord::max(w.max_parallel_tasks, 0) as u64 {
        return Err(StoreError::Conflict {
            kind: "worker_at_capacity",
            detail: format!(
                "worker {worker_id} already holds {running} running task(s), its max_parallel_tasks is {}",
                w.max_parallel_tasks
            ),
        });
    }
    let patterns: Vec<String> =
        serde_json::from_value(w.supported_problems.clone()).unwrap_or_default();
    let mut values: Vec<Value> = vec![
        worker_id.into(),
        at.into(),
        (at + policy.heartbeat_timeout).into(),
    ];
    let filter = problem_filter(backend, &patterns, &mut values);
    let sql = if is_postgres(&txn) {
        format!(
            "WITH next AS ( \
                SELECT id FROM tasks WHERE status = 'pending'{filter} \
                ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE tasks AS t SET status = 'running', worker_id = $1, attempt = t.attempt + 1, \
                started_at = $2, updated_at = $2, lease_expires_at = $3 \
             FROM next WHERE t.id = next.id RETURNING t.*"
        )
    } else {
        format!(
            "UPDATE tasks SET status = 'running', worker_id = ?1, attempt = attempt + 1, \
                started_at = ?2, updated_at = ?2, lease_expires_at = ?3 \
             WHERE status = 'pending' AND id = ( \
                SELECT id FROM tasks WHERE status = 'pending'{filter} \
                ORDER BY priority DESC, created_at, id LIMIT 1) \
             RETURNING *"
        )
    };
    let claimed = task::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(backend, sql, values))
        .one(&txn)
        .await?;
    let Some(t) = claimed else {
        // Nothing pending that this worker may take.
        txn.commit().await?;
        return Ok(None);
    };
    append_log(
        &txn,
        t.id,
        Some(t.attempt),
        LogLevel::Info,
        &format!("Task claimed by worker {worker_id} (attempt {})", t.attempt),
        Some(json!({"event": "claimed", "worker_id": worker_id, "attempt": t.attempt})),
    )
    .await?;
    txn.commit().await?;
    Ok(Some(t))
}

/// Records a sign of life of a worker (an offline worker that speaks is online again) and returns its row.
async fn touch_worker(
    txn: &DatabaseTransaction,
    worker_id: &str,
    at: DateTime<Utc>,
) -> StoreResult<worker::Model> {
    let updated = worker::Entity::update_many()
        .col_expr(worker::Column::LastHeartbeat, Expr::value(at))
        .col_expr(
            worker::Column::Status,
            Expr::case(
                worker::Column::Status.eq(WorkerStatus::Offline.as_str()),
                WorkerStatus::Idle.as_str(),
            )
            .finally(Expr::col(worker::Column::Status))
            .into(),
        )
        .filter(worker::Column::Id.eq(worker_id))
        .exec_with_returning(txn)
        .await?;
    updated
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::WorkerNotFound(worker_id.to_owned()))
}

/// What a heartbeat changed.
pub struct HeartbeatOutcome {
    pub at: DateTime<Utc>,
    /// Reported tasks the worker must stop: cancelled, timed out, or no longer its own.
    pub cancel_task_ids: Vec<Uuid>,
    /// Tasks the server thought the worker held but the heartbeat did not list: released.
    pub released: Vec<task::Model>,
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
    let status = match req.status {
        WorkerStatus::Offline => WorkerStatus::Offline,
        _ => WorkerStatus::Idle,
    };
    let updated = worker::Entity::update_many()
        .col_expr(worker::Column::LastHeartbeat, Expr::value(at))
        .col_expr(
            worker::Column::Status,
            // An internal worker winding down stays `stopping` until it goes.
            Expr::case(
                worker::Column::Status.eq(WorkerStatus::Stopping.as_str()),
                WorkerStatus::Stopping.as_str(),
            )
            .finally(status.as_str())
            .into(),
        )
        .filter(worker::Column::Id.eq(worker_id))
        .exec(db)
        .await?;
    if updated.rows_affected == 0 {
        return Err(StoreError::WorkerNotFound(worker_id.to_owned()));
    }
    if !reported.is_empty() {
        task::Entity::update_many()
            .col_expr(
                task::Column::LeaseExpiresAt,
                Expr::value(at + policy.heartbeat_timeout),
            )
            .filter(task::Column::Id.is_in(reported.clone()))
            .filter(task::Column::WorkerId.eq(worker_id))
            .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
            .exec(db)
            .await?;
    }
    // The worker's running tasks and the reported ones, in one read.
    let rows = task::Entity::find()
        .filter(
            task::Column::Id
                .is_in(reported.clone())
                .or(task::Column::WorkerId
                    .eq(worker_id)
                    .and(task::Column::Status.eq(TaskStatus::Running.as_str()))),
        )
        .all(db)
        .await?;
    let holds = |t: &task::Model| {
        t.worker_id.as_deref() == Some(worker_id) && t.task_status() == TaskStatus::Running
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
        let held_since = t.started_at.unwrap_or(t.updated_at);
        if held_since + policy.claim_grace > at {
            continue;
        }
        let txn = db.begin().await?;
        // The worker never had the task (a claim answer that did not arrive, a long poll whose client went
        // away): the run did not happen, so it does not count as an attempt.
        let reason =
            format!("worker {worker_id} never received it (the claim was lost on the way)");
        if let Some(changed) =
            uncounted_requeue(&txn, t.id, worker_id, t.attempt, &reason, "claim lost").await?
        {
            released.push(changed);
        }
        txn.commit().await?;
    }
    Ok(HeartbeatOutcome {
        at,
        cancel_task_ids,
        released,
    })
}

/// Releases a running task whose worker is gone: back to `pending` while it has attempts left (the attempt
/// number is kept, the next claim increments it), else `failed` with an error naming the worker. Conditional
/// on the run being the same one, so concurrent reapers release it once. Returns the task as changed, if it was.
pub async fn release_lost(
    txn: &DatabaseTransaction,
    t: &task::Model,
    reason: &str,
    max_attempts: i32,
) -> StoreResult<Option<task::Model>> {
    let at = now();
    let worker = t.worker_id.clone().unwrap_or_default();
    let requeue = t.attempt < max_attempts;
    let q = if requeue {
        back_to_pending(at)
    } else {
        let error = format!(
            "{reason}; attempt {} of {max_attempts}, no attempts left",
            t.attempt
        );
        ended(
            TaskStatus::Failed,
            json!({"success": false, "error": error, "lost_worker_id": worker}),
            at,
        )
    };
    let Some(changed) = fenced(q, t.id, &worker, t.attempt)
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let (level, message, event) = if requeue {
        (
            LogLevel::Warning,
            format!("Task requeued: {reason} (attempt {})", t.attempt),
            "requeued",
        )
    } else {
        (
            LogLevel::Error,
            format!(
                "Task failed: {reason}; no attempts left (attempt {} of {max_attempts})",
                t.attempt
            ),
            "failed",
        )
    };
    append_log(
        txn,
        t.id,
        Some(t.attempt),
        level,
        &message,
        Some(json!({"event": event, "worker_id": worker, "attempt": t.attempt})),
    )
    .await?;
    tracing::warn!(task_id = %t.id, worker_id = %worker, attempt = t.attempt, requeued = requeue, "{message}");
    Ok(Some(changed))
}

/// A run that ended: its final status and result, completion time, no lease. (The holder is kept, so that
/// its late reports are answered with why they are refused.)
fn ended(
    status: TaskStatus,
    result: serde_json::Value,
    at: DateTime<Utc>,
) -> sea_orm::UpdateMany<task::Entity> {
    task::Entity::update_many()
        .col_expr(task::Column::Status, Expr::value(status.as_str()))
        .col_expr(task::Column::Result, Expr::value(result))
        .col_expr(task::Column::UpdatedAt, Expr::value(at))
        .col_expr(task::Column::CompletedAt, Expr::value(at))
        .col_expr(
            task::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
}

/// A run put back in the queue: pending, no holder, no start, no lease.
fn back_to_pending(at: DateTime<Utc>) -> sea_orm::UpdateMany<task::Entity> {
    task::Entity::update_many()
        .col_expr(
            task::Column::Status,
            Expr::value(TaskStatus::Pending.as_str()),
        )
        .col_expr(task::Column::WorkerId, Expr::value(Option::<String>::None))
        .col_expr(
            task::Column::StartedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            task::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(task::Column::UpdatedAt, Expr::value(at))
}

/// The fence of every write about one run of a task.
fn fenced(
    q: sea_orm::UpdateMany<task::Entity>,
    id: Uuid,
    worker_id: &str,
    attempt: i32,
) -> sea_orm::UpdateMany<task::Entity> {
    q.filter(task::Column::Id.eq(id))
        .filter(task::Column::WorkerId.eq(worker_id))
        .filter(task::Column::Attempt.eq(attempt))
        .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
}

/// Why a report was refused: the task's state as it is now, turned into the error a worker sees.
async fn refusal(
    db: &impl ConnectionTrait,
    task_id: Uuid,
    worker_id: &str,
    attempt: i32,
) -> StoreError {
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
    let status = t.task_status();
    let (kind, detail) =
        if t.worker_id.as_deref() != Some(worker_id) || status == TaskStatus::Pending {
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

/// Appends a batch of log entries from the worker that holds the run.
pub async fn report_logs(
    db: &DatabaseConnection,
    worker_id: &str,
    task_id: Uuid,
    req: api::ReportLogsRequest,
) -> StoreResult<u64> {
    let held = task::Entity::find()
        .filter(task::Column::Id.eq(task_id))
        .filter(task::Column::WorkerId.eq(worker_id))
        .filter(task::Column::Attempt.eq(req.attempt))
        .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
        .count(db)
        .await?;
    if held == 0 {
        return Err(refusal(db, task_id, worker_id, req.attempt).await);
    }
    Ok(super::tasks::append_logs(db, task_id, req.attempt, req.entries).await?)
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

/// Records the end of a run: the task's final state and result, the worker's counters and a log entry, in
/// one transaction, fenced by the attempt.
#[tracing::instrument(skip(db, outcome), fields(worker_id = %worker_id, task_id = %task_id, attempt))]
pub async fn finish(
    db: &DatabaseConnection,
    worker_id: &str,
    task_id: Uuid,
    attempt: i32,
    outcome: Outcome,
) -> StoreResult<task::Model> {
    let at = now();
    let (status, result, message, level) = match outcome {
        Outcome::Completed(r) => {
            let ok = r.get("success").and_then(|v| v.as_bool());
            let msg = match ok {
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
    let q = ended(status, result, at);
    let updated = fenced(q, task_id, worker_id, attempt)
        .exec_with_returning(&txn)
        .await?;
    let Some(t) = updated.into_iter().next() else {
        drop(txn);
        return Err(refusal(db, task_id, worker_id, attempt).await);
    };
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
    append_log(
        &txn,
        task_id,
        Some(attempt),
        level,
        &message,
        Some(json!({"event": status.as_str(), "worker_id": worker_id, "attempt": attempt})),
    )
    .await?;
    txn.commit().await?;
    Ok(t)
}

/// What one pass of the reaper did.
#[derive(Debug, Default)]
pub struct ReapReport {
    pub workers_offline: Vec<String>,
    /// Tasks of lost workers, requeued (pending) or failed (out of attempts).
    pub released: Vec<task::Model>,
    pub timed_out: Vec<task::Model>,
}

/// One pass of recovery, safe to run in every replica at once (every change is conditional):
/// workers silent past the heartbeat timeout become offline; running tasks whose lease expired are
/// released; running tasks past `started_at + parameters.timeout` become `timeout`.
///
/// `leases` is false during the first heartbeat timeout after this server started: leases that expired while
/// no server was running are not held against workers that have not had a chance to heartbeat since.
pub async fn reap(
    db: &DatabaseConnection,
    policy: &LeasePolicy,
    leases: bool,
) -> StoreResult<ReapReport> {
    let at = now();
    let mut report = ReapReport::default();
    if !leases {
        for t in task::Entity::find()
            .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
            .all(db)
            .await?
        {
            if t.started_at
                .is_some_and(|s| s + Duration::seconds(timeout_seconds(&t)) < at)
            {
                let txn = db.begin().await?;
                if let Some(changed) = time_out(&txn, &t, at).await? {
                    report.timed_out.push(changed);
                }
                txn.commit().await?;
            }
        }
        return Ok(report);
    }
    let stale = worker::Entity::update_many()
        .col_expr(
            worker::Column::Status,
            Expr::value(WorkerStatus::Offline.as_str()),
        )
        .filter(worker::Column::Status.ne(WorkerStatus::Offline.as_str()))
        .filter(worker::Column::LastHeartbeat.lt(at - policy.heartbeat_timeout))
        .exec_with_returning(db)
        .await?;
    for w in stale {
        tracing::warn!(worker_id = %w.id, last_heartbeat = %w.last_heartbeat, "worker offline: no heartbeat");
        report.workers_offline.push(w.id);
    }
    let running = task::Entity::find()
        .filter(task::Column::Status.eq(TaskStatus::Running.as_str()))
        .all(db)
        .await?;
    for t in running {
        let deadline = t
            .started_at
            .map(|s| s + Duration::seconds(timeout_seconds(&t)));
        if deadline.is_some_and(|d| d < at) {
            let txn = db.begin().await?;
            if let Some(changed) = time_out(&txn, &t, at).await? {
                report.timed_out.push(changed);
            }
            txn.commit().await?;
        } else if t.lease_expires_at.is_some_and(|l| l < at) {
            let txn = db.begin().await?;
            let worker = t.worker_id.clone().unwrap_or_default();
            let reason = format!("worker {worker} stopped sending heartbeats (lease expired)");
            if let Some(changed) = release_lost(&txn, &t, &reason, policy.max_attempts).await? {
                report.released.push(changed);
            }
            txn.commit().await?;
        }
    }
    Ok(report)
}

/// The task's timeout in seconds (its effective parameters always carry one).
fn timeout_seconds(t: &task::Model) -> i64 {
    t.parameters
        .get("timeout")
        .and_then(|v| v.as_i64())
        .unwrap_or(i64::MAX / 4_000_000)
}

async fn time_out(
    txn: &DatabaseTransaction,
    t: &task::Model,
    at: DateTime<Utc>,
) -> StoreResult<Option<task::Model>> {
    let worker = t.worker_id.clone().unwrap_or_default();
    let secs = timeout_seconds(t);
    let error = format!(
        "the task exceeded its timeout of {secs} s (attempt {})",
        t.attempt
    );
    let q = ended(
        TaskStatus::Timeout,
        json!({"success": false, "error": error}),
        at,
    );
    let Some(changed) = fenced(q, t.id, &worker, t.attempt)
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    append_log(
        txn,
        t.id,
        Some(t.attempt),
        LogLevel::Error,
        &format!("Task timed out: {error}"),
        Some(json!({"event": "timeout", "worker_id": worker, "attempt": t.attempt})),
    )
    .await?;
    tracing::warn!(task_id = %t.id, worker_id = %worker, "task timed out");
    Ok(Some(changed))
}

/// Gives a run back to the queue without counting it: the worker is stopping (shutdown, stop of the internal
/// workers) and the run was interrupted, not lost. Status `pending`, attempt decremented so that the next
/// claim gets the same number. Fenced like every report.
pub async fn give_back(
    db: &DatabaseConnection,
    worker_id: &str,
    task_id: Uuid,
    attempt: i32,
) -> StoreResult<task::Model> {
    let txn = db.begin().await?;
    let reason = format!("worker {worker_id} stopped it");
    let Some(t) = uncounted_requeue(
        &txn,
        task_id,
        worker_id,
        attempt,
        &reason,
        "worker stopping",
    )
    .await?
    else {
        drop(txn);
        return Err(refusal(db, task_id, worker_id, attempt).await);
    };
    txn.commit().await?;
    Ok(t)
}

/// Puts a run back to `pending` with its attempt decremented (the run never happened, or was interrupted by
/// the worker), fenced by worker and attempt. Returns the task as changed, if the run was still held.
async fn uncounted_requeue(
    txn: &DatabaseTransaction,
    task_id: Uuid,
    worker_id: &str,
    attempt: i32,
    reason: &str,
    why: &str,
) -> StoreResult<Option<task::Model>> {
    let q = back_to_pending(now()).col_expr(
        task::Column::Attempt,
        Expr::col(task::Column::Attempt).sub(1),
    );
    let Some(t) = fenced(q, task_id, worker_id, attempt)
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    append_log(
        txn,
        task_id,
        Some(attempt),
        LogLevel::Warning,
        &format!("Task returned to the queue: {reason} (attempt {attempt} not counted)"),
        Some(
            json!({"event": "requeued", "worker_id": worker_id, "attempt": attempt, "reason": why}),
        ),
    )
    .await?;
    Ok(Some(t))
}
