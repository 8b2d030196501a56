//! The daemon when things go wrong: killed with an outcome undelivered, cut off from the server, a worker id
//! claimed twice, two API servers on one database.

use std::{process::Stdio, time::Duration};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use task_executor_shared::testing::{Backend, OwnPostgres, fresh_database, wait_for};
use tokio::process::Command;

use crate::harness::{Server, daemon, daemon_bin, daemon_in, free_port, server_bin, signal, sim};

/// A daemon killed (SIGKILL) while the outcome of a finished run could not be delivered delivers it when it
/// starts again, before registering: the run is not repeated.
async fn a_restarted_daemon_delivers_a_kept_outcome_instead_of_running_again(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[("WORKER_HEARTBEAT_TIMEOUT_SECONDS", "60")]).await;
    let env = [("REQUEST_TIMEOUT_SECONDS", "1")];
    let mut first = daemon(&server, "spooler", &env);
    let t = server
        .create(json!({"problem_id": "kept", "parameters": sim(6, 400)}))
        .await;
    server
        .until("the run started", || async {
            (server.task(&t).await["status"] == "running").then_some(())
        })
        .await;
    // The server stops answering; the run ends meanwhile and its outcome waits in the spool.
    signal(&server.child, Signal::SIGSTOP);
    let spool = first.state.path().join("spool");
    server
        .until("the outcome is kept in the spool", || async {
            std::fs::read_dir(&spool)
                .ok()?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("-outcome.json"))
                .then_some(())
        })
        .await;
    signal(&first, Signal::SIGKILL);
    let _ = first.wait().await;
    signal(&server.child, Signal::SIGCONT);
    let _again = daemon_in(&server, "spooler", &env, first.state.clone());
    let done = server.completed("the kept outcome was delivered", &t).await;
    assert_eq!(done["attempt"], 1, "not run again: {done}");
    assert_eq!(done["result"]["success"], true);
    let claims = server
        .log_messages(&t)
        .await
        .iter()
        .filter(|m| m.starts_with("Task claimed"))
        .count();
    assert_eq!(claims, 1, "claimed once, completed once");
}

/// A daemon that cannot renew its leases for longer than the heartbeat timeout stops those runs itself (the
/// server has given them to others), and says so in its log.
async fn a_cut_off_daemon_stops_its_runs_itself(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[("WORKER_HEARTBEAT_TIMEOUT_SECONDS", "3")]).await;
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("daemon.log");
    let port = free_port();
    let mut d = Command::new(daemon_bin())
        .env("TASK_EXECUTOR_URL", server.url(""))
        .env("WORKER_ID", "cut-off")
        .env("TASK_RUNNER", "simulate")
        .env("HEARTBEAT_INTERVAL_SECONDS", "1")
        .env("REQUEST_TIMEOUT_SECONDS", "1")
        .env("STATE_DIR", state.path())
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "warning")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t = server
        .create(json!({"problem_id": "long", "parameters": {"simulate": {"outcome": "hang", "steps": 1, "step_ms": 10}}}))
        .await;
    server
        .until("the run started", || async {
            (server.task(&t).await["status"] == "running").then_some(())
        })
        .await;
    signal(&server.child, Signal::SIGSTOP);
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let stopped = server
        .until("the daemon stopped the run on its own", || async {
            let text = server
                .client
                .get(&metrics)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(r#"worker_daemon_task_runs_total{outcome="cancelled"} 1"#)
                .then_some(text)
        })
        .await;
    assert!(
        stopped.contains("worker_daemon_running_tasks 0"),
        "{stopped}"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("longer than a lease lasts"),
        "the daemon says why: {said}"
    );
    signal(&server.child, Signal::SIGCONT);
    let _ = d.kill().await;
}

/// A second live process cannot take a worker id in use; a restart of the same daemon (the same state
/// directory, so the same instance) takes over at once; two daemons cannot share a state directory.
async fn a_worker_id_in_use_is_refused_but_a_restart_takes_over(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let server = Server::start(&db, &[]).await;
    let mut first = daemon(&server, "twin", &[]);
    let registered = server
        .until("the first daemon registered", || async {
            let w = server.get("/api/v1/workers/twin").await;
            (w["status"] == "idle").then_some(w)
        })
        .await;
    let run = |state: &std::path::Path| {
        let mut c = Command::new(daemon_bin());
        c.env("TASK_EXECUTOR_URL", server.url(""))
            .env("WORKER_ID", "twin")
            .env("TASK_RUNNER", "simulate")
            .env("STATE_DIR", state)
            .env("LOG_LEVEL", "warning")
            .kill_on_drop(true);
        c
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), run(elsewhere.path()).output())
        .await
        .expect("the second daemon gives up")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker_id_in_use"), "{err}");
    let out = tokio::time::timeout(Duration::from_secs(30), run(first.state.path()).output())
        .await
        .expect("a daemon on a state directory in use gives up")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("another worker-daemon uses the state directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    signal(&first, Signal::SIGKILL);
    let _ = first.wait().await;
    let again = daemon_in(&server, "twin", &[], first.state.clone());
    let pid = again.id().unwrap();
    server
        .until("the restart took over the id at once", || async {
            let w = server.get("/api/v1/workers/twin").await;
            (w["metadata"]["pid"] == pid && w["status"] == "idle").then_some(())
        })
        .await;
    assert_ne!(registered["metadata"]["pid"], pid);
}

/// Two API servers on one PostgreSQL database with default settings: the second would run internal workers
/// with the ids of the first's, so it refuses to start and says which setting to change; with a prefix of its
/// own it starts, and both run internal workers side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_with_default_settings_refuses_to_start() {
    let (db, _dir) = fresh_database(Backend::Postgres).await;
    let internal = [("NUM_INTERNAL_WORKERS", "2"), ("TASK_RUNNER", "simulate")];
    let first = Server::start(&db, &internal).await;
    first
        .until("the first replica's internal workers are up", || async {
            let ws = first.get("/api/v1/workers").await;
            (ws.as_array().unwrap().len() == 2).then_some(())
        })
        .await;
    let port = free_port();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(server_bin())
            .env("DATABASE_URL", &db)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("NUM_INTERNAL_WORKERS", "2")
            .env("TASK_RUNNER", "simulate")
            .env("LOG_LEVEL", "warning")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second replica exits")
    .unwrap();
    assert!(!out.status.success(), "it refuses to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INTERNAL_WORKER_PREFIX") && err.contains("worker-001-kind"),
        "{err}"
    );

    let second = Server::start(
        &db,
        &[
            ("NUM_INTERNAL_WORKERS", "2"),
            ("TASK_RUNNER", "simulate"),
            ("INTERNAL_WORKER_PREFIX", "replica-b"),
        ],
    )
    .await;
    second
        .until("both replicas' internal workers are up", || async {
            let ws = second.get("/api/v1/workers").await;
            let live = ws
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["status"] == "idle")
                .count();
            (live == 4).then_some(())
        })
        .await;
}

/// Every task completed, each by exactly one run (the simulation started once: no two runs, overlapping or
/// not) and one outcome, attempt 1, and the workers' counters add up. A claim whose answer was lost on the
/// way (a database that went away between its commit and its answer) may be given back uncounted before
/// the run: that is not a run.
async fn each_completed_exactly_once(server: &Server, tasks: &[Value]) {
    for t in tasks {
        let done = wait_for("every task completed", Duration::from_secs(120), || async {
            let cur = server.task(t).await;
            (cur["status"] == "completed").then_some(cur)
        })
        .await;
        assert_eq!(done["attempt"], 1, "{done}");
        let messages = server.log_messages(t).await;
        let count = |prefix: &str| messages.iter().filter(|m| m.starts_with(prefix)).count();
        assert_eq!(
            count("[simulation] Simulated run"),
            1,
            "one run: {messages:?}"
        );
        assert_eq!(count("Task completed"), 1, "one outcome: {messages:?}");
        assert_eq!(count("Task requeued"), 0, "{messages:?}");
    }
    let workers = server.get("/api/v1/workers").await;
    let completed: i64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks_completed"].as_i64().unwrap())
        .sum();
    assert_eq!(completed, tasks.len() as i64, "{workers}");
}

/// Two daemons of two slots each on `server`, `n` simulated tasks of `steps` steps of `step_ms`, and runs
/// under way.
async fn runs_under_way(
    server: &Server,
    prefix: &str,
    n: usize,
    steps: u64,
    step_ms: u64,
) -> (Vec<crate::harness::Daemon>, Vec<Value>) {
    let daemons = vec![
        daemon(
            server,
            &format!("{prefix}-a"),
            &[("MAX_PARALLEL_TASKS", "2")],
        ),
        daemon(
            server,
            &format!("{prefix}-b"),
            &[("MAX_PARALLEL_TASKS", "2")],
        ),
    ];
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(
            server
                .create(json!({"problem_id": format!("{prefix}-{i}"), "parameters": sim(steps, step_ms)}))
                .await,
        );
    }
    server
        .until("runs under way", || async {
            let h = server.get("/health").await;
            (h["queue"]["running"].as_i64().unwrap() >= 2).then_some(())
        })
        .await;
    (daemons, tasks)
}

/// The API server killed (SIGKILL) in the middle of runs and started again: the daemons' runs go on, their
/// outcomes are delivered once it is back, nothing is lost or run twice.
async fn killing_the_api_server_mid_run_loses_nothing(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let mut server = Server::start(&db, &[]).await;
    let (_daemons, tasks) = runs_under_way(&server, "killed", 8, 6, 300).await;
    signal(&server.child, Signal::SIGKILL);
    let _ = server.child.wait().await;
    server.spawn().await;
    each_completed_exactly_once(&server, &tasks).await;
}

/// PostgreSQL stopped for 20 s in the middle of runs: the server answers 503 on /ready meanwhile and
/// recovers without a restart; the runs' outcomes wait in the daemons; nothing is lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_run_loses_nothing() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let server = Server::start(&pg.url, &[]).await;
    let (_daemons, tasks) = runs_under_way(&server, "outage", 6, 10, 400).await;
    let stopped_at = std::time::Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let ready = |server: &Server| {
        let (client, url) = (server.client.clone(), server.url("/ready"));
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    assert_eq!(
        ready(&server).await,
        Some(503),
        "not ready while the database is down"
    );
    while stopped_at.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ready(&server).await, Some(503));
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    server
        .until("ready again without a restart", || async {
            (ready(&server).await == Some(200)).then_some(())
        })
        .await;
    each_completed_exactly_once(&server, &tasks).await;
    drop(pg);
}

/// Two API servers on one PostgreSQL database (the second with its own INTERNAL_WORKER_PREFIX, which it
/// must have: see the test above), internal workers on both and a daemon on each: every task, created
/// through either, completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_workers_on_both_complete_each_task_once() {
    let (db, _dir) = fresh_database(Backend::Postgres).await;
    let a = Server::start(
        &db,
        &[("NUM_INTERNAL_WORKERS", "2"), ("TASK_RUNNER", "simulate")],
    )
    .await;
    let b = Server::start(
        &db,
        &[
            ("NUM_INTERNAL_WORKERS", "2"),
            ("TASK_RUNNER", "simulate"),
            ("INTERNAL_WORKER_PREFIX", "replica-b"),
        ],
    )
    .await;
    let _da = daemon(&a, "on-a", &[("MAX_PARALLEL_TASKS", "2")]);
    let _db = daemon(&b, "on-b", &[("MAX_PARALLEL_TASKS", "2")]);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let via = if i % 2 == 0 { &a } else { &b };
        tasks.push(
            via.create(json!({"problem_id": format!("replicas-{i}"), "parameters": sim(2, 50)}))
                .await,
        );
    }
    each_completed_exactly_once(&a, &tasks).await;
    let workers = b.get("/api/v1/workers").await;
    let busy: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["tasks_completed"].as_i64().unwrap() > 0)
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(
        busy.len() >= 3,
        "workers of both replicas took part: {busy:?}"
    );
}

/// A runner starts with an explicit environment — the task's variables, the basics (PATH, HOME, …) and what
/// the operator passes through (RUNNER_ENV_PASSTHROUGH) — and none of the worker's secrets: not the API
/// server's DATABASE_URL, not a key the worker holds, not the daemon's token, for internal workers and
/// daemons alike. (The server has authentication on; the daemon works with its worker token.)
async fn runners_see_none_of_the_workers_secrets(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let runner = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/tests/fixtures/runner.sh"
    );
    let tokens = tempfile::tempdir().unwrap();
    let (admin, worker) = ("tex_admin-secret-1", "tex_worker-secret-2");
    let tokens_file = tokens.path().join("tokens");
    std::fs::write(
        &tokens_file,
        format!(
            "root admin {admin}
env-host worker {worker} env-*
"
        ),
    )
    .unwrap();
    let server = Server::start_as(
        &db,
        &[
            ("TOKENS_FILE", tokens_file.to_str().unwrap()),
            ("NUM_INTERNAL_WORKERS", "1"),
            ("TASK_RUNNER", "exec"),
            ("RUNNER_COMMAND", runner),
            ("OPENAI_API_KEY", "sk-server-secret"),
            ("ALLOWED_VAR", "from-server"),
            ("RUNNER_ENV_PASSTHROUGH", "ALLOWED_VAR"),
        ],
        Some(admin),
    )
    .await;
    let check = |result: &Value, allowed: &str| {
        let names: Vec<&str> = result["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for needed in [
            "TASK_ID",
            "PROBLEM_ID",
            "TASK_PARAMETERS_FILE",
            "PATH",
            "HOME",
        ] {
            assert!(names.contains(&needed), "{needed} missing: {names:?}");
        }
        for secret in [
            "DATABASE_URL",
            "OPENAI_API_KEY",
            "TASK_EXECUTOR_URL",
            "RUNNER_COMMAND",
            "RUNNER_ENV_PASSTHROUGH",
            "TASK_EXECUTOR_TOKEN",
            "TOKENS_FILE",
        ] {
            assert!(!names.contains(&secret), "{secret} leaked: {names:?}");
        }
        assert_eq!(
            result["secretish"], 0,
            "no variable of the runner holds a token or a key"
        );
        assert_eq!(result["allowed"], allowed, "passed through as listed");
    };
    let t = server
        .create(json!({"problem_id": "env-internal", "parameters": {"mode": "env"}}))
        .await;
    let done = server.completed("the internal worker ran it", &t).await;
    assert_eq!(done["worker_id"], "worker-001-kind");
    check(&done["result"], "from-server");

    let stop = server
        .client
        .post(server.url("/api/v1/workers/internal/stop"))
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    let _d = daemon(
        &server,
        "env-daemon",
        &[
            ("TASK_RUNNER", "exec"),
            ("RUNNER_COMMAND", runner),
            ("OPENAI_API_KEY", "sk-daemon-secret"),
            ("TASK_EXECUTOR_TOKEN", worker),
            ("ALLOWED_VAR", "from-daemon"),
            ("RUNNER_ENV_PASSTHROUGH", "ALLOWED_VAR"),
        ],
    );
    let t = server
        .create(json!({"problem_id": "env-daemon", "parameters": {"mode": "env"}}))
        .await;
    let done = server.completed("the daemon ran it", &t).await;
    assert_eq!(done["worker_id"], "env-daemon");
    check(&done["result"], "from-daemon");
}

task_executor_shared::both_backends!(
    runners_see_none_of_the_workers_secrets,
    killing_the_api_server_mid_run_loses_nothing,
    a_restarted_daemon_delivers_a_kept_outcome_instead_of_running_again,
    a_cut_off_daemon_stops_its_runs_itself,
    a_worker_id_in_use_is_refused_but_a_restart_takes_over,
);
