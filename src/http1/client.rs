//! edge's HTTP/1.1 client, for talking to upstreams.
//!
//! Why not hyper's client: it runs each upstream connection as a task of its
//! own, hands it every request through a channel and gets the response back
//! through a oneshot, so a proxied request paid two task switches and their
//! wakes, a channel slot sized for the request, and a fresh 8 KiB read buffer
//! per response. Profiles of the HTTP/2 bench put those tasks at 14% of edge's
//! CPU in user space, on top of the socket I/O. Here the request's own future
//! writes the request and reads the response head, and the response body reads
//! the socket when the client side polls it, as Pingora does.
//!
//! What it keeps from hyper's client: RFC 9112 response framing (length,
//! chunked, close-delimited, no body after HEAD, 1xx, 204 and 304), interim 1xx
//! answers skipped, `101` handing the socket over, and request bodies streamed
//! (chunked when their length is unknown) while the answer is read, so an
//! upstream that answers early is not stuck behind an upload. What is invalid
//! fails the request with a reason instead of being guessed at: conflicting
//! lengths, a malformed head, a head over 64 KiB.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::chunked::{self, Decoder};
use super::framing::{self, Facts, Framing, Role};
use super::head::{self, HeadError};
use crate::proxy::body::Stall;
use crate::proxy::upstream::Upstream;

/// A response head larger than this is refused (nginx's limit is 4-8 KiB).
const MAX_HEAD: usize = 64 * 1024;
const HEAD_TOO_LARGE: &str = "response head over 64 KiB";
/// Interim (1xx) answers skipped before the final one; more is a broken upstream.
const MAX_INTERIM: usize = 16;
/// Read a socket into at least this much free space.
const READ_SIZE: usize = 8 * 1024;
/// Data up to this size is copied out of the read buffer, which is then reused
/// for the next read; larger data is split off without a copy.
const COPY_UNDER: usize = 4096;

/// One connection to an upstream with what has been read from it.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The wait for an answer's head, one timer for the connection's life,
    /// made at its first request. A timer per request took the timer wheel's
    /// lock to register and again to remove. It is not moved for each request
    /// either (`Due`): with the same timeout, each request's deadline is later
    /// than the last, so the timer fires early, once per timeout at most, and
    /// is moved then.
    answer_due: Option<Due>,
}

/// An answer's deadline and the timer that fires at it or before it.
#[derive(Debug)]
struct Due {
    at: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Due {
    /// Ready once `at` has passed.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.timer.as_mut().reset(at);
        }
    }
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            answer_due: None,
        }
    }

    /// Still fit for a request after waiting in the pool: not once the
    /// upstream closed it or sent something unasked. The socket itself is
    /// asked (a non-blocking peek): tokio's cached readiness may not have
    /// seen bytes an upstream wrote after its answer, and those would be
    /// read as the next request's answer.
    pub fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&self.io).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// The socket and what was read past the `101` head, for a tunnel.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.buf)
    }
}

/// Takes `n` bytes off the front of `buf`; see [`COPY_UNDER`]. Copying small
/// data also keeps a queued HTTP/2 frame from holding a whole read buffer.
pub fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_UNDER {
        let b = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        b
    } else {
        buf.split_to(n).freeze()
    }
}

/// Makes room for a read without growing a buffer that has room already.
fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
}

/// A request encoded once, so that it can be sent again on another
/// connection or to another upstream without rebuilding it.
#[derive(Debug)]
pub struct Outgoing {
    wire: Vec<u8>,
    /// HEAD: the answer has no body, whatever its headers say.
    head_only: bool,
    /// The body goes with chunked encoding (its length is unknown).
    chunked: bool,
    pub idempotent: bool,
    /// The answer's fields are wanted as lines (`RawHead`), not a header map.
    pub raw_answer: bool,
}

impl Outgoing {
    /// The request line and headers as they go on the wire. `has_body`: a
    /// body follows; without a `Content-Length` it is sent chunked, and a
    /// bodiless POST, PUT or PATCH gets `Content-Length: 0` as hyper's client
    /// gave it. `added` lines follow the request's own headers: what edge adds
    /// (the forwarding headers, Host from `:authority`) goes straight to the
    /// wire instead of through the header map, where each would be a hash, an
    /// insert, some a value allocation, and often the map's regrowth. They
    /// must be valid header values; the caller's are checked ones.
    pub fn encode(
        parts: &http::request::Parts,
        has_body: bool,
        added: &[(&str, &[u8])],
    ) -> Outgoing {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes();
        let method = parts.method.as_str().as_bytes();
        let line = |k: &str, v: &[u8]| k.len() + v.len() + 4;
        let size: usize = parts
            .headers
            .iter()
            .map(|(k, v)| line(k.as_str(), v.as_bytes()))
            .chain(added.iter().map(|(k, v)| line(k, v)))
            .sum();
        let mut wire = Vec::with_capacity(method.len() + path.len() + size + 48);
        wire.extend_from_slice(method);
        wire.push(b' ');
        wire.extend_from_slice(path);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        for (k, v) in headers.chain(added.iter().copied()) {
            crate::proxy::headers::write_field(&mut wire, k.as_bytes(), v);
        }
        let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
        let chunked = has_body && !has_length;
        if chunked {
            wire.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if !has_body
            && !has_length
            && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        {
            wire.extend_from_slice(b"content-length: 0\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        Outgoing {
            wire,
            head_only: parts.method == Method::HEAD,
            chunked,
            idempotent: idempotent(&parts.method),
            raw_answer: false,
        }
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("closed the connection without answering")]
    Closed,
    #[error("sent an invalid response: {0}")]
    Invalid(&'static str),
    /// The client's request body failed (too large, stalled, or the client left).
    #[error("request body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("sent no response headers within {} of the request", humantime::format_duration(*.0))]
    NoAnswer(std::time::Duration),
    #[error("took none of the request body for {}", humantime::format_duration(*.0))]
    UploadStalled(std::time::Duration),
}

impl SendError {
    /// The site's response_timeout ran out: a 504, not a 502.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendError::NoAnswer(_) | SendError::UploadStalled(_))
    }
}

/// A failed exchange, and how far it got: whether the request may be sent again.
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    /// Some of the answer had arrived.
    pub answered: bool,
    /// Some of the request body was taken from the client: it cannot be sent again.
    pub body_used: bool,
    /// The whole request head was handed to the kernel.
    pub head_sent: bool,
}

impl Failed {
    fn new(error: SendError) -> Failed {
        Failed {
            error,
            answered: false,
            body_used: false,
            head_sent: false,
        }
    }

    /// Nothing reached the upstream's application, or it is safe to repeat:
    /// an idempotent request with no body, no part of an answer seen. (Go's
    /// transport uses the same rule for requests on reused connections.)
    pub fn may_resend(&self, out: &Outgoing) -> bool {
        !self.answered && !self.body_used && (!self.head_sent || out.idempotent)
    }
}

/// A final answer's head, the connection it came on and how its body is framed.
#[derive(Debug)]
pub struct Answer {
    pub head: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
    /// The head still holds a hop-by-hop header (or `Connection` names one)
    /// for the caller to strip; see `parse_head`.
    pub hop_by_hop: bool,
    /// The fields as lines, for a request that asked for them; `head`'s map
    /// is empty then. `UpBody::new` takes them along.
    raw: Option<RawHead>,
    /// The length the head declared, for the canonical `content-length` of
    /// an answer without a body (HEAD, 304): the upstream's own field is
    /// never passed on.
    pub declared_length: Option<u64>,
}

/// An answer's forwarded fields as the lines edge's HTTP/1.1 server writes,
/// when none of them needs changing. Building a header map for them only to
/// write it out again (a name lookup and a hash per field, two allocations
/// for the map and one for the shared head, and the drop) was about 2.5% of
/// keep-alive CPU. The framing fields are never among them: the server
/// writes its own length or chunking.
#[derive(Debug)]
pub struct RawHead {
    /// `name: value\r\n` for each field, names lowercased.
    pub lines: Vec<u8>,
    /// A `Date` among them.
    pub dated: bool,
}

impl Answer {
    fn is_upgrade(&self) -> bool {
        self.framing == Framing::Tunnel
    }
}

/// A request body `exchange` can stream: any `http_body::Body` of `Bytes`
/// whose error can be boxed (edge's is `body::Guarded`; tests use others).
pub trait RequestBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Unpin
{
}

impl<T> RequestBody for T where
    T: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Unpin
{
}

/// Sends `out` with `body` on `conn` and reads the answer's head. A body is
/// streamed while the head is awaited, in a boxed future: most requests have
/// none, and every request's (and every HTTP/2 stream's) future would carry
/// the larger one's size.
///
/// `timeout` (the site's response_timeout) counts from the end of the request,
/// as nginx's proxy_read_timeout does: an upload takes as long as the client
/// takes (its own pace is `body_idle_timeout`'s business), and fails here only
/// when the upstream takes none of it for that long (nginx's
/// proxy_send_timeout, which has the same default).
pub async fn exchange<B: RequestBody>(
    conn: &mut Conn,
    out: &Outgoing,
    body: &mut B,
    timeout: std::time::Duration,
) -> Result<Answer, Failed> {
    if body.is_end_stream() {
        let Conn {
            io,
            buf,
            answer_due,
        } = conn;
        let at = Instant::now() + timeout;
        let due = match answer_due {
            Some(due) => {
                due.at = at;
                // A timer that fired while the connection was pooled, or one
                // set for later than this deadline (a shorter timeout than the
                // last request's), is moved now; one still pending before it
                // fires early and is moved then.
                if due.timer.is_elapsed() || due.timer.deadline() > at {
                    due.timer.as_mut().reset(at);
                }
                due
            }
            None => answer_due.insert(Due {
                at,
                timer: Box::pin(tokio::time::sleep_until(at)),
            }),
        };
        let go = async {
            if let Err(e) = io.write_all(&out.wire).await {
                return Err(Failed::new(e.into()));
            }
            read_answer(io, buf, out)
                .await
                .map_err(|(error, answered)| Failed {
                    error,
                    answered,
                    body_used: false,
                    head_sent: true,
                })
        };
        let mut go = std::pin::pin!(go);
        // As `tokio::time::timeout`: the exchange first, then the deadline.
        return std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = go.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            ready!(due.poll_passed(cx));
            Poll::Ready(Err(Failed {
                error: SendError::NoAnswer(timeout),
                answered: false,
                body_used: false,
                head_sent: true,
            }))
        })
        .await;
    }
    Box::pin(exchange_streaming(conn, out, body, timeout)).await
}

async fn exchange_streaming<B: RequestBody>(
    conn: &mut Conn,
    out: &Outgoing,
    body: &mut B,
    timeout: std::time::Duration,
) -> Result<Answer, Failed> {
    let (mut r, mut w) = conn.io.split();
    let progress = Upload::default();
    let up = upload(&mut w, out, body, &progress);
    let down = read_answer(&mut r, &mut conn.buf, out);
    tokio::pin!(up, down);
    let mut uploaded: Option<io::Result<()>> = None;
    // While uploading: fires every `timeout` to see whether a write to the
    // upstream has waited all that time. Once the request is sent: the wait
    // for the head.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut seen = 0;
    // A timed-out upload counts as used, whatever went: it is not sent again.
    let timed_out = |error| Failed {
        body_used: true,
        ..progress.failed(error, false)
    };
    loop {
        tokio::select! {
            res = &mut up, if uploaded.is_none() => match res {
                Err(UploadError::Body(e)) => {
                    return Err(Failed {
                        error: SendError::Body(e),
                        answered: false,
                        body_used: true,
                        head_sent: true,
                    })
                }
                Err(UploadError::Io(e)) => uploaded = Some(Err(e)),
                Ok(()) => {
                    uploaded = Some(Ok(()));
                    deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
            },
            () = &mut deadline => {
                if uploaded.is_some() {
                    return Err(timed_out(SendError::NoAnswer(timeout)));
                }
                let moved = progress.moved.load(Ordering::Relaxed);
                if moved == seen && progress.writing.load(Ordering::Relaxed) {
                    return Err(timed_out(SendError::UploadStalled(timeout)));
                }
                // The client is slow, or the upstream took bytes since.
                seen = moved;
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            },
            answer = &mut down => {
                return match answer {
                    // An answer before the whole body went: the upstream will not
                    // read the rest, so the connection cannot carry another request.
                    Ok(mut a) => {
                        a.keep_alive &= matches!(uploaded, Some(Ok(())));
                        Ok(a)
                    }
                    Err((error, answered)) => {
                        // A closed connection that also failed the upload says more
                        // through the write error.
                        let error = match (error, uploaded) {
                            (SendError::Closed, Some(Err(e))) => SendError::Io(e),
                            (e, _) => e,
                        };
                        Err(progress.failed(error, answered))
                    }
                };
            }
        }
    }
}

/// How far an upload got, read while it may still be running (atomics only
/// so that the future stays `Send`; nothing else touches them).
#[derive(Debug, Default)]
struct Upload {
    /// The head went out; body frames are taken only after it, so this also
    /// says whether any of the body may have been used.
    head_sent: AtomicBool,
    /// A write to the upstream is waiting.
    writing: AtomicBool,
    /// Counts body frames taken and writes done: whether anything moved.
    moved: AtomicU64,
}

impl Upload {
    fn write_started(&self) {
        self.writing.store(true, Ordering::Relaxed);
    }

    fn write_done(&self) {
        self.writing.store(false, Ordering::Relaxed);
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// The exchange failed this far: body frames are taken only once the
    /// head is sent, so whether the body was used is whether the head went.
    fn failed(&self, error: SendError, answered: bool) -> Failed {
        let head_sent = self.head_sent.load(Ordering::Relaxed);
        Failed {
            error,
            answered,
            body_used: head_sent,
            head_sent,
        }
    }
}

enum UploadError {
    Io(io::Error),
    Body(Box<dyn std::error::Error + Send + Sync>),
}

async fn upload<W, B>(
    w: &mut W,
    out: &Outgoing,
    body: &mut B,
    progress: &Upload,
) -> Result<(), UploadError>
where
    W: tokio::io::AsyncWrite + Unpin,
    B: RequestBody,
{
    progress.write_started();
    w.write_all(&out.wire).await.map_err(UploadError::Io)?;
    progress.write_done();
    progress.head_sent.store(true, Ordering::Relaxed);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Body(e.into()))?;
        progress.moved.fetch_add(1, Ordering::Relaxed);
        // Trailers from the client are dropped, as nginx drops them.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        progress.write_started();
        if out.chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut framed = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
            w.write_all_buf(&mut framed)
                .await
                .map_err(UploadError::Io)?;
        } else {
            w.write_all(&data).await.map_err(UploadError::Io)?;
        }
        progress.write_done();
    }
    if out.chunked {
        progress.write_started();
        w.write_all(b"0\r\n\r\n").await.map_err(UploadError::Io)?;
        progress.write_done();
    }
    Ok(())
}

/// Reads until a final answer's head is complete, skipping interim ones. On
/// error, also whether any of the answer had arrived.
async fn read_answer<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    out: &Outgoing,
) -> Result<Answer, (SendError, bool)> {
    let mut answered = !buf.is_empty();
    let mut interim = 0;
    // An interim answer that declared a body spoils the connection too.
    let mut spoiled = false;
    loop {
        if !buf.is_empty() {
            match parse_head(buf, out.head_only, out.raw_answer)
                .map_err(|e| (SendError::Invalid(e), true))?
            {
                Some(a) if a.head.status.is_informational() && !a.is_upgrade() => {
                    interim += 1;
                    spoiled |= !a.keep_alive;
                    if interim > MAX_INTERIM {
                        return Err((SendError::Invalid("too many interim responses"), true));
                    }
                    continue;
                }
                Some(mut a) => {
                    a.keep_alive &= !spoiled;
                    return Ok(a);
                }
                None => {}
            }
        }
        room(buf);
        match r.read_buf(buf).await {
            Ok(0) if answered => {
                return Err((SendError::Invalid("connection closed mid-head"), true))
            }
            Ok(0) => return Err((SendError::Closed, false)),
            Ok(_) => answered = true,
            Err(e) => return Err((e.into(), answered)),
        }
    }
}

/// Parses a complete head off the front of `buf`, or `None` for more input.
/// The answer's framing follows the one rule set (`framing::answer`): what
/// edge cannot frame the way every other parser would is refused.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    want_lines: bool,
) -> Result<Option<Answer>, &'static str> {
    head::with_scratch(|fields| parse_head_into(buf, head_only, want_lines, fields))
}

fn parse_head_into(
    buf: &mut BytesMut,
    head_only: bool,
    want_lines: bool,
    fields: &mut Vec<head::Field>,
) -> Result<Option<Answer>, &'static str> {
    let parsed = match head::response(buf, MAX_HEAD, fields) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(HeadError::TooLarge) => return Err(HEAD_TOO_LARGE),
        Err(HeadError::TooManyFields) => return Err("more than 100 header fields"),
        Err(HeadError::Malformed) => return Err("malformed head"),
    };
    let status = StatusCode::from_u16(parsed.status).map_err(|_| "invalid status code")?;
    let len = parsed.len;
    let head_bytes = &buf[..len];
    // The answer's own fields go to the client as lines when nothing in them
    // needs the header map (the usual answer; see `RawHead`). One with a
    // field to strip is read again into the map: rare enough that deciding
    // first would cost the usual answer a second pass.
    let lines = want_lines && status != StatusCode::SWITCHING_PROTOCOLS;
    let (facts, hop_by_hop, kept) = match read_fields(fields, head_bytes, lines)? {
        (_, true, Kept::Lines(_)) => read_fields(fields, head_bytes, false)?,
        other => other,
    };
    let method = if head_only { Method::HEAD } else { Method::GET };
    let (framing, keep_alive) = framing::answer(&facts, parsed.status, parsed.version, &method)?;
    let declared_length = facts.declared_length();
    let dated = facts.dated;
    let (mut headers, mut raw) = match kept {
        Kept::Map(m) => (m, None),
        Kept::Lines(lines) => (HeaderMap::new(), Some(RawHead { lines, dated })),
    };
    // An answer without a body (HEAD, 304) keeps the length it declared, as
    // edge's own canonical field; with a body, the length comes from the
    // body itself when it is written.
    if let (Framing::None, Some(n)) = (framing, declared_length) {
        match &mut raw {
            Some(r) => {
                use std::io::Write as _;
                let _ = write!(r.lines, "content-length: {n}\r\n");
            }
            None => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
    }
    buf.advance(len);
    let mut head = http::Response::new(()).into_parts().0;
    head.status = status;
    // edge answers in its own HTTP version, as nginx does: an HTTP/1.0
    // backend would otherwise close every HTTP/1.1 client's connection after
    // one answer.
    head.version = Version::HTTP_11;
    head.headers = headers;
    Ok(Some(Answer {
        head,
        framing,
        keep_alive,
        hop_by_hop,
        raw,
        declared_length,
    }))
}

/// How an answer's forwarded fields are kept.
enum Kept {
    Map(HeaderMap),
    /// As `name: value\r\n` lines, names lowercased (as `HeaderName` writes them).
    Lines(Vec<u8>),
}

/// Reads the fields of a head (`head`: its bytes, which the fields point
/// into) and keeps the ones to forward, in a header map or as lines. Also
/// says whether a hop-by-hop field is among them, for the caller to strip.
///
/// The framing fields and a `Connection` that says no more than keep-alive
/// or close are read here and never kept (every answer from a keep-alive
/// backend has `Connection: keep-alive`), so the caller's hop-by-hop strip
/// has nothing to do for most answers.
fn read_fields(
    fields: &[head::Field],
    head: &[u8],
    lines: bool,
) -> Result<(Facts, bool, Kept), &'static str> {
    let mut facts = Facts::default();
    let mut hop_by_hop = false;
    let mut kept = if lines {
        Kept::Lines(Vec::with_capacity(head.len()))
    } else {
        Kept::Map(HeaderMap::with_capacity(fields.len()))
    };
    // For the map, one copy of the head and every value a slice of it. Values
    // that pointed into the read buffer instead would keep it shared until
    // the head went to the client, and a read meanwhile would take a fresh
    // buffer, which raised HTTP/2's peak memory (bench/notes.md).
    let block = if lines {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(head)
    };
    for f in fields {
        let (name, value) = (f.name.get(head), f.value.get(head));
        match facts.observe(name, value) {
            Role::Framing | Role::Connection => continue,
            Role::HopByHop => hop_by_hop = true,
            Role::Expect | Role::Date | Role::Other => {}
        }
        match &mut kept {
            Kept::Map(headers) => {
                let name = HeaderName::from_bytes(name).map_err(|_| "invalid header name")?;
                let value = HeaderValue::from_maybe_shared(
                    block.slice(f.value.at..f.value.at + f.value.len),
                )
                .map_err(|_| "invalid header value")?;
                headers.append(name, value);
            }
            Kept::Lines(out) => {
                // httparse has checked both as `HeaderName` and `HeaderValue`
                // would: a token for the name, and no control character but
                // tab in the value (nor a lone CR or LF, which end a line).
                let at = out.len();
                crate::proxy::headers::write_field(out, name, value);
                out[at..at + name.len()].make_ascii_lowercase();
            }
        }
    }
    Ok((facts, hop_by_hop, kept))
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection {0} bytes short of Content-Length")]
    Short(u64),
    #[error("upstream closed the connection mid-chunk")]
    ChunkCut,
    #[error("upstream sent an invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("upstream sent nothing for {} in the middle of the body (the site's response_timeout)", humantime::format_duration(*.0))]
    Stalled(std::time::Duration),
}

#[derive(Debug)]
enum State {
    Done,
    /// All of it was read with the head; the connection is already back in the pool.
    Whole(Bytes),
    Length(u64),
    Chunked(Decoder),
    Close,
}

/// An upstream answer's body. It reads the socket only when the client side
/// asks for more, and puts the connection back in its upstream's pool the
/// moment the body is complete; dropped before that, the connection closes.
#[derive(Debug)]
pub struct UpBody {
    /// `None` once the body is complete or failed, or the answer was a `101`.
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    home: Arc<Upstream>,
    /// Longest wait for the next body bytes: the site's response_timeout, as
    /// nginx's proxy_read_timeout runs between two reads. Without it a backend
    /// that stops mid-body would hold the client and an upstream slot forever.
    stall: Stall,
    /// The answer's fields as lines, for `h1_server` to take (see `RawHead`).
    raw_head: Option<RawHead>,
    /// After a `101`: the upstream connection, for the HTTP/1 server's tunnel.
    tunnel: Option<crate::proxy::tunnel::Tunnel>,
}

impl UpBody {
    /// The body of `answer`, read from `conn`, with the answer's fields as
    /// lines when it has them. Returns the connection too when the answer was
    /// a `101`: it belongs to the tunnel now.
    pub fn new(
        mut conn: Conn,
        answer: &mut Answer,
        home: &Arc<Upstream>,
        read_timeout: std::time::Duration,
    ) -> (UpBody, Option<Conn>) {
        let upgrade = answer.is_upgrade();
        let state = match answer.framing {
            Framing::Tunnel | Framing::None | Framing::Length(0) => State::Done,
            // The usual small answer: all here already. Bytes past its end were
            // never asked for, so that connection is not reused (see `release`).
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                State::Whole(take(&mut conn.buf, n as usize))
            }
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::default()),
            Framing::Close => State::Close,
        };
        let mut body = UpBody {
            conn: Some(conn),
            state,
            keep_alive: answer.keep_alive,
            home: home.clone(),
            stall: Stall::new(read_timeout),
            raw_head: answer.raw.take(),
            tunnel: None,
        };
        if upgrade {
            let tunnel = body.conn.take();
            return (body, tunnel);
        }
        if matches!(body.state, State::Done | State::Whole(_)) {
            body.release();
        }
        (body, None)
    }

    /// The answer's fields as lines, when they were kept so (`RawHead`).
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.raw_head.take()
    }

    /// Keeps the upstream connection of a `101` for the tunnel.
    pub fn set_tunnel(&mut self, t: crate::proxy::tunnel::Tunnel) {
        self.tunnel = Some(t);
    }

    /// The tunnel's upstream side, after a `101`.
    pub fn take_tunnel(&mut self) -> Option<crate::proxy::tunnel::Tunnel> {
        self.tunnel.take()
    }

    /// Done with the connection: back to the pool when it can carry another
    /// request, else closed.
    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.keep_alive && c.buf.is_empty() {
                self.home.recycle(c);
            }
        }
    }
}

/// Reads more into the connection's buffer; `Ok(false)` at end of stream.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
    loop {
        ready!(conn.io.poll_read_ready(cx))?;
        room(&mut conn.buf);
        match conn.io.try_read_buf(&mut conn.buf) {
            Ok(n) => return Poll::Ready(Ok(n > 0)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl UpBody {
    /// The next frame. On an error the connection is left for `poll_frame`,
    /// which drops it for every failure alike.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            // Whole and Done gave the connection up when entered; a failed body
            // dropped it.
            let Some(conn) = self.conn.as_mut() else {
                return match std::mem::replace(&mut self.state, State::Done) {
                    State::Whole(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    _ => Poll::Ready(None),
                };
            };
            match &mut self.state {
                State::Done | State::Whole(_) => return Poll::Ready(None),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (*left).min(conn.buf.len() as u64);
                        let data = take(&mut conn.buf, n as usize);
                        *left -= n;
                        if *left == 0 {
                            self.state = State::Done;
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let left = *left;
                    if !ready!(poll_fill(conn, cx))? {
                        return Poll::Ready(Some(Err(BodyError::Short(left))));
                    }
                }
                State::Chunked(d) => match d.step(&mut conn.buf) {
                    Ok(chunked::Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Ok(chunked::Step::End(trailers)) => {
                        self.state = State::Done;
                        self.release();
                        if let Some(t) = trailers {
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        return Poll::Ready(None);
                    }
                    Ok(chunked::Step::More) => {
                        if !ready!(poll_fill(conn, cx))? {
                            return Poll::Ready(Some(Err(BodyError::ChunkCut)));
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(BodyError::Chunked(e)))),
                },
                State::Close => {
                    if !conn.buf.is_empty() {
                        let n = conn.buf.len();
                        return Poll::Ready(Some(Ok(Frame::data(take(&mut conn.buf, n)))));
                    }
                    if !ready!(poll_fill(conn, cx))? {
                        self.conn = None;
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut r = self.poll_next(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) => self.stall.moved(),
            // Only a wait for the upstream's socket is Pending here.
            Poll::Pending if self.stall.expired(cx) => {
                r = Poll::Ready(Some(Err(BodyError::Stalled(self.stall.after()))));
            }
            _ => {}
        }
        if let Poll::Ready(Some(Err(e))) = &r {
            // The head has gone to the client, so all edge can do is cut the
            // response off (HTTP/1.1: close; HTTP/2: reset the stream). The
            // client sees that; the operator needs to see why, as with nginx's
            // "upstream prematurely closed connection".
            let limit = &crate::log_limit::LIMIT;
            let key = format!("{} {e}", self.home.addr);
            if let Some(n) = limit.admit("answer cut", &key) {
                tracing::warn!(
                    upstream = %self.home.addr,
                    "{e}; the client's response was cut short{}",
                    crate::log_limit::held(n)
                );
            }
            self.conn = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Whole(b) => SizeHint::with_exact(b.len() as u64),
            State::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted upstream on a real socket: the answers here are the
    //! malformed and unusual ones that no real backend in the suite sends.
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use tokio::net::TcpListener;

    const SECS_60: std::time::Duration = std::time::Duration::from_secs(60);

    /// One exchange a scripted upstream expects: read until `until` is seen,
    /// then write `answer`.
    type Step = (&'static [u8], &'static [u8]);

    /// An upstream that plays `script` on its first connection, then closes
    /// it; returns what it read for each step.
    async fn scripted(script: Vec<Step>) -> (Arc<Upstream>, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            for (until, answer) in script {
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.windows(until.len()).any(|w| w == until) {
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                }
                seen.push(got);
                s.write_all(answer).await.unwrap();
            }
            seen
        });
        (upstream_at(addr), task)
    }

    /// A server for one connection: answers a request after each of
    /// `delays_ms` (`200`, two bytes), then reads one more and never answers,
    /// holding the connection open until its socket is dropped.
    async fn answers_then_silence(
        delays_ms: &'static [u64],
    ) -> (
        Arc<Upstream>,
        tokio::task::JoinHandle<tokio::net::TcpStream>,
    ) {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            // Under paused time, no kernel delay of real time (Nagle).
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 4096];
            for &delay in delays_ms {
                let _ = s.read(&mut b).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                s.write_all(ok).await.unwrap();
            }
            let _ = s.read(&mut b).await.unwrap();
            s
        });
        (upstream_at(addr), server)
    }

    /// An upstream of one address, for a test's own server.
    fn upstream_at(addr: String) -> Arc<Upstream> {
        let cfg = crate::config::Upstream {
            addr,
            weight: 1,
            max_conns: 0,
            max_tunnels: 1,
        };
        Arc::new(Upstream::new(&cfg, "h1-client-test"))
    }

    fn get(method: Method, headers: &[(&'static str, &'static str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri("/p?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn conn(up: &Upstream) -> Conn {
        up.connect(std::time::Duration::from_secs(5)).await.unwrap()
    }

    /// Sends a bodiless request; the answer's status, body, trailers.
    async fn fetch(
        up: &Arc<Upstream>,
        c: &mut Option<Conn>,
        method: Method,
    ) -> Result<(StatusCode, Vec<u8>, Option<HeaderMap>), Failed> {
        let out = Outgoing::encode(&get(method, &[("host", "a")]), false, &[]);
        let mut conn = c.take().unwrap();
        let mut answer = exchange(&mut conn, &out, &mut Empty::<Bytes>::new(), SECS_60).await?;
        let (body, _) = UpBody::new(conn, &mut answer, up, SECS_60);
        let all = body.collect().await.expect("body");
        let trailers = all.trailers().cloned();
        Ok((answer.head.status, all.to_bytes().to_vec(), trailers))
    }

    /// The answer deadline is one timer per connection, moved per request: a
    /// reused connection's request gets its own full `timeout` (the timer set
    /// by the one before does not fire early), and no answer within it fails
    /// the exchange as `NoAnswer`, exactly then. Under paused time.
    #[tokio::test(start_paused = true)]
    async fn each_request_on_a_connection_gets_its_own_answer_deadline() {
        use std::time::Duration;
        let timeout = Duration::from_secs(40);
        // First at once, the second 25 s late, the third never.
        let (up, server) = answers_then_silence(&[0, 25_000]).await;
        let out = Outgoing::encode(&get(Method::GET, &[("host", "a")]), false, &[]);
        let mut c = conn(&up).await;
        let take = |c: &mut Conn, answer: &Answer| {
            let n = match answer.framing {
                Framing::Length(n) => n as usize,
                _ => panic!("{:?}", answer.framing),
            };
            c.buf.advance(n);
        };
        let a = exchange(&mut c, &out, &mut Empty::<Bytes>::new(), timeout)
            .await
            .unwrap();
        take(&mut c, &a);
        // The next request starts 30 s into the first one's 40: its answer,
        // 25 s later, comes after the first deadline and before its own.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let a = exchange(&mut c, &out, &mut Empty::<Bytes>::new(), timeout)
            .await
            .expect("the first request's deadline cut the second");
        take(&mut c, &a);
        let start = Instant::now();
        let f = exchange(&mut c, &out, &mut Empty::<Bytes>::new(), timeout)
            .await
            .expect_err("an answer that never came was taken");
        assert!(matches!(f.error, SendError::NoAnswer(_)), "{:?}", f.error);
        assert!(f.head_sent && !f.answered && !f.body_used);
        let took = start.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(1),
            "{took:?}"
        );
        drop(server.await.unwrap());
    }

    /// A shorter timeout than the last request's (a reloaded site) holds on a
    /// connection whose timer was set for the longer one.
    #[tokio::test(start_paused = true)]
    async fn a_shorter_timeout_after_a_longer_one_holds() {
        use std::time::Duration;
        // The second request is read and never answered.
        let (up, server) = answers_then_silence(&[0]).await;
        let out = Outgoing::encode(&get(Method::GET, &[("host", "a")]), false, &[]);
        let mut c = conn(&up).await;
        let a = exchange(
            &mut c,
            &out,
            &mut Empty::<Bytes>::new(),
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        assert_eq!(a.framing, Framing::Length(2));
        c.buf.advance(2);
        let short = Duration::from_secs(20);
        let start = Instant::now();
        let f = exchange(&mut c, &out, &mut Empty::<Bytes>::new(), short)
            .await
            .expect_err("an answer that never came was taken");
        assert!(matches!(f.error, SendError::NoAnswer(_)), "{:?}", f.error);
        let took = start.elapsed();
        assert!(
            took >= short && took < short + Duration::from_secs(1),
            "held to the old deadline: {took:?}"
        );
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_length_body_is_read_and_the_connection_reused() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello";
        let (up, server) = scripted(vec![(b"\r\n\r\n", ok), (b"\r\n\r\n", ok)]).await;
        let mut c = Some(conn(&up).await);
        let (status, body, _) = fetch(&up, &mut c, Method::GET).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        let mut again = up.take_idle();
        assert!(again.is_some(), "not back in the pool");
        let (_, body, _) = fetch(&up, &mut again, Method::GET).await.unwrap();
        assert_eq!(body, b"hello");
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 2, "both requests on one connection");
        assert_eq!(seen[0], b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn chunked_with_trailers_and_a_close_delimited_body() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 6\r\n\r\n";
        let close: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end";
        let (up, _server) = scripted(vec![(b"\r\n\r\n", chunked), (b"\r\n\r\n", close)]).await;
        let mut c = Some(conn(&up).await);
        let (_, body, trailers) = fetch(&up, &mut c, Method::GET).await.unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(trailers.unwrap()["x-sum"], "6");
        let mut c = up.take_idle();
        let (_, body, _) = fetch(&up, &mut c, Method::GET).await.unwrap();
        assert_eq!(body, b"until the end");
        assert!(
            up.take_idle().is_none(),
            "a close-delimited answer's connection was reused"
        );
    }

    /// No body after HEAD, 1xx, 204 or 304, whatever the head declared; a
    /// connection whose answer declared a body it must not send is closed,
    /// not pooled (an upstream that sends it anyway would plant an answer
    /// for the next request), and one that declared none is reused.
    #[tokio::test]
    async fn no_body_after_head_or_204_and_interim_answers_are_skipped() {
        let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let interim: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (up, _server) = scripted(vec![(b"\r\n\r\n", head), (b"\r\n\r\n", interim)]).await;
        let mut c = Some(conn(&up).await);
        let (status, body, _) = fetch(&up, &mut c, Method::HEAD).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
        let mut c = up.take_idle();
        assert!(c.is_some(), "HEAD answer's connection not reused");
        let (status, body, _) = fetch(&up, &mut c, Method::GET).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        for (answer, method) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"[..], Method::HEAD),
            (b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n", Method::GET),
            (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n", Method::GET),
            (b"HTTP/1.1 103 Early Hints\r\ncontent-length: 3\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET),
        ] {
            let (up, _server) = scripted(vec![(b"\r\n\r\n", answer)]).await;
            let mut c = Some(conn(&up).await);
            let (_, body, _) = fetch(&up, &mut c, method.clone()).await.unwrap();
            assert!(body.is_empty());
            assert!(
                up.take_idle().is_none(),
                "pooled after {:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// An upstream that writes a HEAD answer's body in a later segment (as
    /// gunicorn does): the bytes never become the next request's answer.
    #[tokio::test]
    async fn a_head_answers_late_body_is_never_read_as_the_next_answer() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = upstream_at(l.local_addr().unwrap().to_string());
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 48\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            // The body a HEAD answer must not have: a whole planted answer.
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nplanted")
                .await
                .unwrap();
            let _ = s.read(&mut b).await;
        });
        let mut c = Some(conn(&up).await);
        fetch(&up, &mut c, Method::HEAD).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            up.take_idle().is_none(),
            "the connection with a planted answer was pooled"
        );
        server.abort();
    }

    /// The pool asks the socket itself: bytes that arrived after an answer
    /// (unasked) are seen before the connection is reused, also when tokio's
    /// cached readiness has not seen them (its driver had no turn since).
    #[tokio::test]
    async fn a_pooled_connection_with_unasked_bytes_is_not_reused() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // A server on a thread of its own, so it writes while this runtime's
        // only thread is blocked and its I/O driver cannot look.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = upstream_at(l.local_addr().unwrap().to_string());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).unwrap();
            s.write_all(ok).unwrap();
            wait.recv().unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nplanted")
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
        });
        let mut c = Some(conn(&up).await);
        fetch(&up, &mut c, Method::GET).await.unwrap();
        // The answer is done and the connection pooled; now the upstream
        // writes, and this thread gives the driver no turn before asking.
        go.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            up.take_idle().is_none(),
            "reused with an unasked answer waiting"
        );
        server.join().unwrap();
    }

    #[tokio::test]
    async fn invalid_answers_fail_with_the_reason() {
        let cases: [(&[u8], &str); 10] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                "more than one Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nhi",
                "more than one Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nhi",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                "a transfer coding other than chunked",
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.0",
            ),
            (b"HELLO\r\n\r\n", "malformed head"),
            (b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "malformed head"),
        ];
        for (answer, why) in cases {
            let (up, _server) = scripted(vec![(b"\r\n\r\n", answer)]).await;
            let mut c = Some(conn(&up).await);
            let e = fetch(&up, &mut c, Method::GET).await.unwrap_err();
            assert!(e.error.to_string().contains(why), "{why}: got {}", e.error);
            assert!(e.answered);
        }
        // A head that never ends is cut off at 64 KiB, not buffered for ever.
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < 70 * 1024 {
            huge.extend_from_slice(format!("x-filler: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        let (up, _server) = scripted(vec![(b"\r\n\r\n", Box::leak(huge.into_boxed_slice()))]).await;
        let mut c = Some(conn(&up).await);
        let e = fetch(&up, &mut c, Method::GET).await.unwrap_err();
        assert!(e.error.to_string().contains("over 64 KiB"), "{}", e.error);
    }

    /// Framing headers are read and left out; anything else hop-by-hop stays
    /// for the caller's strip, and says so.
    #[test]
    fn framing_headers_are_left_out_and_other_hop_by_hop_ones_flagged() {
        for lines in [false, true] {
            let parse = |raw: &str| {
                let mut buf = BytesMut::from(raw.as_bytes());
                parse_head(&mut buf, false, lines).unwrap().unwrap()
            };
            let kept = |a: &Answer| match &a.raw {
                Some(r) => r.lines.split(|&b| b == b'\n').count() - 1,
                None => a.head.headers.len(),
            };
            let a = parse("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\n\r\n");
            assert!(!a.hop_by_hop && a.keep_alive);
            assert_eq!(a.framing, Framing::Chunked);
            assert_eq!(kept(&a), 1, "{:?} {:?}", a.head.headers, a.raw);
            assert_eq!(a.raw.is_some(), lines);
            let a = parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
            assert!(!a.hop_by_hop && a.keep_alive, "HTTP/1.0 keep-alive");
            // `close` ends the connection whichever field or place it comes in.
            for raw in [
                "HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            ] {
                assert!(!parse(raw).keep_alive, "reused after close: {raw:?}");
            }
            // Anything to strip takes the header map, lines asked for or not.
            for raw in [
                "HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nx-secret: 1\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            ] {
                let a = parse(raw);
                assert!(a.hop_by_hop, "not flagged: {raw:?}");
                assert!(a.raw.is_none(), "kept as lines: {raw:?}");
            }
            let a = parse("HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nx-secret: 1\r\nContent-Length: 0\r\n\r\n");
            assert!(!a.keep_alive);
            let mut h = a.head.headers;
            crate::proxy::headers::strip_hop_by_hop(&mut h);
            assert!(!h.contains_key("x-secret") && !h.contains_key(header::CONNECTION));
            // Framing edge cannot trust is refused, not guessed at.
            for raw in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xc3\xa9, chunked\r\n\r\n",
            ] {
                let mut buf = BytesMut::from(raw);
                assert!(parse_head(&mut buf, false, lines).is_err(), "{raw:?}");
            }
            // A control character in a value is refused either way.
            let mut buf =
                BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: a\x7fb\r\nContent-Length: 0\r\n\r\n"[..]);
            assert!(parse_head(&mut buf, false, lines).is_err());
            // A HEAD answer's declared length stays, as edge's own field.
            let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..]);
            let a = parse_head(&mut buf, true, lines).unwrap().unwrap();
            assert_eq!(a.framing, Framing::None);
            let declared = match &a.raw {
                Some(r) => String::from_utf8_lossy(&r.lines).contains("content-length: 1234\r\n"),
                None => a.head.headers[header::CONTENT_LENGTH] == "1234",
            };
            assert!(declared);
        }
    }

    /// The usual answer as lines: every field but the framing ones, names
    /// lowercased as the header map writes them, with what `h1_server` needs.
    #[test]
    fn plain_answer_fields_are_kept_as_lines() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 05 Dec 2026 18:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"[..],
        );
        let a = parse_head(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello");
        let raw = a.raw.expect("lines");
        assert_eq!(
            String::from_utf8(raw.lines).unwrap(),
            "server: nginx\r\ndate: Sat, 05 Dec 2026 18:00:00 GMT\r\ncontent-type: text/plain\r\n"
        );
        assert!(raw.dated);
        assert!(a.head.headers.is_empty() && a.keep_alive);
        assert_eq!(a.framing, Framing::Length(5));
    }

    #[tokio::test]
    async fn a_short_body_and_a_bad_chunk_are_body_errors() {
        for (answer, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"[..],
                "5 bytes short",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                "mid-chunk",
            ),
        ] {
            let (up, _server) = scripted(vec![(b"\r\n\r\n", answer)]).await;
            let mut conn = conn(&up).await;
            let out = Outgoing::encode(&get(Method::GET, &[]), false, &[]);
            let mut answer = exchange(&mut conn, &out, &mut Empty::<Bytes>::new(), SECS_60)
                .await
                .unwrap();
            let (body, _) = UpBody::new(conn, &mut answer, &up, SECS_60);
            let e = body.collect().await.unwrap_err();
            assert!(e.to_string().contains(want), "{want}: got {e}");
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_noticed_and_only_safe_requests_resend() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (up, server) = scripted(vec![(b"\r\n\r\n", ok)]).await;
        let mut c = conn(&up).await;
        let get_out = Outgoing::encode(&get(Method::GET, &[]), false, &[]);
        let answer = exchange(&mut c, &get_out, &mut Empty::<Bytes>::new(), SECS_60)
            .await
            .unwrap();
        assert!(answer.keep_alive);
        c.buf.clear(); // the body, read
        server.await.unwrap(); // the upstream has closed its end
        c.io.readable().await.unwrap();
        assert!(!c.usable(), "a closed connection looked usable");

        let e = exchange(&mut c, &get_out, &mut Empty::<Bytes>::new(), SECS_60)
            .await
            .unwrap_err();
        assert!(
            matches!(e.error, SendError::Closed | SendError::Io(_)),
            "{}",
            e.error
        );
        assert!(!e.answered && e.head_sent);
        assert!(e.may_resend(&get_out), "an idempotent GET may go again");
        let post_out = Outgoing::encode(&get(Method::POST, &[]), false, &[]);
        assert!(
            !e.may_resend(&post_out),
            "a POST that reached the socket may not"
        );

        up.recycle(c);
        assert!(
            up.take_idle().is_none(),
            "the pool handed out a closed connection"
        );
    }

    /// A body that sends one chunk and then never ends, like a slow upload.
    struct Endless(bool);

    impl Body for Endless {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
            }
        }
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_and_the_connection() {
        let early: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
        let (up, _server) = scripted(vec![(b"first", early)]).await;
        let mut conn = conn(&up).await;
        let parts = get(Method::POST, &[("content-length", "1000000")]);
        let out = Outgoing::encode(&parts, true, &[]);
        let mut answer = exchange(&mut conn, &out, &mut Endless(false), SECS_60)
            .await
            .unwrap();
        assert_eq!(answer.head.status, StatusCode::PAYLOAD_TOO_LARGE);
        let (body, _) = UpBody::new(conn, &mut answer, &up, SECS_60);
        drop(body);
        assert!(up.take_idle().is_none(), "reused with half a body unsent");
    }

    #[tokio::test]
    async fn unknown_lengths_go_chunked_and_empty_posts_say_zero() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (up, server) = scripted(vec![(b"0\r\n\r\n", ok), (b"\r\n\r\n", ok)]).await;
        let mut conn = conn(&up).await;
        let out = Outgoing::encode(&get(Method::POST, &[]), true, &[]);
        let mut body = Full::new(Bytes::from_static(b"hello"));
        exchange(&mut conn, &out, &mut body, SECS_60).await.unwrap();
        let out = Outgoing::encode(&get(Method::POST, &[]), false, &[]);
        exchange(&mut conn, &out, &mut Empty::<Bytes>::new(), SECS_60)
            .await
            .unwrap();
        let seen = server.await.unwrap();
        let first = String::from_utf8_lossy(&seen[0]);
        assert!(
            first.contains("transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{first}"
        );
        assert!(String::from_utf8_lossy(&seen[1]).contains("content-length: 0\r\n"));
    }
}
