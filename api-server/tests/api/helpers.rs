//! The test harness: a real server on 127.0.0.1:0 against a fresh database per test, on SQLite or on a real
//! PostgreSQL (the databases come from `task_executor_shared::testing`).

use std::time::Duration;

use api_server::{Application, Config};
use reqwest::StatusCode;
use serde_json::Value;
use task_executor_shared::runner::RunnerKind;
pub use task_executor_shared::testing::{Backend, drop_pg_database, wait_for};

/// A file of the engine's test fixtures (runner scripts, the fake aiopslab package).
pub fn fixture(name: &str) -> String {
    format!(
        "{}/../shared/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db_url: String,
    _dir: Option<tempfile::TempDir>,
    /// The lease id of each task's last claim through [`TestApp::claim`], for reports.
    leases: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let (db_url, dir) = Self::fresh_database(backend).await;
        Self::spawn_on(db_url, dir, tweak).await
    }

    /// A fresh database URL of the backend, and the folder that holds it (SQLite).
    pub async fn fresh_database(backend: Backend) -> (String, Option<tempfile::TempDir>) {
        task_executor_shared::testing::fresh_database(backend).await
    }

    /// A server on an existing database.
    pub async fn spawn_on(
        db_url: String,
        dir: Option<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config::for_database(&db_url);
        config.bind_addr = Some("127.0.0.1:0".to_owned());
        // Tests that want internal workers turn them on; the others see the queue as they left it.
        config.auto_start_workers = false;
        config.runner.runner = RunnerKind::Simulate;
        config.runner.runner_command = Some(fixture("runner.sh"));
        config.runner.runner_kill_grace_seconds = Some(1);
        // The contention tests send far more than one user would from one address; the limit's own tests
        // turn it on.
        config.rate_limit_per_second = 0;
        tweak(&mut config);
        let app = Application::build(config)
            .await
            .expect("build the application");
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        TestApp {
            base,
            client,
            db_url,
            _dir: dir,
            leases: Default::default(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// A GET's body as text (CSV, JSON lines, Prometheus), asserting 200.
    pub async fn get_text(&self, path: &str) -> String {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.text().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    /// Cancels a task (`task` is the task, or anything with its `id`), sending no body.
    pub async fn cancel(&self, task: &Value) -> Reply {
        let id = task["id"].as_str().unwrap();
        self.send(
            self.client
                .post(self.url(&format!("/api/v1/tasks/{id}/cancel"))),
        )
        .await
    }

    /// Creates a task and returns it, asserting the 201.
    pub async fn create_task(&self, body: Value) -> Value {
        let r = self.post("/api/v1/tasks", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }
}

/// Asserts the specification's error body, its status and its `type`, and that the request id matches the header.
pub fn assert_error(r: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(r.status, status, "unexpected status, body: {}", r.body);
    assert_eq!(r.body["type"], kind, "unexpected error type: {}", r.body);
    assert!(
        r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        r.body
    );
    let rid = r
        .headers
        .get("x-request-id")
        .expect("X-Request-Id header")
        .to_str()
        .unwrap();
    assert_eq!(
        r.body["request_id"], rid,
        "request_id in the body equals X-Request-Id"
    );
    let obj = r.body.as_object().unwrap();
    assert_eq!(
        obj.len(),
        3,
        "error body has exactly detail, type, request_id: {}",
        r.body
    );
}

impl TestApp {
    /// Registers a worker with the given capabilities, asserting 201 or 200.
    pub async fn register(&self, worker_id: &str, capabilities: Value) -> Reply {
        let r = self
            .post(
                "/api/v1/workers/register",
                serde_json::json!({"worker_id": worker_id, "backend_type": "kind", "capabilities": capabilities}),
            )
            .await;
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::OK,
            "{}",
            r.body
        );
        r
    }

    pub async fn claim(&self, worker_id: &str) -> Reply {
        let r = self
            .post(&format!("/api/v1/workers/{worker_id}/claim"), Value::Null)
            .await;
        if r.status == StatusCode::OK {
            let (id, lease) = (&r.body["id"], &r.body["lease_id"]);
            assert!(
                lease.is_string(),
                "a claim answers its lease id: {}",
                r.body
            );
            self.leases.lock().unwrap().insert(
                id.as_str().unwrap().to_owned(),
                lease.as_str().unwrap().to_owned(),
            );
        }
        r
    }

    /// The lease id of the task's last claim (a random one for a task never claimed here).
    pub fn lease(&self, task: &Value) -> String {
        self.leases
            .lock()
            .unwrap()
            .get(task["id"].as_str().unwrap())
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }

    /// Claims and asserts a task came back.
    pub async fn claim_one(&self, worker_id: &str) -> Value {
        let r = self.claim(worker_id).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "expected a task for {worker_id}: {}",
            r.body
        );
        r.body
    }

    pub async fn heartbeat(&self, worker_id: &str, body: Value) -> Reply {
        self.post(&format!("/api/v1/workers/{worker_id}/heartbeat"), body)
            .await
    }

    pub async fn complete(
        &self,
        worker_id: &str,
        task: &Value,
        attempt: i64,
        result: Value,
    ) -> Reply {
        let id = task["id"].as_str().unwrap();
        self.post(
            &format!("/api/v1/workers/{worker_id}/tasks/{id}/complete"),
            serde_json::json!({"attempt": attempt, "lease_id": self.lease(task), "result": result}),
        )
        .await
    }

    /// Reports a failure: `body` holds the error and any other fields; the attempt and lease are added.
    pub async fn fail(&self, worker_id: &str, task: &Value, attempt: i64, body: Value) -> Reply {
        let id = task["id"].as_str().unwrap();
        let mut body = body;
        body["attempt"] = serde_json::json!(attempt);
        body["lease_id"] = serde_json::json!(self.lease(task));
        self.post(
            &format!("/api/v1/workers/{worker_id}/tasks/{id}/fail"),
            body,
        )
        .await
    }

    /// How many items a listing answers (asserting it answered 200).
    pub async fn count(&self, path: &str) -> usize {
        let r = self.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        r.body.as_array().expect("a list").len()
    }

    /// A task's log entries, in order (`task` is the task, or anything with its `id`).
    pub async fn log_entries(&self, task: &Value) -> Vec<Value> {
        self.get(&format!(
            "/api/v1/tasks/{}/logs?limit=10000",
            task["id"].as_str().unwrap()
        ))
        .await
        .body
        .as_array()
        .unwrap()
        .clone()
    }

    /// The messages of a task's log, in order.
    pub async fn log_messages(&self, task: &Value) -> Vec<String> {
        self.log_entries(task)
            .await
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn task(&self, id: &Value) -> Value {
        let r = self
            .get(&format!("/api/v1/tasks/{}", id.as_str().unwrap()))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.body
    }

    /// Polls `check` until it returns `Some`, for up to 20 s (time-based behaviour is configured short; this
    /// bound only stops a broken test from hanging).
    pub async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        wait_for(what, Duration::from_secs(20), check).await
    }
}
