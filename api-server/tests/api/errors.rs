//! Bad input on every kind of route: the specification's error body, the right status, nothing stored.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error};

async fn bad_bodies_are_refused_and_nothing_is_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let post_raw = |body: &'static str, ct: Option<&'static str>| {
        let mut req = app.client.post(app.url("/api/v1/tasks")).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        app.send(req)
    };
    assert_error(
        &post_raw("{\"problem_id\":", Some("application/json")).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        &post_raw("not json", Some("application/json")).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        &post_raw("{\"problem_id\":\"p\"}", Some("text/plain")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_error(
        &post_raw("{\"problem_id\":\"p\"}", None).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_error(
        &post_raw("", Some("application/json")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );

    for body in [
        json!({}),
        json!({"problem_id": 42}),
        json!([1, 2]),
        json!({"problem_id": ""}),
        json!({"problem_id": "-starts-with-dash"}),
        json!({"problem_id": "has space"}),
        json!({"problem_id": "a".repeat(256)}),
        json!({"problem_id": "p", "parameters": "not an object"}),
        json!({"problem_id": "p", "parameters": {"max_steps": 0}}),
        json!({"problem_id": "p", "parameters": {"max_steps": 10001}}),
        json!({"problem_id": "p", "parameters": {"max_steps": "30"}}),
        json!({"problem_id": "p", "parameters": {"timeout": 0}}),
        json!({"problem_id": "p", "parameters": {"timeout": 604801}}),
        json!({"problem_id": "p", "priority": "high"}),
    ] {
        let r = app.post("/api/v1/tasks", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {}",
            r.body
        );
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    // The edges of the ranges are accepted.
    app.create_task(json!({"problem_id": "a".repeat(255), "parameters": {"max_steps": 10000, "timeout": 604800}}))
        .await;

    let big = format!(
        "{{\"problem_id\":\"p\",\"parameters\":{{\"blob\":\"{}\"}}}}",
        "x".repeat(1024 * 1024)
    );
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/tasks"))
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let bad_key = app
        .send(
            app.client
                .post(app.url("/api/v1/tasks"))
                .header("Idempotency-Key", "x".repeat(300))
                .json(&json!({"problem_id": "p"})),
        )
        .await;
    assert_error(
        &bad_key,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );

    let all = app.get("/api/v1/tasks").await.body;
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "only the valid task was stored: {all}"
    );
}

async fn bad_paths_queries_and_methods(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_error(&app.get("/nope").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &app.get("/api/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.get("/api/v1/tasks/not-a-uuid").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert_error(
        &app.post("/api/v1/tasks/not-a-uuid/cancel", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert_error(
        &app.get("/api/v1/tasks/123/logs").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    for q in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "offset=-1",
        "status=bogus",
        "problem_id=",
    ] {
        let r = app.get(&format!("/api/v1/tasks?{q}")).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    let t = app.create_task(json!({"problem_id": "p"})).await;
    let id = t["id"].as_str().unwrap();
    for q in ["level=loud", "limit=0", "limit=10001"] {
        let r = app.get(&format!("/api/v1/tasks/{id}/logs?{q}")).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    // A parameter out of bounds is told its bounds.
    for (path, detail) in [
        (
            "/api/v1/tasks?problem_id=".to_owned(),
            "parameter `problem_id`: 1 to 255 characters are expected",
        ),
        (
            format!("/api/v1/tasks/export?worker_id={}", "w".repeat(129)),
            "parameter `worker_id`: 1 to 128 characters are expected",
        ),
        (
            "/api/v1/tasks?limit=1001".to_owned(),
            "parameter `limit`: an integer from 1 to 1000 is expected",
        ),
        (
            format!("/api/v1/tasks/{id}/logs?limit=abc"),
            "parameter `limit`: an integer from 1 to 10000 is expected",
        ),
        (
            "/api/v1/batches?offset=-1".to_owned(),
            "parameter `offset`: an integer from 0 to 1000000000 is expected",
        ),
    ] {
        let r = app.get(&path).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        assert_eq!(r.body["detail"], detail, "{path}");
    }
    let allow = |r: &crate::helpers::Reply| {
        r.headers
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let r = app.send(app.client.delete(app.url("/api/v1/tasks"))).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(
        allow(&r).as_deref(),
        Some("GET, POST"),
        "405 names what is allowed"
    );
    let r = app
        .send(app.client.put(app.url(&format!("/api/v1/tasks/{id}"))))
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(allow(&r).as_deref(), Some("GET"));
    let r = app
        .send(
            app.client
                .get(app.url(&format!("/api/v1/tasks/{id}/cancel"))),
        )
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(allow(&r).as_deref(), Some("POST"));
    let r = app
        .send(app.client.get(app.url("/api/v1/workers/internal/stop")))
        .await;
    assert_eq!(
        allow(&r).as_deref(),
        Some("POST"),
        "a literal path beats a parameter"
    );
}

async fn request_id_is_echoed_or_made(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .send(
            app.client
                .get(app.url("/api/v1/tasks/nope"))
                .header("X-Request-Id", "my-trace-42"),
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "my-trace-42");
    assert_eq!(r.body["request_id"], "my-trace-42");
    let ok = app.get("/api/v1/tasks").await;
    assert_eq!(ok.status, StatusCode::OK);
    let made = ok.headers["x-request-id"].to_str().unwrap();
    assert!(made.starts_with("req_") && made.len() > 10, "{made}");
    // An unusable id (too long) is replaced, not echoed.
    let long = "x".repeat(500);
    let r = app
        .send(
            app.client
                .get(app.url("/nope"))
                .header("X-Request-Id", long.as_str()),
        )
        .await;
    assert_ne!(r.headers["x-request-id"], long.as_str());
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
}

task_executor_shared::both_backends!(
    bad_bodies_are_refused_and_nothing_is_stored,
    bad_paths_queries_and_methods,
    request_id_is_echoed_or_made,
);
