//! The worker protocol over HTTP: the daemon's [`Queue`]. Timeouts on every call, kept-alive connections, the
//! daemon's version in the User-Agent, and each answer classified as the shared worker expects (retries,
//! backoff and everything else live in `task_executor_shared::worker`).

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Serialize, de::DeserializeOwned};
use task_executor_shared::{
    api::{
        self, ClaimedTask, CompleteTaskRequest, ErrorBody, FailTaskRequest, HeartbeatRequest,
        HeartbeatResponse, NewLogEntry, RegisterWorkerRequest, Task,
    },
    worker::{Queue, QueueError},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    worker_id: String,
    timeout: Duration,
}

fn unreachable(e: reqwest::Error) -> QueueError {
    QueueError::Unavailable(format!("the API server is unreachable: {e}"))
}

/// An error answer, as the worker classifies it.
fn classify(status: StatusCode, kind: String, detail: String) -> QueueError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        QueueError::Unavailable(format!("the API server answered {status}: {detail}"))
    } else if (status == StatusCode::NOT_FOUND && kind == "worker_not_found")
        || (status == StatusCode::CONFLICT && kind == "worker_offline")
    {
        QueueError::UnknownWorker
    } else if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
        QueueError::Refused { kind, detail }
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // A revoked token cuts the daemon off: its runs stop at the lease cut-off and the server requeues
        // them.
        QueueError::Fatal(format!(
            "the API server refused this daemon's token ({status}, {kind}): {detail}"
        ))
    } else {
        QueueError::Fatal(format!(
            "the API server answered {status}: {detail} ({kind})"
        ))
    }
}

impl Client {
    /// A client for the daemon's settings (server, worker id, timeout, token).
    pub fn from_config(cfg: &crate::config::Config) -> anyhow::Result<Self> {
        Self::new(
            &cfg.server(),
            &cfg.worker_id(),
            Duration::from_secs(cfg.request_timeout_seconds),
            cfg.token()?.as_ref().map(|t| t.expose()),
        )
    }

    pub fn new(
        base: &str,
        worker_id: &str,
        timeout: Duration,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?;
            // Kept out of reqwest's and hyper's debug output.
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
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

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, QueueError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let (kind, detail) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.kind, b.detail),
            Err(_) => ("unknown".to_owned(), text.chars().take(500).collect()),
        };
        Err(classify(status, kind, detail))
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: String,
        body: &B,
    ) -> Result<R, QueueError> {
        let resp = self
            .http
            .post(url)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?.json().await.map_err(unreachable)
    }

    /// Whether the server answers at all (`/health`, 200 or 503).
    pub async fn ping(&self) -> Result<StatusCode, QueueError> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(unreachable)?;
        Ok(resp.status())
    }

    /// The daemon's token as the server sees it (`GET /api/v1/auth/whoami`).
    pub async fn whoami(&self) -> Result<api::Identity, QueueError> {
        let resp = self
            .http
            .get(format!("{}/api/v1/auth/whoami", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(unreachable)?;
        Self::check(resp).await?.json().await.map_err(unreachable)
    }

    /// Fails when the server refuses the token or the token may not act as this worker; passes when the
    /// server cannot be asked now (registration retries then). Says what it found.
    pub async fn check_token(&self) -> Result<String, String> {
        match self.whoami().await {
            Ok(id) => self.judge_identity(id),
            Err(QueueError::Refused { kind, detail }) if kind == "not_found" => Err(format!(
                "the API server has no /api/v1/auth/whoami ({detail}): it is older than this daemon"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether a token the server described may run this worker.
    pub fn judge_identity(&self, id: api::Identity) -> Result<String, String> {
        match id {
            id if !id.auth_enabled => Ok("the API server asks for no token".to_owned()),
            id => {
                let name = id.name.unwrap_or_default();
                match (id.role, id.worker_pattern) {
                    (Some(task_executor_shared::Role::Admin), _) => {
                        Ok(format!("token `{name}` (admin) is accepted"))
                    }
                    (Some(task_executor_shared::Role::Worker), Some(p))
                        if task_executor_shared::validate::glob_matches(&p, &self.worker_id) =>
                    {
                        Ok(format!(
                            "token `{name}` (worker, `{p}`) may act as {}",
                            self.worker_id
                        ))
                    }
                    (Some(task_executor_shared::Role::Worker), p) => Err(format!(
                        "token `{name}` may act only as workers matching `{}`, not as {}: set WORKER_ID, or \
                         create the token with a --worker-pattern that covers it",
                        p.unwrap_or_default(),
                        self.worker_id
                    )),
                    (role, _) => Err(format!(
                        "token `{name}` has role `{}`: a worker daemon needs a `worker` token",
                        role.map(|r| r.as_str()).unwrap_or("none")
                    )),
                }
            }
        }
    }

    async fn claim_now(&self, wait: Duration) -> Result<Option<ClaimedTask>, QueueError> {
        let resp = self
            .http
            .post(self.url("/claim"))
            .query(&[("wait_seconds", wait.as_secs())])
            .timeout(self.timeout + wait)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Self::check(resp)
            .await?
            .json()
            .await
            .map(Some)
            .map_err(unreachable)
    }
}

impl Queue for Client {
    fn worker_id(&self) -> &str {
        &self.worker_id
    }

    async fn register(&self, req: &RegisterWorkerRequest) -> Result<Duration, QueueError> {
        let url = format!("{}/api/v1/workers/register", self.base);
        let r: api::RegisterWorkerResponse = self.post(url, req).await?;
        Ok(Duration::from_secs(r.lease_seconds.max(1) as u64))
    }

    async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, QueueError> {
        self.post(self.url("/heartbeat"), req).await
    }

    /// A long poll; when `stop` fires first the request is dropped.
    async fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<ClaimedTask>, QueueError> {
        tokio::select! {
            _ = stop.cancelled() => Ok(None),
            r = self.claim_now(wait) => r,
        }
    }

    async fn report_logs(
        &self,
        task: Uuid,
        attempt: i32,
        lease_id: Uuid,
        entries: &[NewLogEntry],
    ) -> Result<(), QueueError> {
        let body = api::ReportLogsRequest {
            attempt,
            lease_id,
            entries: entries.to_vec(),
        };
        let _: api::ReportLogsResponse = self
            .post(self.url(&format!("/tasks/{task}/logs")), &body)
            .await?;
        Ok(())
    }

    async fn complete(&self, task: Uuid, body: &CompleteTaskRequest) -> Result<Task, QueueError> {
        self.post(self.url(&format!("/tasks/{task}/complete")), body)
            .await
    }

    async fn fail(&self, task: Uuid, body: &FailTaskRequest) -> Result<Task, QueueError> {
        self.post(self.url(&format!("/tasks/{task}/fail")), body)
            .await
    }

    async fn release(
        &self,
        task: Uuid,
        attempt: i32,
        lease_id: Uuid,
        reason: Option<&str>,
    ) -> Result<Task, QueueError> {
        self.post(
            self.url(&format!("/tasks/{task}/release")),
            &api::ReleaseTaskRequest {
                attempt,
                lease_id,
                reason: reason.map(Into::into),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_for_the_worker() {
        let c = |s: u16, kind: &str| {
            classify(
                StatusCode::from_u16(s).unwrap(),
                kind.to_owned(),
                "d".to_owned(),
            )
        };
        assert!(matches!(c(503, "unavailable"), QueueError::Unavailable(_)));
        assert!(matches!(c(429, "rate_limited"), QueueError::Unavailable(_)));
        assert!(matches!(
            c(404, "worker_not_found"),
            QueueError::UnknownWorker
        ));
        assert!(matches!(
            c(404, "task_not_found"),
            QueueError::Refused { .. }
        ));
        assert!(matches!(
            c(409, "stale_attempt"),
            QueueError::Refused { .. }
        ));
        assert!(matches!(c(422, "validation_error"), QueueError::Fatal(_)));
    }
}
