//! A byte-level guard under hyper's HTTP/1 parser for what hyper tolerates but
//! a proxy must not.
//!
//! hyper accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding` (RFC 9112 lets a server treat it as chunked), drops the
//! Content-Length and hands the service a clean request, so the service can no
//! longer see the conflict. That conflict is the classic request-smuggling
//! signature and edge refuses it outright. This guard follows the request
//! framing of the client's byte stream (heads with httparse, bodies by length or
//! chunk sizes) and, when a head carries both headers, corrupts the final byte
//! of that head before hyper sees it: hyper then fails to parse it, answers 400
//! and closes the connection, and nothing reaches an upstream.
//!
//! The same wrapper keeps the connection's deadlines on one timer: a
//! keep-alive connection idle with no request in flight for
//! `keepalive_timeout` is closed, so is one whose request head is not
//! complete `header_read_timeout` after its first byte (slowloris), and one
//! whose client has taken no response bytes for `send_timeout` (a client that
//! stops reading would otherwise hold its response's upstream connection
//! forever). hyper can keep the head deadline itself, but arms a boxed timer
//! per request to do it; here a request costs no timer work at all (see
//! `Deadlines`).

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not HTTP/1 as we know it (h2 preface, upgrade, odd input): hands off.
    Passthrough,
    /// edge's own HTTP/1 loop reads the heads (`h1_server`), and takes only
    /// bodyless ones: the stream is at a head boundary whenever it hands the
    /// connection to hyper, and `resume_scan` starts from there.
    Deferred,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Skipping chunk data plus its CRLF.
    Data(u64),
    /// After the last chunk: trailers until an empty line.
    Trailers,
}

/// The index just past the first empty line (`\r\n\r\n` or `\n\n`) at or after `from`.
fn head_end(b: &[u8], from: usize) -> Option<usize> {
    let mut k = from;
    while k < b.len() {
        if b[k] == b'\n' {
            if k >= 3 && &b[k - 3..=k] == b"\r\n\r\n" {
                return Some(k + 1);
            }
            if k >= 1 && b[k - 1] == b'\n' {
                return Some(k + 1);
            }
        }
        k += 1;
    }
    None
}

/// Longest head the guard buffers; longer ones are hyper's to refuse (431).
const MAX_HEAD: usize = 64 * 1024;

pub struct Guard<T> {
    inner: T,
    state: State,
    /// Bytes of the head (or chunk-size line / trailers) seen so far.
    pending: Vec<u8>,
    idle: Option<Idle>,
    pub smuggling_refused: bool,
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
/// nothing is in flight until the next write: every head hyper completes is
/// either dispatched (the request is then in flight until its response is
/// written, however long its body takes) or answered with an error. This
/// needs no knowledge of HTTP framing, so it holds where the framing scan has
/// stepped aside (upgrades, odd input) and on the plain-HTTP listener.
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

impl<T> Guard<T> {
    /// `track_http1` is false for HTTP/2 connections and the redirect-only
    /// listener, which need only the deadlines.
    pub fn new(inner: T, track_http1: bool, deadlines: Option<Deadlines>) -> Guard<T> {
        Guard {
            inner,
            state: if track_http1 {
                State::Head
            } else {
                State::Passthrough
            },
            pending: Vec::new(),
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
            smuggling_refused: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Stops the framing scan while edge's own loop parses the heads: it
    /// would parse each one a second time.
    pub fn defer_scan(&mut self) {
        if self.state == State::Head && self.pending.is_empty() {
            self.state = State::Deferred;
        }
    }

    /// hyper takes over: `unread`, read through this guard but not consumed,
    /// begins at a request head; it is scanned (and a smuggling head broken)
    /// as if it had just been read, and so is all that follows.
    pub fn resume_scan(&mut self, unread: &mut [u8]) {
        if self.state == State::Deferred {
            self.state = State::Head;
            self.scan(unread);
        }
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
                            tracing::info!(client = %i.peer, "closing the connection: {why}");
                        }
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                    }
                }
            }
        }
        Poll::Pending
    }

    /// Walks newly read bytes; may overwrite one byte to make hyper refuse a head.
    fn scan(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Passthrough | State::Deferred => return,
                State::Body(n) => {
                    let take = (n as usize).min(buf.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Head => {
                    // Skip stray CRLFs between requests, as hyper does.
                    if self.pending.is_empty() {
                        while i < buf.len() && (buf[i] == b'\r' || buf[i] == b'\n') {
                            i += 1;
                        }
                        if i == buf.len() {
                            return;
                        }
                    }
                    // Take the rest of this read in one go and look for the end of the head.
                    let old = self.pending.len();
                    self.pending.extend_from_slice(&buf[i..]);
                    let Some(end) = head_end(&self.pending, old.saturating_sub(3)) else {
                        if self.pending.len() > MAX_HEAD {
                            self.state = State::Passthrough;
                            self.pending.clear();
                        }
                        return;
                    };
                    // `end - old` bytes of this read belong to the head; its last byte is here.
                    let taken = end - old;
                    self.pending.truncate(end);
                    match self.head_done() {
                        Some(next) => self.state = next,
                        None => {
                            // Both Content-Length and Transfer-Encoding: break the
                            // head's final byte so hyper answers 400 and closes.
                            buf[i + taken - 1] = b'X';
                            self.smuggling_refused = true;
                            self.state = State::Passthrough;
                        }
                    }
                    self.pending.clear();
                    i += taken;
                }
                State::Chunked(Chunk::Data(n)) => {
                    let take = (n as usize).min(buf.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::Size
                    } else {
                        Chunk::Data(left)
                    });
                }
                State::Chunked(Chunk::Size) => {
                    self.pending.push(buf[i]);
                    i += 1;
                    if self.pending.ends_with(b"\n") {
                        let line = std::mem::take(&mut self.pending);
                        self.state = match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => {
                                State::Chunked(Chunk::Trailers)
                            }
                            // data plus its trailing CRLF
                            Ok(httparse::Status::Complete((_, n))) => {
                                State::Chunked(Chunk::Data(n.saturating_add(2)))
                            }
                            _ => State::Passthrough,
                        };
                        if self.state == State::Chunked(Chunk::Trailers) {
                            // The CRLF that ended the size line may also end empty trailers.
                            self.pending.extend_from_slice(b"\r\n");
                        }
                    } else if self.pending.len() > 1024 {
                        self.state = State::Passthrough;
                    }
                }
                State::Chunked(Chunk::Trailers) => {
                    self.pending.push(buf[i]);
                    i += 1;
                    if self.pending.ends_with(b"\r\n\r\n") || self.pending.ends_with(b"\n\n") {
                        self.pending.clear();
                        self.state = State::Head;
                    } else if self.pending.len() > MAX_HEAD {
                        self.state = State::Passthrough;
                    }
                }
            }
        }
    }

    /// Decides what follows a complete head; `None` means refuse it.
    fn head_done(&self) -> Option<State> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.pending) {
            Ok(httparse::Status::Complete(_)) => {}
            // Not something we understand: hyper judges it.
            _ => return Some(State::Passthrough),
        }
        let mut cl: Option<u64> = None;
        let mut te = false;
        let mut chunked = false;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => cl = Some(n),
                    None => return Some(State::Passthrough),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = h.value.to_ascii_lowercase().ends_with(b"chunked");
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if te && cl.is_some() {
            return None;
        }
        if upgrade || req.method == Some("CONNECT") {
            return Some(State::Passthrough);
        }
        Some(if te && chunked {
            State::Chunked(Chunk::Size)
        } else if te {
            State::Passthrough
        } else {
            match cl {
                Some(0) | None => State::Head,
                Some(n) => State::Body(n),
            }
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let new = &mut buf.filled_mut()[before..];
                if !new.is_empty() {
                    this.scan(new);
                    this.touch_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadlines(cx),
        }
    }
}

impl<T> Guard<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Guard<T> {
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

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut g = Guard::new((), true, None);
        let mut out = Vec::new();
        for c in chunks {
            let mut b = c.to_vec();
            g.scan(&mut b);
            out.extend_from_slice(&b);
        }
        (out, g.smuggling_refused)
    }

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

    #[test]
    fn cl_plus_te_is_broken_even_across_reads() {
        let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (out, refused) = run(&[&req[..20], &req[20..]]);
        assert!(refused);
        assert_ne!(&out[..], &req[..]);
    }

    #[test]
    fn clean_keepalive_requests_pass_untouched() {
        let reqs: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The third request is the smuggling one; the first two must be left alone.
        let (out, refused) = run(&[reqs]);
        assert!(refused);
        let third = reqs.windows(6).position(|w| w == b"GET /c").unwrap();
        assert_eq!(&out[..third], &reqs[..third]);
        let (out, refused) = run(&[&reqs[..third]]);
        assert!(!refused);
        assert_eq!(out, &reqs[..third]);
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_heads() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let (_, refused) = run(&[&req]);
        assert!(!refused);
    }

    #[test]
    fn http2_preface_is_left_to_hyper() {
        let (out, refused) = run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(!refused);
        assert_eq!(out, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
}
