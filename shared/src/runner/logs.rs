//! How a run's log entries travel from the runner to the queue. The channel is bounded and never blocks the
//! runner: entries beyond its capacity (a runner logging faster than the queue takes them) are dropped and
//! counted, and an entry saying how many follows. Batches are cut by count and by size, from entries made
//! to fit the limits (`crate::limits`), so that the server never refuses one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use super::entry;
use crate::{LogLevel, api::NewLogEntry, limits};

/// Entries waiting between a runner and the queue, at most.
pub const LOG_CHANNEL: usize = 10_000;
/// Log entries in one batch at most.
pub const LOG_BATCH: usize = 200;
/// How long a batch waits for more entries before it is sent.
pub const LOG_LINGER: Duration = Duration::from_millis(250);

/// Where a run's log entries go, as they happen.
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<NewLogEntry>,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    /// Queues an entry; when the channel is full the entry is dropped and counted.
    pub fn send(&self, e: NewLogEntry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The other end: batches ready to send.
pub struct LogBatches {
    rx: mpsc::Receiver<NewLogEntry>,
    dropped: Arc<AtomicU64>,
    told: u64,
    /// An entry taken that did not fit the last batch.
    carry: Option<NewLogEntry>,
}

/// A channel of `capacity` entries.
pub fn log_channel(capacity: usize) -> (LogSender, LogBatches) {
    let (tx, rx) = mpsc::channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        LogSender {
            tx,
            dropped: dropped.clone(),
        },
        LogBatches {
            rx,
            dropped,
            told: 0,
            carry: None,
        },
    )
}

impl LogBatches {
    /// The next entry, fitted to the limits; a note on dropped entries first when there were new drops.
    async fn next_entry(&mut self, wait: bool) -> Option<NewLogEntry> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > self.told {
            let n = dropped - self.told;
            self.told = dropped;
            return Some(entry(
                LogLevel::Warning,
                format!(
                    "{n} log entries were dropped: the runner logged faster than they could be delivered"
                ),
                Some(serde_json::json!({"dropped": n})),
            ));
        }
        let mut e = match self.carry.take() {
            Some(e) => e,
            None if wait => self.rx.recv().await?,
            None => self.rx.try_recv().ok()?,
        };
        limits::fit_entry(&mut e);
        Some(e)
    }

    /// The next batch: waits for one entry, then takes what follows within [`LOG_LINGER`], up to
    /// [`LOG_BATCH`] entries and [`limits::MAX_BATCH_BYTES`]. `None` once the run is over and every entry
    /// was taken.
    pub async fn next_batch(&mut self) -> Option<Vec<NewLogEntry>> {
        let first = self.next_entry(true).await?;
        let mut size = limits::entry_len(&first);
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LOG_LINGER);
        tokio::pin!(linger);
        while batch.len() < LOG_BATCH {
            let next = match self.next_entry(false).await {
                Some(e) => Some(e),
                None => tokio::select! {
                    e = self.rx.recv() => match e {
                        Some(mut e) => {
                            limits::fit_entry(&mut e);
                            Some(e)
                        }
                        None => None,
                    },
                    _ = &mut linger => None,
                },
            };
            let Some(e) = next else { break };
            let len = limits::entry_len(&e);
            if size + len > limits::MAX_BATCH_BYTES {
                self.carry = Some(e);
                break;
            }
            size += len;
            batch.push(e);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_cut_by_size_and_drops_are_told() {
        let (tx, mut batches) = log_channel(1000);
        for i in 0..40 {
            tx.send(entry(
                LogLevel::Info,
                format!("{i}:{}", "x".repeat(15_000)),
                None,
            ));
        }
        drop(tx);
        let mut seen = 0;
        while let Some(b) = batches.next_batch().await {
            let size: usize = b.iter().map(limits::entry_len).sum();
            assert!(size <= limits::MAX_BATCH_BYTES, "{size}");
            seen += b.len();
        }
        assert_eq!(seen, 40, "cut, not lost");

        let (tx, mut batches) = log_channel(3);
        for i in 0..10 {
            tx.send(entry(LogLevel::Info, format!("{i}"), None));
        }
        drop(tx);
        let first = batches.next_batch().await.unwrap();
        assert!(
            first[0].message.starts_with("7 log entries were dropped"),
            "{:?}",
            first[0].message
        );
        assert_eq!(first.len(), 4);
    }
}
