//! The rewrite phase: the request made fit for the upstream (hop-by-hop
//! fields out, forwarding fields in, `Expect` answered here, Host from the
//! authority, cookies joined), its body guarded, and its head encoded once,
//! so it can go to another upstream without being rebuilt. Also the answer's
//! rewrite (`strip_response`).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{StatusCode, Version};

use super::body::Guarded;
use super::forward::Prepared;
use super::session::{Ctx, Session};
use super::{headers, ConnInfo, SiteRt};
use crate::config::{Limits, Site};
use crate::http1::client::Outgoing;

/// Rewrite: the session becomes a request ready to send.
pub fn rewrite(site: Arc<SiteRt>, s: Session, ctx: &Ctx, limits: &Limits) -> Prepared {
    let host = ctx.host.as_deref().unwrap_or_default();
    let (mut parts, body) = s.req.into_parts();
    let (body, tripped) = Guarded::new(body, limits.max_body_bytes, limits.body_idle_timeout);
    let authority = parts.uri.authority().cloned();
    let added = rewrite_request(&mut parts, &ctx.conn, host, &site.cfg, authority.as_ref());
    if ctx.upgrade {
        // Hop-by-hop stripping removed these; a WebSocket handshake needs them.
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let bodyless = http_body::Body::is_end_stream(&body);
    let mut out = Outgoing::encode(&parts, !bodyless, added.lines());
    out.raw_answer = s.protocol.writes_lines();
    let pool_len = site.pool.len();
    let max_tries = if site.cfg.max_tries == 0 {
        pool_len
    } else {
        site.cfg.max_tries.min(pool_len)
    };
    Prepared {
        site,
        out,
        body,
        upgrade: ctx.upgrade,
        tripped,
        max_tries,
        body_limit: limits.max_body_bytes,
    }
}

/// Header lines edge adds to a request, written after the client's own (see
/// `Outgoing::encode`).
#[derive(Default)]
struct Added<'a> {
    lines: [(&'static str, &'a [u8]); 5],
    len: usize,
}

impl<'a> Added<'a> {
    fn push(&mut self, name: &'static str, value: &'a [u8]) {
        self.lines[self.len] = (name, value);
        self.len += 1;
    }

    fn lines(&self) -> &[(&'static str, &'a [u8])] {
        &self.lines[..self.len]
    }
}

/// Rewrites the request for the upstream; returns the headers edge adds.
/// `authority` is the request URI's (HTTP/2's `:authority`, or HTTP/1.1's
/// absolute form), which stands for Host (RFC 9112 §3.2.2).
fn rewrite_request<'a>(
    parts: &mut http::request::Parts,
    conn: &'a ConnInfo,
    host: &'a str,
    site: &Site,
    authority: Option<&'a http::uri::Authority>,
) -> Added<'a> {
    let mut added = Added::default();
    // Host is kept as the client sent it (with its port), like a transparent
    // proxy; the hop-by-hop strip never removes it.
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::drop_underscored(&mut parts.headers);
    // An expectation is answered by edge (HTTP/1: `100 Continue` when the
    // body is first read), never passed on.
    if parts.headers.contains_key(header::EXPECT) {
        parts.headers.remove(header::EXPECT);
    }
    if let Some(a) = authority {
        if parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        } else {
            added.push("host", a.as_str().as_bytes());
        }
    }
    // `host` was checked by `request_host`: fit for a header value as it is.
    let lines = headers::forwarding(
        &mut parts.headers,
        conn.peer.ip(),
        &conn.peer_header,
        host,
        &site.trusted_proxies,
    );
    for (name, value) in lines.into_iter().flatten() {
        added.push(name, value);
    }
    // HTTP/2 and HTTP/3 clients may split cookies over several fields;
    // HTTP/1.1 wants one.
    if parts.version >= Version::HTTP_2
        && parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .nth(1)
            .is_some()
    {
        let joined = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            parts.headers.insert(header::COOKIE, v);
        }
    }
    // The target and version need no rewrite: `Outgoing::encode` writes the
    // origin form (path and query) and HTTP/1.1 whatever the client sent.
    added
}

/// Rewrite response: hop-by-hop headers out, except what a `101` needs to
/// tell the client which protocol the tunnel now carries. Only called when
/// the parser saw such a header: most answers have none left (see `h1_client`).
pub fn strip_response(head: &mut http::response::Parts) {
    let upgrade = (head.status == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(u) = upgrade {
        head.headers.insert(header::UPGRADE, u);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}
