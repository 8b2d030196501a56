//! The request rate limit: a token bucket per API token (or, for requests without one, per client address),
//! `RATE_LIMIT_PER_SECOND` on average with `RATE_LIMIT_BURST` at once, kept by `governor` (GCRA: one atomic
//! compare-and-swap per request, no timer, no lock). Buckets idle long enough to be full again are dropped
//! every minute, so that many client addresses do not grow memory for ever.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Token(String),
    Address(IpAddr),
    Unknown,
}

pub struct RateLimiter {
    inner: DefaultKeyedRateLimiter<Key>,
}

impl RateLimiter {
    /// A limiter, or none when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Some(Arc::new(RateLimiter {
            inner: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }))
    }

    /// Takes one request from the caller's bucket, or says how many seconds to wait (at least 1).
    pub fn check(&self, caller: &Caller, address: Option<IpAddr>) -> Result<(), u64> {
        let key = match (caller.token_name(), address) {
            (Some(name), _) => Key::Token(name.to_owned()),
            (None, Some(ip)) => Key::Address(ip),
            (None, None) => Key::Unknown,
        };
        self.inner.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.inner.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Drops full buckets every minute until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            self.inner.retain_recent();
            self.inner.shrink_to_fit();
        }
    }
}
