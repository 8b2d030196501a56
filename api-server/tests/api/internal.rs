//! Internal workers: tasks run end to end inside the server with the simulation and with an `exec` runner
//! script; scaling, stopping and starting lose no task and run none twice; SIGTERM leaves nothing running.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use task_executor_shared::runner::RunnerKind;

use crate::helpers::{Backend, TestApp, assert_error, wait_for};

async fn with_workers(backend: Backend, n: u32, runner: RunnerKind) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = n;
        c.runner.runner = runner;
    })
    .await
}

impl TestApp {
    async fn wait_status(&self, task: &Value, statuses: &[&str]) -> Value {
        self.eventually(&format!("task in {statuses:?}"), || async {
            let t = self.task(&task["id"]).await;
            statuses
                .contains(&t["status"].as_str().unwrap())
                .then_some(t)
        })
        .await
    }
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn assert_no_leftover(app: &TestApp, pid_file: &std::path::Path) {
    let pid: u32 = app
        .eventually("the runner wrote its child's pid", || async {
            std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .await;
    app.eventually("the runner's child is gone", || async {
        gone(pid).then_some(())
    })
    .await;
}

async fn simulated_task_runs_with_logs_visible_while_running(backend: Backend) {
    let app = with_workers(backend, 1, RunnerKind::Simulate).await;
    let t = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-1",
                            "parameters": {"simulate": {"steps": 8, "step_ms": 250}}}))
        .await;
    let seen_running_with_steps = app
        .eventually("a running task with step logs", || async {
            let task = app.task(&t["id"]).await;
            let msgs = app.log_messages(&t).await;
            (task["status"] == "running" && msgs.iter().any(|m| m.starts_with("step 1:")))
                .then_some(task)
        })
        .await;
    assert_eq!(seen_running_with_steps["worker_id"], "worker-001-kind");
    let done = app.wait_status(&t, &["completed"]).await;
    assert_eq!(done["result"]["success"], true);
    assert_eq!(done["result"]["simulated"], true);
    assert_eq!(done["result"]["metrics"]["steps_taken"], 8);
    assert!(
        done["result"]["metrics"]["duration_seconds"]
            .as_f64()
            .unwrap()
            >= 2.0
    );
    let msgs = app.log_messages(&t).await;
    assert!(
        msgs.iter().any(|m| m.starts_with("[simulation]")),
        "{msgs:?}"
    );
    assert_eq!(msgs.last().unwrap(), "Task completed");
    let w = app.get("/api/v1/workers/worker-001-kind").await.body;
    assert_eq!(w["tasks_completed"], 1);
    assert_eq!(w["metadata"]["cluster"], "worker-001");
    // Where the result came from, in the task and as the export's columns.
    let p = &done["result"]["provenance"];
    assert_eq!(p["worker_id"], "worker-001-kind", "{p}");
    assert_eq!(p["cluster"], "worker-001");
    assert_eq!(p["runner"], "simulate");
    assert_eq!(p["executor_version"], env!("CARGO_PKG_VERSION"));
    let host = p["host"].as_str().expect("the host").to_owned();
    let rows: Value =
        serde_json::from_str(&app.get_text("/api/v1/tasks/export?format=json").await).unwrap();
    let row = &rows[0];
    assert_eq!(row["host"], host.as_str(), "{row}");
    assert_eq!(row["cluster"], "worker-001");
    assert_eq!(row["executor_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        row["aiopslab_version"],
        Value::Null,
        "a simulation runs no AIOpsLab"
    );
}

async fn simulated_outcomes_end_in_the_right_status(backend: Backend) {
    let app = with_workers(backend, 3, RunnerKind::Simulate).await;
    let sim = |outcome: &str, steps: u64| json!({"simulate": {"steps": steps, "step_ms": 50, "outcome": outcome}});
    let failure = app
        .create_task(json!({"problem_id": "f", "parameters": sim("failure", 2)}))
        .await;
    let crash = app
        .create_task(json!({"problem_id": "c", "parameters": sim("crash", 2)}))
        .await;
    let hang = app
        .create_task(json!({"problem_id": "h", "parameters": {"timeout": 2, "simulate": {"steps": 1, "step_ms": 10, "outcome": "hang"}}}))
        .await;
    let infra = app
        .create_task(json!({"problem_id": "i", "parameters": sim("infrastructure", 2)}))
        .await;
    let failure = app.wait_status(&failure, &["completed"]).await;
    assert_eq!(
        failure["result"]["success"], false,
        "the agent did not solve it: completed, success false"
    );
    assert_eq!(failure["failure_kind"], "agent");
    let crash = app.wait_status(&crash, &["failed"]).await;
    assert!(crash["result"]["error"].as_str().unwrap().contains("crash"));
    assert_eq!(
        crash["failure_kind"], "agent",
        "it crashed once the agent ran"
    );
    // An infrastructure failure is run again (TASK_MAX_ATTEMPTS is 2), then fails as the infrastructure's.
    let infra = app.wait_status(&infra, &["failed"]).await;
    assert_eq!(infra["failure_kind"], "infrastructure", "{infra}");
    assert_eq!(infra["attempt"], 2, "{infra}");
    let msgs = app.log_messages(&infra).await;
    assert_eq!(
        msgs.iter()
            .filter(|m| m.contains("an infrastructure failure on worker")
                && m.contains("retried without counting against the agent"))
            .count(),
        1,
        "{msgs:?}"
    );
    let hang = app.wait_status(&hang, &["timeout"]).await;
    assert_eq!(hang["failure_kind"], "timeout");
    assert!(
        hang["result"]["error"]
            .as_str()
            .unwrap()
            .contains("timeout")
    );

    let steps = app
        .create_task(json!({"problem_id": "s", "parameters": {"max_steps": 2, "simulate": {"steps": 5, "step_ms": 10}}}))
        .await;
    let steps = app.wait_status(&steps, &["failed"]).await;
    assert!(
        steps["result"]["error"]
            .as_str()
            .unwrap()
            .contains("max_steps (2)")
    );

    let cancel = app
        .create_task(json!({"problem_id": "x", "parameters": sim("hang", 1)}))
        .await;
    app.eventually("the hanging task runs", || async {
        app.log_messages(&cancel)
            .await
            .iter()
            .any(|m| m.contains("hangs"))
            .then_some(())
    })
    .await;
    let r = app.cancel(&cancel).await;
    assert_eq!(r.status, StatusCode::OK);
    app.eventually("the worker let the cancelled task go", || async {
        let (_, ws) = internal_status(&app).await;
        ws.iter()
            .all(|w| w["current_task"] != cancel["id"])
            .then_some(())
    })
    .await;
    assert_eq!(app.task(&cancel["id"]).await["status"], "cancelled");
}

async fn exec_runner_outcomes_leave_no_process(backend: Backend) {
    let app = with_workers(backend, 2, RunnerKind::Exec).await;
    let dir = tempfile::tempdir().unwrap();
    let pid = |name: &str| dir.path().join(name);

    let ok = app
        .create_task(
            json!({"problem_id": "ok", "parameters": {"mode": "success", "pid_file": pid("ok")}}),
        )
        .await;
    let fail = app
        .create_task(json!({"problem_id": "fail", "parameters": {"mode": "fail"}}))
        .await;
    let ok = app.wait_status(&ok, &["completed"]).await;
    assert_eq!(ok["result"]["success"], true);
    assert_eq!(ok["result"]["metrics"]["steps_taken"], 2);
    assert_eq!(ok["result"]["env"]["attempt"], "1");
    assert!(
        ok["result"]["env"]["cluster"]
            .as_str()
            .unwrap()
            .starts_with("worker-00")
    );
    assert_no_leftover(&app, &pid("ok")).await;
    let msgs = app.log_messages(&ok).await;
    assert!(
        msgs.contains(&"a warning on stderr".to_owned()) && msgs.contains(&"deploying".to_owned()),
        "{msgs:?}"
    );
    let fail = app.wait_status(&fail, &["failed"]).await;
    assert!(
        fail["result"]["error"]
            .as_str()
            .unwrap()
            .contains("status 3")
    );

    let hang = app
        .create_task(json!({"problem_id": "hang", "parameters": {"mode": "hang", "timeout": 5, "pid_file": pid("hang")}}))
        .await;
    let steps = app
        .create_task(json!({"problem_id": "steps", "parameters": {"mode": "steps", "max_steps": 3, "pid_file": pid("steps")}}))
        .await;
    app.wait_status(&hang, &["timeout"]).await;
    assert_no_leftover(&app, &pid("hang")).await;
    let steps = app.wait_status(&steps, &["failed"]).await;
    assert!(
        steps["result"]["error"]
            .as_str()
            .unwrap()
            .contains("max_steps (3)")
    );
    assert_no_leftover(&app, &pid("steps")).await;

    let stubborn = app
        .create_task(json!({"problem_id": "stubborn", "parameters": {"mode": "stubborn", "pid_file": pid("stubborn")}}))
        .await;
    app.wait_status(&stubborn, &["running"]).await;
    app.eventually("the runner started", || async {
        pid("stubborn").exists().then_some(())
    })
    .await;
    app.cancel(&stubborn).await;
    assert_no_leftover(&app, &pid("stubborn")).await;
    assert_eq!(app.task(&stubborn["id"]).await["status"], "cancelled");
}

async fn internal_status(app: &TestApp) -> (Value, Vec<Value>) {
    let s = app.get("/api/v1/workers/internal/status").await;
    assert_eq!(s.status, StatusCode::OK);
    let ws = s.body["workers"].as_array().unwrap().clone();
    (s.body, ws)
}

async fn scale_stop_start_under_load_lose_nothing(backend: Backend) {
    let app = with_workers(backend, 2, RunnerKind::Simulate).await;
    let (status, ws) = internal_status(&app).await;
    assert_eq!(status["running"], true);
    assert_eq!(status["num_workers"], 2);
    assert_eq!(ws.len(), 2);
    assert_error(
        &app.post("/api/v1/workers/internal/start", json!({})).await,
        StatusCode::CONFLICT,
        "workers_already_running",
    );
    assert_error(
        &app.post("/api/v1/workers/internal/scale", json!({"num_workers": 65}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );

    let mut tasks = Vec::new();
    for i in 0..16 {
        tasks.push(app.create_task(json!({"problem_id": format!("load-{i}"), "parameters": {"simulate": {"steps": 3, "step_ms": 150}}})).await);
    }
    let up = app
        .post("/api/v1/workers/internal/scale", json!({"num_workers": 4}))
        .await;
    assert_eq!(up.status, StatusCode::OK);
    assert_eq!(
        up.body,
        json!({"message": "Workers scaled successfully", "previous_count": 2, "new_count": 4})
    );
    assert_eq!(internal_status(&app).await.0["num_workers"], 4);
    app.eventually("four busy workers", || async {
        let (_, ws) = internal_status(&app).await;
        (ws.iter().filter(|w| w["status"] == "busy").count() == 4).then_some(())
    })
    .await;

    let down = app
        .post("/api/v1/workers/internal/scale", json!({"num_workers": 1}))
        .await;
    assert_eq!(down.body["previous_count"], 4);
    let (status, ws) = internal_status(&app).await;
    assert_eq!(status["num_workers"], 1);
    assert!(
        ws.iter().filter(|w| w["status"] == "stopping").count() >= 1,
        "busy workers finish first: {ws:?}"
    );

    // Stop in the middle: running tasks go back to pending without using an attempt.
    app.eventually("a busy worker", || async {
        let (_, ws) = internal_status(&app).await;
        ws.iter().any(|w| w["status"] == "busy").then_some(())
    })
    .await;
    let stop = app.post("/api/v1/workers/internal/stop", json!({})).await;
    assert_eq!(stop.status, StatusCode::OK);
    assert_eq!(stop.body["message"], "Workers stopped");
    let (status, ws) = internal_status(&app).await;
    assert_eq!(status["running"], false);
    assert_eq!(ws.len(), 0);
    let health = app.get("/health").await.body;
    assert_eq!(
        health["queue"]["running"], 0,
        "nothing left running after stop: {health}"
    );
    assert!(
        health["queue"]["pending"].as_i64().unwrap() > 0,
        "stopped before the end: {health}"
    );

    let start = app.post("/api/v1/workers/internal/start", json!({})).await;
    assert_eq!(start.status, StatusCode::OK);
    assert_eq!(
        start.body,
        json!({"message": "Workers started", "worker_count": 1}),
        "start uses the last scale"
    );
    app.post("/api/v1/workers/internal/scale", json!({"num_workers": 3}))
        .await;
    let mut claims: HashMap<String, usize> = HashMap::new();
    for t in &tasks {
        let done = app
            .wait_status(t, &["completed", "failed", "timeout", "cancelled"])
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["attempt"], 1,
            "interrupted runs are not counted: {done}"
        );
        let msgs = app.log_messages(t).await;
        assert_eq!(
            msgs.iter().filter(|m| *m == "Task completed").count(),
            1,
            "completed once"
        );
        *claims
            .entry(done["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(claims.len(), 16);
    let workers = app.get("/api/v1/workers").await.body;
    let completed: i64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks_completed"].as_i64().unwrap())
        .sum();
    assert_eq!(
        completed, 16,
        "each task completed exactly once across workers"
    );
}

async fn drain_lets_running_tasks_finish(backend: Backend) {
    let app = with_workers(backend, 1, RunnerKind::Simulate).await;
    let t = app
        .create_task(
            json!({"problem_id": "d", "parameters": {"simulate": {"steps": 4, "step_ms": 250}}}),
        )
        .await;
    app.wait_status(&t, &["running"]).await;
    let stop = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/internal/stop?drain=true")),
        )
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    assert_eq!(stop.body["stopped_count"], 1);
    let (_, ws) = internal_status(&app).await;
    assert_eq!(ws[0]["status"], "stopping");
    assert_eq!(
        app.get("/api/v1/workers/worker-001-kind").await.body["status"],
        "stopping"
    );
    let second = app.create_task(json!({"problem_id": "after-stop"})).await;
    let done = app.wait_status(&t, &["completed"]).await;
    assert_eq!(done["attempt"], 1);
    app.eventually("the drained worker is gone", || async {
        internal_status(&app).await.1.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        app.task(&second["id"]).await["status"],
        "pending",
        "no claims after stop"
    );
}

/// A real server process: SIGTERM stops internal workers like a stop, so nothing is left `running`.
async fn sigterm_leaves_no_task_running(backend: Backend) {
    let (db_url, _dir) = TestApp::fresh_database(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-server"))
        .env("DATABASE_URL", &db_url)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("TASK_RUNNER", "simulate")
        .env("NUM_INTERNAL_WORKERS", "2")
        .env("LOG_LEVEL", "warning")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the server came up", Duration::from_secs(20), || async {
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let t: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&json!({"problem_id": "long", "parameters": {"simulate": {"steps": 1, "step_ms": 10, "outcome": "hang"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    wait_for("the task started", Duration::from_secs(20), || async {
        let cur: Value = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (cur["status"] == "running").then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    let db = Database::connect(&db_url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT status, attempt FROM tasks",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].try_get::<String>("", "status").unwrap(),
        "pending",
        "given back, not left running"
    );
    assert_eq!(
        rows[0].try_get::<i32>("", "attempt").unwrap(),
        0,
        "the interrupted run is not counted"
    );
}

task_executor_shared::both_backends!(
    simulated_task_runs_with_logs_visible_while_running,
    simulated_outcomes_end_in_the_right_status,
    exec_runner_outcomes_leave_no_process,
    scale_stop_start_under_load_lose_nothing,
    drain_lets_running_tasks_finish,
    sigterm_leaves_no_task_running,
);
