//! Accept loops for the HTTPS and HTTP listeners, with graceful shutdown.
//!
//! The TLS handshake has its own timeout so a client that connects and says
//! nothing cannot hold a task forever. After the handshake the ALPN result picks
//! an HTTP/1.1-only or HTTP/2-only connection, so no bytes are spent sniffing.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::redirect::Redirect;
use super::{ConnInfo, Proxy};
use crate::metrics::{ConnGuard, ResultLabel, METRICS};
use crate::tls::Certs;

/// Timeouts that bound what a slow client can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// How long in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_pending_accept_reset_streams(Some(100))
        .max_local_error_reset_streams(Some(1024));
    b
}

fn with_header_timeout(
    mut b: auto::Builder<TokioExecutor>,
    limits: &Limits,
) -> auto::Builder<TokioExecutor> {
    b.http1().header_read_timeout(limits.header_read_timeout);
    b
}

pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    certs: Certs,
    proxy: Arc<Proxy>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let base = with_header_timeout(builder(), &limits);
    let h1 = Arc::new(base.clone().http1_only());
    let h2 = Arc::new(base.clone().http2_only());
    let any = Arc::new(base);
    let graceful = GracefulShutdown::new();
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
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let certs = certs.clone();
        let proxy = proxy.clone();
        let (h1, h2, any) = (h1.clone(), h2.clone(), any.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _conn = ConnGuard::new();
            let hs = &METRICS.handshakes;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
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
            let builder = match session.alpn_protocol() {
                Some(b"h2") => h2,
                Some(_) => h1,
                None => any,
            };
            let info = Arc::new(ConnInfo { peer, served });
            let svc = service_fn(move |req| proxy.clone().handle(req, info.clone()));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }
    drain(graceful, limits.shutdown_grace, "HTTPS").await;
}

pub async fn serve_http(
    listener: TcpListener,
    redirect: Arc<Redirect>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(with_header_timeout(builder(), &limits).http1_only());
    let graceful = GracefulShutdown::new();
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
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let redirect = redirect.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _conn = ConnGuard::new();
            let svc = service_fn(move |req| {
                let r = redirect.handle(req, peer);
                async move { r }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }
    drain(graceful, limits.shutdown_grace, "HTTP").await;
}

async fn drain(graceful: GracefulShutdown, grace: Duration, what: &str) {
    let open = graceful.count();
    if open > 0 {
        tracing::info!(
            "{what} listener closed; waiting up to {} for {open} connection(s) to finish",
            humantime::format_duration(grace)
        );
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("{what}: grace period over; closing the remaining connections");
    }
}
