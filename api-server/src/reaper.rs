//! The reaper: recovery from lost workers and overdue tasks, every third of the heartbeat timeout, in every
//! replica (each change it makes is conditional on the run it saw, so replicas do not collide); and retention,
//! the deletion of tasks finished longer ago than `RETENTION_DAYS`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{dispatch::Dispatcher, store::retention};

/// How often the reaper runs (and internal workers heartbeat): a third of the heartbeat timeout, at most
/// every 10 s, at least every 100 ms.
pub fn interval(heartbeat_timeout: chrono::Duration) -> Duration {
    let third = heartbeat_timeout
        .to_std()
        .unwrap_or(Duration::from_secs(60))
        / 3;
    third.clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Finished tasks deleted per transaction, and transactions per pass, by retention: at most 5,000 tasks a
/// pass, so that a first pass over a large backlog of old tasks does not hold the database for long.
const PRUNE_BATCH: u64 = 500;
const PRUNE_BATCHES_PER_PASS: u32 = 10;

/// Runs recovery passes until `stop`, and with `retention`, deletes what finished longer ago. During the first
/// heartbeat timeout after start, expired leases are not acted on: workers have not had a chance to heartbeat
/// to this server yet.
pub async fn run(
    dispatcher: Dispatcher,
    retention: Option<chrono::Duration>,
    stop: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let grace = dispatcher
        .lease
        .heartbeat_timeout
        .to_std()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(interval(dispatcher.lease.heartbeat_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = dispatcher.reap(started.elapsed() >= grace).await {
            tracing::error!(error = %e, "reaper pass failed");
        }
        if let Some(keep) = retention {
            let cutoff = crate::store::now() - keep;
            match retention::prune(&dispatcher.db, cutoff, PRUNE_BATCH, PRUNE_BATCHES_PER_PASS)
                .await
            {
                Ok(p) if p.tasks > 0 || p.batches > 0 => tracing::info!(
                    tasks = p.tasks,
                    log_entries = p.log_entries,
                    batches = p.batches,
                    before = %cutoff,
                    "deleted finished tasks past the retention period"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    }
}
