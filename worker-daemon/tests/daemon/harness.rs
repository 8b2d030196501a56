//! Real processes for the daemon's tests: `api-server` processes on a fresh database and `worker-daemon`
//! processes, each with a state directory of its own.

use std::{path::PathBuf, process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use task_executor_shared::testing::wait_for;
use tokio::process::{Child, Command};

pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker-daemon"))
}

/// The `api-server` binary, built beside this one by `cargo test --workspace` (the API server's own
/// integration tests make cargo build it).
pub fn server_bin() -> PathBuf {
    let p = daemon_bin().with_file_name("api-server");
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(child: &Child, sig: Signal) {
    if let Some(id) = child.id() {
        let _ = kill(Pid::from_raw(id as i32), sig);
    }
}

/// An `api-server` process.
pub struct Server {
    pub child: Child,
    pub port: u16,
    db_url: String,
    env: Vec<(String, String)>,
    pub client: reqwest::Client,
}

impl Server {
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Server {
        Self::start_as(db_url, env, None).await
    }

    /// A server whose helpers (`get`, `create`, …) send `token`: for servers with authentication on.
    pub async fn start_as(db_url: &str, env: &[(&str, &str)], token: Option<&str>) -> Server {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        let mut s = Server {
            child: Command::new("true").spawn().unwrap(),
            port: free_port(),
            db_url: db_url.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client: reqwest::Client::builder()
                .no_proxy()
                .default_headers(headers)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        s.spawn().await;
        s
    }

    pub async fn spawn(&mut self) {
        self.child = Command::new(server_bin())
            .env("DATABASE_URL", &self.db_url)
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .env("NUM_INTERNAL_WORKERS", "0")
            .env("LOG_LEVEL", "warning")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (client, ready) = (self.client.clone(), self.url("/ready"));
        wait_for("the api-server is ready", Duration::from_secs(20), || {
            let (client, ready) = (client.clone(), ready.clone());
            async move {
                let r = client.get(ready).send().await.ok()?;
                (r.status() == StatusCode::OK).then_some(())
            }
        })
        .await;
    }

    pub async fn stop(&mut self) {
        signal(&self.child, Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "api-server exits 0 on SIGTERM: {status}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn create(&self, body: Value) -> Value {
        let r = self
            .client
            .post(self.url("/api/v1/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn task(&self, t: &Value) -> Value {
        self.get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
            .await
    }

    /// The messages of a task's log, in order.
    pub async fn log_messages(&self, t: &Value) -> Vec<String> {
        self.get(&format!("/api/v1/tasks/{}/logs", t["id"].as_str().unwrap()))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls until the task has completed (`what` names the wait in a timeout's panic) and returns it.
    pub async fn completed(&self, what: &str, t: &Value) -> Value {
        self.until(what, || async {
            let cur = self.task(t).await;
            (cur["status"] == "completed").then_some(cur)
        })
        .await
    }

    /// Polls until `check` holds, for up to 60 s (processes start slower than in-process servers).
    pub async fn until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        wait_for(what, Duration::from_secs(60), check).await
    }
}

/// A `worker-daemon` process running the simulation.
/// A `worker-daemon` process and its state directory (removed when this is dropped).
pub struct Daemon {
    child: Child,
    pub state: std::sync::Arc<tempfile::TempDir>,
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// A `worker-daemon` process running the simulation, with a state directory of its own.
pub fn daemon(server: &Server, id: &str, env: &[(&str, &str)]) -> Daemon {
    daemon_in(
        server,
        id,
        env,
        std::sync::Arc::new(tempfile::tempdir().unwrap()),
    )
}

/// A `worker-daemon` process on the given state directory (a restart of an earlier one).
pub fn daemon_in(
    server: &Server,
    id: &str,
    env: &[(&str, &str)],
    state: std::sync::Arc<tempfile::TempDir>,
) -> Daemon {
    let child = Command::new(daemon_bin())
        .env("TASK_EXECUTOR_URL", server.url(""))
        .env("WORKER_ID", id)
        .env("TASK_RUNNER", "simulate")
        .env("HEARTBEAT_INTERVAL_SECONDS", "1")
        .env("CLAIM_WAIT_SECONDS", "5")
        .env("LOG_LEVEL", "warning")
        .env("STATE_DIR", state.path())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Daemon { child, state }
}

pub async fn exits_zero(child: &mut Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("the daemon exits")
        .unwrap();
    assert!(status.success(), "the daemon exits 0: {status}");
}

pub fn sim(steps: u64, step_ms: u64) -> Value {
    json!({"simulate": {"steps": steps, "step_ms": step_ms}})
}
