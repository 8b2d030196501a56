//! Claiming: the next pending task a worker may take, marked running for it in one statement.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, Statement, TransactionTrait, Value, sea_query::Expr,
};
use serde_json::json;
use task_executor_shared::{LogLevel, TaskStatus, WorkerStatus};

use super::{LeasePolicy, placeholder};
use crate::store::{
    StoreError, StoreResult, absent_or_offline,
    entity::{task, worker},
    is_postgres,
    logs::append_log,
    now,
};

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
///
/// Answers the task, or `Empty` with the worker's free slots (how many claims it may usefully have waiting).
#[tracing::instrument(skip(db, policy), fields(worker_id = %worker_id))]
pub async fn claim(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Claim> {
    let at = now();
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    let w = touch_worker(&txn, worker_id, at).await?;
    let running = task::Entity::find()
        .filter(task::Column::WorkerId.eq(worker_id))
        .filter(task::Column::Status.eq(TaskStatus::Running))
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
        uuid::Uuid::new_v4().into(),
    ];
    let filter = problem_filter(backend, &patterns, &mut values);
    let pg = is_postgres(&txn);
    let sql = if pg {
        // The claim and its log entry in one statement (one round trip): the entry is written only if a task
        // was claimed, after its row is locked, as every writer of a task's log does.
        format!(
            "WITH next AS ( \
                SELECT id FROM tasks WHERE status = 'pending'{filter} \
                ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
                UPDATE tasks AS t SET status = 'running', worker_id = $1, attempt = t.attempt + 1, \
                   started_at = $2, updated_at = $2, lease_expires_at = $3, lease_id = $4 \
                FROM next WHERE t.id = next.id RETURNING t.*), \
             logged AS ( \
                INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) \
                SELECT id, $2, 'info', {severity}, \
                   'Task claimed by worker ' || $1 || ' (attempt ' || attempt || ')', \
                   jsonb_build_object('event', 'claimed', 'worker_id', $1::text, 'attempt', attempt), \
                   attempt, 'running' FROM claimed) \
             SELECT * FROM claimed",
            severity = LogLevel::Info.severity()
        )
    } else {
        format!(
            "UPDATE tasks SET status = 'running', worker_id = ?1, attempt = attempt + 1, \
                started_at = ?2, updated_at = ?2, lease_expires_at = ?3, lease_id = ?4 \
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
        return Ok(Claim::Empty {
            free_slots: i64::from(w.max_parallel_tasks) - running as i64,
        });
    };
    if !pg {
        append_log(
            &txn,
            t.id,
            Some(t.attempt),
            LogLevel::Info,
            &format!("Task claimed by worker {worker_id} (attempt {})", t.attempt),
            Some(json!({"event": "claimed", "worker_id": worker_id, "attempt": t.attempt})),
            Some(TaskStatus::Running),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(Claim::Task(Box::new(t)))
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    Task(Box<task::Model>),
    /// Nothing the worker may take; it has this many slots free.
    Empty {
        free_slots: i64,
    },
}

/// Records a sign of life of a worker and returns its row. An offline worker is not brought back by a claim:
/// it must register again (its runs were given to others meanwhile).
async fn touch_worker(
    txn: &DatabaseTransaction,
    worker_id: &str,
    at: DateTime<Utc>,
) -> StoreResult<worker::Model> {
    let updated = worker::Entity::update_many()
        .col_expr(worker::Column::LastHeartbeat, Expr::value(at))
        .filter(worker::Column::Id.eq(worker_id))
        .filter(worker::Column::Status.ne(WorkerStatus::Offline))
        .exec_with_returning(txn)
        .await?;
    match updated.into_iter().next() {
        Some(w) => Ok(w),
        None => Err(absent_or_offline(txn, worker_id).await),
    }
}
