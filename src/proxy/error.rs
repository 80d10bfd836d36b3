//! The proxy's one error type, and the one place errors become answers.
//!
//! Every failure on the request path, a head edge cannot parse as much as
//! an upstream that refused, is a [`ProxyError`]: a [`Kind`] that fixes its
//! status and the side it came from, whether the request may go to another
//! upstream, and a detail for the log. [`respond`] turns any of them into
//! what the client gets (Pingora's `Error` with its type, source and retry
//! flag; linkerd2-proxy's `errors/respond.rs`). The protocol servers only
//! write what it made, or close.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::http1::framing::Refusal;
use crate::http1::head::HeadError;

/// Whose fault a failure was: it decides where it is logged (a client's
/// mistakes at debug, so no client can fill the log; an upstream's at warn)
/// and what is counted against an upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Edge,
}

/// What went wrong. Each kind has one status and one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request edge will not read or pass on (framing, Host, Upgrade).
    BadRequest,
    /// A head over `max_header_bytes` or with more than 100 fields.
    HeadTooLarge,
    /// A transfer coding edge does not implement.
    NotImplemented,
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// No site serves the host.
    UnknownHost,
    /// The host is not covered by the connection's certificate.
    Misdirected,
    MethodNotAllowed,
    /// A request body over `max_body_bytes`.
    BodyTooLarge,
    /// A request body stalled over `body_idle_timeout`.
    BodyTimeout,
    /// The request body ended before its length (the client left, or broke
    /// its framing).
    BodyIncomplete,
    /// An upstream refused the connection, or could not be reached.
    Refused,
    /// Connecting took longer than `connect_timeout`.
    ConnectTimeout,
    /// An upstream reset or closed the connection before answering.
    Reset,
    /// No answer within `response_timeout`, or the upload stalled as long.
    Timeout,
    /// An answer edge cannot pass on (its head or framing).
    BadAnswer,
    /// Every upstream at `max_conns`, or at `max_tunnels` for a tunnel.
    Busy,
    /// No upstream could be tried: all are down, or none is configured.
    NoUpstream,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest | Kind::BodyIncomplete => StatusCode::BAD_REQUEST,
            Kind::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Kind::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Kind::UnknownHost => StatusCode::NOT_FOUND,
            Kind::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::Refused | Kind::Reset | Kind::BadAnswer | Kind::NoUpstream => {
                StatusCode::BAD_GATEWAY
            }
            Kind::ConnectTimeout | Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn side(self) -> Side {
        match self {
            Kind::Refused
            | Kind::ConnectTimeout
            | Kind::Reset
            | Kind::Timeout
            | Kind::BadAnswer
            | Kind::Busy => Side::Upstream,
            Kind::NoUpstream => Side::Edge,
            _ => Side::Client,
        }
    }

    /// The metric label of an upstream failure.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::ConnectTimeout => "connect_timeout",
            Kind::Reset => "reset",
            Kind::Timeout => "timeout",
            Kind::BadAnswer => "bad_answer",
            Kind::Busy => "busy",
            Kind::NoUpstream => "no_upstream",
            _ => "client",
        }
    }

    /// What the log says before the detail.
    fn what(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad request",
            Kind::HeadTooLarge => "request head too large",
            Kind::NotImplemented => "not implemented",
            Kind::ExpectationFailed => "expectation failed",
            Kind::UnknownHost => "no site serves host",
            Kind::Misdirected => "host not covered by the certificate this connection was given",
            Kind::MethodNotAllowed => "method not allowed",
            Kind::BodyTooLarge => "request body larger than limits.max_body_bytes",
            Kind::BodyTimeout => "request body stalled longer than limits.body_idle_timeout",
            Kind::BodyIncomplete => "request body ended early",
            Kind::Refused => "upstream refused the connection",
            Kind::ConnectTimeout => "upstream connect timed out",
            Kind::Reset => "upstream closed the connection before answering",
            Kind::Timeout => "upstream timed out",
            Kind::BadAnswer => "upstream sent an answer edge cannot pass on",
            Kind::Busy => "upstreams busy",
            Kind::NoUpstream => "no upstream to try",
        }
    }
}

/// A failure on the request path.
#[derive(Debug, Clone)]
pub struct ProxyError {
    kind: Kind,
    /// The upstream it came from, for an upstream failure.
    upstream: Option<Arc<str>>,
    /// Whether the request may go to another upstream: nothing of it was
    /// spent (see `http1::client::Failed::may_resend`).
    retry: bool,
    detail: Cow<'static, str>,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.what())?;
        if let Some(u) = &self.upstream {
            write!(f, " ({u})")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    pub fn new(kind: Kind, detail: impl Into<Cow<'static, str>>) -> ProxyError {
        ProxyError {
            kind,
            upstream: None,
            retry: false,
            detail: detail.into(),
        }
    }

    /// An upstream's failure; `retry`: the request may go to another.
    pub fn upstream(
        kind: Kind,
        upstream: &Arc<str>,
        retry: bool,
        detail: impl Into<Cow<'static, str>>,
    ) -> ProxyError {
        ProxyError {
            kind,
            upstream: Some(upstream.clone()),
            retry,
            detail: detail.into(),
        }
    }

    /// The upstream it concerns, if one.
    pub fn upstream_name(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn side(&self) -> Side {
        self.kind.side()
    }

    pub fn retryable(&self) -> bool {
        self.retry
    }

    /// An HTTP/1 connection cannot carry another request after it: edge can
    /// no longer tell where the client's next message starts.
    pub fn closes(&self) -> bool {
        matches!(
            self.kind,
            Kind::BadRequest
                | Kind::HeadTooLarge
                | Kind::NotImplemented
                | Kind::BodyIncomplete
                | Kind::BodyTimeout
        )
    }

    /// The same failure, as the last of several tries.
    pub fn after_tries(mut self, tries: usize) -> ProxyError {
        if tries > 1 {
            self.detail = format!("{} (the last of {tries} tries)", self.detail).into();
        }
        self.retry = false;
        self
    }

    /// Logs it where its side belongs: a client's mistakes at debug (no
    /// client can fill the log), an upstream's and edge's at warn.
    pub fn log(&self, client: std::net::SocketAddr, host: Option<&str>) {
        match self.side() {
            Side::Client => tracing::debug!(client = %client, "{self}"),
            Side::Upstream | Side::Edge => {
                // Per fault as written (it names the upstream): a client can
                // repeat a request to a failing upstream as often as it likes.
                let line = self.to_string();
                if let Some(n) = crate::log_limit::LIMIT.admit("upstream fault", &line) {
                    tracing::warn!(
                        host = host.unwrap_or("-"),
                        "{self}{}",
                        crate::log_limit::held(n)
                    );
                }
            }
        }
    }
}

impl From<HeadError> for ProxyError {
    fn from(e: HeadError) -> ProxyError {
        let kind = match e {
            HeadError::TooLarge | HeadError::TooManyFields => Kind::HeadTooLarge,
            HeadError::Malformed => Kind::BadRequest,
        };
        ProxyError::new(kind, e.to_string())
    }
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> ProxyError {
        let kind = match r.status {
            StatusCode::NOT_IMPLEMENTED => Kind::NotImplemented,
            StatusCode::EXPECTATION_FAILED => Kind::ExpectationFailed,
            _ => Kind::BadRequest,
        };
        ProxyError::new(kind, r.why)
    }
}

/// What the client gets for an error, over any protocol: the status, the
/// site's page for it (or edge's), `Retry-After` on 503, and for HTTP/1 a
/// `Connection: close` when the connection cannot go on.
pub fn respond(e: &ProxyError, pages: Option<&ErrorPages>, http1: bool) -> Response<Full<Bytes>> {
    let status = e.status();
    let body = match pages {
        Some(p) => p.body(status),
        None => builtin(status),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if http1 && e.closes() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The body for an error status: a site's own page when configured, else a
/// small built-in one. Pages are read once at start so a missing file is found
/// by `edge check`, not by the first unlucky visitor.
#[derive(Debug, Clone, Default)]
pub struct ErrorPages {
    custom: BTreeMap<u16, Bytes>,
}

impl ErrorPages {
    pub fn load(files: &BTreeMap<u16, PathBuf>) -> Result<ErrorPages, String> {
        let mut custom = BTreeMap::new();
        for (status, path) in files {
            let body = std::fs::read(path)
                .map_err(|e| format!("error page for {status}: {}: {e}", path.display()))?;
            custom.insert(*status, Bytes::from(body));
        }
        Ok(ErrorPages { custom })
    }

    pub fn body(&self, status: StatusCode) -> Bytes {
        if let Some(b) = self.custom.get(&status.as_u16()) {
            return b.clone();
        }
        builtin(status)
    }
}

pub fn builtin(status: StatusCode) -> Bytes {
    let reason = status.canonical_reason().unwrap_or("Error");
    Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n<body><center><h1>{code} {reason}</h1></center><hr><center>edge</center></body></html>\n",
        code = status.as_u16()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_status_and_side() {
        let up: Arc<str> = Arc::from("10.0.0.1:80");
        let e = ProxyError::upstream(Kind::Refused, &up, true, "connection refused");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.side(), Side::Upstream);
        assert!(e.retryable());
        assert_eq!(
            e.to_string(),
            "upstream refused the connection (10.0.0.1:80): connection refused"
        );
        let last = e.after_tries(3);
        assert!(!last.retryable());
        assert!(last.to_string().ends_with("(the last of 3 tries)"));
        assert_eq!(Kind::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(Kind::Busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Kind::NoUpstream.side(), Side::Edge);
        assert_eq!(
            ProxyError::from(HeadError::TooManyFields).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn respond_closes_an_http1_connection_only_when_framing_is_lost() {
        let bad = ProxyError::new(Kind::BadRequest, "x");
        let r = respond(&bad, None, true);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert!(respond(&bad, None, false)
            .headers()
            .get(header::CONNECTION)
            .is_none());
        let busy = ProxyError::new(Kind::Busy, "x");
        let r = respond(&busy, None, true);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert!(r.headers().get(header::CONNECTION).is_none());
    }
}
