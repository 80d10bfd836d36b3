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

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Client(#[from] hyper::Error),
}

/// Why a guarded body stopped, readable after the upstream request failed.
#[derive(Debug, Clone, Default)]
pub struct Tripped(Arc<AtomicU8>);

impl Tripped {
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

pub struct Guarded {
    /// `None` for a replayed request that has no body.
    inner: Option<Incoming>,
    seen: u64,
    max: u64,
    idle: Duration,
    /// Made on the first wait only, so bodiless requests never pay for a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    tripped: Tripped,
}

impl Guarded {
    pub fn new(inner: Incoming, max: u64, idle: Duration) -> (Guarded, Tripped) {
        let tripped = Tripped::default();
        (
            Guarded {
                inner: Some(inner),
                seen: 0,
                max,
                idle,
                sleep: None,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

impl Guarded {
    /// An empty body, for sending a bodyless request again.
    pub fn empty() -> Guarded {
        Guarded {
            inner: None,
            seen: 0,
            max: 0,
            idle: Duration::ZERO,
            sleep: None,
            tripped: Tripped::default(),
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.max {
                        this.tripped.0.store(TOO_LARGE, Ordering::Release);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.max))));
                    }
                }
                if let Some(s) = &mut this.sleep {
                    s.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = this.idle;
                let s = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if s.as_mut().poll(cx).is_ready() {
                    this.tripped.0.store(IDLE, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyError::Idle(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}
