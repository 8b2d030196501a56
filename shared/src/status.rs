//! Task and worker states and log levels, and the one place that says which task transitions are allowed.
//! Their names on the wire, in the database and in messages are the lowercase variant names (strum gives
//! `as_str`, `FromStr`, `Display` and iteration; with the `sea-orm` feature, sea-orm maps them to columns).

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};
use strum::IntoEnumIterator;

/// Derives what every state enum of the service has: the OpenAPI enum, serde, strum's string conversions
/// and iteration, and (for the API server) the sea-orm column mapping, all with lowercase names.
macro_rules! state_enum {
    ($(#[$doc:meta])* $vis:vis enum $name:ident { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? } $(derive($($extra:path),*))?) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize, Deserialize,
            strum::EnumString, strum::IntoStaticStr, strum::Display, strum::EnumIter
            $($(, $extra)*)?
        )]
        #[oai(rename_all = "lowercase")]
        #[serde(rename_all = "lowercase")]
        #[strum(serialize_all = "lowercase")]
        #[cfg_attr(
            feature = "sea-orm",
            derive(sea_orm::DeriveActiveEnum),
            sea_orm(rs_type = "String", db_type = "String(sea_orm::sea_query::StringLen::N(16))", rename_all = "lowercase")
        )]
        $vis enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The name on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            /// Every value, in declaration order.
            pub fn all() -> impl Iterator<Item = $name> {
                <$name as IntoEnumIterator>::iter()
            }
        }
    };
}

state_enum! {
    /// The life of a task: `pending` → `running` → one of the terminal states. A running task may go back to
    /// `pending` when its worker is lost or gives it back (a requeue); a pending or running task may be
    /// cancelled.
    pub enum TaskStatus {
        Pending,
        Running,
        Completed,
        Failed,
        Timeout,
        Cancelled,
    }
}

state_enum! {
    /// Why a finished task ended as it did, so that a benchmark counts against an agent only what the agent
    /// did: `none` (it succeeded), `agent` (the run finished and the agent was wrong, or it failed or ran out
    /// of steps once the agent was running), `infrastructure` (the cluster, the application's deployment, the
    /// fault injection or the runner failed before the agent could act, or the worker was lost), `timeout`,
    /// `cancelled`.
    pub enum FailureKind {
        None,
        Agent,
        Infrastructure,
        Timeout,
        Cancelled,
    }
}

state_enum! {
    /// Whose failure a failed run is, as its worker reports it (`failure_kind` of a failure report).
    pub enum FailedBy {
        Agent,
        Infrastructure,
    }
}

impl From<FailedBy> for FailureKind {
    fn from(f: FailedBy) -> Self {
        match f {
            FailedBy::Agent => FailureKind::Agent,
            FailedBy::Infrastructure => FailureKind::Infrastructure,
        }
    }
}

impl FailureKind {
    /// What a worker reports of a failed run of this kind: only `Agent` is the agent's.
    pub fn failed_by(self) -> FailedBy {
        match self {
            FailureKind::Agent => FailedBy::Agent,
            _ => FailedBy::Infrastructure,
        }
    }

    /// The kind of a task in `status` with `result`; `None` while it is not finished. A failed run is the
    /// infrastructure's when its worker said so, or when the server failed it itself (a worker lost, a run
    /// never reported): `result.failure_kind`. Otherwise it counts against the agent, which is the cautious
    /// reading for a benchmark.
    pub fn of(status: TaskStatus, result: Option<&serde_json::Value>) -> Option<FailureKind> {
        let field = |k: &str| result.and_then(|r| r.get(k));
        Some(match status {
            TaskStatus::Pending | TaskStatus::Running => return None,
            TaskStatus::Completed if field("success").and_then(|v| v.as_bool()) == Some(true) => {
                FailureKind::None
            }
            TaskStatus::Completed => FailureKind::Agent,
            TaskStatus::Failed => match field("failure_kind").and_then(|v| v.as_str()) {
                Some("infrastructure") => FailureKind::Infrastructure,
                _ => FailureKind::Agent,
            },
            TaskStatus::Timeout => FailureKind::Timeout,
            TaskStatus::Cancelled => FailureKind::Cancelled,
        })
    }
}

impl TaskStatus {
    /// A terminal task never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }

    /// The state machine of a task, in one place. The queue's transitions are checked against it.
    pub fn can_transition_to(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Cancelled)
                | (Running, Completed | Failed | Timeout | Cancelled | Pending)
        )
    }

    /// The states from which a task may move to `next`, for conditional updates in SQL.
    pub fn sources_of(next: TaskStatus) -> Vec<TaskStatus> {
        TaskStatus::all()
            .filter(|s| s.can_transition_to(next))
            .collect()
    }
}

state_enum! {
    /// What a worker is doing, as the server sees it. `busy` and `idle` are derived from the tasks the worker
    /// holds; `offline` from a stale heartbeat or the worker saying so. `stopping` is a worker that finishes
    /// its tasks before it goes away (an internal worker scaled down or drained, a daemon draining).
    /// `degraded` is a worker whose runner cannot run problems now (it claims nothing meanwhile; the reason
    /// is shown with it).
    pub enum WorkerStatus {
        Idle,
        Busy,
        Offline,
        Stopping,
        Degraded,
    }
}

state_enum! {
    /// Severity of a task log entry, ordered from least to most severe.
    pub enum LogLevel {
        Debug,
        Info,
        Warning,
        Error,
        Critical,
    }
    derive(PartialOrd, Ord)
}

state_enum! {
    /// What an API token may do. `read`: every GET of tasks, logs, workers, health details and metrics;
    /// `submit`: `read` plus creating and cancelling tasks; `worker`: the worker protocol, for worker ids
    /// matching the token's pattern; `admin`: everything, the internal worker controls included.
    pub enum Role {
        Read,
        Submit,
        Worker,
        Admin,
    }
}

impl Role {
    /// Whether a token of this role may do what needs `need`.
    pub fn allows(self, need: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Submit => matches!(need, Role::Read | Role::Submit),
            Role::Read => need == Role::Read,
            Role::Worker => need == Role::Worker,
        }
    }
}

impl LogLevel {
    /// A number that grows with severity, stored beside the level so that "this level and worse" is one
    /// indexed comparison.
    pub fn severity(self) -> i16 {
        match self {
            LogLevel::Debug => 10,
            LogLevel::Info => 20,
            LogLevel::Warning => 30,
            LogLevel::Error => 40,
            LogLevel::Critical => 50,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in TaskStatus::all().filter(|s| s.is_terminal()) {
            for to in TaskStatus::all() {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn cancel_is_allowed_from_pending_and_running_only() {
        assert_eq!(
            TaskStatus::sources_of(TaskStatus::Cancelled),
            vec![TaskStatus::Pending, TaskStatus::Running]
        );
        assert_eq!(
            TaskStatus::sources_of(TaskStatus::Running),
            vec![TaskStatus::Pending]
        );
    }

    #[test]
    fn roles_cover_what_they_say() {
        use Role::*;
        let table = [
            (Read, [true, false, false, false]),
            (Submit, [true, true, false, false]),
            (Worker, [false, false, true, false]),
            (Admin, [true, true, true, true]),
        ];
        for (role, allowed) in table {
            for (need, ok) in [Read, Submit, Worker, Admin].into_iter().zip(allowed) {
                assert_eq!(role.allows(need), ok, "{role} for {need}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TaskStatus::all() {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
        for l in LogLevel::all() {
            assert_eq!(l.as_str().parse::<LogLevel>().unwrap(), l);
        }
        assert_eq!(TaskStatus::Cancelled.as_str(), "cancelled");
        assert_eq!(WorkerStatus::Stopping.as_str(), "stopping");
        assert!("Pending".parse::<TaskStatus>().is_err());
        assert_eq!("submit".parse::<Role>().unwrap(), Role::Submit);
        assert!(LogLevel::Warning.severity() > LogLevel::Info.severity());
        assert!(LogLevel::Warning > LogLevel::Info);
    }
}
