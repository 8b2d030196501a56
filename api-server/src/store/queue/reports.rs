//! What workers report: heartbeats (leases, cancellations, reconciliation), log entries, the outcome of a run
//! and the release of a run the worker stopped. Each is fenced by the run the worker holds.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, Statement, TransactionTrait, Value,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;
use task_executor_shared::{FailureKind, LogLevel, TaskStatus, WorkerStatus, api};
use uuid::Uuid;

use super::{
    LeasePolicy, placeholder,
    transition::{self, Also, Change, Entry, Guard, RunRef},
};
use crate::store::{
    StoreError, StoreResult, absent_or_offline,
    entity::{task, worker},
    hot::Hot,
    is_postgres, logs, now,
};

/// What a heartbeat changed.
pub struct HeartbeatOutcome {
    pub at: DateTime<Utc>,
    /// Reported tasks the worker must stop: cancelled, timed out, or no longer its own.
    pub cancel_task_ids: Vec<Uuid>,
    /// Tasks the server thought the worker held but the heartbeat did not list: released.
    pub released: Vec<task::Model>,
}

/// One heartbeat of a batch: the worker that sent it and what it said.
pub struct Beat<'a> {
    pub worker_id: &'a str,
    pub req: &'a api::HeartbeatRequest,
}

impl Beat<'_> {
    /// The tasks it reports running: `running_task_ids` and `current_task_id`, without repeats.
    fn reported(&self) -> Vec<Uuid> {
        let mut reported = self.req.running_task_ids.clone();
        if let Some(id) = self.req.current_task_id
            && !reported.contains(&id)
        {
            reported.push(id);
        }
        reported
    }
}

/// What recording one heartbeat of a batch wrote and read.
pub struct Recorded {
    pub at: DateTime<Utc>,
    /// Whether the worker's row took the heartbeat (else it is unknown, or offline).
    pub taken: bool,
    /// The worker's running tasks and the reported tasks, as they were just after the leases were extended.
    pub rows: Vec<task::Model>,
}

/// Records a batch of heartbeats of distinct workers in a few statements however many there are (so that a
/// server heartbeated by many workers at once commits once or twice per batch, not per heartbeat): the
/// workers' rows (sign of life, status) with a read of their running tasks, then the leases of the tasks each
/// reports and still holds, then (rarely) a read of the reported tasks that were not among the running ones.
/// No transaction: each write stands alone, as a lone heartbeat's did, and none holds a lock on a worker row
/// and a task row at once (a completion locks the task, then its worker: the other order would deadlock).
///
/// The worker rows are taken first: a heartbeat of an unknown or offline worker (it must register again)
/// extends no lease; one saying `offline` is taken by an offline worker too.
pub async fn record_heartbeats(
    db: &DatabaseConnection,
    beats: &[Beat<'_>],
    policy: &LeasePolicy,
) -> StoreResult<Vec<Recorded>> {
    if beats.is_empty() {
        return Ok(Vec::new());
    }
    let at = now();
    let said: Vec<(&str, &'static str, Option<String>)> = beats
        .iter()
        .map(|b| {
            // The status a heartbeat leaves on the row: `offline`, `stopping` or `degraded` when it says so;
            // `stopping` when it was marked so (an internal worker scaled down); else `idle` (`busy` is
            // derived from the tasks held). A reason is kept only with `degraded`.
            let reason = (b.req.status == WorkerStatus::Degraded)
                .then(|| b.req.reason.as_ref().map(|r| r.to_string()))
                .flatten();
            (b.worker_id, b.req.status.as_str(), reason)
        })
        .collect();
    let (taken, mut rows) = if is_postgres(db) {
        take_workers_pg(db, at, &said).await?
    } else {
        take_workers_sqlite(db, at, &said).await?
    };
    let reported: Vec<Vec<Uuid>> = beats.iter().map(Beat::reported).collect();

    // Leases: each reported task, if the worker whose row took the heartbeat still runs it.
    let pairs: Vec<(Uuid, &str)> = beats
        .iter()
        .zip(&reported)
        .filter(|(b, _)| taken.iter().any(|w| w == b.worker_id))
        .flat_map(|(b, ids)| ids.iter().map(|id| (*id, b.worker_id)))
        .collect();
    if !pairs.is_empty() {
        extend_leases(db, at + policy.heartbeat_timeout, &pairs).await?;
    }

    // The reported tasks that were not among the running ones (cancelled, finished, given to another).
    let unseen: Vec<Uuid> = reported
        .iter()
        .flatten()
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
    Ok(beats
        .iter()
        .zip(&reported)
        .map(|(b, ids)| {
            let taken = taken.iter().any(|w| w == b.worker_id);
            Recorded {
                at,
                taken,
                rows: if taken {
                    rows.iter()
                        .filter(|t| {
                            ids.contains(&t.id)
                                || (t.worker_id.as_deref() == Some(b.worker_id)
                                    && t.status == TaskStatus::Running)
                        })
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect())
}

/// The status a heartbeat leaves on a worker's row, from what it said (`v.said`) and the row's status.
const STATUS_AFTER_HEARTBEAT: &str = "CASE WHEN v.said IN ('offline', 'stopping', 'degraded') THEN v.said \
     WHEN workers.status = 'stopping' THEN 'stopping' ELSE 'idle' END";

/// PostgreSQL: the workers' rows and the read of their running tasks in one statement, whose text is the same
/// for every batch (the batch is one JSON parameter), so it is prepared once per connection. Answers the ids
/// of the workers whose rows took the heartbeat, and their running tasks. The tasks are read worker by worker
/// through the index on `(worker_id, status)` (`OFFSET 0` keeps the planner from making it one join over all
/// running tasks, which read through every dead `running` index entry left by finished runs until vacuum).
async fn take_workers_pg(
    db: &DatabaseConnection,
    at: DateTime<Utc>,
    said: &[(&str, &str, Option<String>)],
) -> StoreResult<(Vec<String>, Vec<task::Model>)> {
    let batch: serde_json::Value = said
        .iter()
        .map(|(wid, said, reason)| json!({"wid": wid, "said": said, "reason": reason}))
        .collect();
    let sql = format!(
        "WITH taken AS ( \
            UPDATE workers SET last_heartbeat = $1, status = {STATUS_AFTER_HEARTBEAT}, status_reason = v.reason \
            FROM jsonb_to_recordset($2::jsonb) AS v(wid text, said text, reason text) \
            WHERE workers.id = v.wid AND (workers.status <> 'offline' OR v.said = 'offline') \
            RETURNING workers.id AS taken_id) \
         SELECT taken.taken_id, t.* FROM taken \
         LEFT JOIN LATERAL ( \
            SELECT * FROM tasks WHERE tasks.worker_id = taken.taken_id AND tasks.status = 'running' \
            OFFSET 0) AS t ON true"
    );
    let found = Hot(db)
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [at.into(), batch.into()],
        ))
        .await?;
    let (mut taken, mut rows) = (Vec::new(), Vec::new());
    for row in &found {
        let worker: String = row.try_get("", "taken_id")?;
        if !taken.contains(&worker) {
            taken.push(worker);
        }
        if row.try_get::<Option<Uuid>>("", "id")?.is_some() {
            rows.push(task::Model::from_query_result(row, "")?);
        }
    }
    Ok((taken, rows))
}

/// SQLite: the workers' rows, then their running tasks (through the index on `(worker_id, status)`).
async fn take_workers_sqlite(
    db: &DatabaseConnection,
    at: DateTime<Utc>,
    said: &[(&str, &str, Option<String>)],
) -> StoreResult<(Vec<String>, Vec<task::Model>)> {
    let mut values: Vec<Value> = vec![at.into()];
    let mut rows_sql = Vec::with_capacity(said.len());
    for (wid, status, reason) in said {
        let first = values.len() + 1;
        values.extend([(*wid).into(), (*status).into(), reason.clone().into()]);
        rows_sql.push(format!("(?{}, ?{}, ?{})", first, first + 1, first + 2));
    }
    let sql = format!(
        "UPDATE workers SET last_heartbeat = ?1, status = {STATUS_AFTER_HEARTBEAT}, status_reason = v.reason \
         FROM (SELECT column1 AS wid, column2 AS said, column3 AS reason FROM (VALUES {})) AS v \
         WHERE workers.id = v.wid AND (workers.status <> 'offline' OR v.said = 'offline') \
         RETURNING id",
        rows_sql.join(", ")
    );
    let taken: Vec<String> = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    let rows = if taken.is_empty() {
        Vec::new()
    } else {
        task::Entity::find()
            .filter(task::Column::WorkerId.is_in(taken.clone()))
            .filter(task::Column::Status.eq(TaskStatus::Running))
            .all(db)
            .await?
    };
    Ok((taken, rows))
}

/// Extends the lease of each `(task, worker)` pair whose worker still runs the task, in one statement.
async fn extend_leases(
    db: &DatabaseConnection,
    until: DateTime<Utc>,
    pairs: &[(Uuid, &str)],
) -> StoreResult<()> {
    let backend = db.get_database_backend();
    let stmt = if backend == DbBackend::Postgres {
        let batch: serde_json::Value = pairs
            .iter()
            .map(|(id, wid)| json!({"id": id, "wid": wid}))
            .collect();
        Statement::from_sql_and_values(
            backend,
            "UPDATE tasks SET lease_expires_at = $1 \
             FROM jsonb_to_recordset($2::jsonb) AS r(id uuid, wid text) \
             WHERE tasks.id = r.id AND tasks.worker_id = r.wid AND tasks.status = 'running'",
            [until.into(), batch.into()],
        )
    } else {
        let mut values: Vec<Value> = vec![until.into()];
        let mut rows_sql = Vec::with_capacity(pairs.len());
        for (id, wid) in pairs {
            let first = values.len() + 1;
            values.extend([(*id).into(), (*wid).into()]);
            rows_sql.push(format!(
                "({}, {})",
                placeholder(backend, first),
                placeholder(backend, first + 1)
            ));
        }
        Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE tasks SET lease_expires_at = ?1 \
                 WHERE status = 'running' AND (id, worker_id) IN (VALUES {})",
                rows_sql.join(", ")
            ),
            values,
        )
    };
    Hot(db).execute_raw(stmt).await?;
    Ok(())
}

/// What a heartbeat, once recorded, means for its worker: which reported tasks to stop, and which tasks it
/// holds on the server but no longer reports (lost on the way to it) go back to the queue once past the
/// claim grace period.
pub async fn settle_heartbeat(
    db: &DatabaseConnection,
    beat: Beat<'_>,
    recorded: Recorded,
    policy: &LeasePolicy,
) -> StoreResult<HeartbeatOutcome> {
    let Beat { worker_id, req } = beat;
    if !recorded.taken {
        return Err(absent_or_offline(db, worker_id).await);
    }
    let Recorded { at, rows, .. } = recorded;
    let reported = beat.reported();
    let goodbye = req.status == WorkerStatus::Offline;
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
        /// `Agent` or `Infrastructure`, when the worker says.
        kind: Option<FailureKind>,
    },
}

impl From<&api::FailTaskRequest> for Outcome {
    fn from(req: &api::FailTaskRequest) -> Self {
        Outcome::Failed {
            status: req.status.map_or(TaskStatus::Failed, Into::into),
            error: req.error.to_string(),
            result: req.result.clone(),
            kind: req.failure_kind.map(Into::into),
        }
    }
}

/// Records the end of a run: the task's final state and result with its log entry, and the worker's
/// counters, all or nothing (one statement on PostgreSQL), fenced by the run.
#[tracing::instrument(skip(db, run, outcome), fields(worker_id = %run.worker_id, task_id = %task_id, attempt = run.attempt))]
pub async fn finish(
    db: &DatabaseConnection,
    task_id: Uuid,
    run: RunRef<'_>,
    outcome: Outcome,
    policy: &LeasePolicy,
) -> StoreResult<task::Model> {
    let RunRef {
        worker_id, attempt, ..
    } = run;
    if let Outcome::Failed {
        status: TaskStatus::Failed,
        kind: Some(FailureKind::Infrastructure),
        error,
        ..
    } = &outcome
        && attempt < policy.max_attempts
    {
        return retry_infrastructure(db, task_id, run, error, policy).await;
    }
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
            kind,
        } => {
            let mut r: serde_json::Map<String, serde_json::Value> =
                result.unwrap_or_default().into_iter().collect();
            r.entry("success").or_insert(json!(false));
            r.insert("error".to_owned(), json!(error));
            if let (TaskStatus::Failed, Some(kind)) = (status, kind) {
                r.insert("failure_kind".to_owned(), json!(kind));
            }
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
    let also = Also {
        tally: true,
        note_dropped: true,
    };
    match transition::apply_alone(db, guard, change, entry, also).await? {
        Some(t) => Ok(t),
        None => Err(refusal(db, task_id, run).await),
    }
}

/// An infrastructure failure with attempts left: the run counts (the next claim is attempt + 1), the task goes
/// back to the queue for another run, and the log says why. The agent never acted, so nothing is held against
/// it. Fenced like every report.
async fn retry_infrastructure(
    db: &DatabaseConnection,
    task_id: Uuid,
    run: RunRef<'_>,
    error: &str,
    policy: &LeasePolicy,
) -> StoreResult<task::Model> {
    let RunRef {
        worker_id, attempt, ..
    } = run;
    let entry = Entry {
        level: LogLevel::Warning,
        message: format!(
            "Task returned to the queue: an infrastructure failure on worker {worker_id} (attempt {attempt} of {}), \
             retried without counting against the agent: {error}",
            policy.max_attempts
        ),
        context: json!({"event": "requeued", "worker_id": worker_id, "attempt": attempt, "reason": "infrastructure failure"}),
        attempt: Some(attempt),
    };
    let guard = Guard::Run { run, task_id };
    let change = Change::Requeue { counted: true };
    match transition::apply_alone(db, guard, change, entry, Also::default()).await? {
        Some(t) => Ok(t),
        None => Err(refusal(db, task_id, run).await),
    }
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
                result: Some(json!({"success": false, "error": error, "failure_kind": "infrastructure"})),
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
