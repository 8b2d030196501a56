//! SQLite's hot paths as scripts: the statements of a transaction sent to SQLite's thread in one call.
//!
//! SQLite runs on a thread of its own, one connection for the whole server, and every statement sent there is a
//! hand-off and back; a claim as separate statements was five (begin, worker touch, claim, log entry, commit).
//! A [`Script`] joins statements into one string that sqlx runs in one call, rows of each statement kept apart.
//! A [`detached`] session holds the connection in a task of its own, so that a request dropped half-way (its
//! client went away) never leaves a transaction open on the shared connection: the session runs to its end,
//! and a transaction it left open is rolled back before the connection goes back to the pool.
//!
//! sqlx pings every connection that goes back to its pool, which on SQLite is one more hand-off to its thread
//! for every script. So a session hands the connection straight to the next session already waiting for it,
//! for up to [`MAX_STREAK`] sessions in a row; the connection goes back to the pool (and its queue of other
//! users, served in order) after that, after a failure, or when no session waits.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use sea_orm::{
    DatabaseConnection, DbErr, QueryResult, RuntimeErr, Value,
    sqlx::{self, Either, Sqlite, pool::PoolConnection},
};
use sea_query_sqlx::SqlxValues;

/// Statements to run together, each with its parameters as bare `?` bound in order (so a statement built by
/// sea-query for SQLite can be added as it is).
#[derive(Debug, Default)]
pub struct Script {
    sql: String,
    values: Vec<Value>,
    statements: usize,
    begin: bool,
    commit: bool,
}

impl Script {
    /// A script that starts a transaction (`BEGIN IMMEDIATE`: the write lock at once, so that it never has to
    /// be upgraded halfway).
    pub fn begin() -> Script {
        Script {
            begin: true,
            ..Script::default()
        }
    }

    /// A script inside the transaction an earlier one began.
    pub fn then() -> Script {
        Script::default()
    }

    /// Adds a statement (no trailing `;`); its `?` take `values` in order.
    pub fn push(&mut self, sql: &str, values: impl IntoIterator<Item = Value>) -> &mut Script {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.values.extend(values);
        self.statements += 1;
        self
    }

    /// Adds a statement sea-query built for SQLite, with `suffix` (say ` RETURNING *`) after it.
    pub fn push_built(&mut self, built: sea_orm::Statement, suffix: &str) -> &mut Script {
        let values = built.values.map(|v| v.0).unwrap_or_default();
        self.push(&format!("{}{suffix}", built.sql), values)
    }

    /// Ends the script with the transaction's commit.
    pub fn commit(&mut self) -> &mut Script {
        self.commit = true;
        self
    }
}

/// The connection of a [`detached`] session.
pub struct Session {
    conn: PoolConnection<Sqlite>,
    /// Whether a transaction may be open (a script began one, and none committed it since).
    open: bool,
}

impl Session {
    /// Runs `script` in one call to SQLite's thread: the rows each of its statements returned, in order.
    pub async fn run(&mut self, script: Script) -> Result<Vec<Vec<QueryResult>>, DbErr> {
        use futures_util::TryStreamExt;
        use sqlx::Executor;
        let Script {
            sql,
            values,
            statements,
            begin,
            commit,
        } = script;
        let sql = format!(
            "{}{sql}{}",
            if begin { "BEGIN IMMEDIATE;\n" } else { "" },
            if commit { "COMMIT;" } else { "" }
        );
        if begin {
            self.open = true;
        }
        let query = sqlx::query_with(
            sqlx::AssertSqlSafe(sql),
            SqlxValues(sea_orm::Values(values)),
        );
        let mut out: Vec<Vec<QueryResult>> = Vec::with_capacity(statements + 2);
        let mut rows = Vec::new();
        let mut stream = (&mut *self.conn).fetch_many(query);
        while let Some(step) = stream.try_next().await.map_err(query_err)? {
            match step {
                Either::Right(row) => rows.push(QueryResult::from(row)),
                Either::Left(_) => out.push(std::mem::take(&mut rows)),
            }
        }
        drop(stream);
        if commit {
            self.open = false;
        }
        // The rows of the script's own statements, without those of BEGIN and COMMIT.
        let expected = statements + usize::from(begin) + usize::from(commit);
        if out.len() != expected {
            return Err(DbErr::Custom(format!(
                "a script of {expected} statements answered for {}",
                out.len()
            )));
        }
        if commit {
            out.pop();
        }
        if begin {
            out.remove(0);
        }
        Ok(out)
    }
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}

/// Most sessions in a row that pass the connection on without returning it to the pool, so that the pool's
/// other users (every query that is not a script) wait for at most this many.
pub const MAX_STREAK: u32 = 16;

/// The sessions of one pool: the connection one of them passes on to the next, with how many sessions in a
/// row have had it so. Lives while any session of the pool does (each holds it from before it waits until its
/// end); when the last one ends, a connection still in it goes back to the pool.
#[derive(Default)]
struct Relay {
    next: tokio::sync::Mutex<Option<(PoolConnection<Sqlite>, u32)>>,
}

/// The pool's [`Relay`], found by the pool's identity: the address of its options, which live as long as the
/// pool (and a relay that lives keeps the pool alive, through a session's connection or its handle).
fn relay_of(pool: &sqlx::SqlitePool) -> Arc<Relay> {
    static RELAYS: OnceLock<Mutex<HashMap<usize, Weak<Relay>>>> = OnceLock::new();
    let key = std::ptr::from_ref(pool.options()) as usize;
    let mut relays = RELAYS
        .get_or_init(Default::default)
        .lock()
        .expect("relays lock");
    if let Some(relay) = relays.get(&key).and_then(Weak::upgrade) {
        return relay;
    }
    relays.retain(|_, r| r.strong_count() > 0);
    let relay = Arc::new(Relay::default());
    relays.insert(key, Arc::downgrade(&relay));
    relay
}

/// Runs `session` on the SQLite connection in a task of its own, and answers what it answers. A transaction it
/// leaves open — it failed, or decided not to commit — is rolled back before the connection is released; if
/// even that fails, the connection is closed (SQLite rolls back) and the pool opens another.
pub async fn detached<T, F, Fut>(db: &DatabaseConnection, session: F) -> Result<T, DbErr>
where
    T: Send + 'static,
    F: FnOnce(Session) -> Fut + Send + 'static,
    Fut: Future<Output = (Session, Result<T, DbErr>)> + Send + 'static,
{
    let pool = db.get_sqlite_connection_pool().clone();
    tokio::spawn(async move {
        let relay = relay_of(&pool);
        // Waiting for the connection, in the relay and then in the pool, takes at most the pool's acquire
        // timeout in all, as a plain acquire would.
        let deadline = tokio::time::Instant::now() + pool.options().get_acquire_timeout();
        let timed_out = || DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        let mut next = tokio::time::timeout_at(deadline, relay.next.lock())
            .await
            .map_err(|_| timed_out())?;
        let (conn, streak) = match next.take() {
            Some(passed) => passed,
            None => {
                let conn = tokio::time::timeout_at(deadline, pool.acquire())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| match e {
                        sqlx::Error::PoolTimedOut => timed_out(),
                        e => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))),
                    })?;
                (conn, 0)
            }
        };
        let (mut s, answer) = session(Session { conn, open: false }).await;
        let mut sound = answer.is_ok();
        if s.open {
            use sqlx::Executor;
            sound = false;
            if let Err(e) = (&mut *s.conn).execute("ROLLBACK").await {
                let no_transaction = e.to_string().contains("no transaction is active");
                if !no_transaction {
                    tracing::error!(error = %e, "cannot roll back a script's transaction: closing the connection");
                    s.conn.close_on_drop();
                }
            }
        }
        // Another session holds the relay: it is waiting for the connection, or about to. (A closed pool hands
        // out no more connections, and neither does its relay.)
        if sound && streak + 1 < MAX_STREAK && Arc::strong_count(&relay) > 1 && !pool.is_closed() {
            *next = Some((s.conn, streak + 1));
        }
        answer
    })
    .await
    .map_err(|e| DbErr::Custom(format!("a database session stopped: {e}")))?
}

/// Runs one script that begins and commits its own transaction, as a [`detached`] session.
pub async fn run(db: &DatabaseConnection, script: Script) -> Result<Vec<Vec<QueryResult>>, DbErr> {
    detached(db, move |mut session| async move {
        let rows = session.run(script).await;
        (session, rows)
    })
    .await
}
