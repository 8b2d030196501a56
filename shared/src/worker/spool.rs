//! The daemon's spool: every report (a batch of log entries, an outcome) is written to disk before it is
//! sent and removed once the queue has it or refused it for good. A worker killed with reports undelivered
//! delivers them when it starts again, before it registers (registering would give its tasks back), so a
//! finished run is never lost and never repeated for want of its outcome.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{CompleteTaskRequest, FailTaskRequest, NewLogEntry};

/// One report, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Report {
    Logs {
        attempt: i32,
        lease_id: Uuid,
        entries: Vec<NewLogEntry>,
    },
    Complete(CompleteTaskRequest),
    Fail(FailTaskRequest),
    Release {
        attempt: i32,
        lease_id: Uuid,
        /// Why, when not because the worker stops (its runner cannot run here).
        #[serde(default)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spooled {
    pub task_id: Uuid,
    pub report: Report,
}

/// A spool directory. File names order a run's reports: its log batches by number, then its outcome.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// Where one report is kept.
#[derive(Debug, Clone)]
pub struct Kept(PathBuf);

impl Spool {
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_owned(),
        })
    }

    /// Keeps a report durably before it is sent. `seq` orders a run's log batches; `None` is its outcome,
    /// which comes after them.
    pub fn keep(&self, lease_id: Uuid, seq: Option<u64>, item: &Spooled) -> std::io::Result<Kept> {
        let name = match seq {
            Some(n) => format!("{lease_id}-logs-{n:08}.json"),
            None => format!("{lease_id}-outcome.json"),
        };
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(item).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(Kept(path))
    }

    /// The report was delivered (or refused for good): forget it.
    pub fn done(&self, kept: &Kept) {
        if let Err(e) = std::fs::remove_file(&kept.0) {
            tracing::warn!(path = %kept.0.display(), error = %e, "could not remove a delivered report from the spool");
        }
    }

    /// Every kept report, in the order they must be delivered (by run, its log batches, then its outcome).
    pub fn pending(&self) -> std::io::Result<Vec<(Kept, Spooled)>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(item) => out.push((Kept(p), item)),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "an unreadable report in the spool is set aside");
                    let _ = std::fs::rename(&p, p.with_extension("unreadable"));
                }
            }
        }
        Ok(out)
    }
}
