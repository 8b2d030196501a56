//! The `worker-daemon` binary from the outside: its help and the checks that need no server.

use std::process::Command;

fn daemon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worker-daemon"));
    for var in [
        "TASK_EXECUTOR_URL",
        "WORKER_ID",
        "TASK_RUNNER",
        "RUNNER_COMMAND",
        "KIND_CLUSTERS",
        "MAX_PARALLEL_TASKS",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn help_names_every_setting_and_its_environment_variable() {
    let out = daemon().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TASK_EXECUTOR_URL",
        "WORKER_ID",
        "BACKEND_TYPE",
        "MAX_PARALLEL_TASKS",
        "SUPPORTED_PROBLEMS",
        "TASK_RUNNER",
        "RUNNER_COMMAND",
        "KIND_CLUSTERS",
        "HEARTBEAT_INTERVAL_SECONDS",
        "SHUTDOWN_GRACE_SECONDS",
        "METRICS_ADDR",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(var), "--help mentions {var}");
    }
    assert!(help.contains("check"), "the check subcommand is listed");
}

#[test]
fn check_fails_clearly_without_a_server_or_a_runner() {
    let out = daemon()
        .args([
            "--server-url",
            "http://127.0.0.1:9",
            "--runner",
            "simulate",
            "check",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer"), "{err}");

    let out = daemon()
        .args([
            "--runner",
            "exec",
            "--runner-command",
            "/nonexistent/harness",
            "check",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/harness") && err.contains("not found"),
        "{err}"
    );

    let out = daemon()
        .args(["--runner", "simulate", "--worker-id", "bad/id", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad/id"));

    // Flags may also follow the subcommand, as operators tend to type them.
    let out = daemon()
        .args([
            "check",
            "--server-url",
            "http://127.0.0.1:9",
            "--runner",
            "simulate",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not answer"));
}
