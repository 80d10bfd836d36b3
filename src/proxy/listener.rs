//! Accept loops for the HTTPS and HTTP listeners, with limits and graceful shutdown.
//!
//! Each accepted socket first takes a connection slot (total and per client IP);
//! the TLS handshake has its own timeout so a client that connects and says
//! nothing cannot hold a task forever. After the handshake, ALPN h2 gets an
//! HTTP/2 connection whose streams run in its own task (see `h2_streams`);
//! anything else is served by edge's own HTTP/1.1 loop (`h1_server`) until a
//! request it leaves to hyper-util's auto connection, HTTP/1.1 with upgrades,
//! both behind the framing guard (see `framing`). hyper-util sniffs the bytes,
//! so an HTTP/2 preface without ALPN is served HTTP/2, with the same limits
//! (its streams are tokio tasks, see `h2_streams::TaskExec`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::client_sock::ClientSock;
use super::conn_limit::ConnLimiter;
use super::framing::{Deadlines, Guard};
use super::h1_server;
use super::h2_streams::{StreamExec, TaskExec, WithStreams};
use super::redirect::Redirect;
use super::shutdown::Stop;
use super::{ConnInfo, Proxy};
use crate::config::Limits;
use crate::metrics::{ConnGuard, ResultLabel, METRICS};
use crate::tls::Certs;

/// What bounds a client on the listeners.
#[derive(Debug, Clone)]
pub struct ListenLimits {
    pub handshake_timeout: Duration,
    pub limits: Limits,
}

/// edge's HTTP/2 limits, on hyper's builder or on hyper-util's auto builder
/// (two types with the same methods).
macro_rules! h2_limits {
    ($b:expr, $l:expr) => {
        $b.timer(TokioTimer::new())
            .max_concurrent_streams($l.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(Some($l.h2_max_pending_resets))
            .max_local_error_reset_streams(Some(1024))
            .max_header_list_size($l.max_header_bytes as u32)
    };
}

/// edge's HTTP/1 settings, on hyper's builder or hyper-util's auto builder.
macro_rules! h1_limits {
    ($b:expr, $l:expr) => {
        // The head deadline is the framing guard's (`Deadlines`): hyper's would
        // arm a boxed timer per request, and would also close idle keep-alive
        // connections at header_read_timeout instead of keepalive_timeout. hyper
        // sets 30 s by default once it has a timer, so it is switched off here.
        $b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size($l.max_header_bytes)
            .keep_alive(true)
    };
}

fn builder<E: Clone>(l: &Limits, exec: E) -> auto::Builder<E> {
    let mut b = auto::Builder::new(exec);
    h1_limits!(b.http1(), l);
    // hyper-util serves a connection with upgrades by sniffing its first
    // bytes, whatever `http1_only` says, so a client that sends the HTTP/2
    // preface without ALPN h2 is served HTTP/2 here: with the same limits.
    h2_limits!(b.http2(), l);
    b
}

/// A client connection's deadlines, kept by the framing guard; `head`: it
/// reads HTTP/1 request heads.
fn deadlines(l: &Limits, head: bool, inflight: &Arc<AtomicUsize>, peer: SocketAddr) -> Deadlines {
    Deadlines {
        keepalive: l.keepalive_timeout,
        send: l.send_timeout,
        head: head.then_some(l.header_read_timeout),
        inflight: inflight.clone(),
        peer,
    }
}

/// One HTTP/2 connection's builder: its executor is the connection's own
/// (see `h2_streams`), so the builder is made per connection.
fn h2_builder(l: &Limits, exec: StreamExec) -> http2::Builder<StreamExec> {
    let mut b = http2::Builder::new(exec);
    h2_limits!(b, l);
    b
}

/// What hyper's connections call for each request: `Proxy::handle`.
fn service(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<super::Body>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        proxy
            .clone()
            .handle(req.map(Some), info.clone(), std::time::Instant::now())
    })
}

pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    certs: Certs,
    proxy: Arc<Proxy>,
    limits: ListenLimits,
    conns: Arc<ConnLimiter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let conn_limits = Arc::new(limits.limits.clone());
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that what outlives the grace is cut.
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("accept on the HTTPS listener failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next() => continue,
            _ = shutdown.changed() => break,
        };
        let permit = match conns.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(which) => {
                tracing::warn!(client = %peer, "connection refused: {which} reached");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let certs = certs.clone();
        let proxy = proxy.clone();
        let conn_limits = conn_limits.clone();
        let watcher = graceful.watcher();
        let stop = shutdown.clone();
        let handshake_timeout = limits.handshake_timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let _conn = ConnGuard::new();
            let hs = &METRICS.handshakes;
            let tls =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(ClientSock(stream)))
                    .await
                {
                    Ok(Ok(s)) => {
                        hs.get_or_create(&ResultLabel { result: "ok" }).inc();
                        s
                    }
                    Ok(Err(e)) => {
                        hs.get_or_create(&ResultLabel { result: "failed" }).inc();
                        tracing::debug!(client = %peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        hs.get_or_create(&ResultLabel { result: "timeout" }).inc();
                        tracing::debug!(client = %peer, "TLS handshake timed out");
                        return;
                    }
                };
            let (_, session) = tls.get_ref();
            let served = certs.current().for_sni(session.server_name()).cloned();
            let is_h2 = session.alpn_protocol() == Some(b"h2");
            let inflight = Arc::new(AtomicUsize::new(0));
            // HTTP/2 has hyper's own head deadline for each stream.
            let io = Guard::new(
                tls,
                !is_h2,
                Some(deadlines(&conn_limits, !is_h2, &inflight, peer)),
            );
            let peer_header = super::headers::peer_value(peer.ip());
            let info = Arc::new(ConnInfo {
                peer,
                served,
                inflight,
                peer_header,
            });
            if is_h2 {
                let svc = service(proxy, info);
                let exec = StreamExec::default();
                let conn =
                    h2_builder(&conn_limits, exec.clone()).serve_connection(TokioIo::new(io), svc);
                let ended =
                    WithStreams::new(watcher.watch(conn), exec, conn_limits.send_timeout, peer)
                        .await
                        .map_err(|e| crate::acme::error_chain(&e));
                if let Err(chain) = ended {
                    tracing::debug!(client = %peer, "connection ended: {chain}");
                }
                return;
            }
            // edge's own loop first; hyper takes over at the first request it
            // does not serve (see `h1_server`). The watcher is held meanwhile,
            // so the listener's drain waits for this connection either way.
            let mut stop = Stop::new(stop);
            let max_head = conn_limits.max_header_bytes;
            let io = match h1_server::serve(io, &proxy, &info, max_head, &mut stop).await {
                h1_server::Served::HandOff(io) => io,
                h1_server::Served::Closed(Ok(())) => return,
                h1_server::Served::Closed(Err(e)) => {
                    tracing::debug!(client = %peer, "connection ended: {e}");
                    return;
                }
            };
            // hyper's graceful watcher (below) takes over the shutdown signal.
            drop(stop);
            let svc = service(proxy, info);
            // No `http1_only` here: hyper-util ignores it when serving with
            // upgrades (see `builder`). Made per connection for the
            // executor's peer address: a few words and two timer handles.
            let exec = TaskExec {
                send_timeout: conn_limits.send_timeout,
                peer,
            };
            let b = builder(&conn_limits, exec);
            let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
            let ended = watcher
                .watch(conn.into_owned())
                .await
                .map_err(|e| crate::acme::error_chain(e.as_ref()));
            if let Err(chain) = ended {
                tracing::debug!(client = %peer, "connection ended: {chain}");
            }
        });
    }
    drain(
        graceful.count(),
        graceful.shutdown(),
        limits.limits.shutdown_grace,
        "HTTPS",
    )
    .await;
    tasks.shutdown().await;
}

pub async fn serve_http(
    listener: TcpListener,
    redirect: Arc<Redirect>,
    limits: ListenLimits,
    conns: Arc<ConnLimiter>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection's task holds a sender; when the last is gone, all are done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let conn_limits = Arc::new(limits.limits.clone());
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("accept on the HTTP listener failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next() => continue,
            _ = shutdown.changed() => break,
        };
        let permit = match conns.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(which) => {
                tracing::warn!(client = %peer, "connection refused: {which} reached");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let redirect = redirect.clone();
        let conn_limits = conn_limits.clone();
        let mut stop = Stop::new(shutdown.clone());
        let alive = alive.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _conn = ConnGuard::new();
            let _alive = alive;
            // Answers are written as soon as their head is read, so nothing is
            // ever in flight here: the guard's head and idle deadlines apply.
            let inflight = Arc::new(AtomicUsize::new(0));
            let io = Guard::new(
                stream,
                false,
                Some(deadlines(&conn_limits, true, &inflight, peer)),
            );
            let max_head = conn_limits.max_header_bytes;
            if let Err(e) = redirect.serve(io, peer.ip(), max_head, &mut stop).await {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }
    let open = alive.strong_count() - 1;
    drop(alive);
    let done = async move {
        let _ = all_done.recv().await;
    };
    drain(open, done, limits.limits.shutdown_grace, "HTTP").await;
    tasks.shutdown().await;
}

/// Waits up to `grace` for `open` connections to finish (`done`); the
/// caller then cuts what is left (a process would exit; an embedded daemon
/// must not leave connections running behind its back).
async fn drain(
    open: usize,
    done: impl std::future::Future<Output = ()>,
    grace: Duration,
    what: &str,
) {
    if open > 0 {
        tracing::info!(
            "{what} listener closed; waiting up to {} for {open} connection(s) to finish",
            humantime::format_duration(grace)
        );
    }
    if tokio::time::timeout(grace, done).await.is_err() {
        tracing::warn!("{what}: grace period over; closing the remaining connections");
    }
}
