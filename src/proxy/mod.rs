//! The HTTPS request path, as named phases:
//! validate -> route -> rewrite request (`prepare`) -> pick upstream and
//! forward (`send`, which strips the answer's hop-by-hop headers when there
//! are any: `strip_response`) -> count and log (`finish`). Each phase is a
//! function below, in that order.

pub mod access_log;
pub mod body;
pub mod client_sock;
pub mod conn_limit;
pub mod deadlines;
pub mod error;
pub mod h2_streams;
pub mod headers;
pub mod health;
pub mod listener;
pub mod redirect;
pub mod shutdown;
pub mod tunnel;
pub mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};

use crate::config::{AccessLog, Limits, Site};
use crate::http1::client::{self as h1_client, Outgoing, SendError, UpBody};
use crate::names;
use crate::tls::Entry;
use access_log::{Inflight, Logged, Record};
use body::{Guarded, ReqBody};
use error::{ErrorPages, ProxyError};
use upstream::Pool;

/// What the client gets: a proxied body or an edge-made page, counted for the log.
pub type Body = Logged<Either<UpBody, Full<Bytes>>>;

/// What the proxy knows about the client connection a request came in on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The certificate this connection was given; decides 421 versus 404.
    pub served: Option<Arc<Entry>>,
    /// Requests on this connection whose responses are not finished.
    pub inflight: Arc<AtomicUsize>,
    /// The peer address as a header value, for X-Forwarded-For and X-Real-IP.
    pub peer_header: HeaderValue,
}

/// One site at run time: its config, upstream pool and error pages.
#[derive(Debug)]
pub struct SiteRt {
    pub cfg: Site,
    pub pool: Pool,
    pub pages: ErrorPages,
    /// Resolved once, so a request costs an atomic add, not a label lookup.
    latency: prometheus_client::metrics::histogram::Histogram,
}

/// Host -> site, rebuilt whole on reload.
#[derive(Debug, Default)]
pub struct Routes {
    exact: HashMap<String, Arc<SiteRt>>,
    wildcard: HashMap<String, Arc<SiteRt>>,
    pub sites: Vec<Arc<SiteRt>>,
}

impl Routes {
    pub fn build(sites: &[Site]) -> Result<Routes, String> {
        let mut r = Routes::default();
        for s in sites {
            let rt = Arc::new(SiteRt {
                cfg: s.clone(),
                pool: Pool::new(
                    &s.upstreams,
                    s.balance,
                    s.domains.first().map(String::as_str).unwrap_or("-"),
                ),
                pages: ErrorPages::load(&s.error_pages)?,
                latency: crate::metrics::METRICS
                    .latency
                    .get_or_create(&crate::metrics::SiteLabel {
                        site: s.domains.first().cloned().unwrap_or_default(),
                    })
                    .clone(),
            });
            for d in &s.domains {
                match d.strip_prefix("*.") {
                    Some(suffix) => r.wildcard.insert(suffix.to_string(), rt.clone()),
                    None => r.exact.insert(d.clone(), rt.clone()),
                };
            }
            health::spawn(&rt);
            r.sites.push(rt);
        }
        Ok(r)
    }

    pub fn lookup(&self, host: &str) -> Option<&Arc<SiteRt>> {
        if let Some(s) = self.exact.get(host) {
            return Some(s);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)
    }
}

pub struct Proxy {
    routes: ArcSwap<Routes>,
    access: AccessLog,
    limits: Limits,
}

impl Proxy {
    pub fn new(routes: Routes, access: AccessLog, limits: Limits) -> Proxy {
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            access,
            limits,
        }
    }

    /// Swaps in new sites; requests already routed keep the site they had.
    pub fn replace_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    /// Everything that reads the request runs before the returned future is
    /// made, so the future holds only what the wait for the upstream needs:
    /// rustc keeps an async fn's arguments and the locals they move into apart,
    /// and every HTTP/2 stream's task carries this future (3.4 KiB before, with
    /// the request stored five times over).
    ///
    /// `start`: when the request came in, for the latency metric and the
    /// access log (edge's own HTTP/1.1 loop passes its last read's clock).
    pub fn handle(
        self: Arc<Self>,
        req: Request<ReqBody>,
        conn: Arc<ConnInfo>,
        start: Instant,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static
    {
        let inflight = Inflight::new(&conn.inflight);
        let method = req.method().clone();
        let path = if self.access == AccessLog::Off {
            String::new()
        } else {
            req.uri().path().to_string()
        };
        let version = req.version();
        let mut site_rt: Option<Arc<SiteRt>> = None;
        let (host, prepared) = match request_host(&req) {
            Ok(h) => {
                let h = h.to_string();
                let routes = self.routes.load();
                let p = match route(&routes, &h, &conn) {
                    Ok(site) => {
                        site_rt = Some(site.clone());
                        prepare(site, req, &conn, &h, &self.limits)
                    }
                    Err(e) => Err(e),
                };
                (Some(h), p)
            }
            Err(e) => (None, Err(e)),
        };
        async move {
            if version == Version::HTTP_2 {
                h2_streams::reset_check().await;
            }
            let result = match prepared {
                Ok(p) => send(p, &conn).await,
                Err(e) => Err(e),
            };
            let answer = self.finish(
                result, start, inflight, method, path, version, host, site_rt, &conn,
            );
            // From here on, what an HTTP/2 stream waits on is its client. (hyper
            // 1.12 polls the body before it waits for room, and the body says
            // the same; this covers an answer held before its first body poll.)
            h2_streams::waiting_on_client(true);
            answer
        }
    }

    /// Count and log: turns the upstream's answer or the error into what the
    /// client gets, and counts it.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        result: Result<Forwarded, ProxyError>,
        start: Instant,
        inflight: Inflight,
        method: http::Method,
        path: String,
        version: Version,
        host: Option<String>,
        site_rt: Option<Arc<SiteRt>>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, Infallible> {
        let (response, upstream, up_guard) = match result {
            Ok((resp, up, guard)) => {
                let (parts, body) = resp.into_parts();
                (
                    Response::from_parts(parts, Either::Left(body)),
                    Some(up),
                    Some(guard),
                )
            }
            Err(e) => {
                if e.fault() == error::Source::Upstream {
                    tracing::warn!(host = host.as_deref().unwrap_or("-"), "{e}");
                } else {
                    tracing::debug!(client = %conn.peer, "{e}");
                }
                (error_response(&e, site_rt.as_deref(), version), None, None)
            }
        };
        let status = response.status().as_u16();
        match (&up_guard, &site_rt) {
            (Some(g), _) => g.upstream().count(status),
            (None, site) => {
                // Edge-made answers (errors, 4xx) are rarer: a label lookup is fine here.
                crate::metrics::METRICS
                    .requests
                    .get_or_create(&crate::metrics::RequestLabels {
                        site: site
                            .as_ref()
                            .and_then(|s| s.cfg.domains.first().cloned())
                            .unwrap_or_else(|| "-".into()),
                        class: crate::metrics::status_class(status),
                        upstream: "-".into(),
                    })
                    .inc();
            }
        }
        if let Some(s) = &site_rt {
            s.latency.observe(start.elapsed().as_secs_f64());
        }
        let record = (self.access != AccessLog::Off).then(|| {
            Box::new(Record {
                client: conn.peer.ip(),
                method,
                host: host.unwrap_or_default(),
                path,
                status: response.status().as_u16(),
                upstream,
                start,
            })
        });
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            Logged::new(body, record, Some(inflight)).holding(up_guard),
        ))
    }
}

// ---------------------------------------------------------------- validate

/// The host a request is for: `:authority` (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let first = hosts
                .next()
                .ok_or(ProxyError::BadRequest("missing Host header"))?;
            if hosts.next().is_some() {
                return Err(ProxyError::BadRequest("more than one Host header"));
            }
            first
                .to_str()
                .map_err(|_| ProxyError::BadRequest("Host header is not text"))?
        }
    };
    let host = names::host_without_port(raw);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err(ProxyError::BadRequest(
            "Host header is not a valid host name",
        ));
    }
    Ok(host)
}

// ---------------------------------------------------------------- route

fn route<'a>(
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
        _ if !covered => Err(ProxyError::Misdirected(host.to_string())),
        _ => Err(ProxyError::UnknownHost(host.to_string())),
    }
}

// ---------------------------------------------------------------- forward

type Forwarded = (Response<UpBody>, Arc<str>, upstream::InflightGuard);

/// Validate -> rewrite request, before anything waits: a CONNECT or a declared
/// body over the cap is refused here, the body is guarded, and the request is
/// encoded once, so it can go to another upstream without being rebuilt.
fn prepare(
    site: &Arc<SiteRt>,
    req: Request<ReqBody>,
    conn: &ConnInfo,
    host: &str,
    limits: &Limits,
) -> Result<Prepared, ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    // A declared length over the cap is refused before anything is sent upstream.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge(limits.max_body_bytes));
    }
    // The HTTP/1 server writes an answer's fields as lines (see
    // `http1::client::RawHead`); HTTP/2 takes a header map.
    let raw_answer = req.version() != Version::HTTP_2;
    let upgrade = websocket_upgrade(&req)?;
    let (mut parts, body) = req.into_parts();
    let (body, tripped) = Guarded::new(body, limits.max_body_bytes, limits.body_idle_timeout);
    let authority = parts.uri.authority().cloned();
    let added = rewrite_request(&mut parts, conn, host, &site.cfg, authority.as_ref());
    if upgrade {
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
    out.raw_answer = raw_answer;
    let pool_len = site.pool.len();
    let max_tries = if site.cfg.max_tries == 0 {
        pool_len
    } else {
        site.cfg.max_tries.min(pool_len)
    };
    Ok(Prepared {
        site: site.clone(),
        out,
        body,
        upgrade,
        tripped,
        max_tries,
        body_limit: limits.max_body_bytes,
    })
}

/// A request ready to send, and what `send` needs to retry or report it.
struct Prepared {
    site: Arc<SiteRt>,
    out: Outgoing,
    body: Guarded,
    /// A WebSocket handshake: a `101` answer makes the connection a tunnel.
    upgrade: bool,
    tripped: body::Tripped,
    max_tries: usize,
    body_limit: u64,
}

/// Pick upstream -> forward: picks upstreams in balancing order and sends the
/// request to the first that answers. A refused connection moves on to the
/// next upstream; a pooled connection that turns out closed gets the request
/// again on a fresh one. A request that failed or timed out before the
/// answer's head goes to the next upstream only when that cannot repeat a
/// side effect: nothing of it reached the upstream, or it is idempotent and
/// had no body. Never after a body was streamed.
///
/// Not an `async fn`: that would store `p` twice (argument and local); the
/// block below uses the captured one in place.
#[allow(clippy::manual_async_fn)]
fn send(
    mut p: Prepared,
    conn: &ConnInfo,
) -> impl std::future::Future<Output = Result<Forwarded, ProxyError>> + '_ {
    async move {
        let site = &p.site;
        let pool = &site.pool;
        let cfg = &site.cfg;
        let mut tried: u64 = 0;
        let mut tries = 0;
        // Made only when an attempt fails: most requests never need it.
        let mut last_error = String::new();
        let mut timed_out = false;
        while tries < p.max_tries {
            let Some(picked) = pool.pick(tried, conn.peer.ip()) else {
                break;
            };
            let Some((i, slot)) = pool.slot(picked, tried, cfg.connect_timeout).await else {
                return Err(all_busy(&pool.upstreams[picked], cfg.connect_timeout));
            };
            tried |= upstream::tried_bit(i);
            tries += 1;
            let up = &pool.upstreams[i];
            // A tunnel's place at the upstream, taken before the handshake goes.
            let tunnel_slot = if p.upgrade {
                match up.tunnel_slot() {
                    Some(t) => Some(t),
                    None => return Err(no_tunnel_slot(up)),
                }
            } else {
                None
            };
            let (mut c, mut fresh) = match up.take_idle() {
                Some(c) => (c, false),
                // Boxed: connecting is the rare path, and inline its future would
                // make every request's (and every HTTP/2 stream's) future larger.
                None => match Box::pin(up.connect(cfg.connect_timeout)).await {
                    Ok(c) => (c, true),
                    Err(e) => {
                        up.record_failure(cfg.max_fails, cfg.fail_timeout);
                        tracing::warn!(upstream = %up.addr, "{e}; trying the next upstream");
                        last_error = format!("{}: {e}", up.addr);
                        continue;
                    }
                },
            };
            let guard = upstream::InflightGuard::new(up, slot);
            let resend = loop {
                let sent =
                    h1_client::exchange(&mut c, &p.out, &mut p.body, cfg.response_timeout).await;
                let f = match sent {
                    Ok(mut answer) => {
                        up.record_success();
                        let (mut body, tunnel_conn) =
                            UpBody::new(c, &mut answer, up, cfg.response_timeout);
                        if let Some(tc) = tunnel_conn {
                            // The upstream agreed: the HTTP/1 server makes the
                            // two connections one tunnel (`tunnel`).
                            let Some(slot) = tunnel_slot else {
                                return Err(ProxyError::UpstreamUnavailable(format!(
                                    "{} switched protocols unasked",
                                    up.addr
                                )));
                            };
                            body.set_tunnel(tunnel::Tunnel {
                                upstream: tc,
                                idle: cfg.response_timeout,
                                addr: up.addr.clone(),
                                _slot: slot,
                            });
                        }
                        let mut head = answer.head;
                        if answer.hop_by_hop {
                            strip_response(&mut head);
                        }
                        return Ok((Response::from_parts(head, body), up.name.clone(), guard));
                    }
                    Err(f) if f.error.is_timeout() => {
                        up.record_failure(cfg.max_fails, cfg.fail_timeout);
                        timed_out = true;
                        last_error = format!("{} {}", up.addr, f.error);
                        tracing::warn!(upstream = %up.addr, "{last_error}");
                        break f.may_resend(&p.out);
                    }
                    Err(f) => f,
                };
                if let SendError::Body(_) = f.error {
                    return Err(match p.tripped.get() {
                        body::TOO_LARGE => ProxyError::BodyTooLarge(p.body_limit),
                        body::IDLE => ProxyError::BodyTimeout,
                        _ => ProxyError::BadRequest("the request body ended early"),
                    });
                }
                // `may_resend` also rules out a connection that had begun to answer.
                let stale = !fresh && matches!(f.error, SendError::Closed | SendError::Io(_));
                if stale && f.may_resend(&p.out) {
                    // A pooled connection the upstream had closed: once more, fresh.
                    fresh = true;
                    match Box::pin(up.connect(cfg.connect_timeout)).await {
                        Ok(n) => {
                            c = n;
                            continue;
                        }
                        Err(ce) => {
                            up.record_failure(cfg.max_fails, cfg.fail_timeout);
                            last_error = format!("{}: {ce}", up.addr);
                            break true;
                        }
                    }
                }
                up.record_failure(cfg.max_fails, cfg.fail_timeout);
                last_error = format!("{}: {}", up.addr, f.error);
                tracing::warn!(upstream = %up.addr, "upstream failed before answering: {last_error}");
                break f.may_resend(&p.out);
            };
            if !resend {
                // The request (or its body) is spent: it cannot be sent again.
                break;
            }
        }
        if last_error.is_empty() {
            last_error.push_str("no upstream configured");
        }
        if timed_out {
            Err(ProxyError::UpstreamTimeout(last_error))
        } else {
            Err(ProxyError::UpstreamUnavailable(last_error))
        }
    }
}

/// Rewrite response: hop-by-hop headers out, except what a `101` needs to
/// tell the client which protocol the tunnel now carries. Only called when
/// the parser saw such a header: most answers have none left (see `h1_client`).
fn strip_response(head: &mut http::response::Parts) {
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

/// The upstream has `max_tunnels` open already.
fn no_tunnel_slot(up: &upstream::Upstream) -> ProxyError {
    ProxyError::UpstreamBusy(format!(
        "{} has max_tunnels ({}) WebSocket tunnels open; raise max_tunnels if it can take more",
        up.addr, up.max_tunnels
    ))
}

/// Every upstream at `max_conns` for as long as a request may wait.
fn all_busy(up: &upstream::Upstream, waited: std::time::Duration) -> ProxyError {
    ProxyError::UpstreamBusy(format!(
        "every upstream at max_conns; waited {} (connect_timeout) for one of {}'s {} slots; \
         raise max_conns if the backends can take more, or add upstreams",
        humantime::format_duration(waited),
        up.addr,
        up.max_conns
    ))
}

/// Whether this is a WebSocket handshake to tunnel. Other upgrades (`h2c`,
/// anything unknown) are refused: edge only tunnels what it understands.
fn websocket_upgrade<B>(req: &Request<B>) -> Result<bool, ProxyError> {
    let Some(u) = req.headers().get(header::UPGRADE) else {
        return Ok(false);
    };
    if req.version() != Version::HTTP_11 {
        return Err(ProxyError::BadRequest("Upgrade is only valid on HTTP/1.1"));
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
        Err(ProxyError::BadRequest(
            "only WebSocket upgrades are supported",
        ))
    }
}

// ---------------------------------------------------------------- rewrite

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
    // HTTP/2 clients may split cookies over several fields; HTTP/1.1 wants one.
    if parts.version == Version::HTTP_2
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

// ---------------------------------------------------------------- errors

fn error_response(
    e: &ProxyError,
    site: Option<&SiteRt>,
    version: Version,
) -> Response<Either<UpBody, Full<Bytes>>> {
    let status = e.status();
    let body = match site {
        Some(s) => s.pages.body(status),
        None => error::builtin(status),
    };
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if status == StatusCode::BAD_REQUEST && version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
