//! A lease id per claim (the fencing token of a run: never the same twice for a task, unlike `attempt`, which
//! an uncounted requeue gives back), and how many times a task went back to the queue without counting an
//! attempt (bounded, so that a task that can never be reported cannot loop).

use sea_orm_migration::prelude::*;

use crate::steps::{add_column, drop_column};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    LeaseId,
    UncountedRequeues,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            Tasks::Table,
            ColumnDef::new(Tasks::LeaseId).uuid().null(),
        )
        .await?;
        add_column(
            manager,
            Tasks::Table,
            ColumnDef::new(Tasks::UncountedRequeues)
                .integer()
                .not_null()
                .default(0),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Tasks::UncountedRequeues, Tasks::LeaseId] {
            drop_column(manager, Tasks::Table, col).await?;
        }
        Ok(())
    }
}
