//! Pick upstream and forward: the request goes to the first upstream, in
//! balancing order, that answers, within the site's retry rules. Each
//! attempt's failure keeps its kind (`error::Kind`): it is counted by kind,
//! decides whether the next upstream may get the request, and is what the
//! client's error says.

use std::sync::Arc;

use http::Response;

use super::body::{self, Guarded};
use super::error::{Kind, ProxyError};
use super::session::Ctx;
use super::{rewrite, tunnel, upstream, SiteRt};
use crate::http1::client::{self as h1_client, Outgoing, SendError, UpBody};

pub type Forwarded = (Response<UpBody>, upstream::InflightGuard);

/// A request ready to send, and what `forward` needs to retry or report it.
pub struct Prepared {
    pub site: Arc<SiteRt>,
    pub out: Outgoing,
    pub body: Guarded,
    /// A WebSocket handshake: a `101` answer makes the connection a tunnel.
    pub upgrade: bool,
    pub tripped: body::Tripped,
    pub max_tries: usize,
    pub body_limit: u64,
}

/// The kind of an upstream exchange's failure.
fn kind_of(e: &SendError) -> Kind {
    match e {
        SendError::Io(_) | SendError::Closed => Kind::Reset,
        SendError::Invalid(_) => Kind::BadAnswer,
        SendError::NoAnswer(_) | SendError::UploadStalled(_) => Kind::Timeout,
        SendError::Body(_) => Kind::BodyIncomplete,
    }
}

/// Pick upstream -> forward: picks upstreams in balancing order and sends the
/// request to the first that answers. A refused connection moves on to the
/// next upstream; a pooled connection that turns out closed gets the request
/// again on a fresh one. A request that failed or timed out before the
/// answer's head goes to the next upstream only when that cannot repeat a
/// side effect: nothing of it reached the upstream, or it is idempotent and
/// had no body. Never after a body was streamed. The client's error is the
/// last failure's, or a timeout's when one attempt timed out (504, as nginx).
///
/// Not an `async fn`: that would store `p` twice (argument and local); the
/// block below uses the captured one in place.
#[allow(clippy::manual_async_fn)]
pub fn forward<'a>(
    mut p: Prepared,
    ctx: &'a mut Ctx,
) -> impl std::future::Future<Output = Result<Forwarded, ProxyError>> + 'a {
    async move {
        let site = &p.site;
        let pool = &site.pool;
        let cfg = &site.cfg;
        let mut tried: u64 = 0;
        let mut tries = 0;
        // Made only when an attempt fails: most requests never need it.
        let mut failed: Option<ProxyError> = None;
        while tries < p.max_tries {
            let Some(picked) = pool.pick(tried, ctx.conn.peer.ip()) else {
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
                        up.record_failure(e.kind(), cfg.max_fails, cfg.fail_timeout);
                        note(
                            &mut failed,
                            ProxyError::upstream(e.kind(), &up.name, true, e.to_string()),
                            tries < p.max_tries,
                        );
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
                                return Err(ProxyError::upstream(
                                    Kind::BadAnswer,
                                    &up.name,
                                    false,
                                    "switched protocols unasked",
                                ));
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
                            rewrite::strip_response(&mut head);
                        }
                        ctx.upstream = Some(up.name.clone());
                        return Ok((Response::from_parts(head, body), guard));
                    }
                    Err(f) => f,
                };
                if let SendError::Body(_) = f.error {
                    // The client's body failed: nothing the upstream did.
                    return Err(match p.tripped.get() {
                        body::TOO_LARGE => {
                            ProxyError::new(Kind::BodyTooLarge, format!("{} bytes", p.body_limit))
                        }
                        body::IDLE => ProxyError::new(Kind::BodyTimeout, ""),
                        _ => ProxyError::new(Kind::BodyIncomplete, f.error.to_string()),
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
                            up.record_failure(ce.kind(), cfg.max_fails, cfg.fail_timeout);
                            note(
                                &mut failed,
                                ProxyError::upstream(ce.kind(), &up.name, true, ce.to_string()),
                                tries < p.max_tries,
                            );
                            break true;
                        }
                    }
                }
                let kind = kind_of(&f.error);
                up.record_failure(kind, cfg.max_fails, cfg.fail_timeout);
                let resend = f.may_resend(&p.out);
                note(
                    &mut failed,
                    ProxyError::upstream(kind, &up.name, resend, f.error.to_string()),
                    tries < p.max_tries,
                );
                break resend;
            };
            if !resend {
                // The request (or its body) is spent: it cannot be sent again.
                break;
            }
        }
        Err(match failed {
            Some(e) => e.after_tries(tries),
            None => ProxyError::new(Kind::NoUpstream, "every upstream is down"),
        })
    }
}

/// Keeps the failure the client will hear of: the latest, unless an
/// earlier one timed out (a timeout is what the client waited through).
/// One that leaves the request for another upstream is logged here, for
/// the record of each attempt; the last is logged with the answer.
fn note(failed: &mut Option<ProxyError>, e: ProxyError, more: bool) {
    if e.retryable() && more {
        if let Some(n) = crate::log_limit::LIMIT.admit("retried", &e.to_string()) {
            tracing::warn!("{e}; trying the next upstream{}", crate::log_limit::held(n));
        }
    }
    match failed {
        Some(prev) if prev.kind() == Kind::Timeout && e.kind() != Kind::Timeout => {}
        _ => *failed = Some(e),
    }
}

/// The upstream has `max_tunnels` open already.
fn no_tunnel_slot(up: &upstream::Upstream) -> ProxyError {
    ProxyError::upstream(
        Kind::Busy,
        &up.name,
        false,
        format!(
            "{} WebSocket tunnels open (max_tunnels); raise max_tunnels if it can take more",
            up.max_tunnels
        ),
    )
}

/// Every upstream at `max_conns` for as long as a request may wait.
fn all_busy(up: &upstream::Upstream, waited: std::time::Duration) -> ProxyError {
    ProxyError::new(
        Kind::Busy,
        format!(
            "every upstream at max_conns; waited {} (connect_timeout) for one of {}'s {} slots; \
             raise max_conns if the backends can take more, or add upstreams",
            humantime::format_duration(waited),
            up.addr,
            up.max_conns
        ),
    )
}
