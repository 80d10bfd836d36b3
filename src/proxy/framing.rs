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
//! The same wrapper closes keep-alive connections that sit idle with no request
//! in flight for `keepalive_timeout`.

use std::future::Future;
use std::io;
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

/// The keep-alive deadline is `last + timeout`. Reads only record `last`; the
/// timer is moved when it fires early, not on every read, which saves a timer
/// wheel update per request (most connections never reach the deadline).
struct Idle {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    last: Instant,
    inflight: Arc<AtomicUsize>,
}

impl<T> Guard<T> {
    /// `track_http1` is false for HTTP/2 connections, which need only the idle timer.
    pub fn new(
        inner: T,
        track_http1: bool,
        keepalive: Option<(Duration, Arc<AtomicUsize>)>,
    ) -> Guard<T> {
        Guard {
            inner,
            state: if track_http1 {
                State::Head
            } else {
                State::Passthrough
            },
            pending: Vec::new(),
            idle: keepalive.map(|(timeout, inflight)| Idle {
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                last: Instant::now(),
                inflight,
            }),
            smuggling_refused: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn touch(&mut self) {
        if let Some(i) = &mut self.idle {
            i.last = Instant::now();
        }
    }

    /// Walks newly read bytes; may overwrite one byte to make hyper refuse a head.
    fn scan(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Passthrough => return,
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
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(i) = &mut self.idle {
                    loop {
                        if i.sleep.as_mut().poll(cx).is_pending() {
                            break;
                        }
                        let due = i.last + i.timeout;
                        if due > Instant::now() {
                            // Bytes came since the timer was set: wait for the real deadline.
                            i.sleep.as_mut().reset(due);
                            continue;
                        }
                        if i.inflight.load(Ordering::Acquire) == 0 {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "keep-alive idle timeout",
                            )));
                        }
                        // A request is in flight: idle is not ours to judge; look again later.
                        i.last = Instant::now();
                        i.sleep.as_mut().reset(i.last + i.timeout);
                    }
                }
                Poll::Pending
            }
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
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
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
