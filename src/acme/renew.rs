//! When a certificate is due, and renewing what is.
//!
//! Due means: inside the CA's ARI window when it offers one (at a random point
//! picked once and kept, honouring Retry-After), else when a third of the
//! lifetime is left (half for lifetimes under ten days, whose renewal must start
//! earlier in relative terms). Failures back off exponentially, persisted, so a
//! timer running `edge renew` every few minutes never hammers the CA; as expiry
//! nears the backoff is capped so that retries get more frequent, not less.

use std::time::{Duration, SystemTime};

use rand::Rng;

use super::order::{self, Obtained};
use super::solver::Solvers;
use super::{AcmeError, Retry};
use crate::certinfo::{self, CertInfo};
use crate::config::Config;
use crate::store::{self, RenewalState, Store};
use crate::ui::Ui;

const BACKOFF_MAX: Duration = Duration::from_secs(12 * 3600);
const BACKOFF_FLOOR: Duration = Duration::from_secs(10);

/// Why a certificate is or is not renewed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Due(String),
    NotYet(SystemTime),
    BackingOff(SystemTime),
}

/// Certificates shorter-lived than this renew at half their lifetime, the
/// rest at a third left.
const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 86400);

/// The renewal time by the lifetime rule.
pub fn lifetime_due(info: &CertInfo) -> SystemTime {
    let life = info.lifetime();
    let left = if life < SHORT_LIFETIME {
        life / 2
    } else {
        life / 3
    };
    info.not_after.checked_sub(left).unwrap_or(info.not_before)
}

/// The renewal time, preferring an ARI window stored for this serial.
pub fn due_time(info: &CertInfo, state: &RenewalState) -> SystemTime {
    match (state.ari_chosen, &state.ari_serial) {
        (Some(t), Some(serial)) if *serial == info.serial => store::from_unix(t),
        _ => lifetime_due(info),
    }
}

/// Why `due_time` is when it is: the CA's ARI window, or the lifetime rule.
pub fn due_reason(info: &CertInfo, state: &RenewalState) -> &'static str {
    if state.ari_chosen.is_some() && state.ari_serial.as_deref() == Some(info.serial.as_str()) {
        "inside the CA's renewal window (ARI)"
    } else if info.lifetime() < SHORT_LIFETIME {
        "at half its lifetime"
    } else {
        "at a third of its lifetime left"
    }
}

pub fn decide(info: &CertInfo, state: &RenewalState, now: SystemTime, force: bool) -> Decision {
    if force {
        return Decision::Due("forced".into());
    }
    if let Some(nb) = state.not_before.map(store::from_unix) {
        if nb > now && state.failures > 0 {
            return Decision::BackingOff(nb);
        }
    }
    let due = due_time(info, state);
    if now >= info.not_after {
        Decision::Due("expired".into())
    } else if now >= due {
        Decision::Due(due_reason(info, state).into())
    } else {
        Decision::NotYet(due)
    }
}

/// How long to wait after `failures` consecutive failures, doubling from
/// `base` (which the kind of failure picks, see `AcmeError::retry`).
pub fn backoff(failures: u32, now: SystemTime, not_after: SystemTime, base: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let remaining = not_after.duration_since(now).unwrap_or_default();
    exp.min(BACKOFF_MAX)
        .min((remaining / 10).max(BACKOFF_FLOOR))
}

/// Asks the CA for its ARI window when the directory offers one, and stores a
/// random point inside it. Returns quietly when ARI is not offered. No ACME
/// account is involved: these are plain GETs (`ari`).
pub async fn refresh_ari(
    cfg: &Config,
    store: &Store,
    lineage: &str,
    info: &CertInfo,
    state: &mut RenewalState,
    now: SystemTime,
) {
    let Some(id) = info.ari_id.as_deref() else {
        return;
    };
    if state.ari_serial.as_deref() == Some(info.serial.as_str())
        && state
            .ari_retry_after
            .is_some_and(|t| store::from_unix(t) > now)
    {
        return;
    }
    match super::ari::window(&cfg.acme, id).await {
        Ok(Some(w)) => {
            apply_window(
                state,
                &info.serial,
                store::unix(w.start),
                store::unix(w.end),
                store::unix(w.ask_again),
            );
            if let Err(e) = store.save_renewal_state(lineage, state).await {
                tracing::warn!(lineage, "cannot store the ARI window: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(lineage, "ARI lookup failed, using the lifetime rule: {e}"),
    }
}

/// Records an ARI window; a point already chosen inside the same window is kept
/// so repeated checks do not re-roll the dice.
pub fn apply_window(
    state: &mut RenewalState,
    serial: &str,
    start: u64,
    end: u64,
    retry_after: u64,
) {
    let same =
        state.ari_serial.as_deref() == Some(serial) && state.ari_window == Some((start, end));
    let chosen = match state.ari_chosen {
        Some(c) if same && (start..=end).contains(&c) => c,
        _ if end > start => rand::rng().random_range(start..=end),
        _ => start,
    };
    state.ari_window = Some((start, end));
    state.ari_chosen = Some(chosen);
    state.ari_serial = Some(serial.to_string());
    state.ari_retry_after = Some(retry_after);
}

/// Who started a forced renewal of this certificate that never finished
/// (the process died holding the lock), when there is one.
pub fn unfinished(state: &RenewalState, info: &CertInfo) -> Option<String> {
    state
        .requested
        .as_ref()
        .filter(|r| r.serial == info.serial)
        .map(|r| r.by.clone())
}

/// The name this process goes by in renewal records: its fleet node name,
/// else this host.
pub fn this_node(store: &Store) -> String {
    store
        .backend()
        .cluster()
        .map_or_else(|| "this host".to_string(), |c| c.node().to_string())
}

/// One certificate's outcome, for the summary line.
#[derive(Debug)]
pub enum Outcome {
    Renewed(Obtained),
    /// A forced renewal that waited for the lock found a certificate newer
    /// than its request (another process or node renewed it): that one is
    /// taken, and nothing is ordered.
    RenewedElsewhere(CertInfo),
    Skipped(Decision),
    Failed(AcmeError),
}

/// Renews one lineage if due (or forced), recording failures for the backoff.
pub async fn renew_lineage(
    cfg: &Config,
    store: &Store,
    solvers: &Solvers,
    lineage: &str,
    force: bool,
    ui: &Ui,
) -> Outcome {
    // The certificate this request is about, before any wait for the lock.
    let asked_about = store.load_live(lineage).await.ok().map(|l| l.info.serial);
    // Decided under the lock: a renewal that another process (or task) made
    // while this one waited is seen, and not made twice.
    let lock = match store.lock(lineage).await {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(AcmeError::Store(e)),
    };
    let now = crate::clock::now();
    let loaded = match store.load_live(lineage).await {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(AcmeError::Store(e)),
    };
    if force && asked_about.is_some_and(|s| s != loaded.info.serial) {
        return Outcome::RenewedElsewhere(loaded.info);
    }
    let mut state = store.renewal_state(lineage).await;
    refresh_ari(cfg, store, lineage, &loaded.info, &mut state, now).await;
    let decision = decide(&loaded.info, &state, now, force);
    if !matches!(decision, Decision::Due(_)) {
        return Outcome::Skipped(decision);
    }
    let names = if state.names.is_empty() {
        loaded.info.names.clone()
    } else {
        state.names.clone()
    };
    let replaces = loaded.info.ari_id.clone();
    let solver = solvers.for_names(&names);
    if force {
        // Recorded, so that if this process dies mid-order another one
        // (another node of a fleet) finishes what was asked.
        state.requested = Some(store::Requested {
            by: this_node(store),
            serial: loaded.info.serial.clone(),
        });
        if let Err(e) = store.save_renewal_state(lineage, &state).await {
            return Outcome::Failed(AcmeError::Store(e));
        }
    }
    let result = order::obtain(
        cfg,
        store,
        solver.as_ref(),
        &lock,
        lineage,
        &names,
        replaces,
        ui,
    )
    .await;
    match result {
        Ok(o) => {
            run_deploy_hook(cfg, store, &o).await;
            Outcome::Renewed(o)
        }
        Err(e) => {
            let _ = record_failure(store, lineage, &e, loaded.info.not_after).await;
            Outcome::Failed(e)
        }
    }
}

/// Counts a failure against the lineage and sets when the next attempt may
/// be: when the CA said (a rate limit's `Retry-After`), or after a backoff
/// whose first step the kind of failure picks. Returns that time.
pub async fn record_failure(
    store: &Store,
    lineage: &str,
    e: &AcmeError,
    not_after: SystemTime,
) -> SystemTime {
    let now = crate::clock::now();
    if matches!(e, AcmeError::Store(store::StoreError::LockLost { .. })) {
        // The lineage is another holder's now: its record is not this one's to touch.
        tracing::error!(lineage, "renewal abandoned: {e}");
        return now + BACKOFF_FLOOR;
    }
    let mut state = store.renewal_state(lineage).await;
    state.requested = None;
    state.failures = state.failures.saturating_add(1);
    state.last_attempt = Some(store::unix(now));
    state.last_error = Some(e.to_string());
    let wait = match e.retry() {
        Retry::At(t) => t.duration_since(now).unwrap_or_default().max(BACKOFF_FLOOR),
        Retry::Backoff(base) => backoff(state.failures, now, not_after, base),
    };
    state.not_before = Some(store::unix(now + wait));
    if let Err(se) = store.save_renewal_state(lineage, &state).await {
        tracing::error!(lineage, "cannot record the renewal failure: {se}");
    }
    tracing::error!(lineage, failures = state.failures, retry_in = %humantime::format_duration(wait), "renewal failed: {e}");
    now + wait
}

/// certbot's `--deploy-hook`: `RENEWED_LINEAGE` and `RENEWED_DOMAINS` set.
pub async fn run_deploy_hook(cfg: &Config, store: &Store, o: &Obtained) {
    let Some(hook) = &cfg.acme.deploy_hook else {
        return;
    };
    let out = tokio::process::Command::new(hook)
        .env("RENEWED_LINEAGE", store.live_dir(&o.lineage))
        .env("RENEWED_DOMAINS", o.info.names.join(" "))
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o2) if o2.status.success() => tracing::info!(hook = %hook.display(), "deploy hook ran"),
        Ok(o2) => {
            tracing::error!(hook = %hook.display(), status = ?o2.status.code(), stderr = %String::from_utf8_lossy(&o2.stderr).trim(), "deploy hook failed; the new certificate is stored and served")
        }
        Err(e) => tracing::error!(hook = %hook.display(), "deploy hook could not be started: {e}"),
    }
}

/// The lineages `edge renew [--domain D]` works on: all, or the one named D or
/// covering D.
pub async fn select(store: &Store, domain: Option<&str>) -> Result<Vec<String>, String> {
    let all = store.lineages().await.map_err(|e| e.to_string())?;
    let Some(d) = domain else {
        return Ok(all);
    };
    let d = d.to_ascii_lowercase();
    let mut lineages = Vec::new();
    for l in all {
        let covers = l == d
            || store.load_live(&l).await.is_ok_and(|c| {
                c.info
                    .names
                    .iter()
                    .any(|n| crate::names::covers(n, &d) || *n == d)
            });
        if covers {
            lineages.push(l);
        }
    }
    if lineages.is_empty() {
        return Err(format!(
            "no stored certificate for {d:?}; `edge certs` lists them, `edge obtain --domain {d}` makes one"
        ));
    }
    Ok(lineages)
}

/// Renews the given lineages; returns the summary lines, how many failed,
/// and what was renewed.
pub async fn renew_many(
    cfg: &Config,
    store: &Store,
    solvers: &Solvers,
    lineages: &[String],
    force: bool,
    ui: &Ui,
) -> (Vec<String>, usize, Vec<Obtained>) {
    let mut failed = 0;
    let mut lines = Vec::new();
    let mut renewed = Vec::new();
    for l in lineages {
        let outcome = renew_lineage(cfg, store, solvers, l, force, ui).await;
        lines.push(summary_line(l, &outcome));
        count(&outcome);
        match outcome {
            Outcome::Failed(_) => failed += 1,
            Outcome::Renewed(o) => renewed.push(o),
            Outcome::Skipped(_) | Outcome::RenewedElsewhere(_) => {}
        }
    }
    (lines, failed, renewed)
}

/// Counts a renewal outcome in the metrics.
pub fn count(outcome: &Outcome) {
    let result = match outcome {
        Outcome::Renewed(_) => "success",
        Outcome::Failed(_) => "failure",
        Outcome::Skipped(_) | Outcome::RenewedElsewhere(_) => return,
    };
    crate::metrics::METRICS
        .renewals
        .get_or_create(&crate::metrics::ResultLabel { result })
        .inc();
}

/// The line `edge renew` prints for one certificate.
pub fn summary_line(lineage: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Renewed(o) => format!(
            "{lineage}: renewed; serial {}, expires {} ({:.2}s)",
            o.info.serial,
            certinfo::rfc3339(o.info.not_after),
            o.elapsed.as_secs_f64()
        ),
        Outcome::Skipped(Decision::NotYet(t)) => format!(
            "{lineage}: not due until {}; skipped",
            certinfo::rfc3339(*t)
        ),
        Outcome::Skipped(Decision::BackingOff(t)) => format!(
            "{lineage}: last attempt failed; backing off until {} (use --force to try now)",
            certinfo::rfc3339(*t)
        ),
        Outcome::Skipped(Decision::Due(_)) => format!("{lineage}: due"),
        Outcome::RenewedElsewhere(info) => format!(
            "{lineage}: renewed by another node while this one waited for the lock; serial {}, expires {} (taken, nothing ordered)",
            info.serial,
            certinfo::rfc3339(info.not_after)
        ),
        Outcome::Failed(e) => format!("{lineage}: FAILED: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(life_days: u64, age_days: u64) -> (CertInfo, SystemTime) {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let na = nb + Duration::from_secs(life_days * 86400);
        (
            CertInfo {
                names: vec![],
                not_before: nb,
                not_after: na,
                serial: "AA".into(),
                issuer: "x".into(),
                ari_id: None,
            },
            nb + Duration::from_secs(age_days * 86400),
        )
    }

    #[test]
    fn third_of_lifetime_rule() {
        let (i, now) = info(90, 59);
        assert!(matches!(
            decide(&i, &RenewalState::default(), now, false),
            Decision::NotYet(_)
        ));
        let (i, now) = info(90, 61);
        assert!(matches!(
            decide(&i, &RenewalState::default(), now, false),
            Decision::Due(_)
        ));
    }

    #[test]
    fn short_lifetimes_renew_at_half() {
        let (i, now) = info(6, 2);
        assert!(matches!(
            decide(&i, &RenewalState::default(), now, false),
            Decision::NotYet(_)
        ));
        let (i, now) = info(6, 3);
        assert!(matches!(
            decide(&i, &RenewalState::default(), now, false),
            Decision::Due(_)
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped_near_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let far = now + Duration::from_secs(60 * 86400);
        let base = Duration::from_secs(300);
        assert_eq!(backoff(1, now, far, base), Duration::from_secs(300));
        assert_eq!(backoff(2, now, far, base), Duration::from_secs(600));
        assert_eq!(backoff(30, now, far, base), BACKOFF_MAX);
        let near = now + Duration::from_secs(3600);
        assert_eq!(backoff(5, now, near, base), Duration::from_secs(360));
        assert_eq!(
            backoff(1, now, far, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn ari_window_point_is_kept_for_same_window() {
        let mut s = RenewalState::default();
        apply_window(&mut s, "AA", 100, 200, 50);
        let c = s.ari_chosen.unwrap();
        assert!((100..=200).contains(&c));
        apply_window(&mut s, "AA", 100, 200, 60);
        assert_eq!(s.ari_chosen, Some(c));
        apply_window(&mut s, "AA", 300, 300, 60);
        assert_eq!(s.ari_chosen, Some(300));
    }

    #[test]
    fn backing_off_blocks_unless_forced() {
        let (i, now) = info(90, 70);
        let s = RenewalState {
            failures: 1,
            not_before: Some(store::unix(now) + 100),
            ..Default::default()
        };
        assert!(matches!(
            decide(&i, &s, now, false),
            Decision::BackingOff(_)
        ));
        assert!(matches!(decide(&i, &s, now, true), Decision::Due(_)));
    }
}
