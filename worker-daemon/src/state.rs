//! The daemon's state directory: an instance id kept across restarts (so a restarted daemon takes over its
//! worker id at once, while a process elsewhere with the same id is refused), an exclusive lock that keeps a
//! second daemon off the same directory, and the spool of undelivered reports.

use std::{fs::File, io::Write, path::Path};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use task_executor_shared::worker::Spool;

/// The state directory in use; the lock holds while this lives.
pub struct State {
    pub instance_id: String,
    pub spool: Spool,
    _lock: Flock<File>,
}

impl State {
    pub fn open(dir: &Path) -> anyhow::Result<State> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let lock_file = File::create(dir.join("lock"))
            .with_context(|| format!("cannot write in the state directory {}", dir.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "another worker-daemon uses the state directory {} ({e}): each daemon needs its own \
                 WORKER_ID or STATE_DIR",
                dir.display()
            )
        })?;
        let id_path = dir.join("instance-id");
        let instance_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let id = uuid::Uuid::new_v4().to_string();
                let mut f = File::create(&id_path)
                    .with_context(|| format!("cannot write {}", id_path.display()))?;
                f.write_all(id.as_bytes())?;
                f.sync_all()?;
                id
            }
        };
        let spool = Spool::open(&dir.join("spool"))
            .with_context(|| format!("cannot create the spool in {}", dir.display()))?;
        Ok(State {
            instance_id,
            spool,
            _lock: lock,
        })
    }
}
