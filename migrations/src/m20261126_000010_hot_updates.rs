//! The frequent small updates stay in place (PostgreSQL "HOT" updates: no new index entries, the old version
//! pruned from the page as it goes), so the tables do not swell between two runs of autovacuum:
//!
//! - `workers`: the index on `last_heartbeat` goes. Every heartbeat and claim writes that column, so with the
//!   index each one added an entry to both indexes of the table and a new row version elsewhere: 16 workers
//!   heartbeating flat out left 142 pages and 40,000 dead versions for 16 rows within seconds, and each
//!   heartbeat read through them. The readers of `last_heartbeat` (the reaper, the list of live workers) scan
//!   a table of one row per worker. Half of each page is left free for the new versions (PostgreSQL).
//! - `tasks`: 15 % of each page left free, so that the updates a running task gets all along (its lease
//!   extended at each heartbeat, its count of log entries at each batch of logs), which change no indexed
//!   column, stay on their page. Pages written before keep their old fill until rewritten.

use sea_orm_migration::prelude::*;

use crate::steps::{postgres_sql, run_sql};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, &["DROP INDEX IF EXISTS idx_workers_heartbeat"]).await?;
        postgres_sql(
            manager,
            &[
                "ALTER TABLE workers SET (fillfactor = 50)",
                "ALTER TABLE tasks SET (fillfactor = 85)",
            ],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        postgres_sql(
            manager,
            &[
                "ALTER TABLE workers RESET (fillfactor)",
                "ALTER TABLE tasks RESET (fillfactor)",
            ],
        )
        .await?;
        run_sql(
            manager,
            &["CREATE INDEX idx_workers_heartbeat ON workers (last_heartbeat)"],
        )
        .await
    }
}
