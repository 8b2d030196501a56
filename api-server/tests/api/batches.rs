//! Campaigns: batches created all or nothing (explicit and matrix), progress and cancel, results exported
//! (CSV parsed back, JSON lines, JSON) and statistics checked against figures computed by hand.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    events::Sse,
    helpers::{Backend, TestApp, assert_error},
};

/// Parses CSV (RFC 4180: quoted fields may hold commas, quotes and line breaks).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

async fn task_count(app: &TestApp) -> usize {
    app.count("/api/v1/tasks?limit=1000").await
}

async fn a_batch_is_created_all_or_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tasks: Vec<Value> = (0..1000)
        .map(|i| json!({"problem_id": format!("p-{}", i % 7), "parameters": {"i": i}, "priority": i % 3}))
        .collect();
    let send = |body: Value, key: &str| {
        app.send(
            app.client
                .post(app.url("/api/v1/batches"))
                .header("idempotency-key", key)
                .json(&body),
        )
    };
    let body = json!({"name": "big", "tasks": tasks});
    let r = send(body.clone(), "big-1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ids: Vec<&str> = r.body["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(r.body["task_count"], 1000);
    let batch_id = r.body["id"].as_str().unwrap().to_owned();
    let listed = app
        .get(&format!("/api/v1/tasks?batch_id={batch_id}&limit=1000"))
        .await
        .body;
    assert_eq!(listed.as_array().unwrap().len(), 1000);
    let t = app.task(&json!(ids[500])).await;
    assert_eq!(t["batch_id"], batch_id.as_str());
    assert_eq!(t["parameters"]["i"], 500);
    assert_eq!(
        t["parameters"]["max_steps"], 30,
        "defaults filled in as for one task"
    );
    let b = app.get(&format!("/api/v1/batches/{batch_id}")).await.body;
    assert_eq!(b["task_count"], 1000);
    assert_eq!(b["counts"]["pending"], 1000);
    assert_eq!(
        (b["finished"].as_i64(), b["progress"].as_f64()),
        (Some(0), Some(0.0))
    );
    assert!(b["success_rate"].is_null() && b["finished_at"].is_null());

    let again = send(body, "big-1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["task_ids"], r.body["task_ids"],
        "the same tasks, in the same order"
    );
    assert_eq!(task_count(&app).await, 1000);

    // One bad item among 10,000: nothing is created, and the error names the item and the field, short,
    // without the body.
    let detail = |r: &crate::helpers::Reply| {
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        let d = r.body["detail"].as_str().unwrap().to_owned();
        assert!(d.len() < 1024 && !d.contains("q-1\""), "{d}");
        d
    };
    let mut bad: Vec<Value> = (0..10_000)
        .map(|i| json!({"problem_id": format!("q-{i}")}))
        .collect();
    bad[7345]["parameters"] = json!({"max_steps": 0});
    let r = app.post("/api/v1/batches", json!({"tasks": bad})).await;
    assert_eq!(
        detail(&r),
        "tasks[7345].parameters.max_steps must be an integer from 1 to 10000, got 0"
    );
    bad[7345] = json!({"problem_id": "q-7345", "priority": "high"});
    let r = app.post("/api/v1/batches", json!({"tasks": bad})).await;
    assert_eq!(
        detail(&r),
        "tasks[7345].priority: expected an integer (int32), found a string"
    );
    bad[7345] = json!({"problem_id": "q 7345"});
    let r = app.post("/api/v1/batches", json!({"tasks": bad})).await;
    assert!(detail(&r).starts_with("tasks[7345].problem_id: problem_id must be"));
    // A matrix: its lists' items by index, its own fields by name.
    let mut problems: Vec<Value> = (0..5000).map(|i| json!(format!("q-{i}"))).collect();
    problems[4321] = json!(["q-1"]);
    let r = app
        .post("/api/v1/batches", json!({"problems": problems}))
        .await;
    assert_eq!(
        detail(&r),
        "problems[4321]: expected a string, found an array"
    );
    problems[4321] = json!("q-4321");
    let r = app
        .post(
            "/api/v1/batches",
            json!({"problems": problems, "agent_configs": [{"agent": "gpt"}, "gpt"]}),
        )
        .await;
    assert_eq!(
        detail(&r),
        "agent_configs[1]: expected an object, found a string"
    );
    let r = app
        .post(
            "/api/v1/batches",
            json!({"problems": problems, "parameters": {"timeout": "1h"}}),
        )
        .await;
    assert_eq!(
        detail(&r),
        "parameters.timeout must be an integer from 1 to 604800, got a string"
    );
    let r = app
        .post(
            "/api/v1/batches",
            json!({"problems": problems, "repetitions": "twice"}),
        )
        .await;
    assert_eq!(
        detail(&r),
        "repetitions: expected an integer (uint32), found a string"
    );
    assert_eq!(task_count(&app).await, 1000);
    assert_eq!(app.count("/api/v1/batches").await, 1);
    for body in [
        json!({"tasks": []}),
        json!({}),
        json!({"tasks": [{"problem_id": "a"}], "problems": ["b"]}),
        json!({"problems": ["a"], "repetitions": 0}),
    ] {
        let r = app.post("/api/v1/batches", body.clone()).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    let huge = json!({"problems": (0..101).map(|i| format!("p{i}")).collect::<Vec<_>>(),
                      "agent_configs": (0..100).map(|i| json!({"agent": format!("a{i}")})).collect::<Vec<_>>()});
    let r = app.post("/api/v1/batches", huge).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large");
    assert!(
        r.body["detail"].as_str().unwrap().contains("10100 tasks"),
        "{}",
        r.body
    );
    assert_eq!(task_count(&app).await, 1000);
    let missing = app
        .get(&format!("/api/v1/batches/{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "batch_not_found");
}

async fn a_matrix_expands_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .post(
            "/api/v1/batches",
            json!({
                "name": "matrix",
                "problems": ["p1", "p2", "p3"],
                "agent_configs": [{"agent": "a1", "model": "m1"}, {"agent": "a2"}],
                "repetitions": 2,
                "parameters": {"max_steps": 5, "agent_config": {"agent": "ignored"}},
                "priority": 4
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ids = r.body["task_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 12);
    let mut seen = Vec::new();
    for id in ids {
        let t = app.task(id).await;
        assert_eq!(t["parameters"]["max_steps"], 5);
        assert_eq!(t["priority"], 4);
        seen.push(format!(
            "{}/{}/{}",
            t["problem_id"].as_str().unwrap(),
            t["parameters"]["agent_config"]["agent"].as_str().unwrap(),
            t["parameters"]["repetition"]
        ));
    }
    let expected: Vec<String> = ["p1", "p2", "p3"]
        .iter()
        .flat_map(|p| ["a1", "a2"].map(move |a| (p, a)))
        .flat_map(|(p, a)| [1, 2].map(move |r| format!("{p}/{a}/{r}")))
        .collect();
    assert_eq!(seen, expected);
}

async fn a_batch_is_cancelled_and_followed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let other = app.create_task(json!({"problem_id": "elsewhere"})).await;
    let r = app
        .post(
            "/api/v1/batches",
            json!({"problems": ["a", "b", "c"], "repetitions": 2}),
        )
        .await;
    let batch_id = r.body["id"].as_str().unwrap().to_owned();
    let mut events = Sse::open(&app, &format!("/api/v1/events?batch_id={batch_id}"), None).await;
    let c = app
        .post(&format!("/api/v1/batches/{batch_id}/cancel"), Value::Null)
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    assert_eq!(c.body["cancelled"], 6);
    let mut cancelled = std::collections::HashSet::new();
    while cancelled.len() < 6 {
        let e = events.next().await.unwrap();
        assert_eq!(e["status"], "cancelled", "only this batch's changes: {e}");
        cancelled.insert(e["task_id"].as_str().unwrap().to_owned());
    }
    let b = app.get(&format!("/api/v1/batches/{batch_id}")).await.body;
    assert_eq!(b["counts"]["cancelled"], 6);
    assert_eq!(
        (b["finished"].as_i64(), b["progress"].as_f64()),
        (Some(6), Some(1.0))
    );
    assert!(b["finished_at"].is_string(), "{b}");
    assert_eq!(
        app.task(&other["id"]).await["status"],
        "pending",
        "other tasks untouched"
    );
    let again = app
        .post(&format!("/api/v1/batches/{batch_id}/cancel"), Value::Null)
        .await;
    assert_eq!(again.body["cancelled"], 0);
}

/// A campaign run to the end on the simulate runner; its export and statistics against the tasks.
async fn results_export_and_statistics(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 2;
    })
    .await;
    // Steps and outcome chosen per task, so that the figures can be computed by hand.
    let plan = [
        ("cpu_hog-detection-1", "a1", 1, "success"),
        ("cpu_hog-detection-1", "a2", 2, "success"),
        ("cpu_hog-detection-1", "a1", 3, "failure"),
        ("net_loss-localization-1", "a2", 4, "success"),
        ("net_loss-localization-1", "a1", 5, "failure"),
    ];
    let tasks: Vec<Value> = plan
        .iter()
        .map(|(p, a, steps, outcome)| {
            json!({"problem_id": p, "parameters": {
                "agent_config": {"agent": a, "model": format!("model-{a}")},
                "simulate": {"steps": steps, "step_ms": 5, "outcome": outcome}}})
        })
        .collect();
    let r = app
        .post("/api/v1/batches", json!({"name": "eval", "tasks": tasks}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let batch_id = r.body["id"].as_str().unwrap().to_owned();
    let ids: Vec<String> = r.body["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let b = app
        .eventually("the batch finished", || async {
            let b = app.get(&format!("/api/v1/batches/{batch_id}")).await.body;
            (b["finished"] == 5).then_some(b)
        })
        .await;
    let mut tasks: Vec<Value> = Vec::new();
    for id in &ids {
        tasks.push(app.task(&json!(id)).await);
    }
    let succeeded = tasks
        .iter()
        .filter(|t| t["result"]["success"] == true)
        .count();
    assert_eq!(succeeded, 3);
    assert_eq!(b["succeeded"], 3);
    assert_eq!(b["success_rate"].as_f64(), Some(0.6));
    assert_eq!(
        b["counts"]["completed"].as_i64().unwrap() + b["counts"]["failed"].as_i64().unwrap(),
        5
    );
    assert!(
        b["started_at"].is_string() && b["finished_at"].is_string(),
        "{b}"
    );

    // CSV, parsed back: a row per task in the order given, matching each task.
    let csv = app
        .client
        .get(app.url(&format!("/api/v1/batches/{batch_id}/results?format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let rows = parse_csv(&csv.text().await.unwrap());
    let header = &rows[0];
    for col in [
        "task_id",
        "problem_id",
        "problem_family",
        "task_type",
        "agent",
        "model",
        "status",
        "success",
        "duration_seconds",
        "steps",
        "tokens",
        "metrics.TTD",
        "metrics.Detection Accuracy",
    ] {
        assert!(header.contains(&col.to_owned()), "{col} in {header:?}");
    }
    assert_eq!(rows.len(), 6, "a header and 5 rows");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (row, (t, (problem, agent, steps, outcome))) in rows[1..].iter().zip(tasks.iter().zip(plan))
    {
        assert_eq!(row[col("task_id")], t["id"].as_str().unwrap());
        assert_eq!(row[col("batch_id")], batch_id);
        assert_eq!(row[col("problem_id")], problem);
        assert_eq!(row[col("status")], t["status"].as_str().unwrap());
        assert_eq!(row[col("agent")], agent);
        assert_eq!(row[col("model")], format!("model-{agent}"));
        assert_eq!(row[col("success")], (outcome == "success").to_string());
        assert_eq!(row[col("steps")].parse::<f64>().unwrap(), steps as f64);
        assert_eq!(
            row[col("tokens")].parse::<f64>().unwrap(),
            (steps * 1280) as f64
        );
        assert_eq!(
            row[col("problem_family")],
            problem.split('-').next().unwrap()
        );
        assert!(row[col("duration_seconds")].parse::<f64>().is_ok());
    }
    // JSON lines and JSON: the same rows.
    let jsonl = app
        .client
        .get(app.url(&format!("/api/v1/batches/{batch_id}/results?format=jsonl")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let json_rows = app
        .get(&format!(
            "/api/v1/tasks/export?format=json&batch_id={batch_id}"
        ))
        .await
        .body;
    assert_eq!(json_rows.as_array().unwrap(), &lines);
    let order: Vec<&str> = lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(lines[3]["task_type"], "localization");
    assert_eq!(lines[0]["metrics"]["Detection Accuracy"], "Correct");

    // Statistics against figures computed by hand.
    let by_problem = app
        .get(&format!(
            "/api/v1/stats?batch_id={batch_id}&group_by=problem_id"
        ))
        .await
        .body;
    assert_eq!(by_problem["group_by"], "problem_id");
    let groups: HashMap<String, &Value> = by_problem["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap().to_owned(), g))
        .collect();
    let cpu = groups["cpu_hog-detection-1"];
    assert_eq!(
        (
            cpu["runs"].as_i64(),
            cpu["finished"].as_i64(),
            cpu["succeeded"].as_i64()
        ),
        (Some(3), Some(3), Some(2))
    );
    assert!((cpu["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        cpu["steps"],
        json!({"count": 3, "mean": 2.0, "median": 2.0, "p90": 3.0})
    );
    assert_eq!(cpu["duration_seconds"]["count"], 3);
    let net = groups["net_loss-localization-1"];
    assert_eq!(
        net["steps"],
        json!({"count": 2, "mean": 4.5, "median": 4.5, "p90": 5.0})
    );
    assert_eq!(net["success_rate"].as_f64(), Some(0.5));
    let by_agent = app
        .get(&format!("/api/v1/stats?batch_id={batch_id}&group_by=agent"))
        .await
        .body;
    let a1 = by_agent["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == "a1")
        .unwrap();
    assert_eq!(
        (a1["runs"].as_i64(), a1["succeeded"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        a1["steps"],
        json!({"count": 3, "mean": 3.0, "median": 3.0, "p90": 5.0})
    );
    let by_type = app
        .get(&format!(
            "/api/v1/stats?batch_id={batch_id}&group_by=task_type"
        ))
        .await
        .body;
    let keys: Vec<&str> = by_type["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["detection", "localization"]);
}

/// The leaderboard against figures computed by hand: 2 agents × 2 problems × 4 runs, with successes, wrong
/// answers, an infrastructure failure, a timeout and a cancelled run; Wilson intervals, TTD means and
/// medians, mean tokens; infrastructure failures in or out of the rate; the same cells as CSV.
async fn the_leaderboard_matches_figures_by_hand(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.task_max_attempts = 1).await;
    app.register("w", json!({"max_parallel_tasks": 20})).await;
    let (a, b) = (
        "misconfig_app_hotel_res-detection-1",
        "pod_kill_hotel_res-mitigation-1",
    );
    let batch = app
        .post(
            "/api/v1/batches",
            json!({"problems": [a, b], "agent_configs": [{"agent": "gpt"}, {"agent": "qwen"}], "repetitions": 4}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    let batch_id = batch.body["id"].as_str().unwrap().to_owned();
    // Expansion order: problem, agent, repetition. The third run of gpt on b is cancelled before it starts.
    let cancel = batch.body["task_ids"][10].as_str().unwrap();
    app.post(&format!("/api/v1/tasks/{cancel}/cancel"), Value::Null)
        .await;
    for _ in 0..15 {
        let t = app.claim_one("w").await;
        let agent = t["parameters"]["agent_config"]["agent"].as_str().unwrap();
        let rep = t["parameters"]["repetition"].as_i64().unwrap();
        let problem = t["problem_id"].as_str().unwrap();
        let ttd = 10.0 * rep as f64;
        let done = |success: bool| json!({"success": success, "metrics": {"TTD": ttd, "in_tokens": 100 * rep, "out_tokens": 10}});
        let fail = |body| app.fail("w", &t, 1, body);
        let r = match (problem == a, agent, rep) {
            // gpt on a: 3 of 4.
            (true, "gpt", 4) => app.complete("w", &t, 1, done(false)).await,
            (true, "gpt", _) => app.complete("w", &t, 1, done(true)).await,
            // qwen on a: 0 of 4.
            (true, _, _) => app.complete("w", &t, 1, done(false)).await,
            // gpt on b: a success, an infrastructure failure, a timeout (and the cancelled run).
            (false, "gpt", 1) => app.complete("w", &t, 1, done(true)).await,
            (false, "gpt", 2) => {
                fail(json!({"error": "deploy failed", "failure_kind": "infrastructure"})).await
            }
            (false, "gpt", _) => fail(json!({"error": "over time", "status": "timeout"})).await,
            // qwen on b: 4 of 4.
            (false, _, _) => app.complete("w", &t, 1, done(true)).await,
        };
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let board = app
        .get(&format!("/api/v1/stats/matrix?batch_id={batch_id}"))
        .await;
    assert_eq!(board.status, StatusCode::OK, "{}", board.body);
    assert_eq!(board.body["rows"], "agent");
    assert_eq!(
        board.body["cells"].as_array().unwrap().len(),
        4,
        "{}",
        board.body
    );
    let cell = |body: &Value, row: &str, col: &str| -> Value {
        body["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["row"] == row && c["col"] == col)
            .unwrap_or_else(|| panic!("no cell {row} × {col}: {body}"))
            .clone()
    };
    let close = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() < 5e-4;
    let c = cell(&board.body, "gpt", a);
    assert_eq!(
        (c["runs"].as_i64(), c["successes"].as_i64()),
        (Some(4), Some(3))
    );
    assert!(
        close(&c["success_rate"], 0.75)
            && close(&c["ci95"]["low"], 0.3006)
            && close(&c["ci95"]["high"], 0.9544),
        "{c}"
    );
    // TTD 10, 20, 30, 40: mean and median 25; tokens 110, 210, 310, 410: mean 260.
    assert!(
        close(&c["ttd"]["mean"], 25.0) && close(&c["ttd"]["median"], 25.0),
        "{c}"
    );
    assert_eq!(c["ttm"]["count"], 0);
    assert!(close(&c["mean_tokens"], 260.0), "{c}");
    let c = cell(&board.body, "qwen", a);
    assert_eq!(
        (c["runs"].as_i64(), c["successes"].as_i64()),
        (Some(4), Some(0))
    );
    assert!(
        close(&c["ci95"]["low"], 0.0) && close(&c["ci95"]["high"], 0.4899),
        "{c}"
    );
    let c = cell(&board.body, "gpt", b);
    // A success and a timeout count; the infrastructure failure and the cancelled run do not.
    assert_eq!(
        (
            c["runs"].as_i64(),
            c["successes"].as_i64(),
            c["infrastructure_failures"].as_i64(),
            c["cancelled"].as_i64()
        ),
        (Some(2), Some(1), Some(1), Some(1)),
        "{c}"
    );
    assert!(
        close(&c["success_rate"], 0.5)
            && close(&c["ci95"]["low"], 0.0945)
            && close(&c["ci95"]["high"], 0.9055),
        "{c}"
    );
    let c = cell(&board.body, "qwen", b);
    assert!(
        close(&c["success_rate"], 1.0) && close(&c["ci95"]["low"], 0.5101),
        "{c}"
    );

    let with = app
        .get(&format!(
            "/api/v1/stats/matrix?batch_id={batch_id}&include_infrastructure=true&cols=task_type"
        ))
        .await
        .body;
    let c = cell(&with, "gpt", "mitigation");
    assert_eq!(c["runs"], 3, "{c}");
    assert!(close(&c["success_rate"], 1.0 / 3.0), "{c}");

    let csv = app
        .client
        .get(app.url(&format!(
            "/api/v1/stats/matrix?batch_id={batch_id}&format=csv"
        )))
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("agent,problem_id,runs,successes,success_rate,ci95_low,ci95_high,infrastructure_failures,cancelled,ttd_mean,ttd_median"), "{}", lines[0]);
    assert_eq!(lines.len(), 5, "a header and four cells: {text}");
    let gpt_a = lines
        .iter()
        .find(|l| l.starts_with(&format!("gpt,{a},")))
        .unwrap();
    assert!(
        gpt_a.starts_with(&format!("gpt,{a},4,3,0.75,0.3006")),
        "{gpt_a}"
    );

    let bad = app.get("/api/v1/stats/matrix?rows=problem_id").await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
}

task_executor_shared::both_backends!(
    a_batch_is_created_all_or_nothing,
    a_matrix_expands_in_order,
    a_batch_is_cancelled_and_followed,
    results_export_and_statistics,
    the_leaderboard_matches_figures_by_hand,
);
