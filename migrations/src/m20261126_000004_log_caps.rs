//! How many log entries a task's workers wrote, and how many were dropped past the cap on entries per task
//! (so the log table cannot grow without bound from one runaway runner).

use sea_orm_migration::prelude::*;

use crate::steps::{add_column, drop_column};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    LogEntries,
    LogDropped,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Tasks::LogEntries, Tasks::LogDropped] {
            let column = ColumnDef::new(col)
                .big_integer()
                .not_null()
                .default(0)
                .take();
            add_column(manager, Tasks::Table, column).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Tasks::LogDropped, Tasks::LogEntries] {
            drop_column(manager, Tasks::Table, col).await?;
        }
        Ok(())
    }
}
