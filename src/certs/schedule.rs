//! The renewal schedule.
//!
//! At start every site is checked; a site without a usable certificate is
//! obtained in the background while its placeholder serves, and each
//! certificate then waits for its due time (the same policy as `edge renew`,
//! plus a little jitter so that many edges do not hit the CA at once). Each
//! success is published at once. Control jobs and SIGHUP wake it early.

use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::sync::watch;

use super::Manager;
use crate::acme::order;
use crate::acme::renew::{self, Decision};
use crate::certinfo::rfc3339;
use crate::config::{Config, Site};
use crate::names;
use crate::store::{self, Lock};
use crate::ui::Ui;

/// The longest the schedule sleeps, so ARI windows are re-read and clocks that
/// jump are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Never spin: at least this long between two passes.
const MIN_SLEEP: Duration = Duration::from_millis(500);
/// When a due certificate's lock is held elsewhere (or the store cannot be
/// reached), the longest before looking again; a store that pushes wakes
/// the schedule sooner, when the lock is let go.
const LOCK_RETRY: Duration = Duration::from_secs(10);

/// What one site needs now.
enum Need {
    Obtain(&'static str),
    Renew(String),
    Wait(SystemTime),
}

pub(super) async fn run(m: Manager, mut stop: watch::Receiver<bool>) {
    loop {
        let sleep = tokio::select! {
            s = pass(&m) => s,
            _ = stop.changed() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = m.inner.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Does whatever is due; returns how long to sleep until the next thing is.
async fn pass(m: &Manager) -> Duration {
    let cfg = m.config();
    let mut next: Option<(String, SystemTime)> = None;
    let mut changed = false;
    for site in &cfg.sites {
        let lineage = site.cert_name();
        // Decided first from what is stored (no lock, so a fleet at rest
        // asks its store nothing), then again under the lineage's lock, so a
        // certificate another process or node made meanwhile is seen, not
        // made again.
        let outcome = match need(m, &cfg, site, &lineage, crate::clock::now()).await {
            Need::Wait(t) => Err(t),
            _ => locked(m, &cfg, site, &lineage).await,
        };
        // A success is looked at again on the next pass, soon; a failure or
        // a wait counts with its time.
        let when = match outcome {
            Ok(()) => {
                // Served at once, not after the rest of the pass's orders.
                m.publish_only(&std::collections::BTreeSet::from([lineage]))
                    .await;
                changed = true;
                continue;
            }
            Err(t) => t,
        };
        if next.as_ref().is_none_or(|(_, t)| when < *t) {
            next = Some((lineage, when));
        }
    }
    m.inner.next.store(std::sync::Arc::new(next.clone()));
    match next {
        // Work was done this pass: look again soon, the state has changed.
        _ if changed => MIN_SLEEP,
        Some((lineage, t)) => {
            let wait = t.duration_since(crate::clock::now()).unwrap_or_default();
            tracing::debug!(lineage, at = %rfc3339(t), "next certificate check");
            wait.clamp(MIN_SLEEP, MAX_SLEEP)
        }
        None => MAX_SLEEP,
    }
}

/// Takes the lineage's lock if it is free, decides again under it, and
/// obtains or renews what is still needed. On failure, or when the lock is
/// held elsewhere, the time to look again.
async fn locked(m: &Manager, cfg: &Config, site: &Site, lineage: &str) -> Result<(), SystemTime> {
    let lock = match m.store().try_lock(lineage).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::debug!(lineage, "another process holds the certificate's lock");
            return Err(crate::clock::now() + LOCK_RETRY);
        }
        Err(e) => {
            tracing::error!(lineage, retry_in = ?LOCK_RETRY, "cannot lock the certificate: {e}");
            return Err(crate::clock::now() + LOCK_RETRY);
        }
    };
    match need(m, cfg, site, lineage, crate::clock::now()).await {
        Need::Wait(t) => Err(t),
        Need::Obtain(why) => {
            if m.solvers().for_names(&site.domains).needs_person() {
                tracing::warn!(lineage, "no certificate for {:?}; dns.provider is \"manual\", so edge logs the TXT record to set and checks for it", site.domains);
            }
            attempt(m, cfg, site, &lock, lineage, why).await
        }
        Need::Renew(why) => attempt(m, cfg, site, &lock, lineage, &why).await,
    }
}

async fn need(m: &Manager, cfg: &Config, site: &Site, lineage: &str, now: SystemTime) -> Need {
    let store = m.store();
    let mut state = store.renewal_state(lineage).await;
    let backoff = state
        .not_before
        .map(store::from_unix)
        .filter(|t| *t > now && state.failures > 0);
    let loaded = match m.load_live(lineage).await {
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
    if let Some(by) = renew::unfinished(&state, &loaded.info) {
        return Need::Renew(format!("a forced renewal {by} started did not finish"));
    }
    renew::refresh_ari(cfg, store, lineage, &loaded.info, &mut state, now).await;
    match renew::decide(&loaded.info, &state, now, false) {
        Decision::Due(why) => Need::Renew(why),
        Decision::BackingOff(t) => Need::Wait(t),
        Decision::NotYet(t) => Need::Wait(t + jitter(&loaded.info)),
    }
}

/// Obtains or renews one site's certificate; logs one line with the outcome.
/// On failure, the time of the next attempt.
async fn attempt(
    m: &Manager,
    cfg: &Config,
    site: &Site,
    lock: &Lock,
    lineage: &str,
    why: &str,
) -> Result<(), SystemTime> {
    let store = m.store();
    let old = store.load_live(lineage).await.ok();
    let start = Instant::now();
    tracing::info!(lineage, reason = why, "obtaining a certificate");
    let replaces = old.as_ref().and_then(|o| o.info.ari_id.clone());
    let solver = m.solvers().for_names(&site.domains);
    let result = order::obtain(
        cfg,
        store,
        solver.as_ref(),
        lock,
        lineage,
        &site.domains,
        replaces,
        &Ui::log_only(),
    )
    .await;
    match result {
        Ok(o) => {
            renew::run_deploy_hook(cfg, store, &o).await;
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
            Ok(())
        }
        Err(e) => {
            let not_after = old
                .as_ref()
                .map(|c| c.info.not_after)
                .unwrap_or_else(|| crate::clock::now() + Duration::from_secs(30 * 86400));
            let retry = renew::record_failure(store, lineage, &e, not_after).await;
            renew::count(&renew::Outcome::Failed(e));
            Err(retry)
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
