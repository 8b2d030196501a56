//! The queue: how tasks move between states, split by concern — claiming ([`claim`]), what workers report
//! ([`reports`]: heartbeats, logs, outcomes, releases) and recovery from lost workers and overdue tasks
//! ([`recovery`]). Every state change goes through [`transition::apply`], which does the guarded update and
//! writes the log entry together.
//!
//! Every write a worker makes to a task is fenced by the run it holds:
//! `WHERE id = … AND worker_id = … AND attempt = … AND status = 'running'`. Zero rows updated means the
//! worker no longer holds that run, and the answer says why; the task is left unchanged. So a worker that
//! lost its lease can never overwrite the outcome of a newer attempt.

pub mod claim;
pub mod recovery;
pub mod reports;
pub mod transition;

use chrono::Duration;
use sea_orm::DbBackend;

pub use claim::{Claim, claim};
pub use recovery::{ReapReport, reap, release_lost};
pub use reports::{
    Beat, HeartbeatOutcome, Outcome, Recorded, finish, give_back, record_heartbeats, report_logs,
    settle_heartbeat,
};
pub use transition::RunRef;

/// Timing of leases and recovery.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A worker silent this long is offline; a claim or heartbeat extends a task's lease by this much.
    pub heartbeat_timeout: Duration,
    /// A task held for less than this is not requeued for being absent from a heartbeat (the heartbeat may
    /// have been sent just before the claim's answer arrived).
    pub claim_grace: Duration,
    /// Runs of a task at most when its worker is lost.
    pub max_attempts: i32,
    /// Times a task may go back to the queue without counting an attempt before it fails instead.
    pub max_uncounted_requeues: i32,
    /// Log entries a task's workers may write; past that they are dropped and counted.
    pub max_log_entries: i64,
}

/// The `n`th (from 1) parameter of a raw statement.
fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        // Numbered, never bare `?`: sqlx counts bare and numbered SQLite parameters separately.
        _ => format!("?{n}"),
    }
}
