//! The schema of the task executor. The API server applies pending migrations when it starts; the `migrate`
//! binary of this crate applies (or inspects) them on their own: `DATABASE_URL=… migrate up`.
//! A migration that has landed keeps sending the statements it sent: a change of schema is a new migration.

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
            Box::new(m20261126_000008_completed_index::MIGRATION),
            Box::new(m20261126_000009_queue_notify::MIGRATION),
            Box::new(m20261126_000010_hot_updates::Migration),
            Box::new(m20261126_000011_running_count::Migration),
            Box::new(m20261126_000012_notify_requeues_only::Migration),
            Box::new(m20261127_000013_task_logs_without_fk::MIGRATION),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration file is registered once, in the order of its name, under the name of its file: the
    /// name a database records for it, whichever way the migration is written.
    #[test]
    fn migrations_are_named_after_their_files_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| f.strip_suffix(".rs").map(str::to_owned))
            .filter(|f| f.starts_with('m') && f.as_bytes().get(1).is_some_and(u8::is_ascii_digit))
            .collect();
        files.sort();
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert!(names.len() >= 13);
        assert_eq!(names, files);
    }
}
