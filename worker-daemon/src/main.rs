//! `worker-daemon`: the standalone worker for kind cluster hosts. Not implemented yet (see the open issue
//! "The worker daemon"); this binary only exists so that the workspace has its final layout.

fn main() -> std::process::ExitCode {
    eprintln!("worker-daemon: not implemented yet; use the API server's worker endpoints directly");
    std::process::ExitCode::FAILURE
}
