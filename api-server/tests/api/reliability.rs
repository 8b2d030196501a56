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
    let seen = task::Entity::find_by_id(id).one(&db).await.unwrap().unwrap();
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
    assert_error(&app.claim("w").await, StatusCode::CONFLICT, "worker_offline");
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
        c.runner.runner_kill_grace_seconds = 2;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("child.pid");
    let t = app
        .create_task(json!({"problem_id": "stubborn", "parameters": {"mode": "stubborn", "pid_file": pid}}))
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
    assert_eq!(again["attempt"], 1, "the interrupted run was not charged: {again}");
    let logs = app
        .get(&format!("/api/v1/tasks/{}/logs", t["id"].as_str().unwrap()))
        .await
        .body;
    let messages: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        !messages.iter().any(|m| m.contains("registered again")),
        "no second worker took over the id while the first still ran: {messages:?}"
    );
    app.post(
        &format!("/api/v1/tasks/{}/cancel", t["id"].as_str().unwrap()),
        Value::Null,
    )
    .await;
}

task_executor_shared::both_backends!(
    the_reaper_never_requeues_a_lease_renewed_after_it_looked,
    a_worker_that_said_goodbye_stays_offline,
    a_goodbye_gives_back_unlisted_claims_at_once,
    a_start_during_a_stop_waits_for_it,
);
