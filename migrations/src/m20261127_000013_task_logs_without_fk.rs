//! The log entries' foreign key to their task leaves PostgreSQL. Every entry is written by a statement (or
//! transaction) that has just changed or locked its task's row: a creation, a transition fenced by its guard,
//! a worker's report fenced by its run (see `store::queue`); and retention deletes a task's entries in the
//! transaction that deletes the task. So the key never refused an entry, while its check cost each entry a
//! query of its own and a lock on the task's row: three entries per task on the hot paths. Measured with
//! `queue_bench` (per call, pg_stat_statements, same machine): the end of a run 0.29 → 0.25 ms and 118 → 71
//! buffers read, the claim 0.28 → 0.26 ms, while the bare-SQL statements of the same runs were not faster.
//! SQLite keeps the key: dropping it there means rebuilding the table, and its check is a lookup in-process.
//! From here on the rule is the code's to keep: a new path writing entries must write them under its task's
//! row, and whatever deletes tasks must delete their entries (a `DELETE FROM tasks` by hand leaves them).

use crate::steps::Sql;

pub(crate) const MIGRATION: Sql = Sql {
    file: file!(),
    postgres_only: true,
    up: &["ALTER TABLE task_logs DROP CONSTRAINT IF EXISTS fk_task_logs_task"],
    down: &[
        // Entries of tasks deleted while the key was away would make the key fail: they go first.
        "DELETE FROM task_logs AS l WHERE NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = l.task_id)",
        // Added unchecked, then checked without blocking writes meanwhile (a large log takes a while).
        "ALTER TABLE task_logs ADD CONSTRAINT fk_task_logs_task FOREIGN KEY (task_id) \
         REFERENCES tasks (id) ON DELETE CASCADE NOT VALID",
        "ALTER TABLE task_logs VALIDATE CONSTRAINT fk_task_logs_task",
    ],
};
