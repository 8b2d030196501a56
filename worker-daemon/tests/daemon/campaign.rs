//! The `task-executor` command line as a researcher runs it, against a real server with authentication on:
//! a 3 problems × 2 agents × 2 repetitions campaign on the simulate runner, from submit to CSV; one task
//! followed live; logs, status, cancel; a missing token.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use task_executor_shared::testing::{Backend, fresh_database};
use tokio::process::Command;

use crate::harness::Server;

fn cli_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_task-executor"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(server: &Server, token: Option<&str>, args: &[&str]) -> Run {
    let mut c = Command::new(cli_bin());
    c.args(args)
        .env("TASK_EXECUTOR_URL", server.url(""))
        .env_remove("TASK_EXECUTOR_TOKEN")
        .env_remove("TASK_EXECUTOR_TOKEN_FILE");
    if let Some(t) = token {
        c.env("TASK_EXECUTOR_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), c.output())
        .await
        .expect("the command ends")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn a_campaign_from_submit_to_csv(backend: Backend) {
    let (db, _dir) = fresh_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (admin, researcher) = ("tex_admin-cli-1", "tex_researcher-cli-2");
    std::fs::write(
        &tokens,
        format!("root admin {admin}\nalice submit {researcher}\n"),
    )
    .unwrap();
    let server = Server::start_as(
        &db,
        &[
            ("TOKENS_FILE", tokens.to_str().unwrap()),
            ("NUM_INTERNAL_WORKERS", "3"),
            ("TASK_RUNNER", "simulate"),
        ],
        Some(admin),
    )
    .await;
    let me = Some(researcher);

    let denied = cli(&server, None, &["submit", "p-detection-1"]).await;
    assert_eq!(denied.code, 2);
    assert!(
        denied.stderr.contains("needs a token") && denied.stderr.contains("401"),
        "{}",
        denied.stderr
    );

    let submit = cli(
        &server,
        me,
        &[
            "submit",
            "--name",
            "demo",
            "--problems",
            "misconfig_app_hotel_res-detection-1,pod_kill_hotel_res-localization-1,revoke_auth_mongodb-analysis-2",
            "--agent",
            "gpt",
            "--agent",
            "qwen",
            "--repetitions",
            "2",
            "--param",
            r#"simulate={"steps": 3, "step_ms": 30}"#,
        ],
    )
    .await;
    assert_eq!(submit.code, 0, "{}", submit.stderr);
    let batch = submit.stdout.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&batch).is_ok(), "{}", submit.stdout);
    assert!(submit.stderr.contains("12 tasks"), "{}", submit.stderr);

    let watch = cli(&server, me, &["watch", &batch]).await;
    assert_eq!(watch.code, 0, "{}{}", watch.stdout, watch.stderr);
    assert!(
        watch.stdout.contains("12/12 finished · 12 succeeded"),
        "{}",
        watch.stdout
    );

    let status = cli(&server, me, &["status", &batch]).await;
    assert!(
        status.stdout.contains("(demo)") && status.stdout.contains("success   100.0%"),
        "{}",
        status.stdout
    );

    let table = cli(&server, me, &["results", &batch]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}", table.stdout);
    assert!(
        lines[0].starts_with("PROBLEM")
            && lines[1].contains("gpt")
            && lines[1].contains("completed")
    );

    let csv_path = dir.path().join("demo.csv");
    let csv = cli(
        &server,
        me,
        &[
            "results",
            &batch,
            "--format",
            "csv",
            "--output",
            csv_path.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 13);
    let col = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
    let mut combos: Vec<String> = rows[1..]
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}",
                r[col("problem_id")],
                r[col("agent")],
                r[col("repetition")]
            )
        })
        .collect();
    combos.dedup();
    assert_eq!(combos.len(), 12, "every problem × agent × repetition once");
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[col("status")] == "completed" && r[col("steps")] == "3")
    );

    // A second campaign in which the agent never solves one problem (2 problems × 1 agent × 2 runs), compared
    // with the first problem by problem: rates, 95 % Wilson intervals, runs, differences, by hand.
    let (a, b) = (
        "misconfig_app_hotel_res-detection-1",
        "pod_kill_hotel_res-localization-1",
    );
    let file = dir.path().join("second.json");
    std::fs::write(
        &file,
        serde_json::json!({"name": "second", "tasks": [
            {"problem_id": a, "parameters": {"simulate": {"steps": 1, "step_ms": 10}}},
            {"problem_id": a, "parameters": {"simulate": {"steps": 1, "step_ms": 10}}},
            {"problem_id": b, "parameters": {"simulate": {"steps": 1, "step_ms": 10, "outcome": "failure"}}},
            {"problem_id": b, "parameters": {"simulate": {"steps": 1, "step_ms": 10, "outcome": "failure"}}},
        ]})
        .to_string(),
    )
    .unwrap();
    let second = cli(&server, me, &["submit", "--file", file.to_str().unwrap()]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    let second = second.stdout.trim().to_owned();
    let watched = cli(&server, me, &["watch", &second]).await;
    assert_eq!(watched.code, 1, "not all succeeded: {}", watched.stdout);
    let cmp = cli(&server, me, &["compare", &batch, &second]).await;
    assert_eq!(cmp.code, 0, "{}", cmp.stderr);
    let line = |p: &str| {
        cmp.stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no line for {p}: {}", cmp.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // First: 4 of 4 (both agents, two runs each) → [0.51, 1.00]; second: 2 of 2 → [0.34, 1.00] and 0 of 2.
    assert_eq!(
        line(a),
        format!("{a} 1.00 [0.51, 1.00] n=4 1.00 [0.34, 1.00] n=2 +0.00")
    );
    assert_eq!(
        line(b),
        format!("{b} 1.00 [0.51, 1.00] n=4 0.00 [0.00, 0.66] n=2 -1.00")
    );
    assert_eq!(
        line("revoke_auth_mongodb-analysis-2"),
        "revoke_auth_mongodb-analysis-2 1.00 [0.51, 1.00] n=4 - -"
    );
    assert_eq!(
        line("(all problems)"),
        "(all problems) 1.00 [0.76, 1.00] n=12 0.50 [0.15, 0.85] n=4 -0.50"
    );

    // One task, followed live to its end; its log; a cancel; the latest batches.
    let follow = cli(
        &server,
        me,
        &[
            "submit",
            "p-detection-1",
            "--param",
            r#"simulate={"steps": 2, "step_ms": 30}"#,
            "--follow",
        ],
    )
    .await;
    assert_eq!(follow.code, 0, "{}{}", follow.stdout, follow.stderr);
    let task = follow.stdout.lines().next().unwrap().to_owned();
    assert!(
        follow.stdout.contains("step 2:") && follow.stdout.contains("== finished: completed"),
        "{}",
        follow.stdout
    );
    let logs = cli(&server, me, &["logs", &task]).await;
    assert!(
        logs.stdout.contains("Task created") && logs.stdout.contains("Task completed"),
        "{}",
        logs.stdout
    );
    let stuck = cli(
        &server,
        me,
        &[
            "submit",
            "p-detection-2",
            "--param",
            r#"simulate={"steps": 100, "step_ms": 1000}"#,
        ],
    )
    .await;
    let stuck = stuck.stdout.trim().to_owned();
    let cancel = cli(&server, me, &["cancel", &stuck]).await;
    assert!(
        cancel.stdout.contains("cancelled"),
        "{}{}",
        cancel.stdout,
        cancel.stderr
    );
    let t: Value = server.task(&serde_json::json!({"id": stuck})).await;
    assert_eq!(t["status"], "cancelled");
    assert_eq!(t["created_by"], "alice");
    let latest = cli(&server, me, &["status"]).await;
    assert!(
        latest.stdout.contains(&batch) && latest.stdout.contains("demo"),
        "{}",
        latest.stdout
    );
    let missing = cli(&server, me, &["status", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("no task or batch"),
        "{}",
        missing.stderr
    );
}

task_executor_shared::both_backends!(a_campaign_from_submit_to_csv);
