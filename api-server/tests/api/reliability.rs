//! Regression tests of the failure paths: each fails without its fix (issue "never lost, never twice, never
//! looping").

use std::time::Duration;

use api_server::store::{self, entity::task, queue};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, EntityTrait, Statement};
use serde_json::{Value, json};
use task_executor_shared::runner::RunnerKind;

use crate::helpers::{Backend, TestApp, assert_error};

/// The reaper reads expired leases, then acts: a heartbeat that renewed the lease in between wins.
async fn the_reaper_never_requeues_a_lease_renewed_after_it_looked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w").await;
    let id: uuid::Uuid = t["id"].as_str().unwrap().parse().unwrap();
    let db = Database::connect(&app.db_url).await.unwrap();
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let sql = match backend {
        Backend::Postgres => "UPDATE tasks SET lease_expires_at = $1 WHERE id = $2",
        Backend::Sqlite => "UPDATE tasks SET lease_expires_at = ?1 WHERE id = ?2",
    };
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        [past.into(), id.into()],
    ))
    .await
    .unwrap();
    // What the reaper saw: a run whose lease expired.
    let seen = task::Entity::find_by_id(id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.lease_expires_at.unwrap() < chrono::Utc::now());
    // The worker's heartbeat renews it before the reaper acts.
    let hb = app
        .heartbeat("w", json!({"status": "busy", "current_task_id": id}))
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    let released = queue::release_lost(&db, &seen, "lease expired", 2, Some(store::now()))
        .await
        .unwrap();
    assert!(released.is_none(), "the renewed lease wins");
    let now = app.task(&t["id"]).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["worker_id"], "w");
    assert_eq!(now["attempt"], 1);
}

/// A worker that said goodbye stays offline until it registers again: a request still in flight from it
/// cannot bring it back, and its waiting long poll ends.
async fn a_worker_that_said_goodbye_stays_offline(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let (client, url) = (
        app.client.clone(),
        app.url("/api/v1/workers/w/claim?wait_seconds=30"),
    );
    let waiting = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = client.post(url).send().await.unwrap();
        (r.status(), r.json::<Value>().await.ok(), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bye = app.heartbeat("w", json!({"status": "offline"})).await;
    assert_eq!(bye.status, StatusCode::OK);
    let (status, body, elapsed) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body:?}");
    assert_eq!(body.unwrap()["type"], "worker_offline");
    assert!(
        elapsed < Duration::from_secs(20),
        "the long poll ended with the goodbye, not at the end of its wait"
    );
    assert_error(
        &app.claim("w").await,
        StatusCode::CONFLICT,
        "worker_offline",
    );
    assert_error(
        &app.heartbeat("w", json!({"status": "idle"})).await,
        StatusCode::CONFLICT,
        "worker_offline",
    );
    assert_eq!(app.get("/api/v1/workers/w").await.body["status"], "offline");
    let t = app.create_task(json!({"problem_id": "p"})).await;
    assert_eq!(app.task(&t["id"]).await["status"], "pending");

    // Registering again brings it back.
    app.register("w", json!({})).await;
    assert_eq!(app.get("/api/v1/workers/w").await.body["status"], "idle");
    assert_eq!(app.claim_one("w").await["id"], t["id"]);
}

/// A goodbye that lists no task gives back, at once and uncounted, a task claimed for the worker whose answer
/// it never got.
async fn a_goodbye_gives_back_unlisted_claims_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w").await;
    let bye = app.heartbeat("w", json!({"status": "offline"})).await;
    assert_eq!(bye.status, StatusCode::OK);
    let now = app.task(&t["id"]).await;
    assert_eq!(now["status"], "pending", "{now}");
    assert_eq!(now["attempt"], 0, "the run never happened: not counted");
}

/// A start of the internal workers while a stop still waits for their runs to end waits for it: two workers
/// with one id (and one kind cluster) never run at once, and the stopped run is not charged.
async fn a_start_during_a_stop_waits_for_it(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 1;
        c.runner.runner = RunnerKind::Exec;
        c.runner.runner_kill_grace_seconds = Some(2);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("child.pid");
    let t = app
        .create_task(
            json!({"problem_id": "stubborn", "parameters": {"mode": "stubborn", "pid_file": pid}}),
        )
        .await;
    app.eventually("the stubborn run is up", || async {
        (app.task(&t["id"]).await["status"] == "running" && pid.exists()).then_some(())
    })
    .await;
    let (client, stop_url) = (app.client.clone(), app.url("/api/v1/workers/internal/stop"));
    let stop = tokio::spawn(async move { client.post(stop_url).send().await.unwrap().status() });
    app.eventually("the stop is under way", || async {
        let s = app.get("/api/v1/workers/internal/status").await.body;
        (s["workers"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    let start = app
        .post("/api/v1/workers/internal/start", Value::Null)
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.body);
    assert_eq!(stop.await.unwrap(), StatusCode::OK);
    let again = app
        .eventually("the task runs again", || async {
            let cur = app.task(&t["id"]).await;
            (cur["status"] == "running").then_some(cur)
        })
        .await;
    assert_eq!(
        again["attempt"], 1,
        "the interrupted run was not charged: {again}"
    );
    let messages = app.log_messages(&t).await;
    assert!(
        !messages.iter().any(|m| m.contains("registered again")),
        "no second worker took over the id while the first still ran: {messages:?}"
    );
    app.cancel(&t).await;
}

/// Every claim has a lease id no earlier claim of the task had: when a run is given back uncounted and the
/// same worker claims the task again with the same attempt number, the first run's late reports are refused.
async fn a_stale_run_cannot_report_once_its_attempt_number_came_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    let first = app.claim_one("w").await;
    let released = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/release"),
            json!({"attempt": 1, "lease_id": first["lease_id"]}),
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    let second = app.claim_one("w").await;
    assert_eq!(second["attempt"], 1, "the released run was not counted");
    assert_ne!(
        second["lease_id"], first["lease_id"],
        "a new lease per claim"
    );
    let late = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/complete"),
            json!({"attempt": 1, "lease_id": first["lease_id"], "result": {"success": false}}),
        )
        .await;
    assert_error(&late, StatusCode::CONFLICT, "stale_attempt");
    let late_logs = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/logs"),
            json!({"attempt": 1, "lease_id": first["lease_id"], "entries": [{"level": "info", "message": "old"}]}),
        )
        .await;
    assert_error(&late_logs, StatusCode::CONFLICT, "stale_attempt");
    assert_eq!(app.task(&t["id"]).await["status"], "running");
    let done = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/complete"),
            json!({"attempt": 1, "lease_id": second["lease_id"], "result": {"success": true}}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["result"], json!({"success": true}));
    assert!(
        app.task(&t["id"]).await.get("lease_id").is_none(),
        "the lease is the claiming worker's alone: not shown to readers"
    );
}

/// A task that keeps going back to the queue without an attempt counted (here: its claims never reach the
/// worker) fails after MAX_UNCOUNTED_REQUEUES, with an error that says so, instead of looping forever.
async fn a_task_that_keeps_coming_back_uncounted_fails_instead_of_looping(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.claim_grace_seconds = 0;
        c.max_uncounted_requeues = 3;
    })
    .await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    for round in 1..=3 {
        app.claim_one("w").await;
        app.heartbeat("w", json!({"status": "idle"})).await;
        let now = app.task(&t["id"]).await;
        assert_eq!(now["status"], "pending", "round {round}: {now}");
        assert_eq!(now["attempt"], 0);
    }
    app.claim_one("w").await;
    app.heartbeat("w", json!({"status": "idle"})).await;
    let failed = app.task(&t["id"]).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["result"]["error"].as_str().unwrap();
    assert!(error.contains("3 times"), "{error}");
}

/// NUL, which PostgreSQL cannot store, is refused at the edge with 422 wherever a client sends it, on both
/// backends alike, and nothing is stored.
async fn nul_is_refused_at_the_edge(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        json!({"problem_id": "p", "parameters": {"x": "a\u{0}b"}}),
        json!({"problem_id": "p", "parameters": {"k\u{0}": 1}}),
        json!({"problem_id": "p", "parameters": {"agent_config": {"model": ["\u{0}"]}}}),
    ] {
        let r = app.post("/api/v1/tasks", body).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        assert!(
            r.body["detail"].as_str().unwrap().contains("NUL"),
            "{}",
            r.body
        );
    }
    for path in [
        "/api/v1/tasks?problem_id=a%00b",
        "/api/v1/workers?backend_type=%00",
    ] {
        assert_error(
            &app.get(path).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
    }
    let reg = app
        .post(
            "/api/v1/workers/register",
            json!({"worker_id": "w", "backend_type": "kind\u{0}", "metadata": {"host": "\u{0}"}}),
        )
        .await;
    assert_error(&reg, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let c = app.claim_one("w").await;
    let id = t["id"].as_str().unwrap();
    for (path, body) in [
        (
            "logs",
            json!({"attempt": 1, "lease_id": c["lease_id"], "entries": [{"level": "info", "message": "a\u{0}"}]}),
        ),
        (
            "complete",
            json!({"attempt": 1, "lease_id": c["lease_id"], "result": {"output": "\u{0}"}}),
        ),
        (
            "fail",
            json!({"attempt": 1, "lease_id": c["lease_id"], "error": "boom\u{0}"}),
        ),
    ] {
        let r = app
            .post(&format!("/api/v1/workers/w/tasks/{id}/{path}"), body)
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    assert_eq!(
        app.task(&t["id"]).await["status"],
        "running",
        "nothing changed"
    );
    assert_eq!(app.count("/api/v1/tasks").await, 1);
}

fn exec_workers(c: &mut api_server::Config) {
    c.auto_start_workers = true;
    c.num_internal_workers = 1;
    c.runner.runner = RunnerKind::Exec;
}

async fn wait_end(app: &TestApp, t: &Value) -> Value {
    app.eventually("the task ended", || async {
        let cur = app.task(&t["id"]).await;
        (!["pending", "running"].contains(&cur["status"].as_str().unwrap())).then_some(cur)
    })
    .await
}

/// What a runner prints can never make a report the server refuses (which would lose the run and bring it
/// back forever): NUL is replaced, huge lines and contexts are cut, bytes that are not UTF-8 are decoded
/// lossily, a long stderr tail keeps its end within the error limit, a huge result keeps its summary.
async fn runner_output_never_makes_a_refused_report(backend: Backend) {
    let app = TestApp::spawn_with(backend, exec_workers).await;
    let nul = app
        .create_task(json!({"problem_id": "nul", "parameters": {"mode": "nul"}}))
        .await;
    let done = wait_end(&app, &nul).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["output"], "out\u{FFFD}put");
    let messages = app.log_messages(&nul).await;
    assert!(
        messages.contains(&"before\u{FFFD}after".to_owned()),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"raw\u{FFFD}byte".to_owned()),
        "{messages:?}"
    );

    let huge = app
        .create_task(json!({"problem_id": "huge", "parameters": {"mode": "huge"}}))
        .await;
    let failed = wait_end(&app, &huge).await;
    assert_eq!(
        failed["status"], "failed",
        "ends, never loops: {}",
        failed["status"]
    );
    // It failed before any agent step: the infrastructure's, run once more (TASK_MAX_ATTEMPTS is 2), no more.
    assert_eq!(failed["failure_kind"], "infrastructure");
    assert_eq!(failed["attempt"], 2);
    let error = failed["result"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("the runner exited with status 1"),
        "{}",
        &error[..80]
    );
    assert!(
        error.ends_with("stderr line 30"),
        "the end of the tail is kept"
    );
    assert!(error.chars().count() <= 16_100, "{}", error.chars().count());
    let entries = app.log_entries(&huge).await;
    let long = entries
        .iter()
        .find(|e| e["message"].as_str().unwrap().starts_with("xxxx"))
        .expect("the 3 MB line is logged, cut");
    assert!(long["message"].as_str().unwrap().ends_with("[truncated]"));
    assert!(
        entries
            .iter()
            .any(|e| e["message"] == "bad \u{FFFD}\u{FFFD} bytes"),
        "bytes that are not UTF-8 are replaced, and reading goes on"
    );
    let big = entries
        .iter()
        .find(|e| e["message"] == "big context")
        .expect("the entry with a big context");
    assert_eq!(big["context"]["truncated"], true);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["context"]["stream"] == "stderr" && e["attempt"] == 2)
            .count(),
        30,
        "every stderr line of the last run is logged"
    );

    let large = app
        .create_task(json!({"problem_id": "large", "parameters": {"mode": "huge_result"}}))
        .await;
    let done = wait_end(&app, &large).await;
    assert_eq!(done["status"], "completed", "{}", done["status"]);
    assert_eq!(done["result"]["success"], true);
    assert_eq!(done["result"]["metrics"]["TTD"], 2.5);
    assert_eq!(
        done["result"]["truncated"]["dropped_keys"],
        json!(["history"])
    );
    assert_eq!(
        done["result"]["provenance"]["runner"], "exec",
        "the provenance survives the cut"
    );
    assert!(
        done["result"]["output"]
            .as_str()
            .unwrap()
            .ends_with("[truncated]")
    );
}

/// The runner gets its parameters in a file, and in TASK_PARAMETERS only when they are small: parameters too
/// large for the environment do not stop the runner from starting.
async fn large_parameters_reach_the_runner_in_a_file(backend: Backend) {
    let app = TestApp::spawn_with(backend, exec_workers).await;
    let blob = "p".repeat(300_000);
    let big = app
        .create_task(json!({"problem_id": "big", "parameters": {"mode": "params", "blob": blob}}))
        .await;
    let done = wait_end(&app, &big).await;
    assert_eq!(done["status"], "completed", "{}", done["result"]);
    assert!(done["result"]["file_bytes"].as_u64().unwrap() > 300_000);
    assert_eq!(done["result"]["env_set"], "no");
    let small = app
        .create_task(json!({"problem_id": "small", "parameters": {"mode": "params"}}))
        .await;
    let done = wait_end(&app, &small).await;
    assert_eq!(done["result"]["env_set"], "yes");
}

/// A task's log can be paged to its end, and its workers' entries are capped (the excess dropped, counted,
/// and said).
async fn logs_page_to_their_end_and_are_capped(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.max_log_entries_per_task = 2_500).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let c = app.claim_one("w").await;
    let id = t["id"].as_str().unwrap();
    let mut accepted = 0;
    for batch in 0..3 {
        let entries: Vec<Value> = (0..1000)
            .map(|i| json!({"level": "info", "message": format!("entry {}", batch * 1000 + i)}))
            .collect();
        let r = app
            .post(
                &format!("/api/v1/workers/w/tasks/{id}/logs"),
                json!({"attempt": 1, "lease_id": c["lease_id"], "entries": entries}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        accepted += r.body["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 2_500, "the cap keeps the first 2500");
    let done = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/complete"),
            json!({"attempt": 1, "lease_id": c["lease_id"], "result": {"success": true}}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK);
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let page = app
            .get(&format!(
                "/api/v1/tasks/{id}/logs?limit=1000&offset={offset}"
            ))
            .await
            .body;
        let page = page.as_array().unwrap().clone();
        let n = page.len();
        all.extend(page);
        if n < 1000 {
            break;
        }
        offset += 1000;
    }
    let messages: Vec<&str> = all.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages.first(), Some(&"Task created"));
    assert_eq!(
        messages.iter().filter(|m| m.starts_with("entry ")).count(),
        2_500,
        "every kept entry is reachable"
    );
    assert!(messages.contains(&"entry 2499") && !messages.contains(&"entry 2500"));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("reached its cap of 2500 entries")),
        "{:?}",
        &messages[messages.len() - 3..]
    );
    assert_eq!(
        messages.last(),
        Some(&"500 log entries were dropped past the cap on entries per task")
    );
}

/// Waiting claims are bounded: per worker by its free slots, and in all by MAX_WAITING_CLAIMS; beyond, 429
/// with Retry-After.
async fn waiting_claims_are_bounded(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.max_waiting_claims = 2).await;
    app.register("one-slot", json!({"max_parallel_tasks": 1}))
        .await;
    app.register("other", json!({"max_parallel_tasks": 1}))
        .await;
    app.register("third", json!({"max_parallel_tasks": 1}))
        .await;
    let wait = |worker: &str| {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/api/v1/workers/{worker}/claim?wait_seconds=3")),
        );
        tokio::spawn(async move { client.post(url).send().await.unwrap().status() })
    };
    let first = wait("one-slot");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app
        .post("/api/v1/workers/one-slot/claim?wait_seconds=3", Value::Null)
        .await;
    assert_error(
        &second,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_waiting_claims",
    );
    assert_eq!(second.headers["retry-after"], "5");
    let other = wait("other");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = app
        .post("/api/v1/workers/third/claim?wait_seconds=3", Value::Null)
        .await;
    assert_error(
        &third,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_waiting_claims",
    );
    assert_eq!(first.await.unwrap(), StatusCode::NO_CONTENT);
    assert_eq!(other.await.unwrap(), StatusCode::NO_CONTENT);
    // Once they ended, claims may wait again.
    assert_eq!(app.claim("third").await.status, StatusCode::NO_CONTENT);
}

/// A client that sends its headers and then trickles (or never sends) its body is cut off with 408.
async fn a_stalled_body_is_cut_off(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(backend, |c| c.request_body_timeout_seconds = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"problem_id\"",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server answered instead of waiting forever"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

/// A worker whose runner cannot run (here: its program is missing) claims nothing: it shows `degraded` with
/// the reason in the worker list, /health and the metrics; its task stays pending, and runs as soon as the
/// runner is there.
async fn a_worker_that_cannot_run_claims_nothing_and_shows_degraded(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner.sh");
    let command = runner.display().to_string();
    let app = TestApp::spawn_with(backend, move |c| {
        exec_workers(c);
        c.runner.runner_command = Some(command);
    })
    .await;
    let t = app
        .create_task(json!({"problem_id": "p", "parameters": {"mode": "unsolved"}}))
        .await;
    let w = app
        .eventually("the worker shows degraded", || async {
            let w = app.get("/api/v1/workers/worker-001-kind").await.body;
            (w["status"] == "degraded").then_some(w)
        })
        .await;
    let reason = w["status_reason"].as_str().unwrap();
    assert!(reason.contains("was not found"), "{reason}");
    assert_eq!(app.get("/health").await.body["workers"]["degraded"], 1);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"task_executor_workers{status="degraded"} 1"#),
        "{text}"
    );
    let still = app.task(&t["id"]).await;
    assert_eq!(still["status"], "pending", "nothing was claimed: {still}");
    assert_eq!(still["attempt"], 0);

    std::fs::copy(crate::helpers::fixture("runner.sh"), &runner).unwrap();
    let done = crate::helpers::wait_for(
        "the fixed worker runs the task",
        Duration::from_secs(60),
        || async {
            let cur = app.task(&t["id"]).await;
            (cur["status"] == "completed").then_some(cur)
        },
    )
    .await;
    assert_eq!(done["attempt"], 1);
    let w = app.get("/api/v1/workers/worker-001-kind").await.body;
    assert_eq!(w["status"], "idle", "{w}");
    assert!(w["status_reason"].is_null());
}

/// A run that finds its runner cannot run here (exit status 75) gives its task back without using an
/// attempt, instead of failing it; the task then runs to its end.
async fn an_infrastructure_failure_gives_the_task_back_uncounted(backend: Backend) {
    let app = TestApp::spawn_with(backend, exec_workers).await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("tried");
    let t = app
        .create_task(
            json!({"problem_id": "p", "parameters": {"mode": "unusable_once", "pid_file": flag}}),
        )
        .await;
    let done = wait_end(&app, &t).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["attempt"], 1,
        "the run that could not start was not counted"
    );
    assert_eq!(done["result"]["output"], "ran on the second try");
    let messages = app.log_messages(&t).await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("gave it back") && m.contains("cannot run here")),
        "{messages:?}"
    );
}

/// A worker's heartbeats list the tasks it runs (by task id, whatever it keys its runs by), so a run longer
/// than the claim grace period keeps its task: no "claim lost" requeue, one run, attempt 1.
async fn heartbeats_keep_a_long_run_held(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 1;
        c.runner.runner = RunnerKind::Simulate;
        c.claim_grace_seconds = 1;
        c.worker_heartbeat_timeout_seconds = 3;
    })
    .await;
    let t = app
        .create_task(json!({"problem_id": "long", "parameters": {"simulate": {"steps": 10, "step_ms": 500}}}))
        .await;
    let id = t["id"].as_str().unwrap().to_owned();
    app.eventually("the run is under way", || async {
        (app.task(&t["id"]).await["status"] == "running").then_some(())
    })
    .await;
    let internal = app.get("/api/v1/workers/internal/status").await.body;
    assert_eq!(
        internal["workers"][0]["current_task"],
        id.as_str(),
        "{internal}"
    );
    let done = wait_end(&app, &t).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);
    let messages = app.log_messages(&t).await;
    assert!(
        !messages.iter().any(|m| m.contains("returned to the queue")),
        "{messages:?}"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.starts_with("Task claimed"))
            .count(),
        1,
        "{messages:?}"
    );
}

/// Numbers at the edges of what JSON numbers hold round-trip through the database (PostgreSQL keeps them as
/// exact decimals): found by the fuzzer as a 500 on reading such a task back.
async fn extreme_numbers_round_trip(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let parameters = json!({"min": -1.7976931348623155e308, "max": 1.7976931348623157e308,
                            "tiny": 5e-324, "big_int": 18446744073709551615u64, "neg": -9223372036854775808i64});
    let t = app
        .create_task(json!({"problem_id": "p", "parameters": parameters.clone()}))
        .await;
    let back = app.task(&t["id"]).await;
    for key in ["min", "max", "tiny", "big_int", "neg"] {
        assert_eq!(back["parameters"][key], parameters[key], "{key}: {back}");
    }
    let listed = app.get("/api/v1/tasks").await;
    assert_eq!(listed.status, StatusCode::OK);
}

/// The rows of table `scratch`, by value.
/// A fresh SQLite database through the server's own pool, with a `scratch` table of text keys: its
/// connection, URL and directory (kept while the test runs).
async fn scratch_database() -> (
    sea_orm::DatabaseConnection,
    String,
    Option<tempfile::TempDir>,
) {
    let (url, dir) = TestApp::fresh_database(Backend::Sqlite).await;
    let db = store::connect(&url, 1).await.unwrap();
    db.execute_unprepared("CREATE TABLE scratch (v TEXT PRIMARY KEY NOT NULL)")
        .await
        .unwrap();
    (db, url, dir)
}

async fn scratch(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT v FROM scratch ORDER BY v",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "v").unwrap())
    .collect()
}

/// SQLite's scripts (several statements in one call to its thread) on the one shared connection: a script that
/// fails half-way writes nothing; a session that does not commit is rolled back; a session whose caller went
/// away runs to its end; and after each the connection is free and out of any transaction.
#[tokio::test]
async fn sqlite_scripts_never_leave_a_transaction_open() {
    use api_server::store::script::{self, Script};
    let (db, url, _dir) = scratch_database().await;
    let insert = "INSERT INTO scratch (v) VALUES (?)";

    // The second insert fails (the same key twice): the first is not kept.
    let mut s = Script::begin();
    s.push(insert, ["a".into()])
        .push(insert, ["a".into()])
        .commit();
    let failed = script::detached(&db, move |mut session| async move {
        let r = session.run(s).await;
        (session, r)
    })
    .await;
    assert!(failed.is_err(), "a duplicate key fails the script");
    assert!(
        scratch(&db).await.is_empty(),
        "nothing of a failed script is kept"
    );

    // A session that ends without committing is rolled back.
    let mut s = Script::begin();
    s.push(insert, ["b".into()]);
    let rows = script::detached(&db, move |mut session| async move {
        let r = session.run(s).await;
        (session, r)
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "one statement, its rows");
    assert!(scratch(&db).await.is_empty(), "not committed, rolled back");

    // The caller goes away while the session waits between its two scripts: it still runs to its commit.
    let (mut first, mut second) = (Script::begin(), Script::then());
    first.push(insert, ["c".into()]);
    second.push(insert, ["d".into()]).commit();
    let cut = tokio::time::timeout(
        Duration::from_millis(20),
        script::detached(&db, move |mut session| async move {
            let r = async {
                session.run(first).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                session.run(second).await
            }
            .await;
            (session, r)
        }),
    )
    .await;
    assert!(cut.is_err(), "the caller stopped waiting");
    // The next use of the connection waits for the session, and finds its work whole and committed.
    assert_eq!(scratch(&db).await, ["c", "d"]);
    // The connection is out of any transaction: what it writes now is seen by another connection at once.
    db.execute_unprepared("INSERT INTO scratch (v) VALUES ('e')")
        .await
        .unwrap();
    let other = Database::connect(&url).await.unwrap();
    assert_eq!(scratch(&other).await, ["c", "d", "e"]);
}

/// Script sessions back to back pass SQLite's one connection from one to the next without returning it to the
/// pool, but never for long: a query that is not a script gets the connection while scripts keep coming, and
/// every script's work is kept, whoever had the connection before it.
#[tokio::test]
async fn sqlite_script_sessions_never_keep_the_connection_from_other_queries() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use api_server::store::script::{self, Script};
    let (db, url, _dir) = scratch_database().await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    // Eight writers, each starting its next script as soon as the last one answered, for as long as the test
    // needs them (at most 60 s).
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let until = std::time::Instant::now() + Duration::from_secs(60);
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    let mut s = Script::begin();
                    s.push(
                        "INSERT INTO scratch (v) VALUES (?)",
                        [format!("{w}-{i}").into()],
                    )
                    .commit();
                    script::run(&db, s).await.unwrap();
                    written.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    // Let them get going, then read (not a script) a few times while they write.
    while written.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        let read = tokio::time::timeout(Duration::from_secs(10), scratch(&db)).await;
        assert!(
            read.is_ok(),
            "a query waited more than 10 s for the connection while scripts kept coming"
        );
        assert!(
            !writers.iter().any(|w| w.is_finished()),
            "the writers were still writing"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    // Every script that answered is kept, and the connection is out of any transaction: another connection
    // sees all of it.
    let other = Database::connect(&url).await.unwrap();
    assert_eq!(scratch(&other).await.len(), written.load(Ordering::SeqCst));
}

/// Script sessions queued for SQLite's connection while something else holds it give up after the pool's
/// acquire timeout (10 s) together, as plain queries do, not one after the other.
#[tokio::test]
async fn sqlite_script_sessions_waiting_for_a_held_connection_time_out_together() {
    use api_server::store::script::{self, Script};
    use sea_orm::TransactionTrait;
    let (db, _url, _dir) = scratch_database().await;
    // A transaction holds the one connection for longer than the timeout.
    let held = db.begin().await.unwrap();
    let started = std::time::Instant::now();
    let sessions: Vec<_> = (0..4)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut s = Script::begin();
                s.push("INSERT INTO scratch (v) VALUES (?)", [i.to_string().into()])
                    .commit();
                script::run(&db, s).await
            })
        })
        .collect();
    for s in sessions {
        let r = s.await.unwrap();
        assert!(
            matches!(r, Err(sea_orm::DbErr::ConnectionAcquire(_))),
            "a session that cannot get the connection fails with a timeout: {r:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "four sessions waited {waited:?}: each after the other, not together"
    );
    held.rollback().await.unwrap();
    assert!(scratch(&db).await.is_empty());
}

task_executor_shared::both_backends!(
    extreme_numbers_round_trip,
    heartbeats_keep_a_long_run_held,
    a_worker_that_cannot_run_claims_nothing_and_shows_degraded,
    an_infrastructure_failure_gives_the_task_back_uncounted,
    logs_page_to_their_end_and_are_capped,
    waiting_claims_are_bounded,
    a_stalled_body_is_cut_off,
    nul_is_refused_at_the_edge,
    runner_output_never_makes_a_refused_report,
    large_parameters_reach_the_runner_in_a_file,
    a_stale_run_cannot_report_once_its_attempt_number_came_back,
    a_task_that_keeps_coming_back_uncounted_fails_instead_of_looping,
    the_reaper_never_requeues_a_lease_renewed_after_it_looked,
    a_worker_that_said_goodbye_stays_offline,
    a_goodbye_gives_back_unlisted_claims_at_once,
    a_start_during_a_stop_waits_for_it,
);
