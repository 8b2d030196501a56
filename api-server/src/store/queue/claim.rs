//! Claiming: the next pending task a worker may take, marked running for it (on PostgreSQL in one statement,
//! on SQLite in one script).

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, FromQueryResult, Statement, Value};
use task_executor_shared::LogLevel;

use super::LeasePolicy;
use crate::store::{
    StoreError, StoreResult, absent_or_offline,
    entity::task,
    hot::Hot,
    is_postgres, now,
    script::{self, Script},
};

/// Claims the next task for a worker: highest priority first, then oldest, among the problems it supports.
///
/// The worker's row is updated first (a sign of life, and a row lock that serializes the claims of one
/// worker), and its `running_tasks` (kept by triggers on `tasks`) read as it is locked, so the capacity check
/// sees every claim committed before; then one pending task is marked running for it, with its log entry.
/// On PostgreSQL all of it is one statement (one round trip): data-modifying CTEs, the task taken with
/// `FOR UPDATE SKIP LOCKED` so that concurrent claimers never wait for or take the same row, and the worker's
/// `supported_problems` globs matched in SQL. On SQLite, the same steps as one script in a transaction of
/// its own (see [`claim_sqlite`]).
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
    let Some(row) = Hot(db)
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
    else {
        return Err(absent_or_offline(db, worker_id).await);
    };
    let claimed = row.try_get::<Option<uuid::Uuid>>("", "id")?.is_some();
    found(
        worker_id,
        row.try_get("", "w_running")?,
        row.try_get("", "w_max")?,
        claimed.then_some(&row),
    )
}

/// What a claim found, from the worker's counts read as its row was touched (before the claim) and the task
/// row it claimed, if any.
fn found(
    worker_id: &str,
    running: i32,
    max: i32,
    claimed: Option<&sea_orm::QueryResult>,
) -> StoreResult<Claim> {
    if let Some(t) = claimed {
        return Ok(Claim::Task(Box::new(task::Model::from_query_result(
            t, "",
        )?)));
    }
    if running >= max.max(0) {
        return Err(at_capacity(worker_id, running.into(), max));
    }
    Ok(Claim::Empty {
        free_slots: i64::from(max) - i64::from(running),
    })
}

/// The claim on SQLite: the same steps as on PostgreSQL, as one script (one hand-off to SQLite's thread) in a
/// transaction of its own: the worker touched (its counts read), the next task it may take marked running
/// (capacity and `supported_problems` globs checked in SQL), and the log entry of the task this claim's new
/// lease id marks. The pending tasks are read in claim order through their partial index, named: left to
/// itself, SQLite's planner took the index on `(status, created_at)` and sorted every pending task at each
/// claim.
async fn claim_sqlite(
    db: &DatabaseConnection,
    worker_id: &str,
    policy: &LeasePolicy,
) -> StoreResult<Claim> {
    let at = now();
    let lease_id = uuid::Uuid::new_v4();
    let mut script = Script::begin();
    script
        .push(
            "UPDATE workers SET last_heartbeat = ? WHERE id = ? AND status <> 'offline' \
             RETURNING running_tasks, max_parallel_tasks",
            [at.into(), worker_id.into()],
        )
        .push(
            "UPDATE tasks SET status = 'running', worker_id = ?, attempt = attempt + 1, \
                started_at = ?, updated_at = ?, lease_expires_at = ?, lease_id = ? \
             WHERE status = 'pending' AND id = ( \
                SELECT t.id FROM tasks AS t INDEXED BY idx_tasks_pending_claim, workers AS w \
                WHERE w.id = ? AND w.status <> 'offline' AND w.running_tasks < w.max_parallel_tasks \
                  AND t.status = 'pending' \
                  AND (json_array_length(w.supported_problems) = 0 OR EXISTS ( \
                       SELECT 1 FROM json_each(w.supported_problems) AS g WHERE t.problem_id GLOB g.value)) \
                ORDER BY t.priority DESC, t.created_at, t.id LIMIT 1) \
             RETURNING *",
            [
                worker_id.into(),
                at.into(),
                at.into(),
                (at + policy.heartbeat_timeout).into(),
                lease_id.into(),
                worker_id.into(),
            ],
        )
        .push(
            &format!(
                "INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) \
                 SELECT id, ?, 'info', {severity}, \
                    'Task claimed by worker ' || worker_id || ' (attempt ' || attempt || ')', \
                    json_object('event', 'claimed', 'worker_id', worker_id, 'attempt', attempt), attempt, 'running' \
                 FROM tasks WHERE worker_id = ? AND status = 'running' AND lease_id = ?",
                severity = LogLevel::Info.severity()
            ),
            [at.into(), worker_id.into(), lease_id.into()],
        )
        .commit();
    let rows = script::run(db, script).await?;
    let Some(w) = rows.first().and_then(|r| r.first()) else {
        return Err(absent_or_offline(db, worker_id).await);
    };
    found(
        worker_id,
        w.try_get("", "running_tasks")?,
        w.try_get("", "max_parallel_tasks")?,
        rows.get(1).and_then(|r| r.first()),
    )
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
