//! The first phases: validate the host, route it to a site (within what
//! the connection's certificate covers), then admit the request (method, a
//! declared body, an upgrade), after routing so a refusal gets the site's
//! own error page. They read the session and write to the context; none
//! waits.

use std::sync::Arc;

use http::header;
use http::{Request, Version};

use super::error::{Kind, ProxyError};
use super::session::{Ctx, Session};
use super::{ConnInfo, Routes, SiteRt};
use crate::config::Limits;
use crate::names;

/// Validate: the host the request is for.
pub fn validate(s: &Session, ctx: &mut Ctx) -> Result<(), ProxyError> {
    ctx.host = Some(request_host(&s.req)?.to_string());
    Ok(())
}

/// Admit: what edge will not forward to any site.
pub fn admit(s: &Session, ctx: &mut Ctx, limits: &Limits) -> Result<(), ProxyError> {
    let req = &s.req;
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::new(Kind::MethodNotAllowed, "CONNECT"));
    }
    // A declared length over the cap is refused before anything is sent upstream.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ProxyError::new(
            Kind::BodyTooLarge,
            format!("{} bytes", limits.max_body_bytes),
        ));
    }
    ctx.upgrade = websocket_upgrade(req)?;
    Ok(())
}

/// The host a request is for: `:authority` (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let bad = |why: &'static str| ProxyError::new(Kind::BadRequest, why);
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let first = hosts.next().ok_or(bad("missing Host header"))?;
            if hosts.next().is_some() {
                return Err(bad("more than one Host header"));
            }
            first.to_str().map_err(|_| bad("Host header is not text"))?
        }
    };
    let host = names::host_without_port(raw);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err(bad("Host header is not a valid host name"));
    }
    Ok(host)
}

/// Whether this is a WebSocket handshake to tunnel. Other upgrades (`h2c`,
/// anything unknown) are refused: edge only tunnels what it understands.
fn websocket_upgrade<B>(req: &Request<B>) -> Result<bool, ProxyError> {
    let Some(u) = req.headers().get(header::UPGRADE) else {
        return Ok(false);
    };
    if req.version() != Version::HTTP_11 {
        return Err(ProxyError::new(
            Kind::BadRequest,
            "Upgrade is only valid on HTTP/1.1",
        ));
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if u.as_bytes().eq_ignore_ascii_case(b"websocket") && asks && req.method() == http::Method::GET
    {
        Ok(true)
    } else {
        Err(ProxyError::new(
            Kind::BadRequest,
            "only WebSocket upgrades are supported",
        ))
    }
}

/// Route: the site for the validated host.
pub fn route(routes: &Routes, ctx: &mut Ctx) -> Result<Arc<SiteRt>, ProxyError> {
    let host = ctx.host.as_deref().unwrap_or_default();
    let site = site_for(routes, host, &ctx.conn)?.clone();
    ctx.site = Some(site.clone());
    Ok(site)
}

fn site_for<'a>(
    routes: &'a Routes,
    host: &str,
    conn: &ConnInfo,
) -> Result<&'a Arc<SiteRt>, ProxyError> {
    let lower;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = host.to_ascii_lowercase();
        lower.as_str()
    } else {
        host
    };
    let host = host.trim_end_matches('.');
    let covered = conn.served.as_ref().is_some_and(|e| e.covers(host));
    match routes.lookup(host) {
        // A connection may only carry requests for names its certificate covers;
        // anything else was meant for another server (RFC 9110 §15.5.20).
        Some(site) if covered => Ok(site),
        _ if !covered => Err(ProxyError::new(Kind::Misdirected, format!("{host:?}"))),
        _ => Err(ProxyError::new(Kind::UnknownHost, format!("{host:?}"))),
    }
}
