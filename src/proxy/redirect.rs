//! The plain-HTTP listener: everything is redirected to HTTPS.
//!
//! 308 is the default because it keeps the method and body (a POST stays a
//! POST); `listen.redirect = 301` gives nginx's `permanent` behaviour.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::access_log::{Inflight, Logged, Record};
use super::{error, Body};
use crate::config::AccessLog;
use crate::names;

/// Kept free for HTTP-01 validation, which is answered on this listener.
pub const ACME_HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Clone)]
pub struct Redirect {
    pub https_port: u16,
    pub status: StatusCode,
    pub access: AccessLog,
}

impl Redirect {
    pub fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        inflight: &Arc<AtomicUsize>,
    ) -> Result<Response<Body>, Infallible> {
        let inflight = Inflight::new(inflight);
        let start = Instant::now();
        let host = usable_host(&req);
        let resp = match &host {
            None => page(StatusCode::BAD_REQUEST, true),
            Some(_) if req.uri().path().starts_with(ACME_HTTP01_PREFIX) => {
                page(StatusCode::NOT_FOUND, false)
            }
            Some(h) => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let pq = if pq.starts_with('/') {
                    pq.to_string()
                } else {
                    format!("/{pq}")
                };
                let host = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.clone()
                };
                let port = if self.https_port == 443 {
                    String::new()
                } else {
                    format!(":{}", self.https_port)
                };
                match HeaderValue::from_str(&format!("https://{host}{port}{pq}")) {
                    Ok(loc) => {
                        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
                        *r.status_mut() = self.status;
                        r.headers_mut().insert(header::LOCATION, loc);
                        r
                    }
                    Err(_) => page(StatusCode::BAD_REQUEST, true),
                }
            }
        };
        let record = (self.access != AccessLog::Off).then(|| {
            Box::new(Record {
                client: peer.ip(),
                method: req.method().clone(),
                host: host.unwrap_or_default(),
                path: req.uri().path().to_string(),
                status: resp.status().as_u16(),
                upstream: None,
                start,
            })
        });
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            Logged::new(body, record, Some(inflight)),
        ))
    }
}

/// The host to redirect to, only if it is a plain host name or IP: anything else
/// (no Host, two Hosts, odd bytes) would make the Location header a weapon.
fn usable_host<B>(req: &Request<B>) -> Option<String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let raw = match (req.uri().authority(), hosts.next(), hosts.next()) {
        (_, Some(_), Some(_)) => return None,
        (Some(a), _, _) => a.as_str().to_string(),
        (None, Some(h), None) => h.to_str().ok()?.to_string(),
        (None, None, _) => return None,
    };
    let host = names::host_without_port(&raw).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    ok.then_some(host)
}

fn page(status: StatusCode, close: bool) -> Response<Either<Incoming, Full<Bytes>>> {
    let mut r = Response::new(Either::Right(Full::new(error::builtin(status))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
