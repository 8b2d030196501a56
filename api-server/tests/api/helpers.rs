//! The test harness: a real server on 127.0.0.1:0 against a fresh database per test, on SQLite or on a real
//! PostgreSQL. Without `TEST_DATABASE_URL`, a throwaway PostgreSQL cluster is started once per test run from
//! the binaries on this machine, and removed when the test process ends (even when it is killed).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use api_server::{Application, Config};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use task_executor_shared::runner::RunnerKind;

/// A file of the engine's test fixtures (runner scripts, the fake aiopslab package).
pub fn fixture(name: &str) -> String {
    format!(
        "{}/../shared/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend from an `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

struct PgServer {
    admin_url: String,
    /// The guard process removes the cluster when this pipe closes, i.e. when the test process ends.
    _guard: Mutex<Child>,
}

static PG: OnceLock<PgServer> = OnceLock::new();

fn pg_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut candidates: Vec<PathBuf> = on_path;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        candidates.extend(versions);
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file() && d.join("pg_isready").is_file())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, postgres, pg_isready) were not found on PATH nor in \
                 /usr/lib/postgresql/*/bin. Install PostgreSQL (e.g. `apt-get install postgresql-15`) or set \
                 TEST_DATABASE_URL to a server the tests may create databases on."
            )
        })
}

const GUARD_SCRIPT: &str = r#"
set -eu
trap '' INT
dir=$(mktemp -d /tmp/te-test-pg.XXXXXX)
chmod 755 "$dir"
run() { "$@"; }
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run() { runuser -u postgres -- "$@"; }; fi
run "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
run "$BIN/postgres" -D "$dir/data" -p "$PORT" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 \
    >"$dir/server.log" 2>&1 &
i=0
until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
  i=$((i+1)); if [ $i -gt 300 ]; then cat "$dir/server.log" >&2; exit 1; fi; sleep 0.1
done
echo ready
cat >/dev/null || true
if [ -f "$dir/data/postmaster.pid" ]; then kill -INT "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true; fi
i=0; while [ -f "$dir/data/postmaster.pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
rm -rf "$dir"
"#;

fn start_pg() -> PgServer {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        return PgServer {
            admin_url: url,
            _guard: Mutex::new(Command::new("true").spawn().expect("spawn true")),
        };
    }
    let bin = pg_bin_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .env("BIN", &bin)
        .env("PORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start sh for the test PostgreSQL");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read from the PostgreSQL guard");
    assert_eq!(
        line.trim(),
        "ready",
        "the throwaway PostgreSQL did not start (binaries in {}); see the messages above",
        bin.display()
    );
    PgServer {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _guard: Mutex::new(child),
    }
}

/// A URL for a new, empty PostgreSQL database.
pub async fn fresh_pg_database() -> String {
    let admin_url = PG.get_or_init(start_pg).admin_url.clone();
    let name = format!("te_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    admin.close().await.ok();
    let base = admin_url
        .rsplit_once('/')
        .expect("database URL has a path")
        .0;
    format!("{base}/{name}")
}

/// Drops a PostgreSQL database under a running server (to make it stop answering).
pub async fn drop_pg_database(url: &str) {
    let admin_url = PG.get().expect("pg started").admin_url.clone();
    let name = url.rsplit('/').next().unwrap();
    let admin = Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    admin.close().await.ok();
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db_url: String,
    _dir: Option<tempfile::TempDir>,
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
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                (url, Some(dir))
            }
            Backend::Postgres => (fresh_pg_database().await, None),
        }
    }

    /// A server on an existing database.
    pub async fn spawn_on(
        db_url: String,
        dir: Option<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config::for_database(&db_url);
        config.bind_addr = "127.0.0.1:0".to_owned();
        // Tests that want internal workers turn them on; the others see the queue as they left it.
        config.auto_start_workers = false;
        config.runner.runner = RunnerKind::Simulate;
        config.runner.runner_command = Some(fixture("runner.sh"));
        config.runner.runner_kill_grace_seconds = 1;
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

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(&body))
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
        self.post(&format!("/api/v1/workers/{worker_id}/claim"), Value::Null)
            .await
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
            serde_json::json!({"attempt": attempt, "result": result}),
        )
        .await
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

/// Polls `check` every 100 ms until it returns `Some`; fails the test after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
