//! What the dashboard's overview reads: tasks finished lately (throughput per minute over the last hour,
//! recent failures). A partial index, so that tasks never finished cost nothing in it.

use crate::steps::Sql;

pub(crate) const MIGRATION: Sql = Sql {
    file: file!(),
    postgres_only: false,
    up: &[
        "CREATE INDEX idx_tasks_completed ON tasks (completed_at) WHERE completed_at IS NOT NULL",
    ],
    down: &["DROP INDEX idx_tasks_completed"],
};
