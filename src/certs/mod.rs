//! The certificate manager: the one owner of certificates inside `edge serve`.
//!
//! It holds the store, the renewal schedule (`schedule`), the jobs that come
//! over the control socket (`control`), the watcher of certificates others
//! write (`watch`), the challenge solvers for its whole life (the built-in DNS
//! responder included), and the one path to the TLS resolver: [`Manager::publish`]
//! reads the stored certificates (all, or only those that changed) and swaps
//! the resolver's map. Renewals, the watcher, control jobs and SIGHUP all end
//! in it. Its file I/O runs on the storage's blocking pool and its CPU work
//! (placeholder keys) on tokio's blocking pool, never on a thread that serves
//! connections. Models: certmagic's `maintain.go` and `cache.go`, Pingora's
//! background services.

mod control;
mod schedule;
mod watch;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::UnixListener;
use tokio::sync::Notify;

pub use control::{bind as bind_control, delegate, socket_path, status, Request};

use crate::acme::solver::Solvers;
use crate::config::Config;
use crate::store::{self, Store, StoreError};
use crate::tls::{self, BuildReport, Certs, Stored};

/// A lineage's pair as read, and what checking it gave.
struct Checked {
    pair: (Vec<u8>, Vec<u8>),
    loaded: store::LoadedCert,
}

/// The certificate manager. Cloning shares it.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ArcSwap<Config>,
    store: Store,
    certs: Certs,
    solvers: ArcSwap<Solvers>,
    /// Wakes the schedule early (a control job finished, a reload).
    wake: Notify,
    /// The next planned renewal, for systemd's STATUS=.
    next: ArcSwap<Option<(String, SystemTime)>>,
    /// The fingerprint of `live/` the published map was built from, so the
    /// watcher tells others' writes from what was already published.
    published: Mutex<Option<u64>>,
    /// One publish at a time, so two never interleave their swaps.
    publishing: tokio::sync::Mutex<()>,
    /// Each lineage's pair as last read and checked, so a publish or the
    /// schedule checks again only the pairs whose bytes changed.
    checked: Mutex<HashMap<String, Checked>>,
    /// What `edge status` is answered from, once the daemon has built it.
    status: std::sync::OnceLock<Arc<crate::status::Source>>,
}

impl Manager {
    /// Builds the manager and publishes what is stored (placeholders for
    /// names without a certificate), so the listener can start serving.
    pub async fn start(cfg: Config, store: Store, certs: Certs) -> Manager {
        let solvers = Solvers::new(&cfg);
        let m = Manager {
            inner: Arc::new(Inner {
                cfg: ArcSwap::from_pointee(cfg),
                store,
                certs,
                solvers: ArcSwap::from_pointee(solvers),
                wake: Notify::new(),
                next: ArcSwap::from_pointee(None),
                published: Mutex::new(None),
                publishing: tokio::sync::Mutex::new(()),
                checked: Mutex::new(HashMap::new()),
                status: std::sync::OnceLock::new(),
            }),
        };
        let report = m.publish().await;
        for name in &report.loaded {
            tracing::info!(lineage = %name, "certificate loaded");
        }
        m
    }

    /// Runs the schedule, the watcher and the control socket until `stop`.
    /// The solvers start first, so a responder holds its port from the start.
    pub async fn run(self, control: UnixListener, stop: tokio::sync::watch::Receiver<bool>) {
        self.inner.solvers.load().start().await;
        tokio::join!(
            schedule::run(self.clone(), stop.clone()),
            watch::run(self.clone(), stop.clone()),
            control::serve(control, self.clone(), stop),
        );
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.cfg.load_full()
    }

    /// Hands the manager what `edge status` is answered from.
    pub fn set_status(&self, src: Arc<crate::status::Source>) {
        let _ = self.inner.status.set(src);
    }

    pub fn status(&self) -> Option<Arc<crate::status::Source>> {
        self.inner.status.get().cloned()
    }

    /// What the TLS listeners serve now.
    pub fn certs(&self) -> &Certs {
        &self.inner.certs
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn solvers(&self) -> Arc<Solvers> {
        self.inner.solvers.load_full()
    }

    /// The next planned renewal: the lineage and when.
    pub fn next_renewal(&self) -> Option<(String, SystemTime)> {
        (*self.inner.next.load_full()).clone()
    }

    /// Takes a re-read config (SIGHUP): new sites are published (placeholders
    /// for their names until their certificates come), the solvers are made
    /// anew (so credentials in files are read again, as a reload promises),
    /// and the schedule looks again at once.
    pub async fn reload(&self, next: Config) {
        let solvers = Solvers::new(&next);
        self.inner.cfg.store(Arc::new(next));
        // The old solvers' sockets close when the last order using them ends;
        // a responder on the same port waits for them (`dns::builtin`).
        self.inner.solvers.store(Arc::new(solvers));
        self.solvers().start().await;
        self.publish().await;
        self.inner.wake.notify_one();
    }

    /// Reads every stored certificate and swaps the resolver's map: the one
    /// path from storage to the TLS listener. A lineage that fails to load
    /// keeps what was served for it before.
    pub async fn publish(&self) -> BuildReport {
        self.publish_scope(None).await
    }

    /// As [`Manager::publish`], reading again only `lineages` (those a
    /// renewal or another node changed); every other lineage keeps what is
    /// served for it, so a change costs the same with 5 certificates or 500.
    pub(crate) async fn publish_only(&self, lineages: &BTreeSet<String>) -> BuildReport {
        self.publish_scope(Some(lineages)).await
    }

    async fn publish_scope(&self, only: Option<&BTreeSet<String>>) -> BuildReport {
        let _one = self.inner.publishing.lock().await;
        let store = &self.inner.store;
        let cluster = store.backend().cluster();
        // A store that pushes says what changed and is not polled (`watch`).
        // One that is polled has every publish read everything: the
        // fingerprint the poll compares covers all of `live/`, so a publish
        // that read part of it cannot record it.
        let pushes = store.backend().changes().is_some();
        let only = only.filter(|_| pushes);
        // Taken before reading, so each is served by the time it is timed.
        let swaps = cluster.map(|c| c.take_swaps(only));
        // Taken before reading: a write that lands while this reads changes
        // the fingerprint again, and the poll publishes once more.
        let fingerprint = if pushes {
            None
        } else {
            store.live_fingerprint().await.ok()
        };
        let previous = self.inner.certs.current_full();
        let stored = self.read(only, &previous).await;
        let cfg = self.config();
        let (map, report) = tokio::task::spawn_blocking(move || {
            tls::build_map(stored, &cfg.sites, Some(&previous))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        tls::log_report(&report);
        note_expiry(&map, &report);
        self.inner.certs.replace(map);
        if let (Some(c), Some(swaps)) = (cluster, swaps) {
            c.note_published(swaps);
        }
        *self
            .inner
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fingerprint;
        report
    }

    /// The lineages a publish hands to [`tls::build_map`]: `only` read
    /// again and every other one served before kept unread; or, with
    /// `None`, every stored lineage read.
    async fn read(
        &self,
        only: Option<&BTreeSet<String>>,
        previous: &tls::CertMap,
    ) -> Vec<(String, Stored)> {
        let store = &self.inner.store;
        let mut stored = Vec::new();
        let names: Vec<String> = match only {
            Some(only) => {
                let kept: BTreeSet<&str> = previous
                    .entries()
                    .iter()
                    .filter_map(|e| e.lineage.as_deref())
                    .filter(|l| !only.contains(*l))
                    .collect();
                stored.extend(kept.into_iter().map(|l| (l.to_string(), Stored::Kept)));
                only.iter().cloned().collect()
            }
            None => match store.lineages().await {
                Ok(names) => {
                    let present: HashSet<&String> = names.iter().collect();
                    self.checked().retain(|name, _| present.contains(name));
                    names
                }
                Err(e) => {
                    tracing::error!("cannot list the stored certificates: {e}");
                    Vec::new()
                }
            },
        };
        for name in names {
            let loaded = match self.load_live(&name).await {
                Err(StoreError::NotFound { .. })
                    if only.is_some() && !store.has_live(&name).await =>
                {
                    // Removed: no longer served.
                    self.checked().remove(&name);
                    continue;
                }
                Err(e) => Stored::Refused(e),
                Ok(l) => Stored::Loaded(l),
            };
            stored.push((name, loaded));
        }
        stored
    }

    /// A lineage's live pair, read and checked; checked again only when its
    /// bytes changed since the last time.
    pub(crate) async fn load_live(&self, name: &str) -> Result<store::LoadedCert, StoreError> {
        let pair = self.inner.store.live_pair(name).await?;
        if let Some(c) = self.checked().get(name).filter(|c| c.pair == pair) {
            return Ok(c.loaded.clone());
        }
        let loaded = store::certified_key(name, &pair.0, &pair.1)?;
        let c = Checked {
            pair,
            loaded: loaded.clone(),
        };
        self.checked().insert(name.to_string(), c);
        Ok(loaded)
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Checked>> {
        self.inner.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fingerprint of `live/` the served map was built from.
    fn published(&self) -> Option<u64> {
        *self
            .inner
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Sets `edge_certificate_expiry_timestamp_seconds` for the lineages this
/// publish loaded (a kept one keeps its value).
fn note_expiry(map: &tls::CertMap, report: &BuildReport) {
    let loaded: HashSet<&String> = report.loaded.iter().collect();
    for e in map.entries() {
        let Some(l) = e.lineage.as_ref().filter(|l| loaded.contains(l)) else {
            continue;
        };
        let secs = e
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        crate::metrics::METRICS
            .cert_expiry
            .get_or_create(&crate::metrics::NameLabel { name: l.clone() })
            .set(secs);
    }
}
