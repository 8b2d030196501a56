//! PostgreSQL's hot statements (a creation, a claim, the end of a run, a batch of heartbeats, an announcement)
//! on connections the hot paths keep among themselves between statements.
//!
//! sqlx pings every connection that goes back to its pool: one more round trip to PostgreSQL, with a wake-up of
//! its backend, for each statement of a one-statement hot path. [`Hot`] runs a statement on a connection taken
//! from a small stash of its own, the one used last first, and puts the connection back there once the statement
//! is done, without the ping. The pool's other users are not starved by it:
//! - the stash and the statements running from it hold at most [`share`] of the pool's connections, so at least
//!   a quarter of them (and one) are always left to the rest;
//! - a connection idle in the stash for [`IDLE_RETURN`] goes back to the pool (within twice that), and all of
//!   them do when the pool closes;
//! - a connection goes back to the pool after [`HELD_AT_MOST`] in the hot statements' hands, so that sqlx applies
//!   its own rules to it (its maximum lifetime among them).
//!
//! A statement that failed other than with an error PostgreSQL answered, or with one that ended the session
//! (severity `FATAL` or `PANIC`: the backend was terminated, the server is shutting down), or whose future was
//! dropped half-way (its client went away), leaves its connection to sqlx, which tests it as it always does. A
//! connection that died takes the stashed ones back to sqlx with it: after a restart of PostgreSQL one hot
//! statement fails, not one per stashed connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement,
    sqlx::{self, PgPool, Postgres, pool::PoolConnection},
};
use sea_query_sqlx::SqlxValues;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// How long a connection may wait in the stash before it goes back to the pool.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);

/// How long the hot statements may keep a connection they took from the pool, in use or stashed.
pub const HELD_AT_MOST: Duration = Duration::from_secs(60);

/// How many of a pool's `max` connections the hot statements may hold at once, in use or in their stash: at most
/// three quarters, so that at least a quarter (and one) are left to the rest; none for a pool of one, whose
/// statements then go to the pool as any other.
pub fn share(max: u32) -> u32 {
    max - max.div_ceil(4)
}

/// The hot statements' side of one pool.
struct Stash {
    /// One per connection the hot statements may hold.
    permits: Arc<Semaphore>,
    state: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Connections between statements, the one put back last at the end, each with when it was put back.
    conns: Vec<(Kept, Instant)>,
    /// Whether a task is returning the stale ones to the pool.
    sweeping: bool,
}

/// A connection the hot statements took from the pool, with when they took it.
struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

/// The pool's [`Stash`], found by the pool's identity: the address of its options, which live as long as the
/// pool. The map holds stashes weakly: a stash lives while a statement runs from it or a sweeper watches its
/// connections (which keep their pool, and so the address, alive); one that does not is gone, and a pool that
/// comes later at the same address gets a new one.
fn stash_of(pool: &PgPool) -> Option<Arc<Stash>> {
    static STASHES: OnceLock<Mutex<HashMap<usize, Weak<Stash>>>> = OnceLock::new();
    let share = share(pool.options().get_max_connections());
    if share == 0 {
        return None;
    }
    let key = std::ptr::from_ref(pool.options()) as usize;
    let mut stashes = STASHES
        .get_or_init(Default::default)
        .lock()
        .expect("stashes lock");
    if let Some(stash) = stashes.get(&key).and_then(Weak::upgrade) {
        return Some(stash);
    }
    stashes.retain(|_, s| s.strong_count() > 0);
    let stash = Arc::new(Stash {
        permits: Arc::new(Semaphore::new(share as usize)),
        state: Mutex::new(Idle::default()),
    });
    stashes.insert(key, Arc::downgrade(&stash));
    Some(stash)
}

/// A connection of the stash, in use by one statement.
struct Taken {
    kept: Kept,
    _permit: OwnedSemaphorePermit,
}

impl Stash {
    /// A connection for one statement: the one put back last, else a new one from the pool. Waiting, for a
    /// permit and then the pool, takes at most the pool's acquire timeout in all.
    async fn take(&self, pool: &PgPool) -> Result<Taken, DbErr> {
        let deadline = Instant::now() + pool.options().get_acquire_timeout();
        let timed_out = || DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| {
                DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::ConnectionClosed)
            })?;
        let stashed = self.state.lock().expect("stash lock").conns.pop();
        let kept = match stashed {
            Some((kept, _)) => kept,
            None => Kept {
                conn: tokio::time::timeout_at(deadline, pool.acquire())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| match e {
                        sqlx::Error::PoolTimedOut => timed_out(),
                        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(
                            sea_orm::error::ConnAcquireErr::ConnectionClosed,
                        ),
                        e => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))),
                    })?,
                since: Instant::now(),
            },
        };
        Ok(Taken {
            kept,
            _permit: permit,
        })
    }

    /// Puts a connection back after a statement that ran to its end (or that PostgreSQL refused), unless the
    /// pool closed or the connection has been kept for [`HELD_AT_MOST`], and makes sure a sweeper will return it
    /// to the pool if nobody takes it soon.
    fn put(self: &Arc<Self>, pool: &PgPool, taken: Taken) {
        if pool.is_closed() || taken.kept.since.elapsed() >= HELD_AT_MOST {
            return;
        }
        let mut idle = self.state.lock().expect("stash lock");
        idle.conns.push((taken.kept, Instant::now()));
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(self.clone(), pool.clone()));
        }
    }

    /// Gives every stashed connection back to the pool (which tests each as it comes back).
    fn drain(&self) {
        let all: Vec<_> = std::mem::take(&mut self.state.lock().expect("stash lock").conns);
        drop(all);
    }
}

/// Returns the stash's connections idle for [`IDLE_RETURN`] to the pool, until none is left; all of them at once
/// when the pool closes.
async fn sweep(stash: Arc<Stash>, pool: PgPool) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        let shut = tokio::select! {
            _ = &mut closed => true,
            _ = tokio::time::sleep(IDLE_RETURN) => false,
        };
        let (stale, done) = {
            let mut idle = stash.state.lock().expect("stash lock");
            let now = Instant::now();
            // The oldest are at the front: cut up to the first one put back less than IDLE_RETURN ago.
            let cut = if shut {
                idle.conns.len()
            } else {
                idle.conns
                    .iter()
                    .position(|(_, at)| now.duration_since(*at) < IDLE_RETURN)
                    .unwrap_or(idle.conns.len())
            };
            let stale: Vec<_> = idle.conns.drain(..cut).collect();
            idle.sweeping = !idle.conns.is_empty();
            (stale, !idle.sweeping)
        };
        // Dropped outside the lock: each goes back to the pool (tested there as sqlx does).
        drop(stale);
        if done {
            return;
        }
    }
}

/// A [`ConnectionTrait`] for one-statement hot paths: on PostgreSQL each statement runs on a connection of the
/// stash; on SQLite (whose hot paths are scripts) and on a pool of one, it is the connection as it is.
pub struct Hot<'a>(pub &'a DatabaseConnection);

/// What a statement is run for.
enum Op {
    Execute,
    One,
    All,
}

/// What it answered.
enum Out {
    Execute(sqlx::postgres::PgQueryResult),
    One(Option<sqlx::postgres::PgRow>),
    All(Vec<sqlx::postgres::PgRow>),
}

impl Hot<'_> {
    /// The pool's stash, if this is PostgreSQL and the pool has a share for it.
    fn stash(&self) -> Option<(&PgPool, Arc<Stash>)> {
        if self.0.get_database_backend() != DbBackend::Postgres {
            return None;
        }
        let pool = self.0.get_postgres_connection_pool();
        stash_of(pool).map(|stash| (pool, stash))
    }

    /// Runs `stmt` on a connection of `stash`, and puts the connection back unless it died (see
    /// [`session_lives`]), in which case the whole stash goes back to the pool.
    async fn run(pool: &PgPool, stash: Arc<Stash>, stmt: Statement, op: Op) -> Result<Out, DbErr> {
        let mut taken = stash.take(pool).await?;
        let values = stmt.values.unwrap_or(sea_orm::Values(Vec::new()));
        let query = sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), SqlxValues(values));
        let conn = &mut *taken.kept.conn;
        let answer = match op {
            Op::Execute => query.execute(conn).await.map(Out::Execute),
            Op::One => query.fetch_optional(conn).await.map(Out::One),
            Op::All => query.fetch_all(conn).await.map(Out::All),
        };
        if answer.as_ref().map_or_else(session_lives, |_| true) {
            stash.put(pool, taken);
        } else {
            // The connection died (a restart or a failover ends every session at once): the stashed ones are
            // likely dead too, so they go back to sqlx's test rather than each failing a statement of its own.
            drop(taken);
            stash.drain();
        }
        answer.map_err(|e| match op {
            Op::Execute => DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e))),
            Op::One | Op::All => DbErr::Query(RuntimeErr::SqlxError(Arc::new(e))),
        })
    }
}

/// Whether the connection is still good after `e`: PostgreSQL answered it, and not with the end of the session.
fn session_lives(e: &sqlx::Error) -> bool {
    use sqlx::postgres::{PgDatabaseError, PgSeverity};
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| !matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Hot<'_> {
    fn get_database_backend(&self) -> DbBackend {
        self.0.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self.stash() {
            Some((pool, stash)) => match Self::run(pool, stash, stmt, Op::Execute).await? {
                Out::Execute(done) => Ok(done.into()),
                _ => unreachable!("an execution answers an execution"),
            },
            None => self.0.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.0.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self.stash() {
            Some((pool, stash)) => match Self::run(pool, stash, stmt, Op::One).await? {
                Out::One(row) => Ok(row.map(QueryResult::from)),
                _ => unreachable!("a query of one row answers one row"),
            },
            None => self.0.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self.stash() {
            Some((pool, stash)) => match Self::run(pool, stash, stmt, Op::All).await? {
                Out::All(rows) => Ok(rows.into_iter().map(QueryResult::from).collect()),
                _ => unreachable!("a query of rows answers rows"),
            },
            None => self.0.query_all_raw(stmt).await,
        }
    }
}
