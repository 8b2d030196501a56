//! Claiming: the next pending task a worker may take, marked running for it (on PostgreSQL in one statement).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, QueryFilter, Statement, TransactionTrait, Value, sea_query::Expr,
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

/// Translates `supported_problems` globs into SQLite `GLOB` conditions (SQLite's `LIKE` ignores case).
/// Patterns were checked to hold only id characters, `*`, `?`.
fn problem_filter(patterns: &[String], values: &mut Vec<Value>) -> String {
    if patterns.is_empty() || patterns.iter().any(|p| p == "*") {
        return String::new();
    }
    let mut parts = Vec::new();
    for p in patterns {
        values.push(p.clone().into());
        parts.push(format!(
            "problem_id GLOB {}",
            placeholder(DbBackend::Sqlite, values.len())
        ));
    }
    format!(" AND ({})", parts.join(" OR "))
}

/// Claims the next task for a worker: highest priority first, then oldest, among the problems it supports.
///
/// The worker's row is updated first (a sign of life, and a row lock that serializes the claims of one
/// worker), and its `running_tasks` (kept by triggers on `tasks`) read as it is locked, so the capacity check
/// sees every claim committed before; then one pending task is marked running for it, with its log entry.
/// On PostgreSQL all of it is one statement (one round trip): data-modifying CTEs, the task taken with
/// `FOR UPDATE SKIP LOCKED` so that concurrent claimers never wait for or take the same row, and the worker's
/// `supported_problems` globs matched in SQL. On SQLite, one transaction (writers are serialized).
///
/// Answers the task, or `Empty` with the worker's free slots (how many claims it may usefully have waiting).
#[tracing::instrument(skip(db, policy), fields(worker_id = %worker_id))]
pub async fn claim(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Claim> {
    if is_postgres(db) {
        claim_pg(db, worker_id, policy).await
    } else {
        claim_sqlite(db, worker_id, policy).await
    }
}

/// The refusal of a claim by a worker at capacity.
fn at_capacity(worker_id: &str, running: i64, max: i32) -> StoreError {
    StoreError::Conflict {
        kind: "worker_at_capacity",
        detail: format!(
            "worker {worker_id} already holds {running} running task(s), its max_parallel_tasks is {max}"
        ),
    }
}

/// A `supported_problems` glob (`*`, `?`) as a `LIKE` pattern, in SQL: `\`, `%` and `_` escaped first.
const GLOB_AS_LIKE: &str = "replace(replace(replace(replace(replace(g.p, '\\', '\\\\'), '%', '\\%'), \
     '_', '\\_'), '*', '%'), '?', '_')";

async fn claim_pg(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Claim> {
    let at = now();
    let sql = format!(
        "WITH w AS ( \
            UPDATE workers SET last_heartbeat = $2 WHERE id = $1 AND status <> 'offline' \
            RETURNING running_tasks, max_parallel_tasks, supported_problems), \
         next AS ( \
            SELECT t.id FROM tasks AS t, w \
            WHERE t.status = 'pending' AND w.running_tasks < w.max_parallel_tasks \
              AND (jsonb_array_length(w.supported_problems) = 0 OR EXISTS ( \
                   SELECT 1 FROM jsonb_array_elements_text(w.supported_problems) AS g(p) \
                   WHERE g.p = '*' OR t.problem_id LIKE {GLOB_AS_LIKE})) \
            ORDER BY t.priority DESC, t.created_at, t.id LIMIT 1 FOR UPDATE OF t SKIP LOCKED), \
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
         SELECT w.running_tasks AS w_running, w.max_parallel_tasks AS w_max, claimed.* \
         FROM w LEFT JOIN claimed ON true",
        severity = LogLevel::Info.severity()
    );
    let values: Vec<Value> = vec![
        worker_id.into(),
        at.into(),
        (at + policy.heartbeat_timeout).into(),
        uuid::Uuid::new_v4().into(),
    ];
    let Some(row) = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
    else {
        return Err(absent_or_offline(db, worker_id).await);
    };
    let running: i32 = row.try_get("", "w_running")?;
    let max: i32 = row.try_get("", "w_max")?;
    if row.try_get::<Option<uuid::Uuid>>("", "id")?.is_some() {
        return Ok(Claim::Task(Box::new(task::Model::from_query_result(
            &row, "",
        )?)));
    }
    if running >= max.max(0) {
        return Err(at_capacity(worker_id, running.into(), max));
    }
    Ok(Claim::Empty {
        free_slots: i64::from(max) - i64::from(running),
    })
}

async fn claim_sqlite(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Claim> {
    let at = now();
    let txn = db.begin().await?;
    let w = touch_worker(&txn, worker_id, at).await?;
    let running = i64::from(w.running_tasks);
    if running >= i64::from(w.max_parallel_tasks.max(0)) {
        return Err(at_capacity(worker_id, running, w.max_parallel_tasks));
    }
    let patterns: Vec<String> =
        serde_json::from_value(w.supported_problems.clone()).unwrap_or_default();
    let mut values: Vec<Value> = vec![
        worker_id.into(),
        at.into(),
        (at + policy.heartbeat_timeout).into(),
        uuid::Uuid::new_v4().into(),
    ];
    let filter = problem_filter(&patterns, &mut values);
    let sql = format!(
        "UPDATE tasks SET status = 'running', worker_id = ?1, attempt = attempt + 1, \
            started_at = ?2, updated_at = ?2, lease_expires_at = ?3, lease_id = ?4 \
         WHERE status = 'pending' AND id = ( \
            SELECT id FROM tasks WHERE status = 'pending'{filter} \
            ORDER BY priority DESC, created_at, id LIMIT 1) \
         RETURNING *"
    );
    let claimed = task::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .one(&txn)
        .await?;
    let Some(t) = claimed else {
        // Nothing pending that this worker may take.
        txn.commit().await?;
        return Ok(Claim::Empty {
            free_slots: i64::from(w.max_parallel_tasks) - running,
        });
    };
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
