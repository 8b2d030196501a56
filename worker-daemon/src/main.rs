//! `worker-daemon`: parses the configuration, sets up logging and runs the daemon (`worker-daemon --help`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = worker_daemon::config::Config::parse();
    task_executor_shared::telemetry::init_logging(
        cfg.log_level,
        cfg.log_format,
        &["worker_daemon"],
    );
    match worker_daemon::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-daemon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
