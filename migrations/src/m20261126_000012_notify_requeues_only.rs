//! The queue's notifications (PostgreSQL only) leave the creation of tasks: `NOTIFY` in a transaction takes a
//! database-wide lock from its commit's start to its end, so creations that notified committed one at a time
//! (measured here: 16 clients inserting did 3,400 commits/s with a `NOTIFY`, 15,600/s without). A replica now
//! announces the tasks it created itself, after their commit and at most one notification at a time
//! (`dispatch::announce`); the trigger keeps telling every replica of the tasks put back to `pending` (requeues:
//! rare, and written by any replica's recovery).

use sea_orm_migration::prelude::*;

use crate::steps::postgres_sql;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate(manager, "UPDATE OF status").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        recreate(manager, "INSERT OR UPDATE OF status").await
    }
}

/// The trigger of migration 9, firing on `events` only.
async fn recreate(manager: &SchemaManager<'_>, events: &str) -> Result<(), DbErr> {
    let create = format!(
        "CREATE TRIGGER tasks_queue_notify AFTER {events} ON tasks FOR EACH ROW \
         WHEN (NEW.status = 'pending') EXECUTE FUNCTION task_executor_queue_notify()"
    );
    postgres_sql(
        manager,
        &[
            "DROP TRIGGER IF EXISTS tasks_queue_notify ON tasks",
            &create,
        ],
    )
    .await
}
