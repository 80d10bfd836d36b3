//! One access-log line per request, written when the response body is done.
//!
//! Logging at the end (on drop of the body) is what lets the line carry the real
//! byte count and total duration, as nginx's `$body_bytes_sent` and
//! `$request_time` do, and also covers clients that disconnect mid-body.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};

pub struct Record {
    pub client: IpAddr,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub start: Instant,
    /// HTTP/1.0, HTTP/1.1, HTTP/2 or HTTP/3.
    pub version: http::Version,
}

/// Counts a request as in flight until its response body is done; the
/// keep-alive idle timer only runs while the count is zero.
pub struct Inflight(Arc<AtomicUsize>);

impl Inflight {
    pub fn new(counter: &Arc<AtomicUsize>) -> Inflight {
        counter.fetch_add(1, Ordering::AcqRel);
        Inflight(counter.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and logs once when dropped.
    pub struct Logged<B> {
        #[pin]
        inner: B,
        bytes: u64,
        record: Option<Box<Record>>,
        inflight: Option<Inflight>,
        upstream: Option<super::upstream::InflightGuard>,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.record.take() {
                emit(&r, *this.bytes);
            }
        }
    }
}

impl<B> Logged<B> {
    pub fn new(inner: B, record: Option<Box<Record>>, inflight: Option<Inflight>) -> Self {
        Logged {
            inner,
            bytes: 0,
            record,
            inflight,
            upstream: None,
        }
    }

    /// The wrapped body, before it is pinned: edge's HTTP/1.1 loop takes an
    /// answer's fields from it (`h1_client::RawHead`).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Keeps the upstream's in-flight count (and `max_conns` slot) until the body is done.
    pub fn holding(mut self, guard: Option<super::upstream::InflightGuard>) -> Self {
        self.upstream = guard;
        self
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(d) = frame.data_ref() {
                *this.bytes += d.len() as u64;
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How the log names a request's protocol.
fn version_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

pub(super) fn emit(r: &Record, bytes: u64) {
    let ms = r.start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "edge::access",
        client = %r.client,
        method = %r.method,
        proto = %version_label(r.version),
        host = %r.host,
        path = %r.path,
        status = r.status,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        bytes,
        duration_ms = format_args!("{ms:.3}"),
        "request"
    );
}
