//! PostgreSQL's hot statements on connections kept between statements (`store::hot`): they reuse the connection
//! the last one put back, leave the pool's other users their share, give their connections back when idle and
//! when the pool closes, drop a connection whose session ended, and answer errors as sea-orm does.

use std::time::Duration;

use tokio::task::JoinHandle;

use api_server::store::{
    self,
    hot::{Hot, IDLE_RETURN, share},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, SqlErr, Statement};
use task_executor_shared::testing::{fresh_pg_database, wait_for};

async fn pool_of(max: u32) -> DatabaseConnection {
    store::connect(&fresh_pg_database().await, max)
        .await
        .expect("connect")
}

fn stmt(sql: &str) -> Statement {
    Statement::from_string(DbBackend::Postgres, sql)
}

async fn answer(conn: &impl ConnectionTrait, sql: &str) -> i32 {
    conn.query_one_raw(stmt(sql))
        .await
        .expect("query")
        .expect("a row")
        .try_get_by_index(0)
        .expect("an int")
}

/// The backend serving `conn`'s next statement.
async fn pid(conn: &impl ConnectionTrait) -> i32 {
    answer(conn, "SELECT pg_backend_pid()").await
}

/// `n` hot statements `sql` started at once, each answering an int.
fn hot_at_once(db: &DatabaseConnection, n: usize, sql: &'static str) -> Vec<JoinHandle<i32>> {
    (0..n)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { answer(&Hot(&db), sql).await })
        })
        .collect()
}

/// Waits until none of the backends `pids` (a comma-separated list) is left, asking through `watcher`; fails the
/// test after `limit`.
async fn wait_until_ended(watcher: &DatabaseConnection, pids: &str, limit: Duration) {
    wait_for("the backends to end", limit, || {
        let watcher = watcher.clone();
        let sql = format!("SELECT count(*)::int FROM pg_stat_activity WHERE pid IN ({pids})");
        async move { (answer(&watcher, &sql).await == 0).then_some(()) }
    })
    .await;
}

#[test]
fn the_hot_share_leaves_a_quarter_and_at_least_one() {
    assert_eq!(share(1), 0);
    assert_eq!(share(2), 1);
    assert_eq!(share(3), 2);
    assert_eq!(share(4), 3);
    assert_eq!(share(10), 7);
    assert_eq!(share(100), 75);
}

#[tokio::test]
async fn hot_statements_leave_the_other_users_their_share() {
    let db = pool_of(4).await;
    // More slow hot statements than the pool has connections.
    let slow = hot_at_once(&db, 6, "SELECT 1 FROM pg_sleep(5)");
    let pool = db.get_postgres_connection_pool().clone();
    wait_for(
        "the hot statements to take their share",
        Duration::from_secs(10),
        || {
            let in_use = pool.size() as usize - pool.num_idle();
            async move { (in_use >= share(4) as usize).then_some(()) }
        },
    )
    .await;
    // A plain query gets the connection the hot statements leave, before any of them ends.
    assert_eq!(answer(&db, "SELECT 7").await, 7);
    assert!(
        slow.iter().all(|h| !h.is_finished()),
        "the plain query waited for a hot statement to end"
    );
    for h in slow {
        assert_eq!(h.await.unwrap(), 1);
    }
}

#[tokio::test]
async fn hot_statements_reuse_the_connection_put_back_last_then_give_it_back() {
    let db = pool_of(4).await;
    let pool = db.get_postgres_connection_pool().clone();
    // Three connections, all used once.
    let hot = hot_at_once(&db, 3, "SELECT 1 FROM pg_sleep(0.2)");
    for h in hot {
        assert_eq!(h.await.unwrap(), 1);
    }
    // One after another, the statements get the same one (the pool would hand them out in turn).
    let first = pid(&Hot(&db)).await;
    for _ in 0..5 {
        assert_eq!(pid(&Hot(&db)).await, first);
    }
    // Left unused, every connection goes back to the pool.
    wait_for(
        "the stash to give its connections back",
        IDLE_RETURN * 5,
        || {
            let (idle, size) = (pool.num_idle(), pool.size());
            async move { (idle == size as usize).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_pool_closing_ends_the_stashed_connections_at_once() {
    let url = fresh_pg_database().await;
    let db = store::connect(&url, 4).await.expect("connect");
    let watcher = store::connect(&url, 1).await.expect("connect");
    let stashed = pid(&Hot(&db)).await;
    assert_eq!(pid(&Hot(&db)).await, stashed, "the connection was kept");
    tokio::time::timeout(IDLE_RETURN / 2, db.close())
        .await
        .expect("the pool closes")
        .unwrap();
    // Its backend ends well before the stash would have given the connection back on its own.
    wait_until_ended(&watcher, &stashed.to_string(), IDLE_RETURN / 2).await;
}

#[tokio::test]
async fn a_connection_whose_session_ended_is_not_kept() {
    let db = pool_of(2).await;
    let doomed = pid(&Hot(&db)).await;
    // Its backend is terminated between two statements (as by an administrator, or a restart).
    assert_eq!(
        answer(&db, &format!("SELECT pg_terminate_backend({doomed})::int")).await,
        1
    );
    wait_until_ended(&db, &doomed.to_string(), Duration::from_secs(10)).await;
    // The statement sent on it fails; the next one runs on a connection that works.
    assert!(Hot(&db).query_one_raw(stmt("SELECT 1")).await.is_err());
    let next = pid(&Hot(&db)).await;
    assert_ne!(next, doomed);
}

#[tokio::test]
async fn a_statement_dropped_half_way_leaves_nothing_for_the_next() {
    let db = pool_of(2).await;
    // Dropped while PostgreSQL still runs it: its connection must not serve the next statement with the
    // answer it was about to get.
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        answer(&Hot(&db), "SELECT 99 FROM pg_sleep(1)"),
    )
    .await;
    assert!(dropped.is_err(), "the statement was meant to be cut short");
    for want in [1, 2, 3] {
        assert_eq!(answer(&Hot(&db), &format!("SELECT {want}")).await, want);
    }
}

#[tokio::test]
async fn when_the_stashed_connections_die_together_one_statement_fails() {
    let db = pool_of(8).await;
    // Four connections in the stash.
    let hot = hot_at_once(&db, 4, "SELECT pg_backend_pid() FROM pg_sleep(0.2)");
    let mut doomed = Vec::new();
    for h in hot {
        doomed.push(h.await.unwrap());
    }
    doomed.sort();
    doomed.dedup();
    assert_eq!(doomed.len(), 4, "four connections at once");
    let list = doomed
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // Every backend ends at once, as in a restart of PostgreSQL.
    db.execute_unprepared(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({list})"
    ))
    .await
    .unwrap();
    wait_until_ended(&db, &list, Duration::from_secs(10)).await;
    // The first statement meets a dead connection; the ones after it do not.
    assert!(Hot(&db).query_one_raw(stmt("SELECT 1")).await.is_err());
    for want in [1, 2, 3] {
        assert_eq!(answer(&Hot(&db), &format!("SELECT {want}")).await, want);
    }
}

#[tokio::test]
async fn errors_answer_as_sea_orm_and_keep_the_connection_usable() {
    let db = pool_of(2).await;
    db.execute_unprepared("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    Hot(&db)
        .execute_raw(stmt("INSERT INTO t VALUES (1)"))
        .await
        .unwrap();
    let e = Hot(&db)
        .execute_raw(stmt("INSERT INTO t VALUES (1)"))
        .await
        .expect_err("a duplicate key");
    assert!(
        matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "{e:?}"
    );
    let e = Hot(&db)
        .query_one_raw(stmt("SELECT 1 / 0"))
        .await
        .expect_err("division by zero");
    assert!(e.to_string().contains("division by zero"), "{e}");
    // The connection was kept after both refusals (the same backend answers), and answers right.
    let kept = pid(&Hot(&db)).await;
    let e = Hot(&db)
        .query_one_raw(stmt("SELECT 1 / 0"))
        .await
        .expect_err("division by zero");
    assert!(e.to_string().contains("division by zero"), "{e}");
    assert_eq!(pid(&Hot(&db)).await, kept);
    assert_eq!(answer(&Hot(&db), "SELECT count(*)::int FROM t").await, 1);
    let rows = Hot(&db)
        .query_all_raw(stmt("SELECT generate_series(1, 3)"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
}
