//! The certificate manager: the one owner of certificates inside `edge serve`.
//!
//! It holds the store, the renewal schedule (`schedule`), the jobs that come
//! over the control socket (`control`), the watcher of certificates others
//! write (`watch`), the challenge solvers for its whole life (the built-in DNS
//! responder included), and the one path to the TLS resolver: [`Manager::publish`]
//! reads every stored certificate and swaps the resolver's map. Renewals, the
//! watcher, control jobs and SIGHUP all end in it. Its file I/O runs on the
//! storage's blocking pool and its CPU work (placeholder keys) on tokio's
//! blocking pool, never on a thread that serves connections. Models:
//! certmagic's `maintain.go` and `cache.go`, Pingora's background services.

mod control;
mod schedule;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::UnixListener;
use tokio::sync::Notify;

pub use control::{bind as bind_control, delegate, socket_path, status, Request};

use crate::acme::solver::Solvers;
use crate::config::Config;
use crate::store::{self, Store};
use crate::tls::{self, BuildReport, Certs};

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
    /// One publish at a time, so two never interleave their swaps; it
    /// holds each lineage's pair as last read and checked, so a publish
    /// checks again only the pairs whose bytes changed.
    publishing: tokio::sync::Mutex<HashMap<String, Checked>>,
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
                publishing: tokio::sync::Mutex::new(HashMap::new()),
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
        let mut checked = self.inner.publishing.lock().await;
        let store = &self.inner.store;
        // Taken before reading: a write that lands while this reads changes
        // the fingerprint again, and the watcher publishes once more.
        let fingerprint = store.live_fingerprint().await.ok();
        let mut stored = Vec::new();
        match store.lineages().await {
            Ok(lineages) => {
                let present: std::collections::HashSet<&String> = lineages.iter().collect();
                checked.retain(|name, _| present.contains(name));
                for name in lineages {
                    let loaded = match store.live_pair(&name).await {
                        Err(e) => Err(e),
                        Ok(pair) => match checked.get(&name) {
                            Some(c) if c.pair == pair => Ok(c.loaded.clone()),
                            _ => {
                                let loaded = store::certified_key(&name, &pair.0, &pair.1);
                                if let Ok(l) = &loaded {
                                    let c = Checked {
                                        pair,
                                        loaded: l.clone(),
                                    };
                                    checked.insert(name.clone(), c);
                                }
                                loaded
                            }
                        },
                    };
                    stored.push((name, loaded));
                }
            }
            Err(e) => tracing::error!("cannot list the stored certificates: {e}"),
        }
        let previous = self.inner.certs.current_full();
        let cfg = self.config();
        let (map, report) = tokio::task::spawn_blocking(move || {
            tls::build_map(stored, &cfg.sites, Some(&previous))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        tls::log_report(&report);
        for e in map.entries() {
            if let Some(l) = &e.lineage {
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
        self.inner.certs.replace(map);
        if let Some(c) = store.backend().cluster() {
            c.note_published();
        }
        *self
            .inner
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fingerprint;
        report
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
