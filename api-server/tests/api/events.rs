//! Live updates: a task's stream over SSE and WebSocket sees every state change and log entry in order, a
//! reconnect loses and repeats nothing; the stream of every task's state changes; replicas deliver across.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp};

/// A Server-Sent Events reader over a live response.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    pub async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Sse {
        let mut req = app.client.get(app.url(path));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event's JSON (checked against its `id` and `event` lines), or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let v: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(
                    id.as_deref(),
                    Some(v["seq"].to_string().as_str()),
                    "id is the seq"
                );
                assert_eq!(kind.as_deref(), v["type"].as_str(), "event is the type");
                return Some(v);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("an event within 30 s")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    }
}

/// Checks a task's events after its first state: strictly growing `seq`, ending with `completed` then `end`,
/// and exactly the task's log after its creation.
async fn check_whole_run(app: &TestApp, id: &str, first: &Value, rest: &[Value]) {
    assert_eq!(first["type"], "status");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["task"]["id"], id);
    let mut seq = first["seq"].as_i64().unwrap();
    let (end, events) = rest.split_last().unwrap();
    for e in events {
        let s = e["seq"].as_i64().unwrap();
        assert!(s > seq, "seq grows: {s} after {seq}");
        seq = s;
        assert_eq!(e["task_id"], id);
    }
    assert_eq!(end["type"], "end");
    assert_eq!(end["status"], "completed");
    let last = events.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["status"].as_str()),
        (Some("status"), Some("completed"))
    );
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["running", "completed"]);
    assert!(
        events.iter().filter(|e| e["type"] == "log").count() >= 5,
        "the run's steps"
    );
    let logs = app.log_messages(&json!({"id": id})).await;
    let streamed: Vec<String> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        logs[1..],
        streamed[..],
        "the stream is the task's log, in order, nothing twice"
    );
}

async fn paused_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = false;
        c.num_internal_workers = 1;
    })
    .await
}

async fn start_workers(app: &TestApp) {
    let r = app
        .post("/api/v1/workers/internal/start", Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn an_sse_stream_sees_the_whole_run_across_a_reconnect(backend: Backend) {
    let app = paused_app(backend).await;
    let task = app
        .create_task(
            json!({"problem_id": "p", "parameters": {"simulate": {"steps": 6, "step_ms": 150}}}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/api/v1/tasks/{id}/events");
    let mut one = Sse::open(&app, &path, None).await;
    let first = one.next().await.unwrap();
    start_workers(&app).await;
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(one.next().await.unwrap());
    }
    drop(one);
    let last = rest.last().unwrap()["seq"].as_i64().unwrap();
    let mut two = Sse::open(&app, &path, Some(last)).await;
    while let Some(e) = two.next().await {
        rest.push(e);
    }
    check_whole_run(&app, id, &first, &rest).await;

    // A finished task: its state, then `end`, and the stream closes; a resume past its end just ends.
    let mut again = Sse::open(&app, &path, None).await;
    let state = again.next().await.unwrap();
    assert_eq!(state["status"], "completed");
    assert_eq!(again.next().await.unwrap()["type"], "end");
    assert!(again.next().await.is_none());
    let end_seq = rest.last().unwrap()["seq"].as_i64().unwrap();
    // EventSource reconnects after the server closes, with the last id: 204 tells it there is no more.
    let past = app
        .client
        .get(app.url(&path))
        .header("last-event-id", end_seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::NO_CONTENT);
    // Resuming before the end of a finished task gives the rest, then `end`.
    let before_end = rest[rest.len() - 3]["seq"].as_i64().unwrap();
    let mut tail = Sse::open(&app, &format!("{path}?after_seq={before_end}"), None).await;
    let mut got = Vec::new();
    while let Some(e) = tail.next().await {
        got.push(e);
    }
    assert_eq!(got[..], rest[rest.len() - 2..]);

    let missing = app
        .get(&format!("/api/v1/tasks/{}/events", uuid::Uuid::new_v4()))
        .await;
    crate::helpers::assert_error(&missing, StatusCode::NOT_FOUND, "task_not_found");
}

async fn a_websocket_sees_the_whole_run_and_resumes(backend: Backend) {
    let app = paused_app(backend).await;
    let task = app
        .create_task(
            json!({"problem_id": "p", "parameters": {"simulate": {"steps": 5, "step_ms": 100}}}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let ws_url = format!("{}/ws/tasks/{id}", app.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut next = async || -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .expect("a message within 30 s")?
                .unwrap();
            match msg {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    return Some(serde_json::from_str(&t).unwrap());
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                _ => {}
            }
        }
    };
    let first = next().await.unwrap();
    start_workers(&app).await;
    let mut rest = Vec::new();
    while let Some(e) = next().await {
        rest.push(e);
    }
    check_whole_run(&app, id, &first, &rest).await;

    // Resuming after the third event gives exactly what followed it.
    let third = rest[2]["seq"].as_i64().unwrap();
    let (mut ws2, _) = tokio_tungstenite::connect_async(format!("{ws_url}?after_seq={third}"))
        .await
        .unwrap();
    let mut resumed = Vec::new();
    while let Some(Ok(msg)) = ws2.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            resumed.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    assert_eq!(resumed[..], rest[3..]);
    let _ = ws2.close(None).await;
}

async fn the_stream_of_every_task_sees_each_state_change(backend: Backend) {
    let app = paused_app(backend).await;
    let mut all = Sse::open(&app, "/api/v1/events", None).await;
    let a = app
        .create_task(
            json!({"problem_id": "a", "parameters": {"simulate": {"steps": 2, "step_ms": 50}}}),
        )
        .await;
    let b = app
        .create_task(
            json!({"problem_id": "b", "parameters": {"simulate": {"steps": 2, "step_ms": 50}}}),
        )
        .await;
    start_workers(&app).await;
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut last = 0;
    while seen
        .values()
        .filter(|s| s.last().map(String::as_str) == Some("completed"))
        .count()
        < 2
    {
        let e = all.next().await.unwrap();
        assert_eq!(e["type"], "status");
        assert!(e["seq"].as_i64().unwrap() > last);
        last = e["seq"].as_i64().unwrap();
        seen.entry(e["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["status"].as_str().unwrap().to_owned());
    }
    for t in [&a, &b] {
        assert_eq!(
            seen[t["id"].as_str().unwrap()],
            ["pending", "running", "completed"]
        );
    }
}

/// Two API servers on one PostgreSQL database: an event written through one reaches a subscriber of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_deliver_events_across() {
    let (db_url, dir) = TestApp::fresh_database(Backend::Postgres).await;
    let a = TestApp::spawn_on(db_url.clone(), dir, |_| {}).await;
    let b = TestApp::spawn_on(db_url, None, |_| {}).await;
    let task = a.create_task(json!({"problem_id": "p"})).await;
    let id = task["id"].as_str().unwrap();
    let mut on_b = Sse::open(&b, &format!("/api/v1/tasks/{id}/events"), None).await;
    assert_eq!(on_b.next().await.unwrap()["status"], "pending");
    a.register("w-a", json!({})).await;
    let claimed = a.claim_one("w-a").await;
    let r = a
        .post(
            &format!("/api/v1/workers/w-a/tasks/{id}/logs"),
            json!({"attempt": 1, "lease_id": claimed["lease_id"], "entries": [{"level": "info", "message": "step 1"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        a.complete("w-a", &claimed, 1, json!({"success": true}))
            .await
            .status,
        StatusCode::OK
    );
    let mut got = Vec::new();
    while let Some(e) = on_b.next().await {
        got.push((
            e["type"].as_str().unwrap().to_owned(),
            e["status"].as_str().map(str::to_owned),
        ));
    }
    assert_eq!(
        got,
        [
            ("status".to_owned(), Some("running".to_owned())),
            ("log".to_owned(), None),
            ("status".to_owned(), Some("completed".to_owned())),
            ("end".to_owned(), Some("completed".to_owned())),
        ]
    );
}

/// Subscribers that never read do not hold the queue back: with streams open and unread on every task, a
/// campaign still runs to its end, and a new subscriber is served at once.
async fn unread_streams_do_not_hold_the_queue(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.auto_start_workers = true;
        c.num_internal_workers = 3;
    })
    .await;
    let r = app
        .post(
            "/api/v1/batches",
            json!({"problems": ["a", "b", "c", "d", "e", "f"], "repetitions": 5,
                   "parameters": {"simulate": {"steps": 20, "step_ms": 1}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let batch = r.body["id"].as_str().unwrap().to_owned();
    // A stream on each task and three on everything, opened and never read.
    let mut stalled = Vec::new();
    for id in r.body["task_ids"].as_array().unwrap() {
        let path = format!("/api/v1/tasks/{}/events", id.as_str().unwrap());
        stalled.push(app.client.get(app.url(&path)).send().await.unwrap());
    }
    for _ in 0..3 {
        stalled.push(
            app.client
                .get(app.url("/api/v1/events"))
                .send()
                .await
                .unwrap(),
        );
    }
    app.eventually("the campaign finished", || async {
        let b = app.get(&format!("/api/v1/batches/{batch}")).await.body;
        (b["finished"] == 30).then_some(())
    })
    .await;
    let one = r.body["task_ids"][0].as_str().unwrap();
    let mut fresh = Sse::open(&app, &format!("/api/v1/tasks/{one}/events"), None).await;
    assert_eq!(fresh.next().await.unwrap()["status"], "completed");
    assert_eq!(fresh.next().await.unwrap()["type"], "end");
    drop(stalled);
}

/// A finished task with more entries than one page: a resume from its start gets all of them, then `end`.
async fn a_resume_of_a_long_finished_task_gets_everything(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let task = app.create_task(json!({"problem_id": "p"})).await;
    let id = task["id"].as_str().unwrap();
    app.register("w-long", json!({})).await;
    let claimed = app.claim_one("w-long").await;
    for batch in 0..2 {
        let entries: Vec<Value> = (0..700)
            .map(|i| json!({"level": "info", "message": format!("line {}", batch * 700 + i)}))
            .collect();
        let r = app
            .post(
                &format!("/api/v1/workers/w-long/tasks/{id}/logs"),
                json!({"attempt": 1, "lease_id": claimed["lease_id"], "entries": entries}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(
        app.complete("w-long", &claimed, 1, json!({"success": true}))
            .await
            .status,
        StatusCode::OK
    );
    let mut s = Sse::open(
        &app,
        &format!("/api/v1/tasks/{id}/events?after_seq=0"),
        None,
    )
    .await;
    let mut all = Vec::new();
    while let Some(e) = s.next().await {
        all.push(e);
    }
    let logs = app.log_messages(&json!({"id": id})).await;
    assert_eq!(logs.len(), 1403, "created, claimed, 1400 lines, completed");
    let (end, events) = all.split_last().unwrap();
    assert_eq!(end["type"], "end");
    let streamed: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        streamed,
        logs.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

task_executor_shared::both_backends!(
    unread_streams_do_not_hold_the_queue,
    a_resume_of_a_long_finished_task_gets_everything,
    an_sse_stream_sees_the_whole_run_across_a_reconnect,
    a_websocket_sees_the_whole_run_and_resumes,
    the_stream_of_every_task_sees_each_state_change,
);
