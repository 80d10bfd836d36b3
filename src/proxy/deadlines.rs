//! A client connection's deadlines, kept by a wrapper around its socket
//! with one timer: a keep-alive connection idle with no request in flight
//! for `keepalive_timeout` is closed, so is one whose request head is not
//! complete `header_read_timeout` after its first byte (slowloris), and one
//! whose client has taken no response bytes for `send_timeout` (a client that
//! stops reading would otherwise hold its response's upstream connection
//! forever). A request costs no timer work at all (see `Deadlines`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection and its deadlines.
pub struct Timed<T> {
    inner: T,
    idle: Option<Idle>,
}

/// What bounds a client connection in time, checked by the guard.
pub struct Deadlines {
    pub keepalive: Duration,
    /// Longest a write may wait on the client.
    pub send: Duration,
    /// `None` where the protocol has its own (HTTP/2).
    pub head: Option<Duration>,
    /// Requests on the connection whose responses are not finished.
    pub inflight: Arc<AtomicUsize>,
    /// For the log line when a deadline ends the connection.
    pub peer: SocketAddr,
}

/// Neither deadline moves the timer per request. Reads and writes record
/// times; the timer fires at least once per `min(keepalive, head)` and then
/// judges from what was recorded, moving itself to the next real deadline.
///
/// A request head is taken to be in progress from the first byte read while
/// nothing is in flight until the next write: every head the server reads is
/// either dispatched (the request is then in flight until its response is
/// written, however long its body takes) or answered with an error. This
/// needs no knowledge of HTTP framing, so the same wrapper serves HTTP/2
/// connections (keep-alive and send deadlines only) and the plain-HTTP
/// listener.
struct Idle {
    keepalive: Duration,
    send: Duration,
    head: Option<Duration>,
    sleep: Pin<Box<Sleep>>,
    /// Last byte read or written.
    last: Instant,
    /// First byte of a head still being read.
    head_since: Option<Instant>,
    /// Since when a write has waited on the client, if one is waiting.
    write_blocked_since: Option<Instant>,
    inflight: Arc<AtomicUsize>,
    peer: SocketAddr,
}

/// Which deadline ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Expired {
    #[error("keep-alive idle timeout")]
    Idle,
    #[error("request head not complete within header_read_timeout")]
    Head,
    #[error("the client took no response bytes within send_timeout")]
    Send,
}

/// The longest the timer may sleep without missing a deadline.
fn period(keepalive: Duration, head: Option<Duration>) -> Duration {
    head.map_or(keepalive, |h| h.min(keepalive))
}

impl Idle {
    fn period(&self) -> Duration {
        period(self.keepalive, self.head)
    }

    /// Called when the timer fires: the deadline that ends the connection, or
    /// when to look again.
    fn judge(&mut self, now: Instant) -> Result<Instant, Expired> {
        let next = self.judge_reads(now)?;
        match self.write_blocked_since {
            Some(since) if now >= since + self.send => Err(Expired::Send),
            Some(since) => Ok(next.min(since + self.send)),
            None => Ok(next),
        }
    }

    fn judge_reads(&mut self, now: Instant) -> Result<Instant, Expired> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            // Any head read so far was dispatched; idle is not ours to judge.
            self.head_since = None;
            self.last = now;
            return Ok(now + self.period());
        }
        let head_due = self
            .head_since
            .zip(self.head)
            .map(|(since, limit)| since + limit);
        if head_due.is_some_and(|due| now >= due) {
            return Err(Expired::Head);
        }
        let idle_due = self.last + self.keepalive;
        if now >= idle_due {
            return Err(Expired::Idle);
        }
        Ok(idle_due.min(head_due.unwrap_or(now + self.period())))
    }
}

impl<T> Timed<T> {
    pub fn new(inner: T, deadlines: Option<Deadlines>) -> Timed<T> {
        Timed {
            inner,
            idle: deadlines.map(|d| {
                let now = Instant::now();
                Idle {
                    keepalive: d.keepalive,
                    send: d.send,
                    head: d.head,
                    sleep: Box::pin(tokio::time::sleep(period(d.keepalive, d.head))),
                    last: now,
                    // A new connection owes its first request head from the
                    // start, as nginx counts client_header_timeout from accept:
                    // one that sends nothing does not wait out keepalive_timeout.
                    head_since: d.head.map(|_| now),
                    write_blocked_since: None,
                    inflight: d.inflight,
                    peer: d.peer,
                }
            }),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The connection without its deadlines (a tunnel keeps its own).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// When bytes last came in or went out, if deadlines are kept: a recent
    /// clock reading a caller can take instead of making its own.
    pub fn last_activity(&self) -> Option<Instant> {
        self.idle.as_ref().map(|i| i.last)
    }

    /// Bytes came in: maybe the first of a request head.
    fn touch_read(&mut self) {
        if let Some(i) = &mut self.idle {
            let now = Instant::now();
            i.last = now;
            if i.head_since.is_none() && i.inflight.load(Ordering::Acquire) == 0 {
                i.head_since = Some(now);
            }
        }
    }

    /// Bytes went out: an answer, so no head is pending any more.
    fn touch_write(&mut self) {
        if let Some(i) = &mut self.idle {
            i.last = Instant::now();
            i.head_since = None;
            i.write_blocked_since = None;
        }
    }

    /// A write must wait for the client: the send deadline starts, if it has
    /// not already. Ends the connection once a deadline has passed.
    fn write_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(i) = &mut self.idle {
            if i.write_blocked_since.is_none() {
                let now = Instant::now();
                i.write_blocked_since = Some(now);
                let due = now + i.send;
                if i.sleep.deadline() > due {
                    i.sleep.as_mut().reset(due);
                }
            }
        }
        self.poll_deadlines(cx)
    }

    /// Polls the timer; when it fires, judges the deadlines and either moves
    /// it to the next one or fails the connection.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(i) = &mut self.idle {
            while i.sleep.as_mut().poll(cx).is_ready() {
                match i.judge(Instant::now()) {
                    Ok(next) => i.sleep.as_mut().reset(next),
                    Err(why) => {
                        // An idle keep-alive connection closing is routine; the
                        // other two are a client misbehaving (nginx logs them at
                        // info too).
                        if why != Expired::Idle {
                            if let Some(n) =
                                crate::log_limit::LIMIT.admit("deadline", &i.peer.ip().to_string())
                            {
                                tracing::info!(client = %i.peer.ip(), "closing the connection: {why}{}", crate::log_limit::held(n));
                            }
                        }
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadlines(cx),
        }
    }
}

impl<T> Timed<T> {
    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.touch_write();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.write_blocked(cx).map(|r| r.map(|()| 0)),
            r => r,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(r, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.write_blocked(cx).map(|r| r.and(Ok(()))),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(head_since: Option<Instant>, inflight: usize) -> Idle {
        let now = Instant::now();
        Idle {
            keepalive: Duration::from_secs(75),
            send: Duration::from_secs(60),
            head: Some(Duration::from_secs(30)),
            sleep: Box::pin(tokio::time::sleep_until(now)),
            last: now,
            head_since,
            write_blocked_since: None,
            inflight: Arc::new(AtomicUsize::new(inflight)),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    #[tokio::test]
    async fn deadlines_judged_from_recorded_times() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Quiet, nothing pending: look again one period (the shorter timeout) on.
        assert_eq!(idle(None, 0).judge(t0 + s(1)), Ok(t0 + s(31)));
        // A head begun at t0: due at t0 + 30 s, and cut then.
        let mut i = idle(Some(t0), 0);
        assert_eq!(i.judge(t0 + s(10)), Ok(t0 + s(30)));
        assert_eq!(i.judge(t0 + s(30)), Err(Expired::Head));
        // A request in flight: the head was dispatched; neither deadline applies.
        let mut i = idle(Some(t0), 1);
        assert_eq!(i.judge(t0 + s(100)), Ok(t0 + s(130)));
        assert_eq!(i.head_since, None);
        // Idle with nothing pending for keepalive: closed.
        assert_eq!(idle(None, 0).judge(t0 + s(76)), Err(Expired::Idle));
        // A write waiting on the client since t0: due at t0 + 60 s, in flight or not.
        let mut i = idle(None, 1);
        i.write_blocked_since = Some(t0);
        assert_eq!(i.judge(t0 + s(40)), Ok(t0 + s(60)));
        assert_eq!(i.judge(t0 + s(60)), Err(Expired::Send));
    }
}
