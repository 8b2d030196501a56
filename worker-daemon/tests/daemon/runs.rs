//! The worker daemon as operators run it: real `api-server` and `worker-daemon` processes on loopback, on both
//! database backends.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use task_executor_shared::testing::{Backend, fresh_database};
use tokio::process::Command;

use crate::harness::{Server, daemon, daemon_bin, exits_zero, free_port, signal, sim};

async fn daemons_share_a_batch_and_complete_each_task_once(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[]).await;
    let _a = daemon(&server, "host-a-kind", &[("MAX_PARALLEL_TASKS", "2")]);
    let _b = daemon(&server, "host-b-kind", &[("MAX_PARALLEL_TASKS", "2")]);
    let mut tasks = Vec::new();
    for i in 0..24 {
        tasks.push(
            server
                .create(json!({"problem_id": format!("batch-{i}"), "parameters": sim(2, 50)}))
                .await,
        );
    }
    for t in &tasks {
        let done = server.completed("the task completed", t).await;
        assert_eq!(done["attempt"], 1);
        assert!(done["worker_id"] == "host-a-kind" || done["worker_id"] == "host-b-kind");
    }
    let workers = server.get("/api/v1/workers").await;
    let counted: i64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks_completed"].as_i64().unwrap())
        .sum();
    assert_eq!(counted, 24, "each task completed exactly once: {workers}");
    let w = server.get("/api/v1/workers/host-a-kind").await;
    assert_eq!(w["capabilities"]["max_parallel_tasks"], 2);
    assert_eq!(w["metadata"]["runner"], "simulate");
    assert!(w["metadata"]["version"].is_string());
}

async fn a_killed_daemons_task_is_finished_by_another(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[("WORKER_HEARTBEAT_TIMEOUT_SECONDS", "2")]).await;
    let mut a = daemon(&server, "doomed", &[]);
    let t = server
        .create(json!({"problem_id": "long-run", "parameters": sim(10, 200)}))
        .await;
    server
        .until("the doomed daemon runs the task", || async {
            let cur = server.task(&t).await;
            (cur["status"] == "running" && cur["worker_id"] == "doomed").then_some(())
        })
        .await;
    let _b = daemon(&server, "survivor", &[]);
    signal(&a, Signal::SIGKILL);
    let _ = a.wait().await;
    let done = server
        .completed("the survivor completed the task", &t)
        .await;
    assert_eq!(done["worker_id"], "survivor");
    assert_eq!(
        done["attempt"], 2,
        "requeued once after the heartbeat timeout"
    );
    assert_eq!(
        server.get("/api/v1/workers/doomed").await["status"],
        "offline"
    );
}

async fn a_server_restart_loses_nothing(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let mut server = Server::start(&db, &[]).await;
    let _a = daemon(&server, "r-a", &[("MAX_PARALLEL_TASKS", "2")]);
    let _b = daemon(&server, "r-b", &[("MAX_PARALLEL_TASKS", "2")]);
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(
            server
                .create(json!({"problem_id": format!("restart-{i}"), "parameters": sim(4, 250)}))
                .await,
        );
    }
    server
        .until("some tasks running", || async {
            let h = server.get("/health").await;
            (h["queue"]["running"].as_i64().unwrap() > 0).then_some(())
        })
        .await;
    server.stop().await;
    // Runs go on while the server is away (a deliberate outage of 2 s, not a wait for something); their
    // outcomes wait in the daemons.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.spawn().await;
    for t in &tasks {
        let done = server
            .completed("every task completed after the restart", t)
            .await;
        assert_eq!(done["result"]["success"], true);
    }
    let h = server.get("/health").await;
    assert_eq!(h["queue"]["completed"], 10, "{h}");
    assert_eq!(h["queue"]["running"], 0);
    assert_eq!(h["queue"]["pending"], 0);
}

async fn sigterm_drains_then_releases(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[]).await;

    // Drain: the running task finishes, then the daemon goes offline and exits 0.
    let mut a = daemon(&server, "drainer", &[]);
    let t = server
        .create(json!({"problem_id": "drain-me", "parameters": sim(8, 250)}))
        .await;
    server
        .until("running", || async {
            (server.task(&t).await["status"] == "running").then_some(())
        })
        .await;
    signal(&a, Signal::SIGTERM);
    exits_zero(&mut a, Duration::from_secs(30)).await;
    assert_eq!(
        server.task(&t).await["status"],
        "completed",
        "finished within the grace period"
    );
    assert_eq!(
        server.get("/api/v1/workers/drainer").await["status"],
        "offline"
    );
    let waiting = server.create(json!({"problem_id": "left-for-later"})).await;

    // Past the grace period the run is stopped and released: pending again, no attempt used.
    let mut b = daemon(&server, "short-grace", &[("SHUTDOWN_GRACE_SECONDS", "1")]);
    server
        .until("the waiting task runs", || async {
            (server.task(&waiting).await["status"] == "running").then_some(())
        })
        .await;
    let long = server
        .create(json!({"problem_id": "too-long", "parameters": sim(100, 500)}))
        .await;
    let _ = long;
    let hang = server.create(json!({"problem_id": "hang", "parameters": {"simulate": {"outcome": "hang", "steps": 1, "step_ms": 10}}})).await;
    let _ = hang;
    server
        .until("the first one done", || async {
            (server.task(&waiting).await["status"] == "completed").then_some(())
        })
        .await;
    let running = server
        .until("a long task runs", || async {
            let list = server.get("/api/v1/tasks?status=running").await;
            list.as_array().unwrap().first().cloned()
        })
        .await;
    signal(&b, Signal::SIGTERM);
    exits_zero(&mut b, Duration::from_secs(30)).await;
    let after = server.task(&running).await;
    assert_eq!(after["status"], "pending", "released: {after}");
    assert_eq!(after["attempt"], 0, "the interrupted run is not counted");

    // A second signal stops at once, still reporting.
    let mut c = daemon(&server, "impatient", &[("SHUTDOWN_GRACE_SECONDS", "300")]);
    server
        .until("a task runs on the third daemon", || async {
            let list = server.get("/api/v1/tasks?status=running").await;
            list.as_array().unwrap().first().cloned()
        })
        .await;
    signal(&c, Signal::SIGTERM);
    server
        .until("the daemon shows it is stopping", || async {
            (server.get("/api/v1/workers/impatient").await["status"] == "stopping").then_some(())
        })
        .await;
    signal(&c, Signal::SIGTERM);
    exits_zero(&mut c, Duration::from_secs(20)).await;
    let h = server.get("/health").await;
    assert_eq!(h["queue"]["running"], 0, "nothing left running: {h}");
}

async fn the_daemon_serves_its_metrics(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[]).await;
    let port = free_port();
    let _d = daemon(
        &server,
        "measured",
        &[("METRICS_ADDR", &format!("127.0.0.1:{port}"))],
    );
    let t = server
        .create(json!({"problem_id": "m", "parameters": sim(2, 20)}))
        .await;
    server
        .until("completed", || async {
            (server.task(&t).await["status"] == "completed").then_some(())
        })
        .await;
    let text = server
        .until("the daemon's metrics show the run", || async {
            let r = server
                .client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .ok()?;
            let text = r.text().await.ok()?;
            text.contains(r#"worker_daemon_task_runs_total{outcome="completed"} 1"#)
                .then_some(text)
        })
        .await;
    assert!(text.contains("worker_daemon_report_backlog 0"), "{text}");
    assert!(text.contains("worker_daemon_running_tasks 0"), "{text}");
}

async fn check_reports_problems_clearly(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[]).await;
    let run_check = |env: Vec<(&'static str, String)>| async move {
        let out = Command::new(daemon_bin())
            .arg("check")
            .envs(env)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run_check(vec![
        ("TASK_EXECUTOR_URL", server.url("")),
        ("TASK_RUNNER", "simulate".into()),
    ])
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("answers"), "{text}");

    let (ok, text) = run_check(vec![
        (
            "TASK_EXECUTOR_URL",
            format!("http://127.0.0.1:{}", free_port()),
        ),
        ("TASK_RUNNER", "simulate".into()),
    ])
    .await;
    assert!(!ok);
    assert!(text.contains("does not answer"), "{text}");

    let (ok, text) = run_check(vec![
        ("TASK_EXECUTOR_URL", server.url("")),
        ("TASK_RUNNER", "exec".into()),
        ("RUNNER_COMMAND", "/nonexistent/my-harness".into()),
    ])
    .await;
    assert!(!ok);
    assert!(
        text.contains("/nonexistent/my-harness") && text.contains("not found"),
        "{text}"
    );

    let (ok, text) = run_check(vec![
        ("TASK_EXECUTOR_URL", server.url("")),
        ("TASK_RUNNER", "exec".into()),
    ])
    .await;
    assert!(!ok);
    assert!(text.contains("RUNNER_COMMAND"), "{text}");
}

/// With authentication on, a daemon works with a `worker` token that covers its id (here from a token file,
/// as systemd's `LoadCredential=` provides it), and stops at once, saying why, with a token that is unknown,
/// of another role, or for other workers.
async fn a_daemon_works_with_its_worker_token_and_only_with_it(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("tokens");
    let (admin, host_a, reader) = ("tex_root-1", "tex_host-a-2", "tex_reader-3");
    std::fs::write(
        &tokens_file,
        format!(
            "root admin {admin}
host-a worker {host_a}
viewer read {reader}
"
        ),
    )
    .unwrap();
    let server = Server::start_as(
        &db,
        &[("TOKENS_FILE", tokens_file.to_str().unwrap())],
        Some(admin),
    )
    .await;
    let refused = |id: &'static str, token: &'static str| {
        let url = server.url("");
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                Command::new(daemon_bin())
                    .env("TASK_EXECUTOR_URL", url)
                    .env("WORKER_ID", id)
                    .env("TASK_RUNNER", "simulate")
                    .env("TASK_EXECUTOR_TOKEN", token)
                    .env("STATE_DIR", tempfile::tempdir().unwrap().keep())
                    .output(),
            )
            .await
            .expect("the daemon stops by itself")
            .unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).to_string()
        }
    };
    let text = refused("host-a-kind", "tex_nobody").await;
    assert!(text.contains("refused this daemon's token"), "{text}");
    let text = refused("host-a-kind", reader).await;
    assert!(text.contains("needs a `worker` token"), "{text}");
    let text = refused("host-b-kind", host_a).await;
    assert!(
        text.contains("may act only as workers matching `host-a-*`"),
        "{text}"
    );
    assert!(!text.contains(host_a), "the token is never printed: {text}");

    let token_file = dir.path().join("daemon-token");
    std::fs::write(&token_file, format!("{host_a}\n")).unwrap();
    let check = Command::new(daemon_bin())
        .arg("check")
        .env("TASK_EXECUTOR_URL", server.url(""))
        .env("WORKER_ID", "host-a-kind")
        .env("TASK_RUNNER", "simulate")
        .env("TASK_EXECUTOR_TOKEN_FILE", &token_file)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("token `host-a` (worker, `host-a-*`) may act as host-a-kind"),
        "{said}"
    );
    let _d = daemon(
        &server,
        "host-a-kind",
        &[("TASK_EXECUTOR_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let t = server
        .create(json!({"problem_id": "p", "parameters": sim(2, 20)}))
        .await;
    assert_eq!(t["created_by"], "root");
    let done = server.completed("the daemon ran it", &t).await;
    assert_eq!(done["worker_id"], "host-a-kind");
}

/// The daemon's heartbeats list the tasks it runs, so a run longer than the claim grace period keeps its
/// task: no "claim lost" requeue, one run, attempt 1.
async fn a_long_run_stays_held(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[("CLAIM_GRACE_SECONDS", "1")]).await;
    let _d = daemon(&server, "steady", &[]);
    let t = server
        .create(json!({"problem_id": "long", "parameters": sim(10, 500)}))
        .await;
    let held = server
        .until("the daemon runs it", || async {
            let w = server.get("/api/v1/workers/steady").await;
            (w["current_task_ids"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
            .then_some(w)
        })
        .await;
    assert_eq!(held["current_task_ids"][0], t["id"]);
    let done = server.completed("completed", &t).await;
    assert_eq!(done["attempt"], 1);
    let messages = server.log_messages(&t).await;
    assert!(
        !messages.iter().any(|m| m.contains("returned to the queue")),
        "{messages:?}"
    );
}

task_executor_shared::both_backends!(
    a_daemon_works_with_its_worker_token_and_only_with_it,
    a_long_run_stays_held,
    daemons_share_a_batch_and_complete_each_task_once,
    a_killed_daemons_task_is_finished_by_another,
    a_server_restart_loses_nothing,
    sigterm_drains_then_releases,
    check_reports_problems_clearly,
    the_daemon_serves_its_metrics,
);

/// Both binaries tell systemd (Type=notify) when they are ready: the server once it listens, the daemon once
/// registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_reported_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv = |sock: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("n.db").display());
    let notify = sock_path.display().to_string();
    let server = Server::start(&db, &[("NOTIFY_SOCKET", notify.as_str())]).await;
    assert!(
        recv(&sock).contains("READY=1"),
        "the server reports READY=1"
    );
    let _d = daemon(&server, "notifier", &[("NOTIFY_SOCKET", notify.as_str())]);
    assert!(
        recv(&sock).contains("READY=1"),
        "the daemon reports READY=1 once registered"
    );
    let w = server.get("/api/v1/workers/notifier").await;
    assert_eq!(w["id"], "notifier", "registered before it said ready");
}
