//! The HTTP/3 session: QUIC (quinn, over rustls with the same certificate
//! resolver as TCP) on the HTTPS address's UDP port, HTTP/3 framing by h3,
//! and each request stream made a `proxy::Session` for `Proxy::handle`, as
//! HTTP/1 and HTTP/2 requests are. What only HTTP/3 needs is kept here: the
//! endpoint and its limits, address validation under a flood of handshakes,
//! the request body read from DATA frames, the answer written as frames,
//! and the drain on shutdown (GOAWAY, then in-flight streams finish within
//! `shutdown_grace`).

mod body;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Limits;
use crate::metrics::{ConnGuard, ResultLabel, METRICS};
use crate::proxy::access_log::{self, End, Record, CLIENT_CLOSED};
use crate::proxy::body::ReqBody;
use crate::proxy::conn_limit::ConnLimiter;
use crate::proxy::{headers, ConnInfo, Protocol, Proxy, Session};
use crate::tls::Certs;
pub use body::BodyError;

/// Handshakes in progress from addresses QUIC has not validated, above which
/// a new one must first prove its address (a Retry round trip): a flood of
/// Initial packets from spoofed addresses then costs edge a stateless token
/// each, not a handshake each.
const UNVALIDATED_MAX: usize = 64;
/// Unidirectional streams a client may open: HTTP/3 needs three (control,
/// QPACK encoder and decoder); the rest is room for grease.
const MAX_UNI_STREAMS: u32 = 16;
/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1): what a connection closed for a flood
/// of reset streams is told.
const H3_EXCESSIVE_LOAD: u32 = 0x0107;

/// What bounds HTTP/3 clients: the TCP listeners' limits, read the same way.
#[derive(Debug, Clone)]
pub struct QuicLimits {
    pub handshake_timeout: Duration,
    pub limits: Limits,
}

/// The QUIC endpoint on `addr` (UDP), with edge's TLS (ALPN h3, TLS 1.3, no
/// 0-RTT: early data can be replayed) and limits.
pub fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    l: &QuicLimits,
) -> Result<quinn::Endpoint, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("TLS for QUIC: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(l.limits.h2_max_concurrent_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_UNI_STREAMS))
        .max_idle_timeout(quinn::IdleTimeout::try_from(l.limits.keepalive_timeout).ok());
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, addr).map_err(|e| e.to_string())
}

/// Accepts QUIC connections until shutdown, then drains them.
pub async fn serve(
    endpoint: quinn::Endpoint,
    proxy: Arc<Proxy>,
    certs: Certs,
    limits: QuicLimits,
    conns: Arc<ConnLimiter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let unvalidated = Arc::new(AtomicUsize::new(0));
    let limits = Arc::new(limits);
    let mut tasks = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            Some(_) = tasks.join_next() => continue,
            _ = shutdown.changed() => break,
        };
        let peer = incoming.remote_address();
        if !incoming.remote_address_validated()
            && unvalidated.load(Ordering::Relaxed) >= UNVALIDATED_MAX
            && incoming.may_retry()
        {
            // Costs a token, not a handshake; a spoofed address never answers.
            let _ = incoming.retry();
            continue;
        }
        let permit = match conns.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(which) => {
                crate::metrics::refused(which);
                tracing::debug!(client = %peer, "QUIC connection refused: {which} reached");
                incoming.refuse();
                continue;
            }
        };
        // Counted here, not in the task: a burst of Initials read in one
        // turn must see each other before any task has run.
        let validated = incoming.remote_address_validated();
        if !validated {
            unvalidated.fetch_add(1, Ordering::Relaxed);
        }
        let (proxy, certs, limits, unvalidated) = (
            proxy.clone(),
            certs.clone(),
            limits.clone(),
            unvalidated.clone(),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _conn = ConnGuard::new();
            let conn = handshake(incoming, limits.handshake_timeout, peer).await;
            if !validated {
                unvalidated.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(conn) = conn {
                serve_conn(conn, proxy, &certs, &limits.limits, stop).await;
            }
        });
    }
    // Drain: connections send GOAWAY and finish what they have (each sees
    // the signal), for at most shutdown_grace; then whatever is left is cut.
    let grace = limits.limits.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("HTTP/3: grace period over; closing the remaining connections");
    }
    tasks.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// The QUIC handshake within `handshake_timeout`, counted as TCP's are.
async fn handshake(
    incoming: quinn::Incoming,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<quinn::Connection> {
    let hs = &METRICS.handshakes;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %peer, "QUIC handshake failed: {e}");
            hs.get_or_create(&ResultLabel { result: "failed" }).inc();
            return None;
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => {
            hs.get_or_create(&ResultLabel { result: "ok" }).inc();
            Some(c)
        }
        Ok(Err(e)) => {
            hs.get_or_create(&ResultLabel { result: "failed" }).inc();
            tracing::debug!(client = %peer, "QUIC handshake failed: {e}");
            None
        }
        Err(_) => {
            hs.get_or_create(&ResultLabel { result: "timeout" }).inc();
            tracing::debug!(client = %peer, "QUIC handshake timed out");
            None
        }
    }
}

/// One QUIC connection: its HTTP/3 requests, each in its own task, until
/// the client closes, the idle timeout, or shutdown (GOAWAY, then the
/// requests in flight finish).
async fn serve_conn(
    conn: quinn::Connection,
    proxy: Arc<Proxy>,
    certs: &Certs,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) {
    let peer = conn.remote_address();
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let info = Arc::new(ConnInfo {
        peer,
        served: certs.current().for_sni(sni.as_deref()).cloned(),
        inflight: Arc::new(AtomicUsize::new(0)),
        peer_header: headers::peer_value(peer.ip()),
    });
    // Kept to close the connection on a flood of reset streams.
    let quic = conn.clone();
    let resets = Arc::new(AtomicUsize::new(0));
    let max_resets = limits.h2_max_pending_resets;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_header_bytes as u64);
    let built = builder
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3 = match built {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(client = %peer, "HTTP/3 connection failed: {e}");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut stopping = *stop.borrow();
    loop {
        if stopping {
            // GOAWAY: no new requests; those in flight go on.
            let _ = h3.shutdown(0).await;
            break;
        }
        let resolver = tokio::select! {
            r = h3.accept() => r,
            Some(_) = requests.join_next() => continue,
            _ = stop.changed() => {
                stopping = true;
                continue;
            }
        };
        match resolver {
            Ok(Some(resolver)) => {
                if resets.load(Ordering::Relaxed) > max_resets {
                    // HTTP/3's rapid reset: opening and cancelling streams
                    // costs the client nothing; the connection goes.
                    tracing::debug!(client = %peer, "closing an HTTP/3 connection: more than {max_resets} streams reset before their request was read");
                    quic.close(
                        quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD),
                        b"too many reset streams",
                    );
                    break;
                }
                let (proxy, info, resets) = (proxy.clone(), info.clone(), resets.clone());
                requests.spawn(async move {
                    let (req, stream) = match resolver.resolve_request().await {
                        Ok(r) => r,
                        Err(e) => {
                            resets.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(client = %info.peer, "HTTP/3 request refused: {e}");
                            return;
                        }
                    };
                    if !request(req, stream, proxy, info).await {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(client = %peer, "HTTP/3 connection ended: {e}");
                break;
            }
        }
    }
    while requests.join_next().await.is_some() {}
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// One request: the session for the proxy, then its answer as frames. A
/// body that fails after the answer began resets the stream, so the client
/// never takes part of a body for all of it. `false`: the client had reset
/// the stream before anything was forwarded.
async fn request(
    req: http::Request<()>,
    stream: Stream,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) -> bool {
    let start = Instant::now();
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    // One turn first, as for an HTTP/2 stream (`http2::streams`): a reset
    // that came right behind the head is then seen, and the request goes
    // nowhere.
    tokio::task::yield_now().await;
    let body = match body::request_body(recv).await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(client = %info.peer, "HTTP/3 stream reset before its request was forwarded: {e}");
            if proxy.logs_access() {
                // It reached edge: one line, as for an HTTP/2 stream the
                // client resets before its answer.
                let line = Record {
                    client: info.peer.ip(),
                    method: parts.method.clone(),
                    host: parts.uri.host().unwrap_or_default().to_ascii_lowercase(),
                    path: parts.uri.path().to_string(),
                    status: CLIENT_CLOSED,
                    upstream: None,
                    start,
                    version: http::Version::HTTP_3,
                };
                access_log::emit(&line, 0, End::Abandoned);
            }
            return false;
        }
    };
    let req = http::Request::from_parts(
        parts,
        body.map_or(ReqBody::Empty, |b| ReqBody::H3(Box::new(b))),
    );
    let session = Session::new(req, info.clone(), Protocol::Http3, start);
    let resp = Box::pin(proxy.handle(session)).await;
    let (parts, body) = resp.into_parts();
    let mut body = std::pin::pin!(body);
    let head = http::Response::from_parts(parts, ());
    if let Err(e) = send.send_response(head).await {
        tracing::debug!(client = %info.peer, "HTTP/3 answer not sent: {e}");
        return true;
    }
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let sent = match frame.into_data() {
                    Ok(mut data) => send.send_data(data.copy_to_bytes(data.remaining())).await,
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => send.send_trailers(t).await,
                        Err(_) => Ok(()),
                    },
                };
                if let Err(e) = sent {
                    tracing::debug!(client = %info.peer, "HTTP/3 answer cut: {e}");
                    return true;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(client = %info.peer, "upstream body failed: {e}; resetting the stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return true;
            }
        }
    }
    let _ = send.finish().await;
    true
}
