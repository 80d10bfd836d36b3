//! edge's own HTTP/1.1 server loop for the common request on the HTTPS
//! listener, with hyper's server behind it for everything else.
//!
//! Most HTTPS/1.1 traffic is keep-alive requests without a body. For those,
//! hyper's general machinery (its dispatch loop, buffered IO, service future
//! and response encoder) was the largest part of edge's user-space CPU
//! (bench/notes.md). Here such a request is parsed in place from one read
//! buffer, goes through the same `Proxy::handle` as any other, and its answer's
//! head and first body bytes leave in one write.
//!
//! Nothing unusual is decided here. The first head this loop does not take as
//! it is (a body, `Expect`, an upgrade, HTTP/1.0, a
//! target that is not origin-form, anything malformed or over a limit, an
//! HTTP/2 preface) hands the connection to hyper, with the bytes read so far
//! put back in front (`Prefixed`), for the rest of its life: hyper answers it
//! exactly as it did before this loop existed, errors and limits included.
//! The framing guard under both sees the same byte stream either way.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::framing::Guard;
use super::headers;
use super::shutdown::Stop;
use super::{Body, ConnInfo, Proxy};

/// Read into at least this much free space.
const READ_SIZE: usize = 8192;
/// Body data up to this size is copied behind the head into one write;
/// larger data is written from where it is.
const COALESCE: usize = 16 * 1024;

/// How the loop ended.
pub enum Served<T> {
    /// The connection is closed (or failed); nothing more to do.
    Closed(io::Result<()>),
    /// A request this loop does not take: hyper serves the connection from
    /// here on, starting with the bytes already read.
    HandOff(Prefixed<T>),
}

/// What the head at the front of the buffer is.
enum Parse {
    More,
    HandOff,
    /// Complete and plain: `len` bytes long.
    Plain {
        len: usize,
        method: Method,
        path: (usize, usize),
        /// `Connection: close`: the answer is the last on this connection.
        close: bool,
    },
}

/// A header field of a parsed head: its name, and where its value lies.
type Field = (HeaderName, usize, usize);

/// Parses the head at the front of `buf`; fills `fields` for a plain one.
fn parse(buf: &[u8], max_head: usize, fields: &mut Vec<Field>) -> Parse {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; headers::MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; headers::MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parse::More,
        // Too long, too many fields, malformed, or not HTTP/1 at all: hyper's to answer.
        _ => return Parse::HandOff,
    };
    if req.version != Some(1) {
        return Parse::HandOff;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parse::HandOff;
    };
    if !path.starts_with('/') {
        return Parse::HandOff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::HandOff;
    };
    let base = buf.as_ptr() as usize;
    let mut close = false;
    fields.clear();
    for f in req.headers.iter() {
        if !plain_field(f, &mut close) {
            fields.clear();
            return Parse::HandOff;
        }
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            fields.clear();
            return Parse::HandOff;
        };
        fields.push((name, f.value.as_ptr() as usize - base, f.value.len()));
    }
    Parse::Plain {
        len,
        method,
        path: (path.as_ptr() as usize - base, path.len()),
        close,
    }
}

/// Whether a field leaves the request one this loop serves: no body
/// (`Content-Length`, `Transfer-Encoding`), nothing that changes the
/// connection (`Upgrade`, `Expect`, `Connection` naming anything but
/// keep-alive or close), no trailers asked for (`TE`). Sets `close` for
/// `Connection: close`.
fn plain_field(f: &httparse::Header<'_>, close: &mut bool) -> bool {
    let n = f.name.as_bytes();
    let is = |s: &[u8]| n.eq_ignore_ascii_case(s);
    match n.len() {
        2 => !is(b"te"),
        6 => !is(b"expect"),
        7 => !is(b"upgrade"),
        10 => {
            if !is(b"connection") {
                return true;
            }
            let t = headers::connection_tokens(f.value);
            *close |= t.close;
            !t.other
        }
        14 => !is(b"content-length"),
        17 => !is(b"transfer-encoding"),
        _ => true,
    }
}

/// Serves plain requests on `io` until it closes or a request needs hyper.
pub async fn serve<T>(
    mut io: Guard<T>,
    proxy: &Arc<Proxy>,
    info: &Arc<ConnInfo>,
    max_head: usize,
    stop: &mut Stop,
) -> Served<Guard<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    io.defer_scan();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut fields: Vec<Field> = Vec::new();
    loop {
        let (len, method, path, close) = loop {
            if !buf.is_empty() {
                match parse(&buf, max_head, &mut fields) {
                    Parse::Plain {
                        len,
                        method,
                        path,
                        close,
                    } => break (len, method, path, close),
                    Parse::HandOff => return Served::HandOff(Prefixed::new(buf, io)),
                    Parse::More => {}
                }
            }
            buf.reserve(READ_SIZE);
            let read = if buf.is_empty() {
                // Between requests: shutdown closes an idle connection at once.
                match stop.read_or_stop(&mut io, &mut buf).await {
                    Some(r) => r,
                    None => return Served::Closed(io.shutdown().await),
                }
            } else {
                io.read_buf(&mut buf).await
            };
            match read {
                // The client is done (TLS close_notify or FIN): say goodbye back.
                Ok(0) => return Served::Closed(io.shutdown().await.or(Ok(()))),
                Ok(_) => {}
                Err(e) => return Served::Closed(Err(e)),
            }
        };
        let head = buf.split_to(len).freeze();
        let req = match request(&head, method, path, &mut fields) {
            Some(r) => r,
            None => {
                // A value or target hyper would refuse: let it, from this head on.
                let mut pre = BytesMut::with_capacity(head.len() + buf.len());
                pre.extend_from_slice(&head);
                pre.extend_from_slice(&buf);
                return Served::HandOff(Prefixed::new(pre, io));
            }
        };
        drop(head);
        let is_head = req.method() == Method::HEAD;
        // The clock was read when the head's last bytes came in.
        let start = io
            .last_activity()
            .map_or_else(std::time::Instant::now, tokio::time::Instant::into_std);
        let Ok(resp) = proxy.clone().handle(req, info.clone(), start).await;
        let closing = close || stop.is_set();
        match respond(&mut io, &mut out, resp, is_head, closing).await {
            Ok(true) if !closing => {}
            // TLS close_notify, then FIN, as hyper closes.
            Ok(_) => return Served::Closed(io.shutdown().await),
            Err(e) => return Served::Closed(Err(e)),
        }
    }
}

/// The request for a plain head, its values slices of `head`. `None` when a
/// value or the target is not what hyper would accept.
fn request(
    head: &Bytes,
    method: Method,
    path: (usize, usize),
    fields: &mut Vec<Field>,
) -> Option<Request<Option<Incoming>>> {
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)).ok()?;
    let mut headers = http::HeaderMap::with_capacity(fields.len());
    for (name, at, len) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + len)).ok()?;
        headers.append(name, value);
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// How an answer's body is framed on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes one answer. `Ok(true)`: the connection can carry another request.
async fn respond<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    resp: http::Response<Body>,
    is_head: bool,
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
    headers::write_status_line(out, status);
    let mut length = None;
    let mut keep_alive = true;
    let mut dated = false;
    if let Some(raw) = raw {
        // The upstream's fields, framing ones already left out (`RawHead`).
        out.extend_from_slice(&raw.lines);
        length = raw.length;
        dated = raw.dated;
    }
    for (name, value) in parts.headers.iter() {
        if name == header::CONTENT_LENGTH {
            length = headers::content_length(value.as_bytes(), length).ok();
        } else if name == header::CONNECTION {
            keep_alive &= !headers::connection_tokens(value.as_bytes()).close;
        } else if name == header::DATE {
            dated = true;
        }
        headers::write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        headers::write_date(out, std::time::Instant::now());
    }
    if closing && keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
        keep_alive = false;
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
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    let complete = match framing {
        Framing::None => true,
        Framing::Length(n) => send_body(io, out, body.as_mut(), Some(n)).await?,
        Framing::Chunked => send_body(io, out, body.as_mut(), None).await?,
    };
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await?;
    Ok(keep_alive && complete)
}

/// Writes the body behind what `out` holds; `left`: its declared length, or
/// `None` to chunk it. `Ok(false)` when it ended short or failed: the client
/// can only tell from the connection closing.
async fn send_body<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    mut body: Pin<&mut Body>,
    mut left: Option<u64>,
) -> io::Result<bool> {
    let chunked = left.is_none();
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
                // Trailers: hyper sends them only when the request asked (TE),
                // which sends the connection to hyper.
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
        } else {
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
    Ok(left == Some(0))
}

/// A connection with bytes already read from it put back in front, for
/// hyper to read first.
pub struct Prefixed<T> {
    pre: Bytes,
    io: T,
}

impl<T> Prefixed<Guard<T>> {
    /// The framing guard scans `pre` now, as hyper will read it first.
    fn new(mut pre: BytesMut, mut io: Guard<T>) -> Self {
        io.resume_scan(&mut pre);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parse` makes of a head: "plain", "plain close", "more" or "hand off".
    fn kind(head: &[u8], max_head: usize) -> &'static str {
        let mut fields = Vec::new();
        match parse(head, max_head, &mut fields) {
            Parse::Plain { close: false, .. } => "plain",
            Parse::Plain { close: true, .. } => "plain close",
            Parse::More => "more",
            Parse::HandOff => "hand off",
        }
    }

    #[test]
    fn only_bodyless_http11_origin_form_heads_stay_in_edges_loop() {
        let get = |extra: &str| format!("GET /a?b HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        for (extra, want) in [
            ("", "plain"),
            ("Connection: keep-alive\r\n", "plain"),
            ("Connection: Close\r\n", "plain close"),
            ("Connection: keep-alive, close\r\n", "plain close"),
            ("Connection: upgrade\r\nUpgrade: websocket\r\n", "hand off"),
            ("Connection: X-Forwarded-For\r\n", "hand off"),
            ("Content-Length: 0\r\n", "hand off"),
            ("content-length: 5\r\n", "hand off"),
            ("Transfer-Encoding: chunked\r\n", "hand off"),
            ("Expect: 100-continue\r\n", "hand off"),
            ("TE: trailers\r\n", "hand off"),
            ("Upgrade: h2c\r\n", "hand off"),
        ] {
            assert_eq!(kind(get(extra).as_bytes(), 8192), want, "{extra:?}");
        }
        for head in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(kind(head.as_bytes(), 8192), "hand off", "{head:?}");
        }
    }

    #[test]
    fn a_partial_head_waits_until_it_reaches_the_limit_then_goes_to_hyper() {
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaa";
        assert_eq!(kind(partial, 8192), "more");
        // At the limit, hyper answers (431).
        assert_eq!(kind(partial, partial.len()), "hand off");
        // A complete head longer than the limit, and more fields than 100.
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "a".repeat(100)
        );
        assert_eq!(kind(long.as_bytes(), 64), "hand off");
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(kind(many.as_bytes(), 65536), "hand off");
    }

    #[test]
    fn values_are_slices_of_the_head() {
        let head =
            Bytes::from_static(b"GET /p?q=1 HTTP/1.1\r\nHost: x\r\nX-A: one\r\nX-A: two\r\n\r\n");
        let mut fields = Vec::new();
        let Parse::Plain { method, path, .. } = parse(&head, 8192, &mut fields) else {
            panic!("not plain");
        };
        let req = request(&head, method, path, &mut fields).unwrap();
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["one", "two"]);
        assert!(req.body().is_none());
        // Bytes past ASCII in the target: both parsers take them, so edge does.
        let head = Bytes::from_static(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut fields = Vec::new();
        let Parse::Plain { method, path, .. } = parse(&head, 8192, &mut fields) else {
            panic!("httparse refused the target");
        };
        let req = request(&head, method, path, &mut fields).unwrap();
        assert_eq!(req.uri().path(), "/caf\u{e9}");
    }
}
