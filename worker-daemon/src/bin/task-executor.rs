//! `task-executor`: the researchers' command line over the HTTP API (`task-executor --help`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = worker_daemon::cli::Cli::parse();
    match worker_daemon::cli::run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("task-executor: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
