//! The last phases: respond (the upstream's answer, or the error's, made by
//! `error::respond`, the one place errors become answers) and log (counted
//! in the metrics, and one access-log line when the answer's body is done).

use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};

use super::access_log::{Logged, Record};
use super::error::{self, ProxyError};
use super::forward::Forwarded;
use super::session::{Ctx, Protocol};
use super::Body;

/// Respond, then log: what the client gets for the request.
pub fn respond(
    result: Result<Forwarded, ProxyError>,
    ctx: Ctx,
    alt_svc: Option<&HeaderValue>,
) -> Response<Body> {
    let (response, up_guard) = match result {
        Ok((resp, guard)) => {
            let (parts, body) = resp.into_parts();
            (Response::from_parts(parts, Either::Left(body)), Some(guard))
        }
        Err(e) => {
            e.log(ctx.conn.peer, ctx.host.as_deref());
            let pages = ctx.site.as_deref().map(|s| &s.pages);
            let resp = error::respond(&e, pages, ctx.protocol.is_http1());
            (resp.map(Either::Right), None)
        }
    };
    let mut response = response;
    if let Some(v) = alt_svc.filter(|_| ctx.protocol != Protocol::Http3) {
        // HTTP/3 is on: say where, so browsers move to it.
        response.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    let status = response.status().as_u16();
    crate::metrics::limit_answer(status);
    // One clock read for the latency metric and the upstream's window.
    let now = tokio::time::Instant::now();
    let took = now.into_std().saturating_duration_since(ctx.start);
    match (&up_guard, &ctx.site) {
        (Some(g), _) => {
            g.upstream().count(status, ctx.protocol);
            g.upstream().window.record(now, took);
        }
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
                    proto: ctx.protocol.label(),
                })
                .inc();
        }
    }
    if let Some(s) = &ctx.site {
        s.latency.observe(took.as_secs_f64());
    }
    let mut ctx = ctx;
    let record = ctx.take_record(status);
    let inflight = ctx.inflight.take();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Logged::new(body, record, inflight).holding(up_guard))
}

/// An error's answer with no request behind it to route (a head the HTTP/1
/// server could not read): the same page, as a `Body`, and the log `line`
/// (its status filled in here).
pub fn refusal(e: &ProxyError, line: Option<Box<Record>>) -> Response<Body> {
    let resp: Response<Full<bytes::Bytes>> = error::respond(e, None, true);
    crate::metrics::limit_answer(resp.status().as_u16());
    let line = line.map(|mut l| {
        l.status = resp.status().as_u16();
        l
    });
    resp.map(|b| Logged::new(Either::Right(b), line, None))
}
