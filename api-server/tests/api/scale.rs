//! Scale-out and a flat cost over time: a task created through one API replica wakes a claim long-polling on
//! another at once (PostgreSQL LISTEN/NOTIFY, not the poll tick); two replicas with workers on each never
//! hand a task out twice; retention deletes only finished tasks past their time, never a pending or running
//! one.

use std::{collections::HashSet, sync::Arc, time::Duration};

use api_server::store::{self, retention};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{Backend, TestApp};

/// Completes a claimed task (the claim's answer carries its attempt and lease), asserting the 200.
async fn finish(app: &TestApp, worker_id: &str, claimed: &Value) {
    let r = app
        .post(
            &format!(
                "/api/v1/workers/{worker_id}/tasks/{}/complete",
                claimed["id"].as_str().unwrap()
            ),
            json!({"attempt": claimed["attempt"], "lease_id": claimed["lease_id"], "result": {"success": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// A poll tick far longer than any wake-up may take: a claim answered sooner was woken, not polled.
const LONG_TICK_MS: u64 = 30_000;

/// Two replicas on one fresh PostgreSQL database, each polling only every [`LONG_TICK_MS`], with `far-1`
/// registered on the second, whose listener had time to connect (it wakes its claims once when it does).
async fn two_slow_replicas() -> (TestApp, Arc<TestApp>) {
    let (db_url, dir) = TestApp::fresh_database(Backend::Postgres).await;
    let slow = |c: &mut api_server::Config| c.claim_poll_interval_ms = LONG_TICK_MS;
    let a = TestApp::spawn_on(db_url.clone(), dir, slow).await;
    let b = Arc::new(TestApp::spawn_on(db_url, None, slow).await);
    b.register("far-1", json!({"max_parallel_tasks": 1})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (a, b)
}

/// Starts a long-polling claim of `far-1` on `b`, and gives it time to find nothing and wait. Its answer comes
/// with the moment it came.
async fn claim_waiting(
    b: &Arc<TestApp>,
) -> tokio::task::JoinHandle<(crate::helpers::Reply, Instant)> {
    claim_waiting_as(b, "far-1").await
}

/// [`claim_waiting`] for `worker` on `app`.
async fn claim_waiting_as(
    app: &Arc<TestApp>,
    worker: &str,
) -> tokio::task::JoinHandle<(crate::helpers::Reply, Instant)> {
    let waiting = {
        let (app, url) = (
            app.clone(),
            app.url(&format!("/api/v1/workers/{worker}/claim?wait_seconds=25")),
        );
        tokio::spawn(async move {
            let r = app.send(app.client.post(url).json(&Value::Null)).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting
}

/// The waiting claim got `task`, woken (well before a poll tick) by what happened at `since`.
async fn woken_with(
    waiting: tokio::task::JoinHandle<(crate::helpers::Reply, Instant)>,
    task: &Value,
    since: Instant,
) -> Value {
    let (r, answered_at) = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], task["id"]);
    let took = answered_at - since;
    assert!(
        took < Duration::from_millis(LONG_TICK_MS / 3),
        "the claim on the other replica was answered after {took:?}: polled, not woken"
    );
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_on_one_replica_wakes_a_claim_waiting_on_another() {
    let (a, b) = two_slow_replicas().await;
    each_created_on_a_wakes_b(&a, &b).await;
}

/// Three rounds of: `far-1` waits on `b`, a task is created through `a`, and the claim gets it, woken.
async fn each_created_on_a_wakes_b(a: &TestApp, b: &Arc<TestApp>) {
    for round in 0..3 {
        let waiting = claim_waiting(b).await;
        let created_at = Instant::now();
        let task = a
            .create_task(
                json!({"problem_id": format!("misconfig_app_hotel_res-detection-{round}")}),
            )
            .await;
        let claimed = woken_with(waiting, &task, created_at).await;
        finish(b, "far-1", &claimed).await;
    }
}

/// Claims waiting on the creating replica itself hold its announcement back a moment (they were woken first),
/// never for good: when they cannot take the task (other problems here), the claim waiting on the other
/// replica is still woken, well before a poll tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_waiting_on_the_creating_replica_do_not_keep_the_others_from_hearing() {
    let (a, b) = two_slow_replicas().await;
    let a = Arc::new(a);
    a.register(
        "near-1",
        json!({"max_parallel_tasks": 1, "supported_problems": ["other-*"]}),
    )
    .await;
    let near = claim_waiting_as(&a, "near-1").await;
    each_created_on_a_wakes_b(&a, &b).await;
    assert!(!near.is_finished(), "near-1 takes none of these problems");
    near.abort();
}

/// A task put back to `pending` through one replica (its worker releases it) wakes a claim waiting on another:
/// requeues are announced by the database's trigger, creations by the creating replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_released_on_one_replica_wakes_a_claim_waiting_on_another() {
    let (a, b) = two_slow_replicas().await;
    a.register("near-1", json!({"max_parallel_tasks": 1})).await;
    let task = a
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-1"}))
        .await;
    let held = a.claim_one("near-1").await;
    assert_eq!(held["id"], task["id"]);
    // The claim waits on B: the only task is running on A.
    let waiting = claim_waiting(&b).await;
    let released_at = Instant::now();
    let r = a
        .post(
            &format!(
                "/api/v1/workers/near-1/tasks/{}/release",
                task["id"].as_str().unwrap()
            ),
            json!({"attempt": held["attempt"], "lease_id": held["lease_id"], "reason": "shutdown"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    let claimed = woken_with(waiting, &task, released_at).await;
    finish(&b, "far-1", &claimed).await;
}

/// Two replicas on one PostgreSQL, workers long-polling on each, tasks created through both: every task is
/// claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_hand_out_a_task_twice() {
    let (db_url, dir) = TestApp::fresh_database(Backend::Postgres).await;
    let replicas = [
        Arc::new(TestApp::spawn_on(db_url.clone(), dir, |_| {}).await),
        Arc::new(TestApp::spawn_on(db_url, None, |_| {}).await),
    ];
    let per_replica_workers = 4;
    let tasks = 120;
    let mut claimers = Vec::new();
    for (r, app) in replicas.iter().enumerate() {
        for w in 0..per_replica_workers {
            let app = app.clone();
            let id = format!("r{r}-w{w}");
            app.register(&id, json!({"max_parallel_tasks": 1})).await;
            claimers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let r = app
                        .send(
                            app.client
                                .post(
                                    app.url(&format!("/api/v1/workers/{id}/claim?wait_seconds=1")),
                                )
                                .json(&Value::Null),
                        )
                        .await;
                    if r.status == StatusCode::OK {
                        idle = 0;
                        got.push(r.body["id"].as_str().unwrap().to_owned());
                        finish(&app, &id, &r.body).await;
                    } else {
                        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
                        idle += 1;
                    }
                }
                got
            }));
        }
    }
    let mut created = HashSet::new();
    for i in 0..tasks {
        let app = &replicas[i % 2];
        let t = app
            .create_task(json!({"problem_id": format!("misconfig_app_hotel_res-detection-{i}")}))
            .await;
        created.insert(t["id"].as_str().unwrap().to_owned());
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), claimed.len(), "a task was claimed twice");
    assert_eq!(unique, created, "every task claimed once");
    // Every entry written under contention belongs to a task: each takes its task id from the row its statement
    // just inserted or updated (no foreign key checks this on PostgreSQL).
    let db = Database::connect(&replicas[0].db_url).await.unwrap();
    assert_eq!(orphan_entries(&db).await, 0);
}

/// How many log entries are left without their task.
async fn orphan_entries(db: &impl ConnectionTrait) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM task_logs AS l \
             WHERE NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = l.task_id)",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Sets a task's times as if it had been created and finished `days` ago.
async fn age(db: &impl ConnectionTrait, id: &Value, days: i64) {
    let at = store::now() - chrono::Duration::days(days);
    let backend = db.get_database_backend();
    let sql = if backend == sea_orm::DatabaseBackend::Postgres {
        "UPDATE tasks SET created_at = $1, completed_at = CASE WHEN completed_at IS NULL THEN NULL ELSE $1 END WHERE id = $2"
    } else {
        "UPDATE tasks SET created_at = ?1, completed_at = CASE WHEN completed_at IS NULL THEN NULL ELSE ?1 END WHERE id = ?2"
    };
    let id = uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [at.into(), id.into()],
    ))
    .await
    .unwrap();
}

async fn retention_deletes_only_what_is_due(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let db = Database::connect(&app.db_url).await.unwrap();
    app.register("ret-1", json!({"max_parallel_tasks": 2}))
        .await;
    let mk = |n: &str| json!({"problem_id": format!("misconfig_app_hotel_res-detection-{n}")});
    // Old and finished: due. Old but pending or running: never. Finished lately: not yet.
    let old_done = app.create_task(mk("old-done")).await;
    let old_running = app.create_task(mk("old-running")).await;
    let claimed = app.claim_one("ret-1").await;
    let claimed2 = app.claim_one("ret-1").await;
    let (done, running) = if claimed["id"] == old_done["id"] {
        (claimed, claimed2)
    } else {
        (claimed2, claimed)
    };
    assert_eq!(running["id"], old_running["id"]);
    finish(&app, "ret-1", &done).await;
    let recent_done = app.create_task(mk("recent")).await;
    let recent = app.claim_one("ret-1").await;
    assert_eq!(recent["id"], recent_done["id"]);
    finish(&app, "ret-1", &recent).await;
    let old_pending = app.create_task(mk("old-pending")).await;
    let old_cancelled = app.create_task(mk("old-cancelled")).await;
    let r = app.cancel(&old_cancelled).await;
    assert_eq!(r.status, StatusCode::OK);
    for t in [&old_done, &old_running, &old_pending, &old_cancelled] {
        age(&db, &t["id"], 40).await;
    }
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    let logs_before = count("SELECT COUNT(*) FROM task_logs").await;

    let pruned = retention::prune(
        &store::connect(&app.db_url, 1).await.unwrap(),
        store::now() - chrono::Duration::days(30),
        1,
        100,
    )
    .await
    .unwrap();
    assert_eq!(
        pruned.tasks, 2,
        "the old completed and the old cancelled task: {pruned:?}"
    );
    assert!(pruned.log_entries >= 4, "{pruned:?}");
    for gone in [&old_done, &old_cancelled] {
        let r = app
            .get(&format!("/api/v1/tasks/{}", gone["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    for kept in [&old_running, &old_pending, &recent_done] {
        let r = app
            .get(&format!("/api/v1/tasks/{}", kept["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", kept["id"]);
    }
    let logs_after = count("SELECT COUNT(*) FROM task_logs").await;
    assert_eq!(logs_before - logs_after, pruned.log_entries as i64);
    // No entry outlives its task (on PostgreSQL no foreign key stands behind this: retention deletes them).
    assert_eq!(orphan_entries(&db).await, 0);
    // The kept tasks keep their logs, and the running one can still report and finish.
    let r = app
        .get(&format!(
            "/api/v1/tasks/{}/logs",
            old_running["id"].as_str().unwrap()
        ))
        .await;
    assert!(!r.body.as_array().unwrap().is_empty());
    finish(&app, "ret-1", &running).await;
    // A second pass finds nothing more that is due (the running task finished just now).
    let again = retention::prune(
        &store::connect(&app.db_url, 1).await.unwrap(),
        store::now() - chrono::Duration::days(30),
        100,
        10,
    )
    .await
    .unwrap();
    assert_eq!(again.tasks, 0);
}

/// The reaper applies `RETENTION_DAYS` by itself.
async fn the_reaper_applies_retention(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.retention_days = 7;
        // The reaper runs every third of this (at least every 100 ms).
        c.worker_heartbeat_timeout_seconds = 1;
    })
    .await;
    let db = Database::connect(&app.db_url).await.unwrap();
    let t = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-1"}))
        .await;
    let keep = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-2"}))
        .await;
    let r = app.cancel(&t).await;
    assert_eq!(r.status, StatusCode::OK);
    age(&db, &t["id"], 8).await;
    age(&db, &keep["id"], 8).await;
    app.eventually("the old cancelled task deleted", || async {
        (app.get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
            .await
            .status
            == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await;
    let r = app
        .get(&format!("/api/v1/tasks/{}", keep["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        r.body["status"], "pending",
        "an old pending task is never deleted"
    );
    // The deleted task's entries went with it (on PostgreSQL no foreign key cascades: retention deletes them).
    assert_eq!(orphan_entries(&db).await, 0);
}

/// `/health` counts tasks exactly whether they finished long ago (the cached base count) or just now (counted
/// at each call), without counting the whole table each time.
async fn health_counts_are_exact_across_old_and_new_finishes(backend: Backend) {
    let (db_url, dir) = TestApp::fresh_database(backend).await;
    let first = TestApp::spawn_on(db_url.clone(), dir, |_| {}).await;
    let db = Database::connect(&db_url).await.unwrap();
    first
        .register("h-1", json!({"max_parallel_tasks": 1}))
        .await;
    for i in 0..3 {
        first
            .create_task(json!({"problem_id": format!("misconfig_app_hotel_res-detection-{i}")}))
            .await;
        let t = first.claim_one("h-1").await;
        finish(&first, "h-1", &t).await;
        age(&db, &t["id"], 1).await;
    }
    // A fresh server reads its base count now: the three old finishes are in it.
    let app = TestApp::spawn_on(db_url, None, |_| {}).await;
    let queue = |r: crate::helpers::Reply| r.body["queue"].clone();
    let q = queue(app.get("/health").await);
    assert_eq!(
        (q["completed"].as_i64(), q["pending"].as_i64()),
        (Some(3), Some(0)),
        "{q}"
    );
    app.register("h-2", json!({"max_parallel_tasks": 1})).await;
    for i in 0..2 {
        app.create_task(json!({"problem_id": format!("misconfig_app_hotel_res-detection-n{i}")}))
            .await;
        let t = app.claim_one("h-2").await;
        finish(&app, "h-2", &t).await;
    }
    let t = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-c"}))
        .await;
    let r = app.cancel(&t).await;
    assert_eq!(r.status, StatusCode::OK);
    app.create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-p"}))
        .await;
    let q = queue(app.get("/health").await);
    assert_eq!(q["completed"], 5, "{q}");
    assert_eq!(q["cancelled"], 1, "{q}");
    assert_eq!(q["pending"], 1, "{q}");
    assert_eq!(q["running"], 0, "{q}");
}

/// The entries state changes write (on PostgreSQL in the change's own statement) say what they did: the
/// state entered, the event, the run, and the holder.
async fn state_change_entries_name_the_run_and_holder(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("e-1", json!({"max_parallel_tasks": 2})).await;
    let a = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-a"}))
        .await;
    let b = app
        .create_task(json!({"problem_id": "misconfig_app_hotel_res-detection-b"}))
        .await;
    let ca = app.claim_one("e-1").await;
    let cb = app.claim_one("e-1").await;
    assert_eq!((&ca["id"], &cb["id"]), (&a["id"], &b["id"]));
    finish(&app, "e-1", &ca).await;
    let r = app.cancel(&b).await;
    assert_eq!(r.status, StatusCode::OK);
    let entries = |t: &Value| {
        let path = format!("/api/v1/tasks/{}/logs", t["id"].as_str().unwrap());
        let app = &app;
        async move { app.get(&path).await.body.as_array().unwrap().clone() }
    };
    let la = entries(&a).await;
    let messages: Vec<&str> = la.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        [
            "Task created",
            "Task claimed by worker e-1 (attempt 1)",
            "Task completed"
        ],
        "{la:?}"
    );
    assert_eq!(
        la[1]["context"],
        json!({"event": "claimed", "worker_id": "e-1", "attempt": 1})
    );
    assert_eq!(la[1]["attempt"], 1);
    assert_eq!(la[2]["context"]["event"], "completed");
    assert_eq!(la[2]["context"]["worker_id"], "e-1");
    assert_eq!(la[2]["level"], "info");
    let lb = entries(&b).await;
    let last = lb.last().unwrap();
    assert_eq!(last["message"], "Task cancelled");
    assert_eq!(last["context"]["event"], "cancelled");
    assert_eq!(
        last["context"]["worker_id"], "e-1",
        "the holder is named: {last}"
    );
    assert_eq!(last["attempt"], Value::Null);
}

task_executor_shared::both_backends!(
    state_change_entries_name_the_run_and_holder,
    retention_deletes_only_what_is_due,
    the_reaper_applies_retention,
    health_counts_are_exact_across_old_and_new_finishes
);
