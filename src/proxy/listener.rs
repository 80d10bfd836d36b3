//! Accept loops for the HTTPS and HTTP listeners, with limits and graceful shutdown.
//!
//! Each accepted socket first takes a connection slot (total and per client IP);
//! the TLS handshake has its own timeout so a client that connects and says
//! nothing cannot hold a task forever. After the handshake, ALPN h2 gets an
//! HTTP/2 session (`http2`, hyper's server, its streams in the
//! connection's own task); anything else is edge's HTTP/1 server (`http1::server`),
//! which hands a client that opens with the HTTP/2 preface (prior knowledge,
//! no ALPN) to the same HTTP/2 server. Both sit on the connection's
//! deadlines (`deadlines`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::client_sock::ClientSock;
use super::conn_limit::{ConnLimiter, Permit};
use super::deadlines::{Deadlines, Timed};
use super::proxy_protocol::ProxyProtocol;
use super::redirect::Redirect;
use super::shutdown::Stop;
use super::{ConnInfo, Proxy};
use crate::config::Limits;
use crate::http1::server::{self as h1, Served};
use crate::log_limit::{held, LIMIT};
use crate::metrics::{ConnGuard, ResultLabel, METRICS};
use crate::tls::Certs;

/// What bounds a client on the listeners.
#[derive(Debug, Clone)]
pub struct ListenLimits {
    pub handshake_timeout: Duration,
    pub limits: Limits,
    /// A PROXY protocol header comes first (`[listen] proxy_protocol`).
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
}

/// A connection slot for `client` (total and per address), or `None`:
/// refused, counted, and logged once per address a minute.
fn slot(conns: &Arc<ConnLimiter>, client: SocketAddr) -> Option<Permit> {
    match conns.try_acquire(client.ip()) {
        Ok(p) => Some(p),
        Err(which) => {
            crate::metrics::refused(which);
            if let Some(n) = LIMIT.admit("connection refused", &client.ip().to_string()) {
                tracing::warn!(client = %client.ip(), "connection refused: {which} reached{}", held(n));
            }
            None
        }
    }
}

/// A connection's client and slot: without PROXY protocol, taken in the
/// accept loop (`early`); with it, once the header has said whose
/// connection it is, so the per-address limit counts clients, not the
/// balancer. `None`: closed.
async fn admitted(
    early: Option<Permit>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    limits: &ListenLimits,
    conns: &Arc<ConnLimiter>,
) -> Option<(tokio::net::TcpStream, SocketAddr, Permit)> {
    if let Some(p) = early {
        return Some((stream, peer, p));
    }
    let pp = limits.proxy_protocol.as_ref()?;
    match pp.client(&mut stream, peer, limits.handshake_timeout).await {
        Ok(client) => slot(conns, client).map(|p| (stream, client, p)),
        Err(e) => {
            crate::metrics::refused("listen.proxy_protocol");
            tracing::debug!(peer = %peer, "connection closed: {e}");
            None
        }
    }
}

/// A client connection's deadlines; `head`: it reads HTTP/1 request heads
/// (HTTP/2 has its own per stream).
fn deadlines(l: &Limits, head: bool, inflight: &Arc<AtomicUsize>, peer: SocketAddr) -> Deadlines {
    Deadlines {
        keepalive: l.keepalive_timeout,
        send: l.send_timeout,
        head: head.then_some(l.header_read_timeout),
        inflight: inflight.clone(),
        peer,
    }
}

/// A client connection after its TLS handshake.
struct Accepted {
    info: Arc<ConnInfo>,
    /// ALPN chose HTTP/2.
    h2: bool,
}

type TlsConn = tokio_rustls::server::TlsStream<ClientSock>;

/// The TLS handshake, within `handshake_timeout`, counted by result; the
/// connection boxed for the server that takes it (so a connection's task
/// holds it once, not once per stage).
async fn accept(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    handshake_timeout: Duration,
    certs: &Certs,
    limits: &Limits,
    peer: SocketAddr,
) -> Option<(Box<h1::Conn<TlsConn>>, Accepted)> {
    let hs = &METRICS.handshakes;
    // The resolver reads it for a client without SNI (`tls::LOCAL_IP`); a
    // syscall, so only when some certificate names an address.
    let local = certs
        .current()
        .has_ip_names()
        .then(|| stream.local_addr().map(|a| a.ip()).ok())
        .flatten();
    let handshake = acceptor.accept(ClientSock(stream));
    let handshake = async move {
        match local {
            Some(ip) => crate::tls::LOCAL_IP.scope(ip, handshake).await,
            None => handshake.await,
        }
    };
    let tls = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(s)) => {
            hs.get_or_create(&ResultLabel { result: "ok" }).inc();
            s
        }
        Ok(Err(e)) => {
            hs.get_or_create(&ResultLabel { result: "failed" }).inc();
            tracing::debug!(client = %peer, "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            hs.get_or_create(&ResultLabel { result: "timeout" }).inc();
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return None;
        }
    };
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() == Some(crate::acme::challenges::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the answer.
        tracing::debug!(client = %peer, "tls-alpn-01 validation handshake answered");
        let mut tls = tls;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return None;
    }
    let served = certs
        .current()
        .for_client(session.server_name(), local)
        .cloned();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let inflight = Arc::new(AtomicUsize::new(0));
    let io = Timed::new(tls, Some(deadlines(limits, !h2, &inflight, peer)));
    let info = Arc::new(ConnInfo {
        peer,
        served,
        inflight,
        peer_header: super::headers::peer_value(peer.ip()),
    });
    Some((h1::Conn::boxed(io), Accepted { info, h2 }))
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
        let early = match &limits.proxy_protocol {
            None => match slot(&conns, peer) {
                Some(p) => Some(p),
                None => continue,
            },
            Some(_) => None,
        };
        let _ = stream.set_nodelay(true);
        let (conns, limits_) = (conns.clone(), limits.clone());
        let acceptor = acceptor.clone();
        let certs = certs.clone();
        let proxy = proxy.clone();
        let conn_limits = conn_limits.clone();
        let watcher = graceful.watcher();
        let stop = shutdown.clone();
        let handshake_timeout = limits.handshake_timeout;
        tasks.spawn(async move {
            let Some((stream, peer, _permit)) =
                admitted(early, stream, peer, &limits_, &conns).await
            else {
                return;
            };
            let _conn = ConnGuard::new();
            let accepted = accept(
                &acceptor,
                stream,
                handshake_timeout,
                &certs,
                &conn_limits,
                peer,
            );
            let Some((conn, Accepted { info, h2 })) = accepted.await else {
                return;
            };
            if h2 {
                let io = conn.io;
                Box::pin(crate::http2::serve(io, proxy, info, &conn_limits, watcher)).await;
                return;
            }
            // The watcher is held while the HTTP/1 server runs, so the
            // listener's drain waits for this connection; the server itself
            // sees shutdown between requests (`Stop`).
            let mut stop = Stop::new(stop);
            let settings = h1::Settings {
                max_head: conn_limits.max_header_bytes,
                body_idle_timeout: conn_limits.body_idle_timeout,
            };
            match h1::serve(conn, &proxy, &info, &settings, &mut stop).await {
                Served::Closed(Ok(())) => {}
                Served::Closed(Err(e)) => {
                    tracing::debug!(client = %peer, "connection ended: {e}");
                }
                Served::Http2(io) => {
                    drop(stop);
                    let served = crate::http2::serve(*io, proxy, info, &conn_limits, watcher);
                    Box::pin(served).await;
                }
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
        let early = match &limits.proxy_protocol {
            None => match slot(&conns, peer) {
                Some(p) => Some(p),
                None => continue,
            },
            Some(_) => None,
        };
        let _ = stream.set_nodelay(true);
        let (conns, limits_) = (conns.clone(), limits.clone());
        let redirect = redirect.clone();
        let conn_limits = conn_limits.clone();
        let mut stop = Stop::new(shutdown.clone());
        let alive = alive.clone();
        tasks.spawn(async move {
            let _alive = alive;
            let Some((stream, peer, _permit)) =
                admitted(early, stream, peer, &limits_, &conns).await
            else {
                return;
            };
            let _conn = ConnGuard::new();
            // Answers are written as soon as their head is read, so nothing is
            // ever in flight here: the guard's head and idle deadlines apply.
            let inflight = Arc::new(AtomicUsize::new(0));
            let io = Timed::new(stream, Some(deadlines(&conn_limits, true, &inflight, peer)));
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
