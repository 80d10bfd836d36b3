//! What the request phases program against, whatever protocol brought the
//! request: the [`Session`] (the request, the connection it came on, its
//! protocol) and the per-request [`Ctx`] that each phase reads and adds to
//! (Pingora's `Session` and `CTX`). The protocol servers (`http1::server`,
//! `http2`) make a session per request and write what `Proxy::handle`
//! answers; nothing on the request path asks which server that was, beyond
//! the few things [`Protocol`] says.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request};

use super::access_log::{self, End, Inflight, Record, CLIENT_CLOSED};
use super::body::{ReqBody, Tripped, MALFORMED};
use super::{ConnInfo, SiteRt};

/// The protocol a request came in on, and what that changes on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    /// The server writes an answer's fields out as the upstream sent them
    /// (HTTP/1: `http1::client::RawHead`), rather than from a header map.
    pub fn writes_lines(self) -> bool {
        self == Protocol::Http1
    }

    /// One connection carries one request at a time, so an error that loses
    /// the framing ends it (`Connection: close`).
    pub fn is_http1(self) -> bool {
        self == Protocol::Http1
    }

    /// The `proto` label of the request metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Http3 => "http3",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One request on its way through the phases.
pub struct Session {
    pub req: Request<ReqBody>,
    pub conn: Arc<ConnInfo>,
    pub protocol: Protocol,
    /// When the request came in (HTTP/1: when its head's last bytes did).
    pub start: Instant,
}

impl Session {
    pub fn new(
        req: Request<ReqBody>,
        conn: Arc<ConnInfo>,
        protocol: Protocol,
        start: Instant,
    ) -> Session {
        Session {
            req,
            conn,
            protocol,
            start,
        }
    }
}

/// What the phases learn about a request, for the phases after them, the
/// metrics and the access log.
pub struct Ctx {
    pub conn: Arc<ConnInfo>,
    pub protocol: Protocol,
    pub start: Instant,
    pub method: Method,
    /// The request's HTTP version, for the access log.
    pub version: http::Version,
    /// The path for the access log; empty when it is off.
    pub path: String,
    /// The host, once validated.
    pub host: Option<String>,
    /// The site, once routed.
    pub site: Option<Arc<SiteRt>>,
    /// The upstream that answered.
    pub upstream: Option<Arc<str>>,
    /// A WebSocket handshake: a `101` makes the connection a tunnel.
    pub upgrade: bool,
    /// Counts the request as in flight on its connection until the answer
    /// is done (the keep-alive timer runs only while none is); taken by the
    /// answer.
    pub inflight: Option<Inflight>,
    /// Logging is on and no answer has taken the log line yet: dropped so,
    /// the client left first, and the line says 499.
    pub log_pending: bool,
    /// Why the request body stopped, if it did: a stream edge reset for a
    /// malformed body is logged as that, not as the client leaving.
    pub tripped: Tripped,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if self.log_pending {
            let (status, end) = if self.tripped.get() == MALFORMED {
                (400, End::Reset)
            } else {
                (CLIENT_CLOSED, End::Abandoned)
            };
            if let Some(record) = self.take_record(status) {
                access_log::emit(&record, 0, end);
            }
        }
    }
}

impl Ctx {
    /// The request's access-log line with `status`, once: `None` when
    /// logging is off or the line was taken already.
    pub fn take_record(&mut self, status: u16) -> Option<Box<Record>> {
        std::mem::take(&mut self.log_pending).then(|| {
            Box::new(Record {
                client: self.conn.peer.ip(),
                method: self.method.clone(),
                host: self.host.take().unwrap_or_default(),
                path: std::mem::take(&mut self.path),
                status,
                upstream: self.upstream.take(),
                start: self.start,
                version: self.version,
            })
        })
    }

    pub fn new(s: &Session, logging: bool) -> Ctx {
        Ctx {
            conn: s.conn.clone(),
            protocol: s.protocol,
            start: s.start,
            method: s.req.method().clone(),
            version: s.req.version(),
            path: if logging {
                s.req.uri().path().to_string()
            } else {
                String::new()
            },
            host: None,
            site: None,
            upstream: None,
            upgrade: false,
            inflight: Some(Inflight::new(&s.conn.inflight)),
            log_pending: logging,
            tripped: Tripped::none(),
        }
    }
}
