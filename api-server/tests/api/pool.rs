//! PostgreSQL's hot statements on connections kept between statements (`store::hot`): they leave the pool's
//! other users their share, give their connections back when idle, never hand on a connection a statement left
//! half-read, and answer errors as sea-orm does.

use std::time::Duration;

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

#[test]
fn the_hot_share_leaves_a_quarter_and_at_least_one() {
    assert_eq!(share(1), 0);
    assert_eq!(share(2), 1);
    assert_eq!(share(4), 3);
    assert_eq!(share(10), 8);
    assert_eq!(share(100), 75);
}

#[tokio::test]
async fn hot_statements_leave_the_other_users_their_share() {
    let db = pool_of(4).await;
    // More slow hot statements than the pool has connections.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { answer(&Hot(&db), "SELECT 1 FROM pg_sleep(5)").await })
        })
        .collect();
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
async fn idle_hot_connections_go_back_to_the_pool() {
    let db = pool_of(4).await;
    let pool = db.get_postgres_connection_pool().clone();
    let hot: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { answer(&Hot(&db), "SELECT 1 FROM pg_sleep(0.2)").await })
        })
        .collect();
    for h in hot {
        assert_eq!(h.await.unwrap(), 1);
    }
    // Kept for the next hot statement: out of the pool's idle queue.
    assert!(
        pool.num_idle() < pool.size() as usize,
        "the hot statements kept no connection"
    );
    // Then given back after a while without use.
    wait_for(
        "the stash to give its connections back",
        IDLE_RETURN * 5,
        || {
            let (idle, size) = (pool.num_idle(), pool.size());
            async move { (idle == size as usize).then_some(()) }
        },
    )
    .await;
    // And the pool closes with nothing left out.
    tokio::time::timeout(Duration::from_secs(10), db.close())
        .await
        .expect("the pool closes")
        .unwrap();
}

#[tokio::test]
async fn a_pool_closes_while_the_stash_holds_connections() {
    let db = pool_of(4).await;
    assert_eq!(answer(&Hot(&db), "SELECT 3").await, 3);
    let pool = db.get_postgres_connection_pool().clone();
    assert!(pool.num_idle() < pool.size() as usize);
    tokio::time::timeout(Duration::from_secs(10), db.close())
        .await
        .expect("the pool closes")
        .unwrap();
    assert!(pool.is_closed());
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
    // The one connection the share allows was kept after both refusals, and answers right.
    assert_eq!(answer(&Hot(&db), "SELECT count(*)::int FROM t").await, 1);
    let rows = Hot(&db)
        .query_all_raw(stmt("SELECT generate_series(1, 3)"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
}
