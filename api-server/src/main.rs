//! `api-server`: parses the configuration, sets up logging and runs the server (`api-server --help`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = api_server::Config::parse();
    task_executor_shared::telemetry::init_logging(
        config.log_level,
        config.log_format,
        &["api_server"],
    );
    match api_server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "api-server failed");
            eprintln!("api-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
