//! The task API: create, get, list, cancel, logs, idempotency.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error};

async fn create_fills_defaults_and_get_returns_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app
        .create_task(json!({
            "problem_id": "misconfig_app_hotel_res-detection-1",
            "parameters": {"agent_config": {"model": "gpt-4", "temperature": 0.7}}
        }))
        .await;
    assert_eq!(t["status"], "pending");
    assert_eq!(t["problem_id"], "misconfig_app_hotel_res-detection-1");
    assert_eq!(t["priority"], 0);
    assert_eq!(t["attempt"], 0);
    assert_eq!(
        t["parameters"],
        json!({"agent_config": {"model": "gpt-4", "temperature": 0.7}, "max_steps": 30, "timeout": 1800})
    );
    assert!(t["worker_id"].is_null() && t["result"].is_null() && t["started_at"].is_null());
    assert_eq!(t["created_at"], t["updated_at"]);

    let id = t["id"].as_str().unwrap();
    let got = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, t, "GET returns what the create answered");

    let logs = app.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK);
    let entries = logs.body.as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["message"], "Task created");
    assert_eq!(entries[0]["level"], "info");
}

async fn given_parameters_and_priority_are_kept(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app
        .create_task(json!({
            "problem_id": "p1",
            "parameters": {"max_steps": 5, "timeout": 60, "custom": [1, 2, {"x": null}]},
            "priority": 7
        }))
        .await;
    assert_eq!(
        t["parameters"],
        json!({"max_steps": 5, "timeout": 60, "custom": [1, 2, {"x": null}]})
    );
    assert_eq!(t["priority"], 7);
}

async fn server_defaults_come_from_configuration(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.default_max_steps = 7;
        c.default_timeout_minutes = 2;
    })
    .await;
    let t = app.create_task(json!({"problem_id": "p1"})).await;
    assert_eq!(t["parameters"], json!({"max_steps": 7, "timeout": 120}));
}

async fn list_filters_orders_and_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.create_task(json!({"problem_id": "alpha"})).await;
    let b = app.create_task(json!({"problem_id": "beta"})).await;
    let c = app.create_task(json!({"problem_id": "alpha"})).await;
    let ids = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].clone())
            .collect()
    };
    let all = app.get("/api/v1/tasks").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        ids(&all.body),
        vec![c["id"].clone(), b["id"].clone(), a["id"].clone()],
        "newest first"
    );
    assert_eq!(all.body[0]["status"], "pending");

    let alpha = app.get("/api/v1/tasks?problem_id=alpha").await;
    assert_eq!(ids(&alpha.body), vec![c["id"].clone(), a["id"].clone()]);

    let page = app.get("/api/v1/tasks?limit=1&offset=1").await;
    assert_eq!(ids(&page.body), vec![b["id"].clone()]);

    let r = app.cancel(&b).await;
    assert_eq!(r.status, StatusCode::OK);
    let cancelled = app.get("/api/v1/tasks?status=cancelled").await;
    assert_eq!(ids(&cancelled.body), vec![b["id"].clone()]);
    let pending = app.get("/api/v1/tasks?status=pending").await;
    assert_eq!(ids(&pending.body), vec![c["id"].clone(), a["id"].clone()]);
    let none = app.get("/api/v1/tasks?worker_id=nobody").await;
    assert_eq!(none.body, json!([]));

    // Without `limit`, a page holds 100.
    let many: Vec<_> = (0..110).map(|_| json!({"problem_id": "gamma"})).collect();
    let r = app.post("/api/v1/batches", json!({"tasks": many})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let first = app.get("/api/v1/tasks?problem_id=gamma").await;
    assert_eq!(first.body.as_array().map(Vec::len), Some(100));
    let rest = app.get("/api/v1/tasks?problem_id=gamma&offset=100").await;
    assert_eq!(rest.body.as_array().map(Vec::len), Some(10));
}

async fn cancel_pending_then_conflict_then_unknown(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.create_task(json!({"problem_id": "p1"})).await;
    let id = t["id"].as_str().unwrap();
    let r = app
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"message": "Task cancelled successfully", "task_id": id})
    );

    let got = app.get(&format!("/api/v1/tasks/{id}")).await.body;
    assert_eq!(got["status"], "cancelled");
    assert!(got["completed_at"].is_string());

    let again = app
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_error(&again, StatusCode::CONFLICT, "task_not_cancellable");
    assert_eq!(
        app.get(&format!("/api/v1/tasks/{id}")).await.body,
        got,
        "a refused cancel changes nothing"
    );

    let unknown = app
        .post(
            "/api/v1/tasks/00000000-0000-4000-8000-000000000000/cancel",
            json!({}),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "task_not_found");
    let unknown_get = app
        .get("/api/v1/tasks/00000000-0000-4000-8000-000000000000")
        .await;
    assert_error(&unknown_get, StatusCode::NOT_FOUND, "task_not_found");
    let unknown_logs = app
        .get("/api/v1/tasks/00000000-0000-4000-8000-000000000000/logs")
        .await;
    assert_error(&unknown_logs, StatusCode::NOT_FOUND, "task_not_found");

    let messages = app.log_messages(&t).await;
    assert_eq!(messages, vec!["Task created", "Task cancelled"]);
}

async fn idempotency_key_returns_the_first_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"problem_id": "p1", "parameters": {"max_steps": 3, "agent_config": {"model": "m", "t": 1}}});
    let post = |b: serde_json::Value, key: &'static str| {
        app.send(
            app.client
                .post(app.url("/api/v1/tasks"))
                .header("Idempotency-Key", key)
                .json(&b),
        )
    };
    let first = post(body.clone(), "key-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Same body, keys of nested objects in another order: the same request.
    let same = json!({"parameters": {"agent_config": {"t": 1, "model": "m"}, "max_steps": 3}, "problem_id": "p1"});
    let second = post(same, "key-1").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, first.body);

    let other = post(json!({"problem_id": "p2"}), "key-1").await;
    assert_error(&other, StatusCode::CONFLICT, "idempotency_key_reused");

    let fresh = post(body.clone(), "key-2").await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.body["id"], first.body["id"]);

    let all = app.get("/api/v1/tasks").await.body;
    assert_eq!(all.as_array().unwrap().len(), 2, "one task per key: {all}");
}

async fn concurrent_creates_with_one_key_make_one_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut handles = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = app.url("/api/v1/tasks");
        handles.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("Idempotency-Key", "same-key")
                .json(&json!({"problem_id": "p1"}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body["id"].as_str().unwrap().to_owned())
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let (status, id) = h.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        created += usize::from(status == StatusCode::CREATED);
        ids.insert(id);
    }
    assert_eq!(created, 1, "exactly one request created the task");
    assert_eq!(ids.len(), 1, "every request got the same task");
    assert_eq!(app.count("/api/v1/tasks").await, 1);
}

async fn logs_filter_by_level_and_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.create_task(json!({"problem_id": "p1"})).await;
    let id = t["id"].as_str().unwrap();
    app.post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    let info = app
        .get(&format!("/api/v1/tasks/{id}/logs?level=info"))
        .await
        .body;
    assert_eq!(info.as_array().unwrap().len(), 2);
    let warning = app
        .get(&format!("/api/v1/tasks/{id}/logs?level=warning"))
        .await;
    assert_eq!(warning.status, StatusCode::OK);
    assert_eq!(
        warning.body,
        json!([]),
        "state changes are info, below warning"
    );
    let one = app
        .get(&format!("/api/v1/tasks/{id}/logs?limit=1"))
        .await
        .body;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["message"], "Task created");
}

task_executor_shared::both_backends!(
    create_fills_defaults_and_get_returns_it,
    given_parameters_and_priority_are_kept,
    server_defaults_come_from_configuration,
    list_filters_orders_and_pages,
    cancel_pending_then_conflict_then_unknown,
    idempotency_key_returns_the_first_task,
    concurrent_creates_with_one_key_make_one_task,
    logs_filter_by_level_and_limit,
);
