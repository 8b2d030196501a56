//! `GET /metrics` after a workload: the right counts, and no per-id series.

use reqwest::StatusCode;
use serde_json::json;
use task_executor_shared::runner::RunnerKind;

use crate::helpers::{Backend, TestApp};

/// The value of the series whose line starts with `prefix` (name and labels, exactly as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn metrics_after_a_workload(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 2;
        c.runner.runner = RunnerKind::Simulate;
    })
    .await;
    let mut ids = Vec::new();
    for outcome in ["success", "success", "success", "crash"] {
        let t = app
            .create_task(json!({"problem_id": "m-1", "parameters": {"simulate": {"steps": 2, "step_ms": 20, "outcome": outcome}}}))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.eventually("finished", || async {
            let t = app.get(&format!("/api/v1/tasks/{id}")).await.body;
            (t["status"] == "completed" || t["status"] == "failed").then_some(())
        })
        .await;
    }
    assert_eq!(
        app.post("/api/v1/workers/internal/stop", json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let pending = app.create_task(json!({"problem_id": "waiting"})).await;
    ids.push(pending["id"].as_str().unwrap().to_owned());
    app.get("/api/v1/tasks/00000000-0000-4000-8000-000000000000")
        .await;

    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert_eq!(value(&text, "task_executor_tasks_created_total"), 5.0);
    assert_eq!(value(&text, "task_executor_tasks_claimed_total"), 4.0);
    assert_eq!(
        value(
            &text,
            r#"task_executor_tasks_finished_total{status="completed"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"task_executor_tasks_finished_total{status="failed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"task_executor_task_run_duration_seconds_count{status="completed"}"#
        ),
        3.0
    );
    assert_eq!(value(&text, "task_executor_claim_wait_seconds_count"), 4.0);
    assert_eq!(
        value(&text, r#"task_executor_queue_tasks{status="pending"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"task_executor_queue_tasks{status="running"}"#),
        0.0
    );
    assert!(value(&text, "task_executor_queue_oldest_pending_age_seconds") >= 0.0);
    assert_eq!(
        value(&text, r#"task_executor_workers{status="offline"}"#),
        2.0
    );
    assert_eq!(value(&text, r#"task_executor_workers{status="busy"}"#), 0.0);
    assert!(value(&text, r#"task_executor_db_pool_connections{state="idle"}"#) >= 0.0);
    assert_eq!(
        value(
            &text,
            r#"task_executor_http_requests_total{method="POST",route="/api/v1/tasks",status="201"}"#
        ),
        5.0
    );
    assert!(
        text.contains(r#"route="/api/v1/tasks/:"#),
        "route templates, not paths:\n{text}"
    );
    assert!(text.contains(r#"status="404""#));
    for id in &ids {
        assert!(
            !text.contains(id.as_str()),
            "a task id became a series: {id}"
        );
    }
    assert!(!text.contains("00000000-0000-4000-8000-000000000000"));
}

task_executor_shared::both_backends!(metrics_after_a_workload);
