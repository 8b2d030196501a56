//! Every change of a task's state goes through [`apply`]: the guarded update and the log entry that records
//! it, together, in the caller's transaction. Zero rows updated means the guard no longer holds (another
//! report, replica or reaper got there first) and nothing is written.
//!
//! The one exception is the claim (pending → running), a single statement of its own for speed; it writes
//! its log entry the same way (on PostgreSQL in that same statement).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryTrait, Statement,
    sea_query::{Expr, ExprTrait},
};
use serde_json::Value;
use task_executor_shared::{LogLevel, TaskStatus};
use uuid::Uuid;

use crate::store::{
    entity::{task, worker},
    hot::Hot,
    logs::append_log,
    now,
    script::{self, Script},
};

/// Which task, in which state, a transition may change.
#[derive(Debug, Clone, Copy)]
pub enum Guard<'a> {
    /// One run of a task: held by this worker, for this attempt and lease, still running. Every report of a
    /// worker and every recovery of a run is fenced by it, so a worker that lost its run can never change a
    /// newer one (the lease id is new at every claim, even when an uncounted requeue gave the attempt back).
    Run { run: RunRef<'a>, task_id: Uuid },
    /// Like `Run`, and only while the run's lease is expired at the moment of the update (`lease_expires_at <
    /// at`): the reaper's guard, so that a heartbeat renewing the lease after the reaper looked wins.
    ExpiredRun {
        run: RunRef<'a>,
        task_id: Uuid,
        at: DateTime<Utc>,
    },
    /// A task in any state from which the target state may be reached ([`TaskStatus::sources_of`]).
    Task(Uuid),
}

/// Which run of a task: its worker, attempt and lease id (none only for runs claimed before lease ids
/// existed).
#[derive(Debug, Clone, Copy)]
pub struct RunRef<'a> {
    pub worker_id: &'a str,
    pub attempt: i32,
    pub lease_id: Option<Uuid>,
}

impl<'a> RunRef<'a> {
    /// The run a worker's report names.
    pub fn reported(worker_id: &'a str, attempt: i32, lease_id: Uuid) -> RunRef<'a> {
        RunRef {
            worker_id,
            attempt,
            lease_id: Some(lease_id),
        }
    }

    /// The run a task row describes now.
    pub fn of(t: &'a task::Model) -> RunRef<'a> {
        RunRef {
            worker_id: t.worker_id.as_deref().unwrap_or_default(),
            attempt: t.attempt,
            lease_id: t.lease_id,
        }
    }

    /// Narrows a query to this run, still running.
    pub fn filter<Q: QueryFilter>(&self, q: Q) -> Q {
        let q = q
            .filter(task::Column::WorkerId.eq(self.worker_id))
            .filter(task::Column::Attempt.eq(self.attempt))
            .filter(task::Column::Status.eq(TaskStatus::Running));
        match self.lease_id {
            Some(l) => q.filter(task::Column::LeaseId.eq(l)),
            None => q.filter(task::Column::LeaseId.is_null()),
        }
    }
}

/// What the transition does to the task.
#[derive(Debug, Clone)]
pub enum Change {
    /// The task ends in `status`: completion time set, lease dropped, `result` stored when given. The holder
    /// is kept, so that its late reports are told why they are refused.
    End {
        status: TaskStatus,
        result: Option<Value>,
    },
    /// The run goes back to the queue: pending, no holder, no start, no lease. With `counted: false` the
    /// attempt is given back (the run never happened, or its worker interrupted it) and the task's count of
    /// uncounted requeues goes up.
    Requeue { counted: bool },
}

impl Change {
    pub fn target(&self) -> TaskStatus {
        match self {
            Change::End { status, .. } => *status,
            Change::Requeue { .. } => TaskStatus::Pending,
        }
    }
}

/// The log entry that records a transition. Its context gets the task's holder as `worker_id` when it does
/// not name one.
#[derive(Debug, Clone)]
pub struct Entry {
    pub level: LogLevel,
    pub message: String,
    pub context: Value,
    /// The attempt it concerns, when it concerns a run.
    pub attempt: Option<i32>,
}

/// What a transition writes besides the task and its entry, for the end of a run its worker reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Also {
    /// Count the end on the task's holder: `tasks_completed` for a completion, else `tasks_failed`.
    pub tally: bool,
    /// Say in the log how many entries of the task's workers were dropped past the cap, when some were.
    pub note_dropped: bool,
}

/// Applies `change` to the task `guard` names if the guard still holds, and writes `entry`. Returns the task
/// as changed, or `None` when the guard did not hold.
pub async fn apply(
    conn: &impl ConnectionTrait,
    guard: Guard<'_>,
    change: Change,
    entry: Entry,
) -> Result<Option<task::Model>, DbErr> {
    apply_with(conn, guard, change, entry, Also::default()).await
}

/// [`apply`], with what `also` asks for written too: on PostgreSQL in the same statement, so that the end of
/// a run needs no transaction of its own; on SQLite in the caller's transaction (a caller without one may use
/// [`apply_alone`]).
pub async fn apply_with(
    conn: &impl ConnectionTrait,
    guard: Guard<'_>,
    change: Change,
    entry: Entry,
    also: Also,
) -> Result<Option<task::Model>, DbErr> {
    let at: DateTime<Utc> = now();
    let target = change.target();
    let q = guarded_update(guard, change, at);
    if conn.get_database_backend() == DbBackend::Postgres {
        return apply_in_one_statement(conn, q, at, target, entry, also).await;
    }
    let Some(changed) = q.exec_with_returning(conn).await?.into_iter().next() else {
        return Ok(None);
    };
    let mut context = entry.context;
    if let (Some(obj), Some(holder)) = (context.as_object_mut(), &changed.worker_id) {
        obj.entry("worker_id")
            .or_insert_with(|| holder.clone().into());
    }
    append_log(
        conn,
        changed.id,
        entry.attempt,
        entry.level,
        &entry.message,
        Some(context),
        Some(target),
    )
    .await?;
    if also.note_dropped && changed.log_dropped > 0 {
        append_log(
            conn,
            changed.id,
            entry.attempt,
            LogLevel::Warning,
            &dropped_message(changed.log_dropped),
            Some(serde_json::json!({"event": "log_dropped", "dropped": changed.log_dropped})),
            None,
        )
        .await?;
    }
    if also.tally
        && let Some(holder) = &changed.worker_id
    {
        let counter = tally_column(target);
        worker::Entity::update_many()
            .col_expr(counter, Expr::col(counter).add(1))
            .filter(worker::Column::Id.eq(holder.as_str()))
            .exec(conn)
            .await?;
    }
    Ok(Some(changed))
}

/// The update of the task a transition makes, conditional on `guard`.
fn guarded_update(
    guard: Guard<'_>,
    change: Change,
    at: DateTime<Utc>,
) -> sea_orm::UpdateMany<task::Entity> {
    let target = change.target();
    let mut q = task::Entity::update_many()
        .col_expr(task::Column::Status, Expr::value(target))
        .col_expr(task::Column::UpdatedAt, Expr::value(at))
        .col_expr(
            task::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        );
    q = match change {
        Change::End { result, .. } => {
            let q = q.col_expr(task::Column::CompletedAt, Expr::value(at));
            match result {
                Some(r) => q.col_expr(task::Column::Result, Expr::value(r)),
                None => q,
            }
        }
        Change::Requeue { counted } => {
            let q = q
                .col_expr(task::Column::WorkerId, Expr::value(Option::<String>::None))
                .col_expr(task::Column::LeaseId, Expr::value(Option::<Uuid>::None))
                .col_expr(
                    task::Column::StartedAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                );
            if counted {
                q
            } else {
                q.col_expr(
                    task::Column::Attempt,
                    Expr::col(task::Column::Attempt).sub(1),
                )
                .col_expr(
                    task::Column::UncountedRequeues,
                    Expr::col(task::Column::UncountedRequeues).add(1),
                )
            }
        }
    };
    q = match guard {
        Guard::Run { run, task_id } => {
            debug_assert!(TaskStatus::Running.can_transition_to(target));
            run.filter(q.filter(task::Column::Id.eq(task_id)))
        }
        Guard::ExpiredRun { run, task_id, at } => run
            .filter(q.filter(task::Column::Id.eq(task_id)))
            .filter(task::Column::LeaseExpiresAt.lt(at)),
        Guard::Task(id) => q
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::Status.is_in(TaskStatus::sources_of(target))),
    };
    q
}

/// [`apply_with`] as a transaction of its own. On PostgreSQL that is its one statement. On SQLite it is one
/// script (one hand-off to SQLite's thread): the guarded update; the entries, inserted from the updated row
/// only if the update changed it (`changes()`, the rows the statement before changed), in one `INSERT` in
/// their order; the worker's counter, only if entries were inserted; the commit.
pub async fn apply_alone(
    db: &DatabaseConnection,
    guard: Guard<'_>,
    change: Change,
    entry: Entry,
    also: Also,
) -> Result<Option<task::Model>, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        return apply_with(&Hot(db), guard, change, entry, also).await;
    }
    let at: DateTime<Utc> = now();
    let target = change.target();
    let task_id = match guard {
        Guard::Run { task_id, .. } | Guard::ExpiredRun { task_id, .. } => task_id,
        Guard::Task(id) => id,
    };
    let mut script = Script::begin();
    script.push_built(
        guarded_update(guard, change, at).build(DbBackend::Sqlite),
        " RETURNING *",
    );
    let context = entry.context.to_string();
    let mut values: Vec<sea_orm::Value> = vec![
        at.into(),
        entry.level.to_string().into(),
        entry.level.severity().into(),
        entry.message.into(),
        context.clone().into(),
        context.clone().into(),
        context.into(),
        entry.attempt.into(),
        target.to_string().into(),
        task_id.into(),
    ];
    let mut entries = String::from(
        "INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) \
         SELECT task_id, ts, level, severity, message, context, attempt, status FROM ( \
            SELECT 1 AS ord, id AS task_id, ? AS ts, ? AS level, ? AS severity, ? AS message, \
               CASE WHEN worker_id IS NOT NULL AND json_type(?, '$.worker_id') IS NULL \
                    THEN json_set(?, '$.worker_id', worker_id) ELSE json(?) END AS context, \
               ? AS attempt, ? AS status \
            FROM tasks WHERE id = ? AND changes() = 1",
    );
    if also.note_dropped {
        entries.push_str(
            " UNION ALL SELECT 2, id, ?, ?, ?, log_dropped || ?, \
                json_object('event', 'log_dropped', 'dropped', log_dropped), ?, NULL \
              FROM tasks WHERE id = ? AND changes() = 1 AND log_dropped > 0",
        );
        values.extend([
            at.into(),
            LogLevel::Warning.to_string().into(),
            LogLevel::Warning.severity().into(),
            DROPPED.into(),
            entry.attempt.into(),
            task_id.into(),
        ]);
    }
    entries.push_str(") ORDER BY ord");
    script.push(&entries, values);
    if also.tally {
        let counter = sea_orm::IdenStatic::as_str(&tally_column(target));
        script.push(
            &format!(
                "UPDATE workers SET {counter} = {counter} + 1 \
                 WHERE id = (SELECT worker_id FROM tasks WHERE id = ?) AND changes() > 0"
            ),
            [task_id.into()],
        );
    }
    script.commit();
    let rows = script::run(db, script).await?;
    match rows.first().and_then(|r| r.first()) {
        Some(row) => Ok(Some(task::Model::from_query_result(row, "")?)),
        None => Ok(None),
    }
}

/// The worker counter the end of a run in `status` adds to.
fn tally_column(status: TaskStatus) -> worker::Column {
    if status == TaskStatus::Completed {
        worker::Column::TasksCompleted
    } else {
        worker::Column::TasksFailed
    }
}

/// The note of dropped entries reads "{count}{DROPPED}" (written by SQL on PostgreSQL, so the text is shared).
const DROPPED: &str = " log entries were dropped past the cap on entries per task";

fn dropped_message(dropped: i64) -> String {
    format!("{dropped}{DROPPED}")
}

/// [`apply_with`] on PostgreSQL: the guarded update, its log entry and what `also` asks for as one statement
/// (one round trip). The entries are inserted from the row the update returned — so only when the guard held,
/// after the task's row is locked — in one `INSERT` in their order, with the holder added to the transition
/// entry's context as `worker_id` when it names none. The worker's counter is updated after the task (the
/// lock order of every writer: task row, then worker row).
async fn apply_in_one_statement(
    conn: &impl ConnectionTrait,
    update: sea_orm::UpdateMany<task::Entity>,
    at: DateTime<Utc>,
    target: TaskStatus,
    entry: Entry,
    also: Also,
) -> Result<Option<task::Model>, DbErr> {
    let built = update.build(DbBackend::Postgres);
    let mut values = built.values.map(|v| v.0).unwrap_or_default();
    let mut param = |v: sea_orm::Value| {
        values.push(v);
        format!("${}", values.len())
    };
    let (ts, level, severity, message, context, attempt, status) = (
        param(at.into()),
        param(entry.level.to_string().into()),
        param(entry.level.severity().into()),
        param(entry.message.into()),
        param(entry.context.into()),
        param(entry.attempt.into()),
        param(target.to_string().into()),
    );
    let dropped = if also.note_dropped {
        let (level, severity, text) = (
            param(LogLevel::Warning.to_string().into()),
            param(LogLevel::Warning.severity().into()),
            param(DROPPED.into()),
        );
        format!(
            " UNION ALL SELECT 2, id, {ts}, {level}, {severity}, log_dropped || {text}, \
                 jsonb_build_object('event', 'log_dropped', 'dropped', log_dropped), {attempt}, NULL \
               FROM changed WHERE log_dropped > 0"
        )
    } else {
        String::new()
    };
    let tallied = if also.tally {
        let counter = sea_orm::IdenStatic::as_str(&tally_column(target));
        format!(
            ", tallied AS (UPDATE workers SET {counter} = {counter} + 1 \
                 WHERE id = (SELECT worker_id FROM changed))"
        )
    } else {
        String::new()
    };
    let sql = format!(
        "WITH changed AS ({} RETURNING *), \
         logged AS ( \
            INSERT INTO task_logs (task_id, timestamp, level, severity, message, context, attempt, status) \
            SELECT task_id, ts, level, severity, message, context, attempt, status FROM ( \
               SELECT 1 AS ord, id AS task_id, {ts} AS ts, {level} AS level, {severity} AS severity, \
                  {message} AS message, \
                  CASE WHEN worker_id IS NOT NULL AND NOT ({context}::jsonb ? 'worker_id') \
                       THEN {context}::jsonb || jsonb_build_object('worker_id', worker_id) \
                       ELSE {context}::jsonb END AS context, \
                  {attempt} AS attempt, {status} AS status FROM changed{dropped} \
            ) AS e ORDER BY ord){tallied} \
         SELECT * FROM changed",
        built.sql
    );
    task::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .one(conn)
        .await
}
