//! The plain-HTTP listener: every request is answered with a redirect to
//! HTTPS (or a 400 / 404 page), and nothing is forwarded anywhere.
//!
//! 308 is the default because it keeps the method and body (a POST stays a
//! POST); `listen.redirect = 301` gives nginx's `permanent` behaviour.
//!
//! Since this listener only ever answers, it does not run hyper's server:
//! each request head is parsed in place in one reused read buffer (httparse,
//! as hyper does), its answer is appended to one reused write buffer, and the
//! answers to pipelined requests leave in one write. hyper's general machinery
//! (a `Request` with its URI and header map, a service future, a `Response`,
//! the dispatch loop) was most of this listener's user-space CPU, with the
//! same two syscalls per request as here (bench/notes.md).
//!
//! What hyper did here that this keeps: a head longer than
//! `max_header_bytes` or with more than 100 fields is 431, a malformed one
//! 400, and either ends the connection; HTTP/1.0 is closed after the answer
//! unless it asks for keep-alive; `Connection: close` is honoured; a
//! request body is read and dropped so the connection can go on (up to
//! `DISCARD_MAX` with a `Content-Length`; anything else ends it after the
//! answer); answers carry `Date`; on shutdown an idle connection closes at
//! once and one in the middle of a head gets its answer with
//! `Connection: close`. The deadlines (head, keep-alive, send) are the
//! framing guard's, as before.

use std::io::{self, Write as _};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::access_log::{self, Record};
use super::error::ProxyError;
use super::shutdown::Stop;
use super::{error, headers};
use crate::config::AccessLog;
use crate::http1::{framing, head};
use crate::names;

/// Kept free for HTTP-01 validation, which is answered on this listener.
pub const ACME_HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// A request body up to this size is read and dropped to keep the
/// connection; a larger or chunked one ends the connection after the answer.
const DISCARD_MAX: u64 = 64 * 1024;
/// After an answer that ends a connection while the client may still be
/// sending (a body not read, a broken head), what it sends is read and dropped
/// for up to this long and this much before closing: closing a socket with
/// unread input sends a reset, which can destroy the answer before the client
/// has read it (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Read into at least this much free space.
const READ_SIZE: usize = 4096;

#[derive(Debug, Clone)]
pub struct Redirect {
    pub https_port: u16,
    pub status: StatusCode,
    pub access: AccessLog,
}

/// What answering the request at the front of the buffer did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The head is not complete yet.
    More,
    /// Answered: the head was `len` bytes and `body` bytes follow it.
    Answered { len: usize, body: u64, end: End },
}

/// Whether the connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    KeepAlive,
    /// Close after the answer; the client has sent all it meant to.
    Close,
    /// Close after the answer, but the client may still be sending: linger.
    Linger,
}

/// The parts of a request head that decide its answer.
struct Head<'a> {
    method: &'a str,
    /// The request target as sent.
    target: &'a str,
    http10: bool,
    host: Option<&'a str>,
    /// Two or more Host fields.
    hosts: bool,
    facts: framing::Facts,
}

/// Reads the fields that decide the answer, with the one rule set of
/// `http1::framing` (the same as the HTTPS listener's).
fn read_head<'a>(buf: &'a [u8], parsed: &head::RequestHead, fields: &[head::Field]) -> Head<'a> {
    let text = |s: head::Span| std::str::from_utf8(s.get(buf)).unwrap_or("\0");
    let mut h = Head {
        method: text(parsed.method),
        target: text(parsed.target),
        http10: parsed.version == http::Version::HTTP_10,
        host: None,
        hosts: false,
        facts: framing::Facts::default(),
    };
    for f in fields {
        let (name, value) = (f.name.get(buf), f.value.get(buf));
        if name.eq_ignore_ascii_case(b"host") {
            h.hosts |= h.host.is_some();
            h.host = Some(std::str::from_utf8(value).unwrap_or("\0"));
        } else {
            h.facts.observe(name, value);
        }
    }
    h
}

/// Splits a request target into the authority it names (absolute form) and
/// its path and query. `None` for a form edge does not redirect (CONNECT's
/// authority form) or bytes a Location header must not carry.
fn split_target(target: &str) -> Option<(Option<&str>, &str)> {
    if !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return None;
    }
    if target.starts_with('/') || target == "*" {
        return Some((None, target));
    }
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(cut);
    Some((Some(authority), if pq.is_empty() { "/" } else { pq }))
}

/// The host to redirect to, only if it is a plain host name or IP: anything
/// else (no Host, two Hosts, odd bytes) would make the Location header a weapon.
fn usable_host<'a>(authority: Option<&'a str>, head: &Head<'a>) -> Option<&'a str> {
    let raw = match (authority, head.host, head.hosts) {
        (_, _, true) => return None,
        (Some(a), _, _) => a,
        (None, Some(h), false) => h,
        (None, None, _) => return None,
    };
    let host = names::host_without_port(raw);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    ok.then_some(host)
}

/// `https://host[:port]/path?query`, written straight into the answer.
/// `host` is already checked by `usable_host`, the rest by `split_target`.
fn write_location(out: &mut Vec<u8>, host: &str, https_port: u16, path_and_query: &str) {
    out.extend_from_slice(b"https://");
    let v6 = host.contains(':');
    if v6 {
        out.push(b'[');
    }
    out.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
    if v6 {
        out.push(b']');
    }
    if https_port != 443 {
        let _ = write!(out, ":{https_port}");
    }
    if !path_and_query.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(path_and_query.as_bytes());
}

/// The status line and the headers every answer has; the caller adds its own
/// and the blank line.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    end: End,
    http10_keep_alive: bool,
    now: Instant,
) {
    headers::write_status_line(out, status);
    headers::write_date(out, now);
    if end != End::KeepAlive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10_keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// An error page; `with_body` false for HEAD. Returns the body's length sent.
fn write_page(
    out: &mut Vec<u8>,
    status: StatusCode,
    end: End,
    ka10: bool,
    with_body: bool,
    now: Instant,
) -> u64 {
    let body = error::builtin(status);
    write_head(out, status, end, ka10, now);
    let _ = write!(
        out,
        "content-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if with_body {
        out.extend_from_slice(&body);
        body.len() as u64
    } else {
        0
    }
}

/// The access-log line of one answered request; `path` may carry a query,
/// which the line leaves out.
fn log(
    client: IpAddr,
    head: &Head<'_>,
    path: &str,
    host: Option<&str>,
    status: StatusCode,
    bytes: u64,
    start: Instant,
) {
    let record = Record {
        client,
        method: Method::from_bytes(head.method.as_bytes()).unwrap_or(Method::GET),
        host: host.map(str::to_ascii_lowercase).unwrap_or_default(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        status: status.as_u16(),
        upstream: None,
        start,
        version: if head.http10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        },
    };
    access_log::emit(&record, bytes, access_log::End::Done);
}

impl Redirect {
    /// Answers the request whose head starts `buf`, appending the answer to
    /// `out`. `closing`: the listener is shutting down.
    fn answer(
        &self,
        buf: &[u8],
        max_head: usize,
        closing: bool,
        out: &mut Vec<u8>,
        client: IpAddr,
    ) -> Step {
        let refuse = |out: &mut Vec<u8>, status| {
            write_page(out, status, End::Linger, false, true, Instant::now());
            Step::Answered {
                len: buf.len(),
                body: 0,
                end: End::Linger,
            }
        };
        let read = head::with_scratch(|fields| {
            head::request(buf, max_head, fields)
                .map(|h| h.map(|h| (h.len, h.version, read_head(buf, &h, fields))))
        });
        let (len, version, head) = match read {
            Ok(Some(h)) => h,
            Ok(None) => return Step::More,
            // The status is the one error type's, as on the HTTPS listener.
            Err(e) => return refuse(out, ProxyError::from(e).status()),
        };
        let start = Instant::now();
        let method = http::Method::from_bytes(head.method.as_bytes()).unwrap_or(Method::GET);
        let framing = match framing::request(&head.facts, &method, head.target.as_bytes(), version)
        {
            Ok(f) => f,
            Err(refusal) => return refuse(out, ProxyError::from(refusal).status()),
        };
        let (length, chunked) = match framing {
            framing::Framing::Length(n) => (n, false),
            framing::Framing::Chunked => (0, true),
            _ => (0, false),
        };
        let (close, keep_alive) = (
            head.facts.connection.close,
            head.facts.connection.keep_alive,
        );
        // A body is dropped in place only when its end is known and near, and
        // the client is not waiting for a 100 that will never come.
        let end = if chunked || length > DISCARD_MAX || (head.facts.expect_continue && length > 0) {
            End::Linger
        } else if closing || close || (head.http10 && !keep_alive) {
            End::Close
        } else {
            End::KeepAlive
        };
        let body = if end == End::Linger { 0 } else { length };
        let ka10 = head.http10 && end == End::KeepAlive;
        let target = split_target(head.target);
        let host = target.and_then(|(authority, _)| usable_host(authority, &head));
        let (status, sent, end) = match (target, host) {
            (Some((_, pq)), Some(host)) if !pq.starts_with(ACME_HTTP01_PREFIX) => {
                write_head(out, self.status, end, ka10, start);
                out.extend_from_slice(b"location: ");
                write_location(out, host, self.https_port, pq);
                out.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                (self.status, 0, end)
            }
            (Some((_, pq)), Some(_)) => {
                let with_body = head.method != "HEAD";
                let token = pq.strip_prefix(ACME_HTTP01_PREFIX).unwrap_or_default();
                match crate::acme::challenges::CHALLENGES.http01(token) {
                    // An HTTP-01 answer of an order in progress.
                    Some(ka) => {
                        write_head(out, StatusCode::OK, end, ka10, start);
                        let _ = write!(
                            out,
                            "content-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                            ka.len()
                        );
                        if with_body {
                            out.extend_from_slice(ka.as_bytes());
                        }
                        (
                            StatusCode::OK,
                            if with_body { ka.len() as u64 } else { 0 },
                            end,
                        )
                    }
                    None => {
                        let sent =
                            write_page(out, StatusCode::NOT_FOUND, end, ka10, with_body, start);
                        (StatusCode::NOT_FOUND, sent, end)
                    }
                }
            }
            _ => {
                // No usable host or target: 400, and the connection ends, as
                // hyper ended it; with a body left unread, lingering.
                let end = if end == End::Linger || body > 0 {
                    End::Linger
                } else {
                    End::Close
                };
                let with_body = head.method != "HEAD";
                let sent = write_page(out, StatusCode::BAD_REQUEST, end, false, with_body, start);
                (StatusCode::BAD_REQUEST, sent, end)
            }
        };
        if self.access != AccessLog::Off {
            let path = target.map_or(head.target, |(_, pq)| pq);
            log(client, &head, path, host, status, sent, start);
        }
        Step::Answered { len, body, end }
    }

    /// Serves one connection until the client closes it, a deadline of the
    /// framing guard under `io` ends it, or the listener shuts down.
    pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: T,
        client: IpAddr,
        max_head: usize,
        stop: &mut Stop,
    ) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut out = Vec::with_capacity(512);
        // Body bytes still to drop before the next head.
        let mut skip: u64 = 0;
        loop {
            let mut end = End::KeepAlive;
            // Once per read: every answer of this batch says the same.
            let closing = stop.is_set();
            loop {
                if skip > 0 {
                    let n = skip.min(buf.len() as u64);
                    buf.advance(n as usize);
                    skip -= n;
                    if skip > 0 {
                        break;
                    }
                }
                if buf.is_empty() {
                    break;
                }
                match self.answer(&buf, max_head, closing, &mut out, client) {
                    Step::More => break,
                    Step::Answered { len, body, end: e } => {
                        buf.advance(len);
                        skip = body;
                        if e != End::KeepAlive {
                            end = e;
                            break;
                        }
                    }
                }
            }
            if !out.is_empty() {
                io.write_all(&out).await?;
                out.clear();
            }
            match end {
                End::KeepAlive => {}
                End::Close => return io.shutdown().await,
                End::Linger => {
                    linger(&mut io, &mut buf).await;
                    return Ok(());
                }
            }
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            let n = if buf.is_empty() && skip == 0 {
                // Idle between requests: shutting down closes it now.
                match stop.read_or_stop(&mut io, &mut buf).await {
                    Some(r) => r?,
                    None => return Ok(()),
                }
            } else {
                io.read_buf(&mut buf).await?
            };
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// Half-closes, then reads and drops what the client still sends, for a
/// while: see [`LINGER_TIME`].
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T, buf: &mut BytesMut) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            buf.clear();
            buf.reserve(READ_SIZE);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn redirect() -> Redirect {
        Redirect {
            https_port: 8443,
            status: StatusCode::PERMANENT_REDIRECT,
            access: AccessLog::Off,
        }
    }

    /// Answers `input` as a connection would, without I/O: the answers and
    /// how the connection ended (`None`: it waits for more).
    fn converse(input: &[u8], max_head: usize, closing: bool) -> (String, Option<End>) {
        let r = redirect();
        let mut buf = input;
        let mut out = Vec::new();
        loop {
            match r.answer(buf, max_head, closing, &mut out, CLIENT) {
                Step::More => return (String::from_utf8(out).unwrap(), None),
                Step::Answered { len, body, end } => {
                    let skip = len + body as usize;
                    buf = &buf[skip.min(buf.len())..];
                    if end != End::KeepAlive || buf.is_empty() {
                        return (String::from_utf8(out).unwrap(), Some(end));
                    }
                }
            }
        }
    }

    fn location_of(target: &str, host: &str) -> Option<String> {
        let req = format!("GET {target} HTTP/1.1\r\n{host}\r\n");
        let (out, _) = converse(req.as_bytes(), 32 * 1024, false);
        out.lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::to_string)
    }

    #[test]
    fn location_keeps_path_and_query_and_names_the_port() {
        for (target, host, want) in [
            (
                "/a/b?x=1&y",
                "Host: Flask.Test:80\r\n",
                "https://flask.test:8443/a/b?x=1&y",
            ),
            ("/p", "Host: [::1]:80\r\n", "https://[::1]:8443/p"),
            ("/*", "Host: flask.test\r\n", "https://flask.test:8443/*"),
            // Absolute form: its authority stands for Host.
            (
                "http://Abs.Test:8080/x?q",
                "Host: other.test\r\n",
                "https://abs.test:8443/x?q",
            ),
            ("http://abs.test", "", "https://abs.test:8443/"),
        ] {
            assert_eq!(
                location_of(target, host).as_deref(),
                Some(want),
                "{target} {host:?}"
            );
        }
        let mut out = Vec::new();
        write_location(&mut out, "flask.test", 443, "/");
        assert_eq!(out, b"https://flask.test/");
    }

    #[test]
    fn only_plain_hosts_are_redirected_to() {
        for (target, host) in [
            ("/", ""),
            ("/", "Host: a.test\r\nHost: b.test\r\n"),
            ("/", "Host: evil.test/x\r\n"),
            ("/", "Host: a b\r\n"),
            ("/", "Host: user@a.test\r\n"),
            ("http://user@a.test/", ""),
            ("ftp://a.test/", ""),
            ("a.test:443", "Host: a.test\r\n"),
        ] {
            let req = format!("GET {target} HTTP/1.1\r\n{host}\r\n");
            let (out, end) = converse(req.as_bytes(), 32 * 1024, false);
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{req:?}: {out}"
            );
            assert!(!out.contains("location"), "{req:?}: {out}");
            assert_eq!(end, Some(End::Close), "{req:?}");
        }
    }

    #[test]
    fn pipelined_requests_and_dropped_bodies_keep_the_connection() {
        let (out, end) = converse(
            b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n\
              POST /2 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\n\r\nGET /x\
              \r\nGET /3 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            32 * 1024,
            false,
        );
        let locations: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("location: "))
            .collect();
        // The body that looks like a request line is never answered; a stray
        // CRLF between requests is passed over, as hyper does.
        assert_eq!(
            locations,
            [
                "https://a.test:8443/1",
                "https://a.test:8443/2",
                "https://a.test:8443/3"
            ]
        );
        assert_eq!(end, Some(End::KeepAlive));
        assert_eq!(out.matches("date: ").count(), 3, "{out}");
    }

    #[test]
    fn bodies_edge_does_not_drop_end_the_connection() {
        for req in [
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000000\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        ] {
            let (out, end) = converse(req.as_bytes(), 32 * 1024, false);
            assert!(out.starts_with("HTTP/1.1 308 "), "{req:?}: {out}");
            assert!(out.contains("connection: close\r\n"), "{req:?}: {out}");
            assert_eq!(end, Some(End::Linger), "{req:?}");
        }
        let (out, end) = converse(
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            32 * 1024,
            false,
        );
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert_eq!(end, Some(End::Linger));
        // The one framing rule set of the HTTPS listener holds here too: a
        // list of lengths, equal or not, and both framings are 400, and what
        // follows is never answered.
        for req in [
            &b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2, 2\r\n\r\nxxGET /n HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nxxGET /n HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ] {
            let (out, end) = converse(req, 32 * 1024, false);
            assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
            assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
            assert_eq!(end, Some(End::Linger));
        }
        let (out, _) = converse(
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            32 * 1024,
            false,
        );
        assert!(out.starts_with("HTTP/1.1 501 "), "{out}");
    }

    #[test]
    fn close_http10_and_shutdown_end_the_connection() {
        let cases: [(&str, bool, &str, End); 5] = [
            (
                "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                false,
                "connection: close",
                End::Close,
            ),
            (
                "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n",
                false,
                "connection: close",
                End::Close,
            ),
            (
                "GET / HTTP/1.0\r\nHost: a.test\r\nConnection: Keep-Alive\r\n\r\n",
                false,
                "connection: keep-alive",
                End::KeepAlive,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
                true,
                "connection: close",
                End::Close,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
                false,
                "",
                End::KeepAlive,
            ),
        ];
        for (req, closing, header, want) in cases {
            let (out, end) = converse(req.as_bytes(), 32 * 1024, closing);
            assert!(out.starts_with("HTTP/1.1 308 "), "{req:?}: {out}");
            assert_eq!(end, Some(want), "{req:?}");
            if header.is_empty() {
                assert!(!out.contains("connection:"), "{req:?}: {out}");
            } else {
                assert!(out.contains(&format!("{header}\r\n")), "{req:?}: {out}");
            }
        }
    }

    #[test]
    fn oversized_or_broken_heads_are_refused() {
        let long = format!(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2000)
        );
        let (out, end) = converse(long.as_bytes(), 1024, false);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert_eq!(end, Some(End::Linger));
        // Still incomplete but already over the cap: 431 without waiting for the rest.
        let (out, _) = converse(&long.as_bytes()[..1500], 1024, false);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        // Under the cap and incomplete: wait for more.
        assert_eq!(
            converse(b"GET / HTTP/1.1\r\nHo", 1024, false),
            (String::new(), None)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n");
        let (out, _) = converse(req.as_bytes(), 32 * 1024, false);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        for bad in [
            &b"GET / HTTP/1.1\r\nHost a.test\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ] {
            let (out, end) = converse(bad, 32 * 1024, false);
            assert!(out.starts_with("HTTP/1.1 400 "), "{bad:?}: {out}");
            assert_eq!(end, Some(End::Linger));
        }
        // A byte a Location must not carry, though httparse takes it.
        let (out, _) = converse(
            "GET /\u{e9} HTTP/1.1\r\nHost: a.test\r\n\r\n".as_bytes(),
            32 * 1024,
            false,
        );
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    }

    #[test]
    fn acme_challenges_get_404_and_head_gets_no_body() {
        let (out, end) = converse(
            b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.test\r\n\r\n",
            32 * 1024,
            false,
        );
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        assert!(out.ends_with("</html>\n"), "{out}");
        assert_eq!(end, Some(End::KeepAlive));
        let (out, _) = converse(
            b"HEAD /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.test\r\n\r\n",
            32 * 1024,
            false,
        );
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        assert!(!out.contains("content-length: 0"), "{out}");
    }
}
