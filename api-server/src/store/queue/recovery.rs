//! Recovery, safe to run in every replica at once (every change is conditional on the run it saw): workers
//! silent past the heartbeat timeout become offline, runs whose lease expired are released, runs past their
//! timeout end as `timeout`.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::Expr,
};
use serde_json::json;
use task_executor_shared::{LogLevel, TaskStatus, WorkerStatus, params::TaskParams};

use super::{
    LeasePolicy,
    transition::{self, Change, Entry, Guard, RunRef},
};
use crate::store::{
    StoreResult,
    entity::{task, worker},
    now,
};

/// Releases a running task whose worker is gone: back to `pending` while it has attempts left (the attempt
/// number is kept, the next claim increments it), else `failed` with an error naming the worker. Fenced by
/// the run, so concurrent reapers release it once; with `lease_expired_at`, only while the lease is still
/// expired at that moment (a heartbeat that renewed it meanwhile wins). Returns the task as changed, if it was.
pub async fn release_lost(
    conn: &impl ConnectionTrait,
    t: &task::Model,
    reason: &str,
    max_attempts: i32,
    lease_expired_at: Option<DateTime<Utc>>,
) -> StoreResult<Option<task::Model>> {
    let worker = t.worker_id.clone().unwrap_or_default();
    let requeue = t.attempt < max_attempts;
    let (change, level, message, event) = if requeue {
        (
            Change::Requeue { counted: true },
            LogLevel::Warning,
            format!("Task requeued: {reason} (attempt {})", t.attempt),
            "requeued",
        )
    } else {
        let error = format!(
            "{reason}; attempt {} of {max_attempts}, no attempts left",
            t.attempt
        );
        (
            Change::End {
                status: TaskStatus::Failed,
                result: Some(
                    json!({"success": false, "error": error, "lost_worker_id": worker, "failure_kind": "infrastructure"}),
                ),
            },
            LogLevel::Error,
            format!(
                "Task failed: {reason}; no attempts left (attempt {} of {max_attempts})",
                t.attempt
            ),
            "failed",
        )
    };
    let run = RunRef::of(t);
    let guard = match lease_expired_at {
        Some(at) => Guard::ExpiredRun {
            run,
            task_id: t.id,
            at,
        },
        None => Guard::Run { run, task_id: t.id },
    };
    let entry = Entry {
        level,
        message,
        context: json!({"event": event, "worker_id": worker, "attempt": t.attempt}),
        attempt: Some(t.attempt),
    };
    let changed = transition::apply(conn, guard, change, entry.clone()).await?;
    if changed.is_some() {
        tracing::warn!(task_id = %t.id, worker_id = %worker, attempt = t.attempt, requeued = requeue, "{}", entry.message);
    }
    Ok(changed)
}

/// Ends a run that passed its timeout.
async fn time_out(
    conn: &impl ConnectionTrait,
    t: &task::Model,
) -> StoreResult<Option<task::Model>> {
    let worker = t.worker_id.clone().unwrap_or_default();
    let secs = TaskParams::of(&t.parameters).timeout.as_secs();
    let error = format!(
        "the task exceeded its timeout of {secs} s (attempt {})",
        t.attempt
    );
    let changed = transition::apply(
        conn,
        Guard::Run {
            run: RunRef::of(t),
            task_id: t.id,
        },
        Change::End {
            status: TaskStatus::Timeout,
            result: Some(json!({"success": false, "error": error})),
        },
        Entry {
            level: LogLevel::Error,
            message: format!("Task timed out: {error}"),
            context: json!({"event": "timeout", "worker_id": worker, "attempt": t.attempt}),
            attempt: Some(t.attempt),
        },
    )
    .await?;
    if changed.is_some() {
        tracing::warn!(task_id = %t.id, worker_id = %worker, "task timed out");
    }
    Ok(changed)
}

/// When a run must have ended: its start plus its timeout.
fn deadline(t: &task::Model) -> Option<DateTime<Utc>> {
    let timeout = TaskParams::of(&t.parameters).timeout;
    t.started_at
        .map(|s| s + Duration::from_std(timeout).unwrap_or(Duration::MAX))
}

/// What one pass of the reaper did.
#[derive(Debug, Default)]
pub struct ReapReport {
    pub workers_offline: Vec<String>,
    /// Tasks of lost workers, requeued (pending) or failed (out of attempts).
    pub released: Vec<task::Model>,
    pub timed_out: Vec<task::Model>,
}

/// One pass of recovery: workers silent past the heartbeat timeout become offline; running tasks whose
/// lease expired are released; running tasks past `started_at + parameters.timeout` become `timeout`.
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
    if leases {
        let stale = worker::Entity::update_many()
            .col_expr(worker::Column::Status, Expr::value(WorkerStatus::Offline))
            .filter(worker::Column::Status.ne(WorkerStatus::Offline))
            .filter(worker::Column::LastHeartbeat.lt(at - policy.heartbeat_timeout))
            .exec_with_returning(db)
            .await?;
        for w in stale {
            tracing::warn!(worker_id = %w.id, last_heartbeat = %w.last_heartbeat, "worker offline: no heartbeat");
            report.workers_offline.push(w.id);
        }
    }
    let running = task::Entity::find()
        .filter(task::Column::Status.eq(TaskStatus::Running))
        .all(db)
        .await?;
    for t in running {
        if deadline(&t).is_some_and(|d| d < at) {
            let txn = db.begin().await?;
            if let Some(changed) = time_out(&txn, &t).await? {
                report.timed_out.push(changed);
            }
            txn.commit().await?;
        } else if leases && t.lease_expires_at.is_some_and(|l| l < at) {
            let txn = db.begin().await?;
            let worker = t.worker_id.clone().unwrap_or_default();
            let reason = format!("worker {worker} stopped sending heartbeats (lease expired)");
            let released =
                release_lost(&txn, &t, &reason, policy.max_attempts, Some(now())).await?;
            if let Some(changed) = released {
                report.released.push(changed);
            }
            txn.commit().await?;
        }
    }
    Ok(report)
}
