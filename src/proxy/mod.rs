//! The HTTPS request path, as named phases over one protocol-neutral
//! session (`session`): validate -> route -> admit (`validate`) -> rewrite
//! (`rewrite`) -> pick upstream and forward (`forward`) -> respond and log
//! (`respond`). Each takes the session or the request it became, and the
//! per-request context. Every failure is a typed `error::ProxyError`, and
//! `error::respond` is the one place one becomes an answer.

pub mod access_log;
pub mod body;
pub mod client_sock;
pub mod conn_limit;
pub mod deadlines;
pub mod error;
pub mod forward;
pub mod headers;
pub mod health;
pub mod listener;
pub mod proxy_protocol;
pub mod redirect;
pub mod respond;
pub mod rewrite;
pub mod session;
pub mod shutdown;
pub mod tunnel;
pub mod upstream;
pub mod validate;
pub mod window;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HeaderValue;
use http::Response;
use http_body_util::{Either, Full};

use crate::config::{AccessLog, Limits, Site};
use crate::http1::client::UpBody;
use crate::tls::Entry;
use access_log::Logged;
use error::ErrorPages;
use session::Ctx;
pub use session::{Protocol, Session};
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
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 answers while HTTP/3 is on.
    alt_svc: Option<HeaderValue>,
}

impl Proxy {
    /// `http3_port`: HTTP/3 is served on this UDP port, and answers over
    /// TCP say so.
    pub fn new(
        routes: Routes,
        access: AccessLog,
        limits: Limits,
        http3_port: Option<u16>,
    ) -> Proxy {
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            access,
            limits,
            alt_svc: http3_port
                .and_then(|p| HeaderValue::from_str(&format!("h3=\":{p}\"; ma=86400")).ok()),
        }
    }

    /// The sites as routed now.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Whether requests get an access-log line.
    pub fn logs_access(&self) -> bool {
        self.access != AccessLog::Off
    }

    /// Swaps in new sites; requests already routed keep the site they had.
    pub fn replace_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    /// Runs the phases for one request. Everything that reads the request
    /// runs before the returned future is made, so the future holds only
    /// what the wait for the upstream needs: rustc keeps an async fn's
    /// arguments and the locals they move into apart, and every HTTP/2
    /// stream's task carries this future.
    pub fn handle(
        self: Arc<Self>,
        s: Session,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        let mut ctx = Ctx::new(&s, self.access != AccessLog::Off);
        let prepared = validate::validate(&s, &mut ctx)
            .and_then(|()| validate::route(&self.routes.load(), &mut ctx))
            .and_then(|site| {
                validate::admit(&s, &mut ctx, &self.limits)?;
                Ok(rewrite::rewrite(site, s, &ctx, &self.limits))
            });
        if let Ok(p) = &prepared {
            ctx.tripped = p.tripped.clone();
        }
        async move {
            let result = match prepared {
                Ok(p) => forward::forward(p, &mut ctx).await,
                Err(e) => Err(e),
            };
            respond::respond(result, ctx, self.alt_svc.as_ref())
        }
    }
}
