//! The server loop (`api_server::serve`) on its own, with a small endpoint and short timers: idle
//! connections are closed, busy ones are not, and a stop lets what is in flight finish within the grace period.

use std::time::{Duration, Instant};

use api_server::serve::serve;
use poem::{
    Route, get, handler,
    listener::{Acceptor, Listener, TcpListener},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

#[handler]
async fn slow(
    poem::web::Query(q): poem::web::Query<std::collections::HashMap<String, u64>>,
) -> String {
    let ms = q.get("ms").copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}")
}

/// A server with the given idle and grace periods; the sender stops it.
async fn start(idle: Duration, grace: Duration) -> (String, oneshot::Sender<()>, JoinHandle<()>) {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .unwrap()
        .to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        acceptor,
        Route::new().at("/slow", get(slow)),
        idle,
        async move {
            let _ = stopped.await;
        },
        grace,
    ));
    (addr, stop, server)
}

/// Sends one request on `conn` and reads its answer (a small one, which fits one read).
async fn ask(conn: &mut TcpStream, ms: u64) -> String {
    conn.write_all(format!("GET /slow?ms={ms} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(conn: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection was closed: {read:?}"
    );
    start.elapsed()
}

#[tokio::test]
async fn a_connection_on_which_nothing_moves_is_closed() {
    let (addr, _stop, _server) = start(Duration::from_millis(400), Duration::from_secs(5)).await;
    let mut quiet = TcpStream::connect(&addr).await.unwrap();
    let waited = closed_after(&mut quiet).await;
    assert!(
        waited >= Duration::from_millis(350),
        "not before its time: {waited:?}"
    );

    // After a request, the quiet period counts from the answer.
    let mut used = TcpStream::connect(&addr).await.unwrap();
    assert!(ask(&mut used, 0).await.starts_with("HTTP/1.1 200"));
    let waited = closed_after(&mut used).await;
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
}

#[tokio::test]
async fn a_connection_stuck_in_a_half_sent_head_is_dropped() {
    let (addr, _stop, _server) = start(Duration::from_millis(300), Duration::from_secs(5)).await;
    let mut stuck = TcpStream::connect(&addr).await.unwrap();
    stuck
        .write_all(b"GET /slow HTTP/1.1\r\nHost")
        .await
        .unwrap();
    // Asked to close after 300 ms, which hyper cannot do in the middle of a head; dropped 300 ms later.
    let waited = closed_after(&mut stuck).await;
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
}

#[tokio::test]
async fn a_busy_connection_is_not_closed_as_idle() {
    let (addr, _stop, _server) = start(Duration::from_millis(300), Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    // A request that takes longer than the idle period (a long poll) is answered.
    let answer = ask(&mut conn, 900).await;
    assert!(answer.ends_with("slept 900"), "{answer}");
    // Requests every 150 ms keep one connection open well past the idle period.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let answer = ask(&mut conn, 0).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

#[tokio::test]
async fn a_stop_lets_requests_in_flight_finish_and_refuses_new_connections() {
    let (addr, stop, server) = start(Duration::from_secs(60), Duration::from_secs(10)).await;
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let in_flight = tokio::spawn(async move { ask(&mut busy, 700).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    // The idle connection is closed at once, no new connection is accepted, the request in flight is
    // answered, and the server then ends.
    assert!(closed_after(&mut idle).await < Duration::from_secs(5));
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "no connection is accepted while stopping"
    );
    let answer = in_flight.await.unwrap();
    assert!(answer.ends_with("slept 700"), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server ended")
        .unwrap();
}

#[tokio::test]
async fn a_request_still_running_after_the_grace_period_is_dropped() {
    let (addr, stop, server) = start(Duration::from_secs(60), Duration::from_millis(500)).await;
    let mut stuck = TcpStream::connect(&addr).await.unwrap();
    stuck
        .write_all(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server ended after its grace period")
        .unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(450));
    closed_after(&mut stuck).await;
}
