//! Cross-replica wake-up (PostgreSQL only): whenever a task becomes claimable — inserted `pending`, or put back
//! to `pending` — the database notifies channel `task_executor_queue`, so that claims long-polling on any API
//! replica look at once instead of at their next poll tick. A row trigger with a `WHEN`, so that claims and
//! completions (the other updates of `tasks`) notify nobody; PostgreSQL folds identical notifications of one
//! transaction into one, so a batch of 10,000 tasks is one wake-up, sent at commit.

use crate::steps::Sql;

pub(crate) const MIGRATION: Sql = Sql {
    file: file!(),
    postgres_only: true,
    up: &[
        "CREATE OR REPLACE FUNCTION task_executor_queue_notify() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('task_executor_queue', ''); RETURN NULL; END $$",
        "CREATE TRIGGER tasks_queue_notify AFTER INSERT OR UPDATE OF status ON tasks FOR EACH ROW \
         WHEN (NEW.status = 'pending') EXECUTE FUNCTION task_executor_queue_notify()",
    ],
    down: &[
        "DROP TRIGGER IF EXISTS tasks_queue_notify ON tasks",
        "DROP FUNCTION IF EXISTS task_executor_queue_notify()",
    ],
};
