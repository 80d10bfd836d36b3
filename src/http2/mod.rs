//! The HTTP/2 session: hyper's HTTP/2 server on a client connection, each
//! stream made a `proxy::Session` for `Proxy::handle`, and what only HTTP/2
//! needs kept here: streams polled in the connection's own task, the
//! rapid-reset check before a stream's request goes anywhere, and the
//! per-stream send timeout (`streams`). The request path does not know it
//! runs inside an HTTP/2 stream.

mod streams;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Limits;
use crate::proxy::body::ReqBody;
use crate::proxy::{Body, ConnInfo, Protocol, Proxy, Session};
use streams::{StreamExec, WithStreams};

/// One connection's builder, with edge's limits: its executor is the
/// connection's own (see `streams`), so the builder is made per connection.
fn builder(l: &Limits, exec: StreamExec) -> http2::Builder<StreamExec> {
    let mut b = http2::Builder::new(exec);
    b.timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(l.h2_max_pending_resets))
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(l.max_header_bytes as u32);
    b
}

/// What hyper calls for each stream: the rapid-reset check, then the
/// request path; the answer's body says what the stream waits on.
fn service(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<Sending>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let session = Session::new(
            req.map(ReqBody::H2),
            info.clone(),
            Protocol::Http2,
            std::time::Instant::now(),
        );
        // The request is read (validated, routed, rewritten) here; the
        // future only waits.
        let answer = proxy.clone().handle(session);
        async move {
            streams::reset_check().await;
            let resp = answer.await;
            // From here on, what the stream waits on is its client. (hyper
            // 1.12 polls the body before it waits for room, and the body says
            // the same; this covers an answer held before its first body poll.)
            streams::waiting_on_client(true);
            Ok(resp.map(Sending))
        }
    })
}

/// Serves one HTTP/2 connection until it and its streams are done.
pub async fn serve<T>(
    io: T,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    limits: &Limits,
    watcher: Watcher,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let svc = service(proxy, info);
    let exec = StreamExec::default();
    let conn = builder(limits, exec.clone()).serve_connection(TokioIo::new(io), svc);
    let ended = WithStreams::new(watcher.watch(conn), exec, limits.send_timeout, peer)
        .await
        .map_err(|e| crate::acme::error_chain(&e));
    if let Err(chain) = ended {
        tracing::debug!(client = %peer, "connection ended: {chain}");
    }
}

/// An answer's body on an HTTP/2 stream: after each poll it tells the
/// stream's send timeout what the stream waits on (a frame given: room to
/// send it, from the client; none: the upstream, which has its own timeout).
pub struct Sending(Body);

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let res = Pin::new(&mut self.0).poll_frame(cx);
        streams::waiting_on_client(res.is_ready());
        res
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
