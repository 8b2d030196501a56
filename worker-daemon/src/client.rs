//! The HTTP client of the worker protocol: timeouts on every call, kept-alive connections, the daemon's
//! version in the User-Agent, and retries with exponential backoff and jitter for what can be retried.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Serialize, de::DeserializeOwned};
use task_executor_shared::api::{
    self, ErrorBody, HeartbeatRequest, HeartbeatResponse, NewLogEntry, RegisterWorkerRequest, Task,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or did not answer in time: retry.
    #[error("the API server is unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered with an error.
    #[error("the API server answered {status}: {detail} ({kind})")]
    Status {
        status: StatusCode,
        kind: String,
        detail: String,
    },
}

impl ClientError {
    /// Worth retrying: the network, or the server failing (5xx, 429).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    pub fn is_status(&self, s: StatusCode) -> bool {
        matches!(self, ClientError::Status { status, .. } if *status == s)
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    worker_id: String,
    timeout: Duration,
}

impl Client {
    pub fn new(base: &str, worker_id: &str, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("worker-daemon/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            worker_id: worker_id.to_owned(),
            timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/workers/{}{path}", self.base, self.worker_id)
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let (kind, detail) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.kind, b.detail),
            Err(_) => ("unknown".to_owned(), text.chars().take(500).collect()),
        };
        Err(ClientError::Status {
            status,
            kind,
            detail,
        })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: String,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self
            .http
            .post(url)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await?;
        Ok(Self::check(resp).await?.json().await?)
    }

    /// Whether the server answers at all (`/health`, 200 or 503).
    pub async fn ping(&self) -> Result<StatusCode, ClientError> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(self.timeout)
            .send()
            .await?;
        Ok(resp.status())
    }

    pub async fn register(&self, req: &RegisterWorkerRequest) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/workers/register", self.base);
        let _: api::RegisterWorkerResponse = self.post(url, req).await?;
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.post(self.url("/heartbeat"), req).await
    }

    /// A task, or none within `wait` (long poll).
    pub async fn claim(&self, wait: Duration) -> Result<Option<Task>, ClientError> {
        let resp = self
            .http
            .post(self.url("/claim"))
            .query(&[("wait_seconds", wait.as_secs())])
            .timeout(self.timeout + wait)
            .send()
            .await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(Self::check(resp).await?.json().await?))
    }

    pub async fn logs(
        &self,
        task: Uuid,
        attempt: i32,
        entries: &[NewLogEntry],
    ) -> Result<(), ClientError> {
        let body = api::ReportLogsRequest {
            attempt,
            entries: entries.to_vec(),
        };
        let _: api::ReportLogsResponse = self
            .post(self.url(&format!("/tasks/{task}/logs")), &body)
            .await?;
        Ok(())
    }

    pub async fn complete(
        &self,
        task: Uuid,
        body: &api::CompleteTaskRequest,
    ) -> Result<Task, ClientError> {
        self.post(self.url(&format!("/tasks/{task}/complete")), body)
            .await
    }

    pub async fn fail(&self, task: Uuid, body: &api::FailTaskRequest) -> Result<Task, ClientError> {
        self.post(self.url(&format!("/tasks/{task}/fail")), body)
            .await
    }

    pub async fn release(&self, task: Uuid, attempt: i32) -> Result<Task, ClientError> {
        self.post(
            self.url(&format!("/tasks/{task}/release")),
            &api::ReleaseTaskRequest { attempt },
        )
        .await
    }
}

/// The delay before retry number `n` (0-based): 200 ms doubling up to 30 s, with ±25 % jitter so that many
/// daemons coming back after a server restart do not arrive in step.
pub fn backoff(n: u32) -> Duration {
    let base = 200u64.saturating_mul(1u64 << n.min(8)).min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    let jitter = (nanos % 500) as i64 - 250; // -250..250 per mille of a half
    let ms = (base as i64 + base as i64 * jitter / 1000).max(50) as u64;
    Duration::from_millis(ms)
}

/// Retries `op` while it fails in a retryable way, until `give_up` fires. Returns the last error otherwise.
/// Each retry is counted in `retries`.
pub async fn retry<T, F, Fut>(
    what: &str,
    give_up: &CancellationToken,
    retries: &opentelemetry::metrics::Counter<u64>,
    mut op: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut n = 0;
    loop {
        match op().await {
            Err(e) if e.retryable() && !give_up.is_cancelled() => {
                retries.add(1, &[]);
                if n == 0 || n % 10 == 0 {
                    tracing::warn!(error = %e, attempt = n + 1, "{what} failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(n)) => {}
                    _ = give_up.cancelled() => {}
                }
                n += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(super::backoff(0).as_millis() <= 250);
        assert!(super::backoff(3).as_millis() >= 1200);
        assert!(super::backoff(30).as_millis() <= 37_500);
    }
}
