//! Active health checks: `GET <path>` to every upstream of a site with
//! `health_check`, every `interval`. `fall` consecutive failures take an
//! upstream out of rotation, `rise` consecutive passes bring it back; each change
//! is logged once with the reason. The tasks hold only a weak reference to their
//! site, so a reload that replaces the site ends them.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::Empty;

use super::upstream::Upstream;
use super::SiteRt;
use crate::config::HealthCheck;
use crate::http1::client::{exchange, Outgoing};

/// Starts the checks for a site, if it has any and a runtime is running.
pub fn spawn(site: &Arc<SiteRt>) {
    let Some(hc) = site.cfg.health_check.clone() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let host = site.cfg.domains.first().cloned().unwrap_or_default();
    for i in 0..site.pool.len() {
        rt.spawn(run(Arc::downgrade(site), i, hc.clone(), host.clone()));
    }
}

async fn run(site: Weak<SiteRt>, index: usize, hc: HealthCheck, host: String) {
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let Some(up) = site.upgrade().map(|s| s.pool.upstreams[index].clone()) else {
            return;
        };
        match probe(&up, &hc, &host).await {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if up.actively_down() && passes >= hc.rise {
                    tracing::info!(upstream = %up.addr, "health check passed {passes} time(s) in a row");
                    up.set_active(true);
                }
            }
            Err(reason) => {
                fails += 1;
                passes = 0;
                if !up.actively_down() && fails >= hc.fall {
                    tracing::warn!(upstream = %up.addr, "health check failed {fails} time(s) in a row: {reason}");
                    up.set_active(false);
                }
            }
        }
        drop(up);
        tokio::time::sleep(hc.interval).await;
    }
}

/// One `GET <path>` with `Connection: close` through edge's HTTP/1 client.
async fn probe(up: &Upstream, hc: &HealthCheck, host: &str) -> Result<(), String> {
    let attempt = async {
        let mut conn = up.connect(hc.timeout).await.map_err(|e| e.to_string())?;
        let parts = http::Request::get(hc.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "edge-health-check")
            .header(http::header::CONNECTION, "close")
            .body(())
            .map_err(|e| e.to_string())?
            .into_parts()
            .0;
        let out = Outgoing::encode(&parts, false, &[]);
        let answer = exchange(&mut conn, &out, &mut Empty::<Bytes>::new(), hc.timeout)
            .await
            .map_err(|f| f.error.to_string())?;
        let status = answer.head.status.as_u16();
        if status == hc.status {
            Ok(())
        } else {
            Err(format!(
                "{} answered {status} (expected {})",
                hc.path, hc.status
            ))
        }
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(hc.timeout)
        )),
    }
}
