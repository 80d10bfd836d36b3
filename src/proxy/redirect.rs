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
        let logging = self.access != AccessLog::Off;
        let start = logging.then(Instant::now);
        let host = usable_host(&req);
        let resp = match host {
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
                match HeaderValue::from_maybe_shared(Bytes::from(location(h, self.https_port, pq)))
                {
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
        let record = logging.then(|| {
            Box::new(Record {
                client: peer.ip(),
                method: req.method().clone(),
                host: host.map(str::to_ascii_lowercase).unwrap_or_default(),
                path: req.uri().path().to_string(),
                status: resp.status().as_u16(),
                upstream: None,
                start: start.unwrap_or_else(Instant::now),
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
fn usable_host<B>(req: &Request<B>) -> Option<&str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let raw = match (req.uri().authority(), hosts.next(), hosts.next()) {
        (_, Some(_), Some(_)) => return None,
        (Some(a), _, _) => a.as_str(),
        (None, Some(h), None) => h.to_str().ok()?,
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

/// `https://host[:port]/path?query`, built in one allocation: this runs for
/// every plain-HTTP request. `host` is already checked by `usable_host`.
fn location(host: &str, https_port: u16, path_and_query: &str) -> String {
    use std::fmt::Write;
    let mut loc = String::with_capacity(host.len() + path_and_query.len() + 16);
    loc.push_str("https://");
    let v6 = host.contains(':');
    if v6 {
        loc.push('[');
    }
    loc.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    if v6 {
        loc.push(']');
    }
    if https_port != 443 {
        let _ = write!(loc, ":{https_port}");
    }
    if !path_and_query.starts_with('/') {
        loc.push('/');
    }
    loc.push_str(path_and_query);
    loc
}

fn page(
    status: StatusCode,
    close: bool,
) -> Response<Either<super::h1_client::UpBody, Full<Bytes>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(pairs: &[(&str, &str)], uri: &str) -> Option<String> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        let req = b.body(()).unwrap();
        usable_host(&req).map(str::to_string)
    }

    #[test]
    fn location_keeps_path_and_query_and_names_the_port() {
        assert_eq!(
            location("Flask.Test", 8443, "/a/b?x=1&y"),
            "https://flask.test:8443/a/b?x=1&y"
        );
        assert_eq!(location("flask.test", 443, "/"), "https://flask.test/");
        assert_eq!(location("::1", 443, "/p"), "https://[::1]/p");
        assert_eq!(location("flask.test", 443, "*"), "https://flask.test/*");
    }

    #[test]
    fn only_plain_hosts_are_redirected_to() {
        assert_eq!(
            host_of(&[("host", "Flask.Test:80")], "/"),
            Some("Flask.Test".into())
        );
        assert_eq!(host_of(&[("host", "[::1]:80")], "/"), Some("::1".into()));
        assert_eq!(host_of(&[], "/"), None);
        assert_eq!(
            host_of(&[("host", "a.test"), ("host", "b.test")], "/"),
            None
        );
        assert_eq!(host_of(&[("host", "evil.test/x")], "/"), None);
        assert_eq!(host_of(&[("host", "a b")], "/"), None);
        assert_eq!(
            host_of(&[], "http://abs.test:8080/x"),
            Some("abs.test".into())
        );
    }
}
