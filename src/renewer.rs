//! Certificate upkeep inside `edge serve`.
//!
//! One task owns it: at start every site is checked; a site without a usable
//! certificate is obtained in the background while its placeholder serves, and
//! each certificate then waits for its due time (the same policy as `edge renew`,
//! plus a little jitter so that many edges do not hit the CA at once). After
//! every success the SNI map is rebuilt and swapped in one atomic store.
//! Requests from the control socket and SIGHUP wake it early.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::{watch, Notify};

use crate::acme::order;
use crate::acme::renew::{self, Decision};
use crate::certinfo::rfc3339;
use crate::config::{Config, Site};
use crate::names;
use crate::store::{self, Store};
use crate::tls::Certs;
use crate::ui::Ui;

/// The longest the renewer sleeps, so ARI windows are re-read and clocks that
/// jump are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Never spin: at least this long between two passes.
const MIN_SLEEP: Duration = Duration::from_millis(500);

pub struct Renewer {
    pub cfg: Arc<ArcSwap<Config>>,
    pub store: Store,
    pub certs: Certs,
    pub wake: Arc<Notify>,
    /// The next planned renewal, for STATUS= and `edge certs`.
    pub next: Arc<ArcSwap<Option<(String, SystemTime)>>>,
}

/// What one site needs now.
enum Need {
    Obtain(&'static str),
    Renew(String),
    Wait(SystemTime),
}

impl Renewer {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let sleep = self.pass().await;
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Does whatever is due; returns how long to sleep until the next thing is.
    pub async fn pass(&self) -> Duration {
        let cfg = self.cfg.load_full();
        let now = SystemTime::now();
        let mut next: Option<(String, SystemTime)> = None;
        let mut changed = false;
        for site in &cfg.sites {
            let lineage = site.cert_name();
            let need = self.need(&cfg, site, &lineage, now).await;
            let when = match need {
                Need::Wait(t) => t,
                Need::Obtain(why) => {
                    if !cfg.dns.provider.unattended() {
                        tracing::warn!(lineage, "no certificate for {:?}; dns.provider is \"manual\", so edge logs the TXT record to set and checks for it", site.domains);
                    }
                    changed |= self.attempt(&cfg, site, &lineage, why).await;
                    continue;
                }
                Need::Renew(why) => {
                    changed |= self.attempt(&cfg, site, &lineage, &why).await;
                    continue;
                }
            };
            if next.as_ref().is_none_or(|(_, t)| when < *t) {
                next = Some((lineage, when));
            }
        }
        if changed {
            self.certs.reload(&self.store, &cfg.sites);
        }
        self.next.store(Arc::new(next.clone()));
        match next {
            // Work was done this pass: look again soon, the state has changed.
            _ if changed => MIN_SLEEP,
            Some((lineage, t)) => {
                let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
                tracing::debug!(lineage, at = %rfc3339(t), "next certificate check");
                wait.clamp(MIN_SLEEP, MAX_SLEEP)
            }
            None => MAX_SLEEP,
        }
    }

    async fn need(&self, cfg: &Config, site: &Site, lineage: &str, now: SystemTime) -> Need {
        let mut state = self.store.renewal_state(lineage);
        let backoff = state
            .not_before
            .map(store::from_unix)
            .filter(|t| *t > now && state.failures > 0);
        let loaded = match self.store.load_live(lineage) {
            Ok(l) => l,
            Err(_) => {
                return match backoff {
                    Some(t) => Need::Wait(t),
                    None => Need::Obtain("no certificate stored"),
                }
            }
        };
        let uncovered = site
            .domains
            .iter()
            .any(|d| !loaded.info.names.iter().any(|n| names::covers(n, d)));
        if uncovered {
            return match backoff {
                Some(t) => Need::Wait(t),
                None => Need::Obtain("the stored certificate does not cover every site name"),
            };
        }
        renew::refresh_ari(cfg, &self.store, lineage, &loaded.info, &mut state, now).await;
        match renew::decide(&loaded.info, &state, now, false) {
            Decision::Due(why) => Need::Renew(why),
            Decision::BackingOff(t) => Need::Wait(t),
            Decision::NotYet(t) => Need::Wait(t + jitter(&loaded.info)),
        }
    }

    /// Obtains or renews one site's certificate; logs one line with the outcome.
    async fn attempt(&self, cfg: &Config, site: &Site, lineage: &str, why: &str) -> bool {
        let old = self.store.load_live(lineage).ok();
        let start = Instant::now();
        tracing::info!(lineage, reason = why, "obtaining a certificate");
        let replaces = old.as_ref().and_then(|o| o.info.ari_id.clone());
        match order::obtain(
            cfg,
            &self.store,
            lineage,
            &site.domains,
            replaces,
            &Ui::log_only(),
        )
        .await
        {
            Ok(o) => {
                renew::run_deploy_hook(cfg, &self.store, &o).await;
                tracing::info!(
                    lineage,
                    old_serial = old.as_ref().map(|c| c.info.serial.as_str()).unwrap_or("-"),
                    old_expiry = %old.as_ref().map(|c| rfc3339(c.info.not_after)).unwrap_or_else(|| "-".into()),
                    new_serial = %o.info.serial,
                    new_expiry = %rfc3339(o.info.not_after),
                    duration_ms = start.elapsed().as_millis() as u64,
                    "renewal succeeded"
                );
                renew::count(&renew::Outcome::Renewed(o));
                true
            }
            Err(e) => {
                let not_after = old
                    .as_ref()
                    .map(|c| c.info.not_after)
                    .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(30 * 86400));
                renew::record_failure(&self.store, lineage, &e, not_after);
                renew::count(&renew::Outcome::Failed(e));
                false
            }
        }
    }
}

/// Up to 1% of the lifetime (at most five minutes) so many hosts spread out.
fn jitter(info: &crate::certinfo::CertInfo) -> Duration {
    let max = (info.lifetime() / 100).min(Duration::from_secs(300));
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=max.as_millis() as u64))
}
