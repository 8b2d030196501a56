//! The HTTP server loop: accepts connections and serves each with hyper's HTTP/1.1 connection, calling the poem
//! endpoint for every request, and stops gracefully.
//!
//! It replaces poem's `Server`, which does not let hyper be configured, because of what an open connection
//! costs there; a worker's long poll holds its connection for up to a minute, so a busy server has hundreds
//! open:
//! - poem puts hyper's HTTP/2 detection in front of every connection. It reads the first 24 bytes on their own
//!   and hands them to HTTP/1 apart, which makes hyper grow the connection's 8 KiB read buffer to 16 KiB on
//!   the first request. Plain HTTP/2 (h2c) is not served: browsers use HTTP/2 only over TLS, which belongs to
//!   the reverse proxy in front, and the daemon and the API's clients speak HTTP/1.1.
//! - poem's idle timer is one more task (with its own channel and timer) per connection; here it is a timer
//!   in the connection's own task. It also no longer counts a request being answered as idle time: poem's
//!   closed a connection after a long poll that outlasted its idle period.
//! - A client that hangs up while its request is being answered ends that request here (hyper sees the socket
//!   close and drops the handler): a long poll whose worker went away claims nothing. Under poem's `Server` it
//!   kept waiting and could take a task for nobody, which the worker's next heartbeat then gave back.
//!
//! Measured with 1,000 claims waiting on PostgreSQL (`queue_bench`'s memory check): 63 MiB resident under
//! poem's `Server`, 58 MiB with this loop, 53 MiB with the edge's copy of each request's head as well
//! (`middleware::own_head`), which lets the head's read buffer go.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, Request, Response,
    http::uri::Scheme,
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Accepts TCP connections with Nagle's algorithm off (`TCP_NODELAY`), as HTTP servers do. With it on, a
/// small write waits while an earlier small write of the connection is unacknowledged, and a client that delays
/// its acknowledgements holds it that long (40 ms or more on Linux, 200 ms by default on Windows): the events of
/// a stream sent close together, an answer whose body goes out in parts. poem's acceptor leaves it on. (On
/// loopback, with this machine's answers written whole, no difference was measurable; the setting is for real
/// networks.)
pub struct NoDelay(pub TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(TcpStream, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        if let Err(e) = io.set_nodelay(true) {
            // Still a working connection, only slower on some networks.
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        Ok((io, local, remote, scheme))
    }
}

/// The body type poem's responses convert into for hyper.
type Body = http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>;

/// Serves `ep` on the connections `acceptor` accepts until `signal`; then accepts no more, lets the requests
/// in flight finish (a connection closes after its current response) for up to `grace`, and drops whatever
/// is left after that. A connection on which no request is being answered and nothing was read or written for
/// `idle` is closed, and dropped if nothing moves for another `idle` after that.
pub async fn serve<A, E>(
    mut acceptor: A,
    ep: E,
    idle: Duration,
    signal: impl Future<Output = ()>,
    grace: Duration,
) where
    A: Acceptor,
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let ep = Arc::new(ep.into_endpoint().map_to_response());
    let closing = CancellationToken::new();
    let cut = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            accepted = acceptor.accept() => match accepted {
                Ok((io, local, remote, scheme)) => {
                    let peer = Peer { local, remote, scheme };
                    connections.spawn(connection(io, peer, ep.clone(), idle, closing.clone(), cut.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: try again shortly
                    // rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(acceptor);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "requests still in flight after the grace period are dropped"
        );
        cut.cancel();
        connections.wait().await;
    }
}

/// Who is on either end of a connection, as poem's requests carry it.
struct Peer {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: poem::http::uri::Scheme,
}

async fn connection<Io, E>(
    io: Io,
    peer: Peer,
    ep: Arc<E>,
    idle: Duration,
    closing: CancellationToken,
    cut: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: Endpoint<Output = Response> + 'static,
{
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last: AtomicU64::new(0),
        busy: AtomicUsize::new(0),
    });
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let watch = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let ep = ep.clone();
        let req = Request::from((
            req,
            peer.local.clone(),
            peer.remote.clone(),
            peer.scheme.clone(),
        ));
        let busy = Busy::new(watch.clone());
        async move {
            let resp = ep.get_response(req).await;
            drop(busy);
            Ok::<_, Infallible>(hyper::Response::<Body>::from(resp))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutting = false;
    loop {
        tokio::select! {
            // Done, failed (the client went away), or handed over to a WebSocket.
            _ = conn.as_mut() => return,
            () = cut.cancelled() => return,
            () = closing.cancelled(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(activity.quiet_until(idle)) => {
                if activity.busy.load(Ordering::Relaxed) > 0 {
                    // A request being answered is not idle time, however long it takes: look again later.
                    activity.touch();
                } else if Instant::now() >= activity.quiet_until(idle) {
                    if shutting {
                        // Asked to close, and still nothing moved: a client that sent part of a request head
                        // and stopped, or that does not read its answer. hyper closes neither on its own.
                        return;
                    }
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                    activity.touch();
                }
            }
        }
    }
}

/// When a connection last moved, and whether a request on it is being answered.
struct Activity {
    started: Instant,
    /// When the socket last read or wrote anything, or a request was answered: milliseconds after `started`.
    last: AtomicU64,
    /// Requests being answered (a long poll moves nothing for up to a minute, and is not idle).
    busy: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// When the connection counts as idle if nothing moves until then.
    fn quiet_until(&self, idle: Duration) -> Instant {
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }
}

/// A request being answered, for as long as it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's socket that notes when it last read or wrote anything, for the idle timer.
struct Watched<Io> {
    io: Io,
    activity: Arc<Activity>,
}

impl<Io> Watched<Io> {
    fn moved<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(_)) = &poll {
            self.activity.touch();
        }
        poll
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Watched<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        self.moved(poll)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Watched<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.moved(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.moved(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use poem::listener::{Listener, TcpListener};

    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_to_fill_a_segment() {
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let mut acceptor = NoDelay(acceptor);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (io, _, remote, scheme) = acceptor.accept().await.unwrap();
        assert!(io.nodelay().unwrap(), "TCP_NODELAY is set");
        assert_eq!(scheme, Scheme::HTTP);
        assert!(remote.as_socket_addr().is_some());
    }
}
