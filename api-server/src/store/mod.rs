//! Persistence: every SQL statement and sea-orm query of the service lives below this module, in functions
//! that take a connection or a transaction. Handlers and background loops call these and never build queries.

pub mod batches;
pub mod entity;
pub mod hot;
pub mod logs;
pub mod queue;
pub mod retention;
pub mod script;
pub mod stats;
pub mod tasks;
pub mod tokens;
pub mod workers;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use migration::MigratorTrait;
use sea_orm::{ConnectOptions, Database, DatabaseBackend, DatabaseConnection, DbErr};

/// What went wrong in a store function, by the kinds callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task {0} not found")]
    TaskNotFound(uuid::Uuid),
    #[error("worker {0} not found")]
    WorkerNotFound(String),
    #[error("batch {0} not found")]
    BatchNotFound(uuid::Uuid),
    /// The worker said goodbye or went silent: it must register again before it heartbeats or claims.
    #[error("worker {0} is offline: register it again")]
    WorkerOffline(String),
    /// The operation does not fit the current state; `kind` is the error `type` a client sees.
    #[error("{detail}")]
    Conflict { kind: &'static str, detail: String },
    /// Too much at once: try again after `retry_after` seconds (429); `kind` is the error `type`.
    #[error("{detail}")]
    TooMany {
        kind: &'static str,
        detail: String,
        retry_after: u64,
    },
    /// The queue is full: try again after `retry_after` seconds (503 `queue_full`).
    #[error("{detail}")]
    QueueFull { detail: String, retry_after: u64 },
    /// A value that passed the HTTP layer's checks but not the store's.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Now, at the precision PostgreSQL keeps (microseconds), so that a value read back equals the one written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Opens the pool and applies pending migrations.
///
/// SQLite (the embedded default) gets a single connection: SQLite serializes writers anyway, and one
/// connection makes every transaction (the claim among them) free of lock upgrades and `SQLITE_BUSY`.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<DatabaseConnection> {
    connect_with(url, max_connections, false).await
}

/// [`connect`], with SQLite syncing every commit to disk when `full_sync` (`SQLITE_SYNCHRONOUS=full`): by
/// default (WAL, synchronous=NORMAL) a commit survives a crash of the process but a power loss may take back
/// the last ones.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    full_sync: bool,
) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        // A local file cannot lose its connection: no ping (a hand-off to SQLite's thread) before each use.
        opts.max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(if full_sync {
                        sea_orm::sqlx::sqlite::SqliteSynchronous::Full
                    } else {
                        sea_orm::sqlx::sqlite::SqliteSynchronous::Normal
                    })
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
            });
    } else {
        // A connection in use is known to be alive; one idle for a while is pinged before it is handed out
        // (a ping at every checkout would double the round trips of every one-statement hot path).
        opts.max_connections(max_connections)
            .min_connections(1)
            .test_before_acquire_if_idle_for(Duration::from_secs(30));
    }
    let db = Database::connect(opts)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
    migration::Migrator::up(&db, None)
        .await
        .context("cannot apply the database migrations")?;
    Ok(db)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Why a worker's sign of life changed nothing: it does not exist, or it is offline.
pub async fn absent_or_offline(
    conn: &impl sea_orm::ConnectionTrait,
    worker_id: &str,
) -> StoreError {
    use sea_orm::EntityTrait;
    match entity::worker::Entity::find_by_id(worker_id)
        .one(conn)
        .await
    {
        Ok(Some(_)) => StoreError::WorkerOffline(worker_id.to_owned()),
        Ok(None) => StoreError::WorkerNotFound(worker_id.to_owned()),
        Err(e) => e.into(),
    }
}

/// Whether the backend is PostgreSQL (else SQLite): the few statements that differ branch on this.
pub fn is_postgres(db: &impl sea_orm::ConnectionTrait) -> bool {
    db.get_database_backend() == DatabaseBackend::Postgres
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(
            super::redact("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }
}
