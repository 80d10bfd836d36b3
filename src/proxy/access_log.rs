//! One access-log line per request that reached edge, whatever became of it,
//! written when the answer is done with.
//!
//! Logging at the end (on drop of the body) is what lets the line carry the real
//! byte count and total duration, as nginx's `$body_bytes_sent` and
//! `$request_time` do. The line's `end` says how the answer ended: `done`
//! (all of it was handed to the client), `cut` (the client left, or the
//! stream was reset, before the end), `upstream_failed` (the upstream's body
//! failed part-way). A request whose client left before there was any
//! answer is logged by its `session::Ctx` with 499, as nginx does.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        // Set by `is_end_stream` (`&self`) too: hyper sends a body that says
        // it has ended without polling it.
        ended: AtomicBool,
        failed: bool,
        polled: bool,
        record: Option<Box<Record>>,
        inflight: Option<Inflight>,
        upstream: Option<super::upstream::InflightGuard>,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.record.take() {
                let end = if this.ended.load(Ordering::Relaxed) {
                    End::Done
                } else if *this.failed {
                    End::UpstreamFailed
                } else if !*this.polled {
                    End::Reset
                } else {
                    End::Cut
                };
                emit(&r, *this.bytes, end);
            }
        }
    }
}

impl<B> Logged<B> {
    pub fn new(inner: B, record: Option<Box<Record>>, inflight: Option<Inflight>) -> Self {
        Logged {
            inner,
            bytes: 0,
            ended: AtomicBool::new(false),
            failed: false,
            polled: false,
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

    /// The answer has no body and its head went out: done.
    pub fn sent(&self) {
        self.ended.store(true, Ordering::Relaxed);
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
        let mut this = self.project();
        *this.polled = true;
        let res = this.inner.as_mut().poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.ended.store(true, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => this.ended.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(_))) => *this.failed = true,
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended.store(true, Ordering::Relaxed);
        }
        end
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

/// How an answer ended, for the log's `end` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// All of it was handed to the client.
    Done,
    /// The client left, or the stream was reset, before the end.
    Cut,
    /// The upstream's body failed part-way.
    UpstreamFailed,
    /// The client left before there was an answer (logged with 499).
    Abandoned,
    /// The answer was made but none of it went: the stream was reset
    /// (HTTP/2, HTTP/3: by the client, or by edge for a malformed request)
    /// or the connection was gone (HTTP/1.1).
    Reset,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Cut => "cut",
            End::UpstreamFailed => "upstream_failed",
            End::Abandoned => "client_closed",
            End::Reset => "reset",
        }
    }
}

/// nginx's status for a request whose client closed the connection before
/// the answer: a code no answer carries, so counts of it are unambiguous.
pub const CLIENT_CLOSED: u16 = 499;

pub(crate) fn emit(r: &Record, bytes: u64, end: End) {
    let ms = r.start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "edge::access",
        client = %r.client,
        method = %r.method,
        proto = %version_label(r.version),
        host = %if r.host.is_empty() { "-" } else { &r.host },
        path = %r.path,
        status = r.status,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        bytes,
        duration_ms = format_args!("{ms:.3}"),
        end = %end.label(),
        "request"
    );
}
