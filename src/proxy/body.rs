//! Guards on the request body on its way upstream: a size cap (413) and an idle
//! timeout between body frames (408), so a client cannot send an endless body or
//! hold an upstream connection open by trickling one byte a minute.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub const OK: u8 = 0;
pub const TOO_LARGE: u8 = 1;
pub const IDLE: u8 = 2;
/// The HTTP/2 stream was reset by edge's side for a malformed body (DATA
/// past its content-length): the request ends with no answer sent.
pub const MALFORMED: u8 = 3;

/// Whether `e` is an HTTP/2 stream reset that edge's side made (not one the
/// client sent).
fn reset_here(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            return h2e.is_reset() && !h2e.is_remote();
        }
        at = err.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Client(Box<dyn std::error::Error + Send + Sync>),
}

/// A request body read from an HTTP/1 client connection (`http1::server`).
pub trait ClientBody:
    Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + Unpin
{
}

/// A request body as the session it came on has it.
pub enum ReqBody {
    /// None: a bodyless request, or one whose length is 0.
    Empty,
    /// An HTTP/1 body, read from the connection as it is asked for.
    H1(Box<dyn ClientBody<Error = crate::http1::server::H1BodyError>>),
    /// An HTTP/2 stream's body.
    H2(Incoming),
    /// An HTTP/3 stream's DATA frames.
    H3(Box<dyn ClientBody<Error = crate::http3::BodyError>>),
}

impl ReqBody {
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::H1(b) => b.is_end_stream(),
            ReqBody::H2(b) => b.is_end_stream(),
            ReqBody::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::H1(b) => b.size_hint(),
            ReqBody::H2(b) => b.size_hint(),
            ReqBody::H3(b) => b.size_hint(),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::H1(b) => Pin::new(b.as_mut())
                .poll_frame(cx)
                .map_err(|e| BodyError::Client(Box::new(e))),
            ReqBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError::Client(Box::new(e))),
            ReqBody::H3(b) => Pin::new(b.as_mut())
                .poll_frame(cx)
                .map_err(|e| BodyError::Client(Box::new(e))),
        }
    }
}

/// Why a guarded body stopped, readable after the upstream request failed.
/// Shared only when there is a body to guard, so bodyless requests skip the
/// allocation.
#[derive(Debug, Clone, Default)]
pub struct Tripped(Option<Arc<AtomicU8>>);

impl Tripped {
    /// A request with no body: nothing can trip.
    pub fn none() -> Tripped {
        Tripped(None)
    }

    pub fn get(&self) -> u8 {
        self.0.as_ref().map_or(OK, |t| t.load(Ordering::Acquire))
    }

    fn set(&self, why: u8) {
        if let Some(t) = &self.0 {
            t.store(why, Ordering::Release);
        }
    }
}

/// The longest a body may wait between two frames, on a timer made at its
/// first wait only (a body that is all there never pays for one) and moved
/// only when it waits again after data came (not per frame).
#[derive(Debug)]
pub struct Stall {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data came since the timer was last set.
    moved: bool,
}

impl Stall {
    pub fn new(after: Duration) -> Stall {
        Stall {
            after,
            sleep: None,
            moved: false,
        }
    }

    pub fn after(&self) -> Duration {
        self.after
    }

    /// A frame came through.
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// The body waits: whether `after` has passed since the last frame (or
    /// since the first wait, when none came before it).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if std::mem::take(&mut self.moved) {
            sleep.as_mut().reset(Instant::now() + after);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// A request body on its way upstream. Boxed, and absent when there is no body:
/// it lives in the request's future, which every HTTP/2 stream carries, and
/// most requests have none, so they pay one pointer and no allocation.
pub struct Guarded(Option<Box<Streaming>>);

struct Streaming {
    inner: ReqBody,
    seen: u64,
    max: u64,
    idle: Stall,
    tripped: Tripped,
}

impl Drop for Streaming {
    /// A body dropped before its end, because its stream was reset: one
    /// look (no I/O, no wait) at why, so the log can tell a stream edge's
    /// side reset for a malformed body from a client that left.
    fn drop(&mut self) {
        if self.tripped.get() != OK || !matches!(self.inner, ReqBody::H2(_)) {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Some(Err(BodyError::Client(e)))) = self.inner.poll_frame(&mut cx) {
            if reset_here(e.as_ref()) {
                self.tripped.set(MALFORMED);
            }
        }
    }
}

impl Guarded {
    pub fn new(inner: ReqBody, max: u64, idle: Duration) -> (Guarded, Tripped) {
        if inner.is_end_stream() {
            return (Guarded(None), Tripped::default());
        }
        let tripped = Tripped(Some(Arc::default()));
        let body = Streaming {
            inner,
            seen: 0,
            max,
            idle: Stall::new(idle),
            tripped: tripped.clone(),
        };
        (Guarded(Some(Box::new(body))), tripped)
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(this) = self.0.as_deref_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.max {
                        this.tripped.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.max))));
                    }
                }
                this.idle.moved();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let BodyError::Client(inner) = &e {
                    if reset_here(inner.as_ref()) {
                        this.tripped.set(MALFORMED);
                    }
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.tripped.set(IDLE);
                    return Poll::Ready(Some(Err(BodyError::Idle(this.idle.after()))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map(|b| b.inner.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}
