//! Retries of requests to the queue: exponential backoff with jitter (backon), for as long as the queue is
//! unavailable and the caller has not given up. The one retry policy of both kinds of worker.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::{Observer, QueueError};

/// Delays between tries: 200 ms doubling up to 30 s, each plus a random jitter of up to itself, so that many
/// workers coming back after a server restart do not arrive in step. Never runs out by itself.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// A fresh sequence of [`backoff`] delays, for loops that pace themselves (the claim loop after errors).
pub fn delays() -> impl Iterator<Item = Duration> {
    backoff().build()
}

/// Delays between checks of a slot whose runner cannot run: like [`backoff`], at most 10 s apart, so that a
/// fixed host is back at work soon.
pub fn probe_delays() -> impl Iterator<Item = Duration> {
    backoff().with_max_delay(Duration::from_secs(5)).build()
}

/// Runs `op` until it succeeds or fails in a way that is not [`QueueError::Unavailable`], retrying with
/// [`backoff`] until `give_up` fires; then the last error is returned. Each retry is told to `observer`.
pub async fn retry<T, F, Fut>(
    what: &str,
    give_up: &CancellationToken,
    observer: &dyn Observer,
    op: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let wake = give_up.clone();
    let mut tries: u32 = 0;
    op.retry(backoff())
        .sleep(move |d| {
            let wake = wake.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = wake.cancelled() => {}
                }
            }
        })
        .when(|e| matches!(e, QueueError::Unavailable(_)) && !give_up.is_cancelled())
        .notify(|e, delay| {
            observer.retried();
            if tries.is_multiple_of(10) {
                tracing::warn!(error = %e, tries = tries + 1, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
            }
            tries += 1;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let d: Vec<Duration> = delays().take(20).collect();
        assert!(d[0] >= Duration::from_millis(200) && d[0] <= Duration::from_millis(400));
        assert!(d[3] >= Duration::from_millis(1600), "{d:?}");
        assert!(d.iter().all(|x| *x <= Duration::from_secs(60)), "{d:?}");
    }
}
