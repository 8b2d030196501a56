//! Health, readiness and the OpenAPI document.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, drop_pg_database};

async fn health_reports_database_and_queue(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_task(json!({"problem_id": "p1"})).await;
    let t = app.create_task(json!({"problem_id": "p2"})).await;
    app.cancel(&t).await;
    let h = app.get("/health").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.body["status"], "healthy");
    assert_eq!(h.body["database"]["connected"], true);
    assert!(h.body["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(h.body["queue"]["pending"], 1);
    assert_eq!(h.body["queue"]["cancelled"], 1);
    assert_eq!(h.body["queue"]["completed"], 0);
    assert_eq!(h.body["workers"]["total"], 0);
    assert!(h.body["timestamp"].is_string() && h.body["version"].is_string());

    let r = app.get("/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"ready": true, "database": true, "workers": false})
    );
}

/// PostgreSQL only: a database that goes away makes the service unhealthy and not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_database_is_gone() {
    let app = TestApp::spawn(Backend::Postgres).await;
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    drop_pg_database(&app.db_url).await;
    let h = app.get("/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE, "{}", h.body);
    assert_eq!(h.body["status"], "unhealthy");
    assert_eq!(h.body["database"]["connected"], false);
    let r = app.get("/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["ready"], false);
    // A request that needs the database is a 500 that shows no SQL.
    let l = app.get("/api/v1/tasks").await;
    crate::helpers::assert_error(&l, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert_eq!(l.body["detail"], "internal server error");
}

async fn openapi_lists_every_route_and_docs_serve(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = app.get("/openapi.json").await;
    assert_eq!(spec.status, StatusCode::OK);
    let paths = spec.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health", "get"),
        ("/ready", "get"),
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/{task_id}", "get"),
        ("/api/v1/tasks/{task_id}/cancel", "post"),
        ("/api/v1/tasks/{task_id}/logs", "get"),
    ] {
        let op = &paths.get(path).unwrap_or_else(|| panic!("{path} missing"))[method];
        assert!(op.is_object(), "{method} {path} missing");
        if path.starts_with("/api") {
            for status in ["404", "422", "500"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }
    let create = &paths["/api/v1/tasks"]["post"];
    assert!(create["responses"]["201"].is_object() && create["responses"]["409"].is_object());
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
}

task_executor_shared::both_backends!(
    health_reports_database_and_queue,
    openapi_lists_every_route_and_docs_serve
);
