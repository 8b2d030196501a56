//! The worker protocol: registry, claiming, reports, fencing, leases and recovery.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error};

async fn register_list_and_get(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .post(
            "/api/v1/workers/register",
            json!({"worker_id": "worker-002-kind", "backend_type": "kind",
                   "capabilities": {"max_parallel_tasks": 5, "supported_problems": ["test-*", "benchmark-*"]},
                   "metadata": {"hostname": "h1", "version": "1.2.3"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["id"], "worker-002-kind");
    assert_eq!(r.body["backend_type"], "kind");
    assert_eq!(r.body["status"], "idle");
    let registered_at = r.body["registered_at"].clone();
    assert!(registered_at.is_string());

    let again = app
        .post(
            "/api/v1/workers/register",
            json!({"worker_id": "worker-002-kind", "backend_type": "kind",
                   "capabilities": {"max_parallel_tasks": 2, "supported_problems": []}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "a known id re-registers");
    assert_eq!(
        again.body["registered_at"], registered_at,
        "registration time is kept"
    );

    app.register("other", json!({})).await;
    let list = app.get("/api/v1/workers").await;
    assert_eq!(list.status, StatusCode::OK);
    let ws = list.body.as_array().unwrap();
    assert_eq!(ws.len(), 2);
    let w = ws.iter().find(|w| w["id"] == "worker-002-kind").unwrap();
    assert_eq!(
        w["capabilities"],
        json!({"max_parallel_tasks": 2, "supported_problems": []}),
        "capabilities replaced"
    );
    assert_eq!(w["tasks_completed"], 0);
    assert_eq!(w["tasks_failed"], 0);
    assert_eq!(w["status"], "idle");
    let other = ws.iter().find(|w| w["id"] == "other").unwrap();
    assert_eq!(
        other["capabilities"],
        json!({"max_parallel_tasks": 1, "supported_problems": []}),
        "defaults"
    );

    let one = app.get("/api/v1/workers/other").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(&one.body, other);
    assert_error(
        &app.get("/api/v1/workers/nobody").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );

    assert_eq!(app.get("/api/v1/workers?status=busy").await.body, json!([]));
    assert_eq!(app.count("/api/v1/workers?status=idle").await, 2);
    assert_eq!(
        app.get("/api/v1/workers?backend_type=docker").await.body,
        json!([])
    );
    assert_eq!(app.count("/api/v1/workers?backend_type=kind").await, 2);
    let health = app.get("/health").await.body;
    assert_eq!(
        health["workers"],
        json!({"total": 2, "idle": 2, "busy": 0, "offline": 0, "stopping": 0, "degraded": 0})
    );
}

async fn a_task_from_claim_to_complete(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w1", json!({})).await;
    let t = app
        .create_task(json!({"problem_id": "test-problem-001", "parameters": {"max_steps": 3}}))
        .await;
    let id = t["id"].as_str().unwrap();

    let mut c = app.claim_one("w1").await;
    let lease = c.as_object_mut().unwrap().remove("lease_id").unwrap();
    assert!(
        lease.as_str().unwrap().parse::<uuid::Uuid>().is_ok(),
        "{lease}"
    );
    assert_eq!(c["id"], t["id"]);
    assert_eq!(c["status"], "running");
    assert_eq!(c["worker_id"], "w1");
    assert_eq!(c["attempt"], 1);
    assert_eq!(c["parameters"], t["parameters"]);
    assert!(c["started_at"].is_string() && c["lease_expires_at"].is_string());
    assert_eq!(
        app.task(&t["id"]).await,
        c,
        "the claim answer is the stored task, plus the run's lease id"
    );

    let w = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w["status"], "busy");
    assert_eq!(w["current_task_ids"], json!([id]));
    let health = app.get("/health").await.body;
    assert_eq!(health["workers"]["busy"], 1);
    assert_eq!(health["queue"]["running"], 1);

    let hb = app
        .heartbeat("w1", json!({"status": "busy", "current_task_id": id}))
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    assert_eq!(hb.body["message"], "Heartbeat received");
    assert_eq!(hb.body["cancel_task_ids"], json!([]));

    let logs = app
        .post(
            &format!("/api/v1/workers/w1/tasks/{id}/logs"),
            json!({"attempt": 1, "lease_id": app.lease(&t), "entries": [
                {"level": "debug", "message": "step 1", "context": {"step": 1}},
                {"level": "warning", "message": "slow pod", "timestamp": "2025-01-14T10:30:05Z"},
                {"level": "error", "message": "kubectl failed"}
            ]}),
        )
        .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(logs.body, json!({"accepted": 3}));
    let warn = app
        .get(&format!("/api/v1/tasks/{id}/logs?level=warning"))
        .await
        .body;
    let msgs: Vec<&str> = warn
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        vec!["slow pod", "kubectl failed"],
        "warning and more severe, in time order"
    );
    assert_eq!(
        warn[0]["timestamp"], "2025-01-14T10:30:05+00:00",
        "the worker's timestamp is kept"
    );
    assert_eq!(warn[0]["attempt"], 1);

    let result = json!({"success": true, "output": "Detection Accuracy: Correct",
                        "metrics": {"duration_seconds": 45.2, "steps_taken": 12, "TTD": 3.1}});
    let done = app.complete("w1", &t, 1, result.clone()).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["result"], result);
    assert!(done.body["completed_at"].is_string());
    assert!(done.body["lease_expires_at"].is_null());
    assert_eq!(app.task(&t["id"]).await, done.body);

    let w = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w["status"], "idle");
    assert_eq!(w["tasks_completed"], 1);
    assert_eq!(w["current_task_ids"], json!([]));
    let msgs = app.log_messages(&t).await;
    assert_eq!(
        msgs.first().map(String::as_str),
        Some("slow pod"),
        "sorted by time: the worker's old timestamp comes first"
    );
    assert!(msgs.iter().any(|m| m == "Task created"));
    assert!(
        msgs.iter()
            .any(|m| m == "Task claimed by worker w1 (attempt 1)")
    );
    assert_eq!(msgs.last().map(String::as_str), Some("Task completed"));

    assert_eq!(app.claim("w1").await.status, StatusCode::NO_CONTENT);
}

async fn fail_keeps_the_error_and_counts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w1", json!({"max_parallel_tasks": 2})).await;
    let a = app.create_task(json!({"problem_id": "p-a"})).await;
    let b = app.create_task(json!({"problem_id": "p-b"})).await;
    app.claim_one("w1").await;
    app.claim_one("w1").await;
    let fa = app
        .fail(
            "w1",
            &a,
            1,
            json!({"error": "runner exited with status 1", "result": {"stderr_tail": "boom"}}),
        )
        .await;
    assert_eq!(fa.status, StatusCode::OK, "{}", fa.body);
    assert_eq!(fa.body["status"], "failed");
    assert_eq!(
        fa.body["result"],
        json!({"success": false, "error": "runner exited with status 1", "stderr_tail": "boom"})
    );
    let fb = app
        .fail(
            "w1",
            &b,
            1,
            json!({"error": "over time", "status": "timeout"}),
        )
        .await;
    assert_eq!(fb.body["status"], "timeout");
    assert_eq!(fb.body["result"]["error"], "over time");
    let w = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w["tasks_failed"], 2);
    assert_eq!(w["tasks_completed"], 0);
    let bad = app
        .fail("w1", &b, 1, json!({"error": "x", "status": "completed"}))
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
}

async fn reports_are_fenced_by_holder_and_attempt(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w1", json!({})).await;
    app.register("w2", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    app.claim_one("w1").await;
    let before = app.task(&t["id"]).await;

    assert_error(
        &app.complete("w2", &t, 1, json!({"success": true})).await,
        StatusCode::CONFLICT,
        "task_not_held",
    );
    assert_error(
        &app.complete("w1", &t, 2, json!({"success": true})).await,
        StatusCode::CONFLICT,
        "stale_attempt",
    );
    let logs = app
        .post(
            &format!("/api/v1/workers/w2/tasks/{id}/logs"),
            json!({"attempt": 1, "lease_id": app.lease(&t), "entries": [{"level": "info", "message": "intruder"}]}),
        )
        .await;
    assert_error(&logs, StatusCode::CONFLICT, "task_not_held");
    let fail = app.fail("w1", &t, 0, json!({"error": "x"})).await;
    assert_error(&fail, StatusCode::CONFLICT, "stale_attempt");
    assert_eq!(
        app.task(&t["id"]).await,
        before,
        "refused reports change nothing"
    );

    assert_eq!(
        app.complete("w1", &t, 1, json!({"success": true}))
            .await
            .status,
        StatusCode::OK
    );
    assert_error(
        &app.complete("w1", &t, 1, json!({"success": false})).await,
        StatusCode::CONFLICT,
        "task_finished",
    );
    assert_eq!(
        app.task(&t["id"]).await["result"],
        json!({"success": true}),
        "the first outcome stands"
    );

    let unknown_task = app
        .complete(
            "w1",
            &json!({"id": "00000000-0000-4000-8000-000000000000"}),
            1,
            json!({}),
        )
        .await;
    assert_error(&unknown_task, StatusCode::NOT_FOUND, "task_not_found");
    assert_error(
        &app.complete("ghost", &t, 1, json!({})).await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    let w1 = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w1["tasks_completed"], 1, "counted once");
    assert_eq!(
        app.log_messages(&t).await,
        [
            "Task created",
            "Task claimed by worker w1 (attempt 1)",
            "Task completed"
        ],
        "refused reports write no entry"
    );
    let log = app.get(&format!("/api/v1/tasks/{id}/logs")).await.body;
    let done = &log[2];
    assert_eq!(
        (
            &done["context"]["worker_id"],
            &done["attempt"],
            &done["level"]
        ),
        (&json!("w1"), &json!(1), &json!("info")),
        "{done}"
    );
}

async fn cancel_reaches_the_worker_through_heartbeat(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w1", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    app.claim_one("w1").await;
    let c = app
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(
        app.task(&t["id"]).await["status"],
        "cancelled",
        "cancelled at once"
    );
    let hb = app
        .heartbeat("w1", json!({"status": "busy", "current_task_id": id}))
        .await;
    assert_eq!(hb.body["cancel_task_ids"], json!([id]));
    assert_error(
        &app.complete("w1", &t, 1, json!({"success": true})).await,
        StatusCode::CONFLICT,
        "task_cancelled",
    );
    assert_eq!(app.task(&t["id"]).await["status"], "cancelled");
    let w = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w["status"], "idle", "a cancelled task is no longer held");
    assert_eq!(
        app.claim("w1").await.status,
        StatusCode::NO_CONTENT,
        "the cancelled task is not handed out again"
    );
}

async fn capabilities_route_tasks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("alpha", json!({"supported_problems": ["alpha-*"]}))
        .await;
    app.register(
        "beta",
        json!({"supported_problems": ["beta-?"], "max_parallel_tasks": 10}),
    )
    .await;
    app.register(
        "under",
        json!({"supported_problems": ["x_y*"], "max_parallel_tasks": 10}),
    )
    .await;
    app.register("any", json!({"max_parallel_tasks": 10})).await;
    for p in ["gamma-1", "beta-10", "beta-1", "alpha-1", "xzy1", "x_y1"] {
        app.create_task(json!({"problem_id": p})).await;
    }
    assert_eq!(app.claim_one("alpha").await["problem_id"], "alpha-1");
    assert_eq!(app.claim_one("beta").await["problem_id"], "beta-1");
    assert_eq!(
        app.claim("beta").await.status,
        StatusCode::NO_CONTENT,
        "beta-? does not match beta-10"
    );
    assert_eq!(app.claim_one("under").await["problem_id"], "x_y1");
    assert_eq!(
        app.claim("under").await.status,
        StatusCode::NO_CONTENT,
        "_ is a literal, not a wildcard"
    );
    let mut rest = HashSet::new();
    for _ in 0..3 {
        rest.insert(
            app.claim_one("any").await["problem_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        rest,
        HashSet::from([
            "gamma-1".to_owned(),
            "beta-10".to_owned(),
            "xzy1".to_owned()
        ])
    );
    let bad = app
        .post(
            "/api/v1/workers/register",
            json!({"worker_id": "w", "backend_type": "kind", "capabilities": {"supported_problems": ["te[st]"]}}),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
}

async fn max_parallel_tasks_is_enforced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({"max_parallel_tasks": 2})).await;
    for i in 0..3 {
        app.create_task(json!({"problem_id": format!("p{i}")}))
            .await;
    }
    let a = app.claim_one("w").await;
    app.claim_one("w").await;
    assert_error(
        &app.claim("w").await,
        StatusCode::CONFLICT,
        "worker_at_capacity",
    );
    assert_eq!(
        app.complete("w", &a, 1, json!({"success": true}))
            .await
            .status,
        StatusCode::OK
    );
    app.claim_one("w").await;
}

/// Claims racing for one worker never take it past `max_parallel_tasks`, and every way a run ends gives its
/// slot back: completion, failure, release, cancellation, registering again.
async fn max_parallel_tasks_holds_under_racing_claims(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({"max_parallel_tasks": 3})).await;
    for i in 0..20 {
        app.create_task(json!({"problem_id": format!("p{i}")}))
            .await;
    }
    // `n` claims at once; answers the tasks they got, and checks the others were refused for capacity.
    let race = |n: usize| {
        let app = &app;
        async move {
            let answers = futures_util::future::join_all((0..n).map(|_| app.claim("w"))).await;
            let mut got = Vec::new();
            for r in answers {
                if r.status == StatusCode::OK {
                    got.push(r.body);
                } else {
                    assert_error(&r, StatusCode::CONFLICT, "worker_at_capacity");
                }
            }
            got
        }
    };
    let mut held = race(8).await;
    assert_eq!(held.len(), 3, "three slots, three claims won");

    let a = held.pop().unwrap();
    assert_eq!(
        app.complete("w", &a, 1, json!({"success": true}))
            .await
            .status,
        StatusCode::OK
    );
    let b = held.pop().unwrap();
    let r = app.fail("w", &b, 1, json!({"error": "boom"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    held.extend(race(5).await);
    assert_eq!(held.len(), 3, "a completion and a failure free two slots");

    let c = held.pop().unwrap();
    let id = c["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/release"),
            json!({"attempt": 1, "lease_id": app.lease(&c)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = held.pop().unwrap();
    let r = app.cancel(&d).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    held.extend(race(5).await);
    assert_eq!(held.len(), 3, "a release and a cancellation free two slots");

    // Registering again releases everything the worker held.
    app.register("w", json!({"max_parallel_tasks": 3})).await;
    assert_eq!(race(6).await.len(), 3, "registering again frees every slot");
}

async fn priority_then_age_orders_claims(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({"max_parallel_tasks": 10})).await;
    for (p, prio) in [
        ("first-0", 0),
        ("mid-5", 5),
        ("second-0", 0),
        ("top-9", 9),
        ("neg", -1),
    ] {
        app.create_task(json!({"problem_id": p, "priority": prio}))
            .await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(
            app.claim_one("w").await["problem_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(order, vec!["top-9", "mid-5", "first-0", "second-0", "neg"]);
}

/// A worker's waiting claims take turns looking at the queue, and a look that found nothing stands for the
/// others until something wakes them: tasks that come are still all handed out at once, one per claim, while
/// a backlog of tasks the worker does not support leaves its claims waiting.
async fn waiting_claims_of_one_worker_share_their_looks(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.claim_poll_interval_ms = 200).await;
    app.register(
        "w",
        json!({"max_parallel_tasks": 6, "supported_problems": ["mine-*"]}),
    )
    .await;
    for i in 0..50 {
        app.create_task(json!({"problem_id": format!("other-{i}")}))
            .await;
    }
    let waiting: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (
                app.client.clone(),
                app.url("/api/v1/workers/w/claim?wait_seconds=10"),
            );
            tokio::spawn(async move {
                let r = client.post(url).send().await.unwrap();
                let status = r.status();
                (status, r.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "nothing for them yet: all six wait"
    );

    // Four tasks at once: four claims answered, each with its own task; two still wait.
    let r = app
        .post(
            "/api/v1/batches",
            json!({"tasks": (0..4).map(|i| json!({"problem_id": format!("mine-{i}")})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let got = app
        .eventually("four claims answered", || async {
            let done = waiting.iter().filter(|w| w.is_finished()).count();
            (done >= 4).then_some(done)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got, 4);
    assert_eq!(
        waiting.iter().filter(|w| w.is_finished()).count(),
        4,
        "two still wait"
    );

    let mut answered = Vec::new();
    let mut rest = Vec::new();
    for w in waiting {
        if w.is_finished() {
            answered.push(w.await.unwrap());
        } else {
            rest.push(w);
        }
    }
    let ids: HashSet<String> = answered
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            serde_json::from_str::<Value>(body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 4, "four different tasks");
    // A later task reaches one of the two still waiting.
    app.create_task(json!({"problem_id": "mine-late"})).await;
    let late = futures_util::future::select_all(rest).await.0.unwrap();
    assert_eq!(late.0, StatusCode::OK, "{}", late.1);
}

async fn long_poll_is_woken_by_a_create(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let start = std::time::Instant::now();
    let empty = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/w/claim?wait_seconds=1")),
        )
        .await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "waited for the poll"
    );

    let client = app.client.clone();
    let url = app.url("/api/v1/workers/w/claim?wait_seconds=30");
    let waiting = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = client.post(url).send().await.unwrap();
        let status = r.status();
        (status, r.json::<Value>().await.unwrap(), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = app.create_task(json!({"problem_id": "late"})).await;
    let (status, body, elapsed) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], t["id"]);
    assert!(
        elapsed < Duration::from_secs(20),
        "answered when the task came, not at the end of the wait"
    );
    let bad = app
        .send(
            app.client
                .post(app.url("/api/v1/workers/w/claim?wait_seconds=61")),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
}

async fn lost_worker_task_is_requeued_and_the_late_report_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.worker_heartbeat_timeout_seconds = 1).await;
    app.register("w1", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    assert_eq!(app.claim_one("w1").await["attempt"], 1);
    app.register("w2", json!({})).await;
    // w1 goes silent; w2 stays alive and polls until the task comes back to the queue.
    let second = app
        .eventually("the task requeued and claimed by w2", || async {
            app.heartbeat("w2", json!({"status": "idle"})).await;
            let r = app.claim("w2").await;
            (r.status == StatusCode::OK).then_some(r.body)
        })
        .await;
    assert_eq!(second["id"], t["id"]);
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["worker_id"], "w2");
    let w1 = app.get("/api/v1/workers/w1").await.body;
    assert_eq!(w1["status"], "offline");
    let health = app.get("/health").await.body;
    assert_eq!(health["workers"]["offline"], 1);

    assert_eq!(
        app.complete("w2", &t, 2, json!({"success": true, "by": "w2"}))
            .await
            .status,
        StatusCode::OK
    );
    let late = app
        .complete("w1", &t, 1, json!({"success": false, "by": "w1"}))
        .await;
    assert_error(&late, StatusCode::CONFLICT, "task_not_held");
    let final_task = app.task(&t["id"]).await;
    assert_eq!(final_task["status"], "completed");
    assert_eq!(
        final_task["result"]["by"], "w2",
        "the late report of the lost attempt changed nothing"
    );
    let logs = app
        .get(&format!(
            "/api/v1/tasks/{}/logs?level=warning",
            t["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("Task requeued")),
        "{logs}"
    );
}

async fn out_of_attempts_the_task_fails_naming_the_worker(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.worker_heartbeat_timeout_seconds = 1;
        c.task_max_attempts = 1;
    })
    .await;
    app.register("lost-one", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("lost-one").await;
    let failed = app
        .eventually("the task failed", || async {
            let t = app.task(&t["id"]).await;
            (t["status"] == "failed").then_some(t)
        })
        .await;
    assert!(
        failed["result"]["error"]
            .as_str()
            .unwrap()
            .contains("lost-one"),
        "{failed}"
    );
    assert_eq!(failed["result"]["success"], false);
    assert_eq!(
        failed["failure_kind"], "infrastructure",
        "a lost worker is the infrastructure's failure"
    );
}

/// Every finished task says whose failure it is; a worker's word decides a failed run's, and a failure it does
/// not qualify counts against the agent. Statistics leave infrastructure failures out of the success rate
/// unless asked, and the exports carry the kind.
async fn failures_are_told_apart(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.task_max_attempts = 1).await;
    app.register("w", json!({"max_parallel_tasks": 10})).await;
    let batch = app
        .post(
            "/api/v1/batches",
            json!({"tasks": (0..6).map(|i| json!({"problem_id": format!("p{i}-detection-1")})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    let batch_id = batch.body["id"].as_str().unwrap().to_owned();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(app.claim_one("w").await);
    }
    held.sort_by_key(|t| t["problem_id"].as_str().unwrap().to_owned());
    assert_eq!(held[0]["failure_kind"], Value::Null, "not finished yet");
    let app = &app;
    let fail = |t, body| app.fail("w", t, 1, body);
    let ok = app
        .complete("w", &held[0], 1, json!({"success": true}))
        .await;
    assert_eq!(ok.body["failure_kind"], "none");
    let wrong = app
        .complete("w", &held[1], 1, json!({"success": false}))
        .await;
    assert_eq!(wrong.body["failure_kind"], "agent");
    let agent = fail(
        &held[2],
        json!({"error": "the agent crashed", "failure_kind": "agent"}),
    )
    .await;
    assert_eq!(agent.body["failure_kind"], "agent", "{}", agent.body);
    let unsaid = fail(&held[3], json!({"error": "exit status 1"})).await;
    assert_eq!(unsaid.body["status"], "failed");
    assert_eq!(
        unsaid.body["failure_kind"], "agent",
        "unqualified: the cautious reading"
    );
    let bad = fail(&held[4], json!({"error": "x", "failure_kind": "timeout"})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap()
            .contains("failure_kind"),
        "{}",
        bad.body
    );
    // No attempts left (TASK_MAX_ATTEMPTS=1): the infrastructure failure is final.
    let infra = fail(
        &held[4],
        json!({"error": "kind cluster gone", "failure_kind": "infrastructure"}),
    )
    .await;
    assert_eq!(infra.body["status"], "failed", "{}", infra.body);
    assert_eq!(infra.body["failure_kind"], "infrastructure");
    let pending = app
        .get(&format!("/api/v1/tasks?batch_id={batch_id}&status=pending"))
        .await
        .body;
    let cancelled = app
        .post(
            &format!(
                "/api/v1/tasks/{}/cancel",
                pending[0]["id"].as_str().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(
        app.task(&pending[0]["id"]).await["failure_kind"],
        "cancelled"
    );
    let listed = app
        .get(&format!("/api/v1/tasks?batch_id={batch_id}"))
        .await
        .body;
    let mut kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["failure_kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "agent",
            "agent",
            "agent",
            "cancelled",
            "infrastructure",
            "none"
        ]
    );

    // By hand: 6 finished, 1 succeeded, 1 infrastructure failure: 1/5 without it, 1/6 with it.
    let stats = app
        .get(&format!(
            "/api/v1/stats?batch_id={batch_id}&group_by=task_type"
        ))
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    let g = &stats.body["groups"][0];
    assert_eq!(
        (
            g["finished"].as_i64(),
            g["succeeded"].as_i64(),
            g["infrastructure_failures"].as_i64()
        ),
        (Some(6), Some(1), Some(1))
    );
    assert_eq!(g["success_rate"], json!(0.2));
    let with = app
        .get(&format!(
            "/api/v1/stats?batch_id={batch_id}&group_by=task_type&include_infrastructure=true"
        ))
        .await;
    assert!((with.body["groups"][0]["success_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);

    let text = app
        .get_text(&format!("/api/v1/batches/{batch_id}/results?format=csv"))
        .await;
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "failure_kind")
        .expect("a failure_kind column");
    let mut in_csv: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().to_owned())
        .collect();
    in_csv.sort();
    assert_eq!(
        in_csv,
        [
            "agent",
            "agent",
            "agent",
            "cancelled",
            "infrastructure",
            "none"
        ]
    );
}

/// A worker's infrastructure failure goes back to the queue while attempts remain, saying so in the log, and
/// the next run is the next attempt; once none remain it fails as the infrastructure's.
async fn infrastructure_failures_are_retried_while_attempts_remain(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.task_max_attempts = 2).await;
    app.register("w1", json!({})).await;
    app.register("w2", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w1").await;
    let r = app
        .fail(
            "w1",
            &t,
            1,
            json!({"error": "helm install timed out", "failure_kind": "infrastructure"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "pending", "{}", r.body);
    assert_eq!(r.body["failure_kind"], Value::Null);
    let msgs = app.log_messages(&t).await;
    assert!(
        msgs.iter().any(
            |m| m.contains("an infrastructure failure on worker w1 (attempt 1 of 2)")
                && m.contains("helm install timed out")
        ),
        "{msgs:?}"
    );
    // The late report of the first run is refused; the second run is attempt 2.
    let again = app.claim_one("w2").await;
    assert_eq!(again["attempt"], 2);
    let r = app
        .fail(
            "w2",
            &t,
            2,
            json!({"error": "cluster gone", "failure_kind": "infrastructure"}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    assert_eq!(r.body["failure_kind"], "infrastructure");
    assert_eq!(r.body["result"]["error"], "cluster gone");
    assert_eq!(app.get("/api/v1/workers/w2").await.body["tasks_failed"], 1);
    assert_eq!(
        app.get("/api/v1/workers/w1").await.body["tasks_failed"],
        0,
        "a retried run is not a failure"
    );
}

async fn reaper_times_out_an_overdue_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app
        .create_task(json!({"problem_id": "p", "parameters": {"timeout": 1}}))
        .await;
    let id = t["id"].as_str().unwrap().to_owned();
    app.claim_one("w").await;
    let timed_out = app
        .eventually("the task timed out", || async {
            app.heartbeat("w", json!({"status": "busy", "current_task_id": id}))
                .await;
            let t = app.task(&t["id"]).await;
            (t["status"] == "timeout").then_some(t)
        })
        .await;
    assert!(
        timed_out["result"]["error"]
            .as_str()
            .unwrap()
            .contains("timeout")
    );
    let hb = app
        .heartbeat("w", json!({"status": "busy", "current_task_id": id}))
        .await;
    assert_eq!(hb.body["cancel_task_ids"], json!([id]));
    assert_error(
        &app.complete("w", &t, 1, json!({"success": true})).await,
        StatusCode::CONFLICT,
        "task_timed_out",
    );
}

async fn reregistering_requeues_held_tasks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w").await;
    let again = app.register("w", json!({})).await;
    assert_eq!(again.status, StatusCode::OK);
    let now = app.task(&t["id"]).await;
    assert_eq!(now["status"], "pending");
    assert!(now["worker_id"].is_null());
    assert_eq!(
        now["attempt"], 1,
        "attempt kept; the next claim increments it"
    );
    assert_eq!(app.claim_one("w").await["attempt"], 2);
}

async fn heartbeat_reconciles_tasks_the_worker_does_not_report(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.claim_grace_seconds = 0).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hb = app
        .heartbeat("w", json!({"status": "idle", "current_task_id": null}))
        .await;
    assert_eq!(hb.status, StatusCode::OK);
    let back = app.task(&t["id"]).await;
    assert_eq!(
        back["status"], "pending",
        "a claim lost on the way is requeued"
    );
    assert_eq!(back["attempt"], 0, "the worker never had it: not counted");

    // With the default grace, a heartbeat that left before the claim answer does not requeue the task.
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    app.claim_one("w").await;
    app.heartbeat("w", json!({"status": "idle"})).await;
    assert_eq!(app.task(&t["id"]).await["status"], "running");
    let both = app
        .heartbeat("w", json!({"status": "busy", "running_task_ids": [t["id"], "00000000-0000-4000-8000-000000000000"]}))
        .await;
    assert_eq!(
        both.body["cancel_task_ids"],
        json!(["00000000-0000-4000-8000-000000000000"]),
        "unknown: stop it"
    );
}

/// Heartbeats arriving together are written together (one batch); each is still answered for its own worker:
/// its own leases extended and nobody else's, the tasks it does not hold named to stop, its status kept, and an
/// unknown or offline worker refused alone.
async fn heartbeats_at_once_are_each_answered_for_their_own_worker(backend: Backend) {
    const WORKERS: usize = 24;
    let app = TestApp::spawn(backend).await;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        app.register(&format!("w{w}"), json!({})).await;
        app.create_task(json!({"problem_id": format!("p-{w}")}))
            .await;
        tasks.push(app.claim_one(&format!("w{w}")).await);
    }
    app.register("gone", json!({})).await;
    assert_eq!(
        app.heartbeat("gone", json!({"status": "offline"}))
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The first half heartbeat at once, each reporting its own task and one of the silent second half's.
    let half = WORKERS / 2;
    let names: Vec<String> = (0..half).map(|w| format!("w{w}")).collect();
    let mut sent = Vec::new();
    for w in 0..half {
        let body = if w % 2 == 0 {
            json!({"status": "degraded", "reason": format!("disk {w}"),
                   "running_task_ids": [tasks[w]["id"], tasks[w + half]["id"]]})
        } else {
            json!({"status": "busy", "running_task_ids": [tasks[w]["id"], tasks[w + half]["id"]]})
        };
        sent.push(app.heartbeat(&names[w], body));
    }
    // Twice at once for one worker, a worker nobody registered and one that said goodbye.
    sent.push(app.heartbeat(
        "w0",
        json!({"status": "degraded", "reason": "disk 0",
        "running_task_ids": [tasks[0]["id"], tasks[half]["id"]]}),
    ));
    sent.push(app.heartbeat("ghost", json!({"status": "idle"})));
    sent.push(app.heartbeat("gone", json!({"status": "idle"})));
    let answers = futures_util::future::join_all(sent).await;

    for (w, r) in answers.iter().take(half + 1).enumerate() {
        let w = w % half;
        assert_eq!(r.status, StatusCode::OK, "w{w}: {}", r.body);
        assert_eq!(
            r.body["cancel_task_ids"],
            json!([tasks[w + half]["id"]]),
            "w{w} is told to stop only the task it does not hold"
        );
    }
    assert_error(
        &answers[half + 1],
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_error(&answers[half + 2], StatusCode::CONFLICT, "worker_offline");

    for (w, claimed) in tasks.iter().enumerate() {
        let t = app.task(&claimed["id"]).await;
        assert_eq!(t["status"], "running", "{t}");
        assert_eq!(t["worker_id"], format!("w{w}"));
        let (before, after) = (
            claimed["lease_expires_at"].as_str().unwrap(),
            t["lease_expires_at"].as_str().unwrap(),
        );
        let (before, after) = (
            chrono::DateTime::parse_from_rfc3339(before).unwrap(),
            chrono::DateTime::parse_from_rfc3339(after).unwrap(),
        );
        if w < half {
            assert!(
                after > before,
                "w{w} heartbeat: its lease goes on ({before} -> {after})"
            );
        } else {
            assert_eq!(
                after, before,
                "w{w} was silent: another worker's report extends nothing"
            );
        }
        let wr = app.get(&format!("/api/v1/workers/w{w}")).await;
        if w < half && w % 2 == 0 {
            assert_eq!(wr.body["status"], "degraded", "{}", wr.body);
            assert_eq!(wr.body["status_reason"], format!("disk {w}"));
        } else {
            assert_eq!(wr.body["status"], "busy", "{}", wr.body);
            assert!(wr.body["status_reason"].is_null(), "{}", wr.body);
        }
    }
}

async fn contention_every_task_completed_exactly_once(backend: Backend) {
    const TASKS: usize = 500;
    const WORKERS: usize = 16;
    let app = TestApp::spawn(backend).await;
    let mut created = HashSet::new();
    for i in 0..TASKS {
        let t = app
            .create_task(json!({"problem_id": format!("p-{i}")}))
            .await;
        created.insert(t["id"].as_str().unwrap().to_owned());
    }
    for w in 0..WORKERS {
        app.register(&format!("w{w}"), json!({})).await;
    }
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let client = app.client.clone();
        let base = app.base.clone();
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut done = Vec::new();
            loop {
                let r = client.post(format!("{base}/api/v1/workers/{worker}/claim")).send().await.unwrap();
                match r.status() {
                    StatusCode::NO_CONTENT => return done,
                    StatusCode::OK => {}
                    s => panic!("claim answered {s}: {}", r.text().await.unwrap()),
                }
                let t: Value = r.json().await.unwrap();
                assert_eq!(t["worker_id"], worker.as_str());
                let id = t["id"].as_str().unwrap().to_owned();
                let c = client
                    .post(format!("{base}/api/v1/workers/{worker}/tasks/{id}/complete"))
                    .json(&json!({"attempt": t["attempt"], "lease_id": t["lease_id"], "result": {"success": true, "by": worker}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(c.status(), StatusCode::OK, "{}", c.text().await.unwrap());
                done.push(id);
            }
        }));
    }
    let mut completed = Vec::new();
    let mut per_worker = Vec::new();
    for h in handles {
        let d = h.await.unwrap();
        per_worker.push(d.len() as i64);
        completed.extend(d);
    }
    let unique: HashSet<String> = completed.iter().cloned().collect();
    assert_eq!(completed.len(), TASKS, "no task claimed twice");
    assert_eq!(unique, created, "every task completed");
    let tasks = app.get("/api/v1/tasks?limit=1000").await.body;
    for t in tasks.as_array().unwrap() {
        assert_eq!(t["status"], "completed");
        assert_eq!(t["attempt"], 1);
    }
    let workers = app.get("/api/v1/workers").await.body;
    let counted: i64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks_completed"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, TASKS as i64, "worker counters agree");
    let health = app.get("/health").await.body;
    assert_eq!(health["queue"]["completed"], TASKS as i64);
    assert_eq!(health["queue"]["pending"], 0);
    assert_eq!(health["queue"]["running"], 0);
}

async fn bad_input_on_worker_routes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    assert_error(
        &app.heartbeat("ghost", json!({"status": "idle"})).await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_error(
        &app.claim("ghost").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_error(
        &app.claim("bad%20id").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert_error(
        &app.post(
            "/api/v1/workers/w/tasks/not-a-uuid/complete",
            json!({"attempt": 1, "lease_id": uuid::Uuid::new_v4(), "result": {}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    for body in [
        json!({"worker_id": "", "backend_type": "kind"}),
        json!({"worker_id": "a/b", "backend_type": "kind"}),
        json!({"worker_id": "x".repeat(129), "backend_type": "kind"}),
        json!({"worker_id": 7, "backend_type": "kind"}),
        json!({"worker_id": "w9"}),
        json!({"worker_id": "w9", "backend_type": "kind", "capabilities": {"max_parallel_tasks": 0}}),
        json!({"worker_id": "w9", "backend_type": "kind", "capabilities": {"supported_problems": "test-*"}}),
    ] {
        let r = app.post("/api/v1/workers/register", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    assert_eq!(app.count("/api/v1/workers").await, 1, "nothing registered");
    assert_error(
        &app.send(
            app.client
                .post(app.url("/api/v1/workers/register"))
                .header("content-type", "application/json")
                .body("{"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        &app.heartbeat("w", json!({"status": "sleepy"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert_error(
        &app.heartbeat("w", json!({"status": "idle", "current_task_id": "nope"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    let claimed = app.claim_one("w").await;
    let lease = &claimed["lease_id"];
    for (path, body) in [
        ("complete", json!({"lease_id": lease, "result": {}})),
        ("complete", json!({"attempt": 1, "result": {}})),
        (
            "complete",
            json!({"attempt": 1, "lease_id": lease, "result": "done"}),
        ),
        ("fail", json!({"attempt": 1, "lease_id": lease})),
        (
            "logs",
            json!({"attempt": 1, "lease_id": lease, "entries": [{"level": "loud", "message": "x"}]}),
        ),
        (
            "logs",
            json!({"attempt": 1, "lease_id": lease, "entries": [{"level": "info"}]}),
        ),
    ] {
        let r = app
            .post(
                &format!("/api/v1/workers/w/tasks/{id}/{path}"),
                body.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {}",
            r.body
        );
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    assert_eq!(
        app.task(&t["id"]).await["status"],
        "running",
        "bad reports changed nothing"
    );
    assert_error(
        &app.send(app.client.get(app.url("/api/v1/workers/w/claim")))
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn release_gives_the_task_back_uncounted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({})).await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    app.claim_one("w").await;
    let wrong = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/release"),
            json!({"attempt": 2, "lease_id": app.lease(&t)}),
        )
        .await;
    assert_error(&wrong, StatusCode::CONFLICT, "stale_attempt");
    let r = app
        .post(
            &format!("/api/v1/workers/w/tasks/{id}/release"),
            json!({"attempt": 1, "lease_id": app.lease(&t)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["attempt"], 0);
    assert!(r.body["worker_id"].is_null());
    assert_eq!(
        app.claim_one("w").await["attempt"],
        1,
        "the released run was not counted"
    );
    let logs = app
        .get(&format!("/api/v1/tasks/{id}/logs?level=warning"))
        .await
        .body;
    assert!(
        logs[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Task returned to the queue"),
        "{logs}"
    );
}

/// A long poll whose client hung up ends with its connection: the worker's slot is free for another waiting
/// claim at once (while it waited, one more would have been refused with 429), and a task queued after it is not
/// taken for nobody. A client that vanishes without closing its connection (a host that died) can still leave a
/// claim that takes a task; the worker's next heartbeat gives it back
/// (`heartbeat_reconciles_tasks_the_worker_does_not_report`).
async fn a_claim_whose_client_left_takes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w", json!({"max_parallel_tasks": 1})).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url("/api/v1/workers/w/claim?wait_seconds=60"))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    app.eventually("a waiting claim is accepted again", || async {
        let r = app
            .post("/api/v1/workers/w/claim?wait_seconds=1", Value::Null)
            .await;
        (r.status == StatusCode::NO_CONTENT).then_some(())
    })
    .await;
    let t = app.create_task(json!({"problem_id": "p"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = app.task(&t["id"]).await;
    assert_eq!(now["status"], "pending", "{now}");
    let claimed = app.claim_one("w").await;
    assert_eq!(claimed["id"], t["id"]);
    assert_eq!(claimed["attempt"], 1);
}

task_executor_shared::both_backends!(
    a_claim_whose_client_left_takes_nothing,
    release_gives_the_task_back_uncounted,
    register_list_and_get,
    a_task_from_claim_to_complete,
    fail_keeps_the_error_and_counts,
    reports_are_fenced_by_holder_and_attempt,
    cancel_reaches_the_worker_through_heartbeat,
    capabilities_route_tasks,
    max_parallel_tasks_is_enforced,
    max_parallel_tasks_holds_under_racing_claims,
    priority_then_age_orders_claims,
    long_poll_is_woken_by_a_create,
    waiting_claims_of_one_worker_share_their_looks,
    lost_worker_task_is_requeued_and_the_late_report_refused,
    out_of_attempts_the_task_fails_naming_the_worker,
    failures_are_told_apart,
    infrastructure_failures_are_retried_while_attempts_remain,
    reaper_times_out_an_overdue_task,
    reregistering_requeues_held_tasks,
    heartbeat_reconciles_tasks_the_worker_does_not_report,
    heartbeats_at_once_are_each_answered_for_their_own_worker,
    contention_every_task_completed_exactly_once,
    bad_input_on_worker_routes,
);
