//! The server role: every HTTP/1 connection on the HTTPS listener.
//!
//! One loop per connection reads a head (`head`), decides its framing by the
//! one rule set (`framing::request`: what cannot be framed the way every
//! other parser would is refused, and the connection closed), hands the
//! request to `Proxy::handle`, writes the answer, and goes on with what the
//! client already sent (pipelining). A request body is read from the same
//! connection while the proxy streams it upstream: the connection moves into
//! the body ([`H1Body`]) and comes back when the body is done or dropped, so
//! nothing is buffered or copied on the way. `Expect: 100-continue` is
//! answered here when the body is first read, and never forwarded. A `101`
//! from the upstream makes the connection a tunnel with an idle timeout
//! (`tunnel`). HTTP/1.0 is kept alive only when it asks. A client that opens
//! with the HTTP/2 preface (prior knowledge) is handed to the HTTP/2 server.
//!
//! Bodyless keep-alive requests are most of the traffic: their head is parsed
//! in place, its values stay slices of one copy of it, and the answer's head
//! and first body bytes leave in one write.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Either;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

use super::chunked::{self, Decoder};
use super::framing::{self, Facts, Framing, Role};
use super::head;
use crate::proxy::access_log::Record;
use crate::proxy::body::{ClientBody, ReqBody};
use crate::proxy::deadlines::Timed;
use crate::proxy::error::ProxyError;
use crate::proxy::shutdown::Stop;
use crate::proxy::{headers, respond, Body, ConnInfo, Protocol, Proxy, Session};

/// Read into at least this much free space.
const READ_SIZE: usize = 8192;
/// Body data up to this size is copied behind the head into one write;
/// larger data is written from where it is.
const COALESCE: usize = 16 * 1024;
/// A write buffer up to this size is kept by an idle connection (an
/// answer's head and a small body fit); a larger one is freed.
const OUT_KEPT: usize = 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What is left of a request body the upstream did not read is read and
/// dropped, to keep the connection, up to this size; a longer one, or a
/// chunked one, ends the connection after the answer.
const DISCARD_MAX: u64 = 64 * 1024;
/// After an answer that ends a connection while the client may still be
/// sending, what it sends is read and dropped for up to this long and this
/// much before closing: closing with unread input sends a reset, which can
/// destroy the answer before the client has read it (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// What the loop needs besides the connection.
pub struct Settings {
    pub max_head: usize,
    pub body_idle_timeout: Duration,
}

/// How a connection ended.
pub enum Served<T> {
    /// Closed (or failed); nothing more to do.
    Closed(io::Result<()>),
    /// The client spoke HTTP/2 without ALPN: the HTTP/2 server takes over,
    /// from the bytes already read.
    /// Boxed, so a connection's task does not keep room for it throughout.
    Http2(Box<Prefixed<T>>),
}

/// The client connection and what has been read from it.
pub struct Conn<T> {
    pub io: Timed<T>,
    pub buf: BytesMut,
}

impl<T> Conn<T> {
    /// A connection for [`serve`], boxed: it moves into a request's body and
    /// back, and an async fn would keep a parameter's bytes beside the local
    /// it moves into.
    pub fn boxed(io: Timed<T>) -> Box<Conn<T>> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
        })
    }
}

/// Serves HTTP/1 requests on the connection until it closes.
pub async fn serve<T>(
    conn: Box<Conn<T>>,
    proxy: &Arc<Proxy>,
    info: &Arc<ConnInfo>,
    settings: &Settings,
    stop: &mut Stop,
) -> Served<Timed<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Some(conn);
    let mut out: Vec<u8> = Vec::new();
    let mut fields: Vec<head::Field> = Vec::new();
    let mut first = true;
    loop {
        let c = conn.as_mut().expect("the connection is back");
        // A head.
        let parsed = loop {
            if !c.buf.is_empty() {
                if first && PREFACE.starts_with(&c.buf[..c.buf.len().min(PREFACE.len())]) {
                    if c.buf.len() >= PREFACE.len() {
                        let Conn { io, buf } = *conn.take().expect("the connection");
                        return Served::Http2(Box::new(Prefixed::new(buf, io)));
                    }
                } else {
                    match head::request(&c.buf, settings.max_head, &mut fields) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                        Err(e) => {
                            let e = ProxyError::from(e);
                            e.log(info.peer, None);
                            let line = proxy
                                .logs_access()
                                .then(|| refused_line(info, None, &c.buf));
                            return Served::Closed(Box::pin(refuse(c, &mut out, &e, line)).await);
                        }
                    }
                }
            }
            let read = if c.buf.is_empty() {
                // Idle between requests: an idle connection keeps no read
                // buffer (the read goes into the thread's scratch buffer
                // first) and a write buffer only as large as a usual head,
                // and shutdown closes it at once.
                if out.capacity() > OUT_KEPT {
                    out = Vec::new();
                }
                c.buf = BytesMut::new();
                let Conn { io, buf } = &mut **c;
                match stop.or_stop(|cx| poll_idle_read(io, buf, cx)).await {
                    Some(r) => r,
                    None => return Served::Closed(c.io.shutdown().await),
                }
            } else {
                room(&mut c.buf);
                c.io.read_buf(&mut c.buf).await
            };
            match read {
                // The client is done (TLS close_notify or FIN): say goodbye back.
                Ok(0) => return Served::Closed(c.io.shutdown().await.or(Ok(()))),
                Ok(_) => {}
                Err(e) => return Served::Closed(Err(e)),
            }
        };
        first = false;
        // The head, frozen for its values to be slices of it: when it is all
        // that was read (a bodiless request, most of them), the buffer
        // itself, without the allocation a split makes.
        let head_bytes = if parsed.len == c.buf.len() {
            std::mem::take(&mut c.buf).freeze()
        } else {
            c.buf.split_to(parsed.len).freeze()
        };
        let req = match request(&head_bytes, &parsed, &fields) {
            Ok(r) => r,
            Err(refusal) => {
                let e = ProxyError::from(refusal);
                e.log(info.peer, None);
                let line = proxy
                    .logs_access()
                    .then(|| refused_line(info, Some((&parsed, &head_bytes)), &[]));
                return Served::Closed(Box::pin(refuse(c, &mut out, &e, line)).await);
            }
        };
        drop(head_bytes);
        let Parsed {
            mut req,
            framing,
            keep_alive,
            expect_continue,
        } = req;
        let is_head = req.method() == Method::HEAD;
        let version = req.version();
        // The clock was read when the head's last bytes came in.
        let start =
            c.io.last_activity()
                .map_or_else(std::time::Instant::now, tokio::time::Instant::into_std);
        // The body, if any, takes the connection along.
        let returned = match framing {
            Framing::None | Framing::Length(0) => None,
            Framing::Length(_) | Framing::Chunked => {
                let (tx, rx) = oneshot::channel();
                let body = H1Body {
                    conn: conn.take(),
                    read: match framing {
                        Framing::Length(n) => BodyRead::Length(n),
                        _ => BodyRead::Chunked(Decoder::default()),
                    },
                    continue_left: if expect_continue && version == Version::HTTP_11 {
                        CONTINUE.len()
                    } else {
                        0
                    },
                    back: Some(tx),
                };
                *req.body_mut() = ReqBody::H1(Box::new(body));
                Some(rx)
            }
            Framing::Close | Framing::Tunnel => unreachable!("not a request framing"),
        };
        let session = Session::new(req, info.clone(), Protocol::Http1, start);
        // Boxed, so an idle connection's task does not keep room for the
        // request path's future (small enough for the allocator's
        // per-thread cache; the answer's writing, larger, stays inline).
        let handling = Box::pin(proxy.clone().handle(session));
        let resp = match conn.as_mut() {
            // A bodiless request leaves the connection here: watched while
            // the answer is awaited, so a client that leaves is seen then
            // (the request is dropped and logged 499, as nginx does), not
            // when the answer is written to nobody.
            Some(c) => match Box::pin(unless_client_leaves(c, handling)).await {
                Some(r) => r,
                None => return Served::Closed(Ok(())),
            },
            None => handling.await,
        };
        // The body has been dropped by now; the connection comes back with
        // how much of the body was read.
        let mut body_done = true;
        let mut to_discard = None;
        if let Some(mut rx) = returned {
            match rx.try_recv() {
                Ok(back) => {
                    conn = Some(back.conn);
                    match back.read {
                        BodyRead::Done => {}
                        // What the upstream did not read, when it is small, is
                        // read and dropped after the answer, to keep the
                        // connection; not after a body edge refused (408, 413).
                        BodyRead::Length(left)
                            if left <= DISCARD_MAX
                                && resp.status() != StatusCode::REQUEST_TIMEOUT
                                && resp.status() != StatusCode::PAYLOAD_TOO_LARGE =>
                        {
                            to_discard = Some(left)
                        }
                        _ => body_done = false,
                    }
                }
                // Held elsewhere: never expected; the connection cannot go on.
                Err(_) => return Served::Closed(Ok(())),
            }
        }
        let c = conn.as_mut().expect("the connection");
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Conn { io, buf } = *conn.take().expect("the connection");
            return Served::Closed(Box::pin(tunnel(io, buf, &mut out, resp, info)).await);
        }
        let closing = !keep_alive || !body_done || stop.is_set();
        match Box::pin(respond(
            &mut c.io, &mut out, resp, is_head, version, closing,
        ))
        .await
        {
            Ok(true) if !closing => {
                if let Some(left) = to_discard {
                    if !Box::pin(discard(c, left, settings.body_idle_timeout)).await {
                        return Served::Closed(c.io.shutdown().await);
                    }
                }
            }
            Ok(_) if !body_done => {
                // The client may still be sending the body: linger.
                return Served::Closed(Box::pin(linger(c)).await);
            }
            // TLS close_notify, then FIN.
            Ok(_) => return Served::Closed(c.io.shutdown().await),
            Err(e) => return Served::Closed(Err(e)),
        }
    }
}

thread_local! {
    /// Where an idle connection's next bytes are read first, so that no
    /// idle connection holds a read buffer of its own (nginx frees its
    /// buffers between requests too). One per thread: it is only borrowed
    /// within one poll.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; 2 * READ_SIZE].into_boxed_slice());
}

/// Reads on an idle connection through the scratch buffer; what came is
/// copied into `buf`, made for it then.
fn poll_idle_read<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut rb = ReadBuf::new(scratch);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            // Just what came: a bodiless request's head is a small
            // allocation (the allocator's per-thread cache serves it);
            // more room is made when more is read.
            buf.reserve(got.len());
            buf.extend_from_slice(got);
        }
        Poll::Ready(Ok(got.len()))
    })
}

/// The answer, or `None` when the client closed the connection (or it
/// failed) first. Stops watching at the first byte that comes (a pipelined
/// request's), which stays in `c.buf` for the loop.
async fn unless_client_leaves<T, F>(c: &mut Conn<T>, answer: Pin<Box<F>>) -> Option<F::Output>
where
    T: AsyncRead + Unpin,
    F: std::future::Future,
{
    let mut answer = answer;
    let mut watching = c.buf.is_empty();
    poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if watching {
            let Conn { io, buf } = &mut *c;
            match poll_idle_read(io, buf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Makes room for a read without growing a buffer that has room already.
fn room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
}

/// A request ready for the proxy, and what the loop keeps of its head.
struct Parsed {
    req: Request<ReqBody>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// The request for a head, its values slices of `head`, or why it is refused.
fn request(
    head: &Bytes,
    parsed: &head::RequestHead,
    fields: &[head::Field],
) -> Result<Parsed, framing::Refusal> {
    let bad = |why| framing::Refusal {
        status: StatusCode::BAD_REQUEST,
        why,
    };
    let method = Method::from_bytes(parsed.method.get(head)).map_err(|_| bad("invalid method"))?;
    let target = parsed.target.get(head);
    let uri =
        Uri::from_maybe_shared(head.slice(parsed.target.at..parsed.target.at + parsed.target.len))
            .map_err(|_| bad("invalid request target"))?;
    let mut facts = Facts::default();
    let mut map = http::HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = f.name.get(head);
        match facts.observe(name, f.value.get(head)) {
            // edge frames the body itself and answers `Expect` itself.
            Role::Framing | Role::Expect => continue,
            _ => {}
        }
        let name = HeaderName::from_bytes(name).map_err(|_| bad("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(f.value.at..f.value.at + f.value.len))
                .map_err(|_| bad("invalid header value"))?;
        map.append(name, value);
    }
    let framing = framing::request(&facts, &method, target, parsed.version)?;
    if let Framing::Length(n) = framing {
        // One canonical length, whatever the client wrote.
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let keep_alive = match parsed.version {
        Version::HTTP_10 => facts.connection.keep_alive && !facts.connection.close,
        _ => !facts.connection.close,
    };
    let mut req = Request::new(ReqBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = parsed.version;
    *req.headers_mut() = map;
    Ok(Parsed {
        req,
        framing,
        keep_alive,
        expect_continue: facts.expect_continue,
    })
}

/// The access-log line of a request refused before it was one: what of its
/// head could be read (method and path: from the parsed head, else from a
/// request line in `raw` that has a token and a printable target), `-` for
/// the rest.
fn refused_line(
    info: &ConnInfo,
    head: Option<(&head::RequestHead, &[u8])>,
    raw: &[u8],
) -> Box<Record> {
    let mut words = raw
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .split(|&b| b == b' ');
    let (m, t) = (words.next(), words.next());
    let printable = |t: &&[u8]| !t.is_empty() && t.iter().all(|b| (0x21..0x7f).contains(b));
    let method = match head {
        Some((h, buf)) => Some(h.method.get(buf)),
        None => m,
    };
    let target = match head {
        Some((h, buf)) => Some(h.target.get(buf)),
        None => t,
    }
    .filter(printable)
    .map(String::from_utf8_lossy);
    Box::new(Record {
        client: info.peer.ip(),
        method: method
            .and_then(|m| Method::from_bytes(m).ok())
            .unwrap_or_else(|| Method::from_bytes(b"-").expect("a token")),
        host: String::new(),
        path: target.map_or_else(|| "-".into(), |t| t.split('?').next().unwrap_or("").into()),
        status: 0,
        upstream: None,
        start: std::time::Instant::now(),
        version: head.map_or(Version::HTTP_11, |(h, _)| h.version),
    })
}

/// Answers a request edge refuses before it is a request (its head or
/// framing), with what `error::respond` makes of the error, and closes.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<T>,
    out: &mut Vec<u8>,
    e: &ProxyError,
    line: Option<Box<Record>>,
) -> io::Result<()> {
    respond(
        &mut c.io,
        out,
        respond::refusal(e, line),
        false,
        Version::HTTP_11,
        true,
    )
    .await?;
    linger(c).await
}

/// Half-closes, then reads and drops what the client still sends, for a
/// while: see [`LINGER_TIME`].
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(c: &mut Conn<T>) -> io::Result<()> {
    c.io.shutdown().await?;
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            c.buf.clear();
            room(&mut c.buf);
            match c.io.read_buf(&mut c.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    Ok(())
}

/// Reads and drops the `left` body bytes the upstream did not read; whether
/// they all came within `idle` of each other.
async fn discard<T: AsyncRead + Unpin>(c: &mut Conn<T>, mut left: u64, idle: Duration) -> bool {
    loop {
        let n = left.min(c.buf.len() as u64);
        c.buf.advance(n as usize);
        left -= n;
        if left == 0 {
            return true;
        }
        room(&mut c.buf);
        match tokio::time::timeout(idle, c.io.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How much of a request body is left to read.
#[derive(Debug)]
enum BodyRead {
    Length(u64),
    Chunked(Decoder),
    Done,
}

/// What a request body hands back to the loop when it is dropped.
struct Returned<T> {
    conn: Box<Conn<T>>,
    read: BodyRead,
}

/// A request body, read from the client connection as the proxy asks for it.
pub struct H1Body<T> {
    conn: Option<Box<Conn<T>>>,
    read: BodyRead,
    /// Bytes of `100 Continue` still to write before the first read.
    continue_left: usize,
    back: Option<oneshot::Sender<Returned<T>>>,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    #[error("client: {0}")]
    Io(#[from] io::Error),
    #[error("the client closed the connection {0} bytes short of Content-Length")]
    Short(u64),
    #[error("the client closed the connection mid-chunk")]
    ChunkCut,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

impl<T> Drop for H1Body<T> {
    fn drop(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            let read = std::mem::replace(&mut self.read, BodyRead::Done);
            let _ = back.send(Returned { conn, read });
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> H1Body<T> {
    /// Reads more into the buffer; `Ok(false)` at end of stream.
    fn poll_fill(c: &mut Conn<T>, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        room(&mut c.buf);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut c.io),
            cx,
            &mut c.buf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let Some(c) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        while self.continue_left > 0 {
            let at = CONTINUE.len() - self.continue_left;
            let n = ready!(Pin::new(&mut c.io).poll_write(cx, &CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::WriteZero).into())));
            }
            self.continue_left -= n;
            if self.continue_left == 0 {
                ready!(Pin::new(&mut c.io).poll_flush(cx))?;
            }
        }
        loop {
            match &mut self.read {
                BodyRead::Done => return Poll::Ready(None),
                BodyRead::Length(left) => {
                    if !c.buf.is_empty() {
                        let n = (*left).min(c.buf.len() as u64) as usize;
                        let data = super::client::take(&mut c.buf, n);
                        *left -= n as u64;
                        if *left == 0 {
                            self.read = BodyRead::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let left = *left;
                    if !ready!(Self::poll_fill(c, cx))? {
                        return Poll::Ready(Some(Err(H1BodyError::Short(left))));
                    }
                }
                BodyRead::Chunked(d) => match d.step(&mut c.buf) {
                    Ok(chunked::Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    // Trailers from the client are dropped, as nginx drops them.
                    Ok(chunked::Step::End(_)) => {
                        self.read = BodyRead::Done;
                        return Poll::Ready(None);
                    }
                    Ok(chunked::Step::More) => {
                        if !ready!(Self::poll_fill(c, cx))? {
                            return Poll::Ready(Some(Err(H1BodyError::ChunkCut)));
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(H1BodyError::Chunked(e)))),
                },
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> http_body::Body for H1Body<T> {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        self.poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.read, BodyRead::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.read {
            BodyRead::Done => SizeHint::with_exact(0),
            BodyRead::Length(n) => SizeHint::with_exact(n),
            BodyRead::Chunked(_) => SizeHint::default(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientBody for H1Body<T> {}

/// Writes one answer. `Ok(true)`: the connection can carry another request.
/// `version` is the client's: an HTTP/1.0 client gets no chunking (the body
/// then ends with the connection).
async fn respond<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    resp: http::Response<Body>,
    is_head: bool,
    version: Version,
    closing: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let raw = match body.inner_mut() {
        Either::Left(up) => up.take_raw_head(),
        Either::Right(_) => None,
    };
    let mut body = std::pin::pin!(body);
    let status = parts.status;
    out.clear();
    // Once, not by doubling from nothing (a large `out` is dropped while idle).
    out.reserve(OUT_KEPT);
    headers::write_status_line(out, status);
    let mut length = None;
    let mut keep_alive = !closing;
    let mut dated = false;
    if let Some(raw) = raw {
        // The upstream's fields, framing ones already left out (`RawHead`).
        out.extend_from_slice(&raw.lines);
        dated = raw.dated;
    }
    for (name, value) in parts.headers.iter() {
        if name == header::CONTENT_LENGTH {
            length = framing::content_length(value.as_bytes());
        } else if name == header::CONNECTION {
            keep_alive &= !framing::connection_tokens(value.as_bytes()).close;
            continue;
        } else if name == header::DATE {
            dated = true;
        }
        headers::write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        headers::write_date(out, std::time::Instant::now());
    }
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        use std::io::Write as _;
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else if version == Version::HTTP_10 {
        // No chunking for HTTP/1.0: the body ends with the connection.
        keep_alive = false;
        Framing::Close
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let complete = match framing {
        Framing::None => true,
        Framing::Length(n) => send_body(io, out, body.as_mut(), Some(n), false).await?,
        Framing::Chunked => send_body(io, out, body.as_mut(), None, true).await?,
        _ => send_body(io, out, body.as_mut(), None, false).await?,
    };
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await?;
    if bodiless {
        body.sent();
    }
    Ok(keep_alive && complete)
}

/// Writes the body behind what `out` holds; `left`: its declared length.
/// `Ok(false)` when it ended short or failed: the client can only tell from
/// the connection closing.
async fn send_body<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    mut body: Pin<&mut Body>,
    mut left: Option<u64>,
    chunked: bool,
) -> io::Result<bool> {
    loop {
        // What is ready goes behind the head; only a wait flushes first.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Ok(false),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers are not sent on (as nginx).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if let Some(l) = left.as_mut() {
            if data.len() as u64 > *l {
                // More than the head said: the answer cannot be framed.
                return Ok(false);
            }
            *l -= data.len() as u64;
        }
        if chunked {
            use std::io::Write as _;
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= COALESCE {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
        return Ok(true);
    }
    Ok(left.is_none_or(|l| l == 0))
}

/// A `101`: writes its head, then copies bytes both ways between the client
/// and the upstream until either side closes or neither sends anything for
/// the site's `response_timeout` (nginx's `proxy_read_timeout` for tunnels).
async fn tunnel<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: Timed<T>,
    early: BytesMut,
    out: &mut Vec<u8>,
    resp: http::Response<Body>,
    info: &ConnInfo,
) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let tunnel = match body.inner_mut() {
        Either::Left(up) => up.take_tunnel(),
        Either::Right(_) => None,
    };
    let Some(t) = tunnel else {
        // A 101 with no upstream connection behind it: nothing to tunnel to.
        return io.shutdown().await;
    };
    out.clear();
    headers::write_status_line(out, parts.status);
    for (name, value) in parts.headers.iter() {
        headers::write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    io.write_all(out).await?;
    io.flush().await?;
    body.sent();
    drop(body);
    crate::proxy::tunnel::run(io.into_inner(), early, t, info.peer).await;
    Ok(())
}

/// A connection with bytes already read from it put back in front, for the
/// HTTP/2 server to read first.
pub struct Prefixed<T> {
    pre: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    fn new(pre: BytesMut, io: T) -> Self {
        Prefixed {
            pre: pre.freeze(),
            io,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
