//! The schema of the task executor. The API server applies pending migrations when it starts; the `migrate`
//! binary of this crate applies (or inspects) them on their own: `DATABASE_URL=… migrate up`.
//! A migration that has landed is never edited: add a new one.

pub use sea_orm_migration::prelude::*;

mod steps;

mod m20261126_000001_create_tables;
mod m20261126_000002_task_leases;
mod m20261126_000003_worker_instances;
mod m20261126_000004_log_caps;
mod m20261126_000005_worker_status_reason;
mod m20261126_000006_api_tokens;
mod m20261126_000007_batches_and_events;
mod m20261126_000008_completed_index;
mod m20261126_000009_queue_notify;
mod m20261126_000010_hot_updates;
mod m20261126_000011_running_count;
mod m20261126_000012_notify_requeues_only;
mod m20261127_000013_task_logs_without_fk;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_tables::Migration),
            Box::new(m20261126_000002_task_leases::Migration),
            Box::new(m20261126_000003_worker_instances::Migration),
            Box::new(m20261126_000004_log_caps::Migration),
            Box::new(m20261126_000005_worker_status_reason::Migration),
            Box::new(m20261126_000006_api_tokens::Migration),
            Box::new(m20261126_000007_batches_and_events::Migration),
            Box::new(m20261126_000008_completed_index::Migration),
            Box::new(m20261126_000009_queue_notify::Migration),
            Box::new(m20261126_000010_hot_updates::Migration),
            Box::new(m20261126_000011_running_count::Migration),
            Box::new(m20261126_000012_notify_requeues_only::Migration),
            Box::new(m20261127_000013_task_logs_without_fk::Migration),
        ]
    }
}
