//! `edge serve`: binds the listeners, loads certificates, and handles signals.
//!
//! SIGHUP re-reads the config file and the certificates; a config that does not
//! validate is logged and the running one kept. SIGTERM/SIGINT stop accepting and
//! give in-flight requests a grace period.

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::certinfo::rfc3339;
use crate::config::{self, Config};
use crate::control;
use crate::proxy::conn_limit::ConnLimiter;
use crate::proxy::listener::{self, ListenLimits};
use crate::proxy::redirect::Redirect;
use crate::proxy::{Proxy, Routes};
use crate::renewer::Renewer;
use crate::sdnotify;
use crate::store::{Store, StoreError};
use crate::tls::{self, Certs};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr} (key `{key}`): {source}; is another server using the port, or does it need root / CAP_NET_BIND_SERVICE?")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

/// The addresses actually bound (a port of 0 in the config becomes a real one).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub https: SocketAddr,
    pub http: SocketAddr,
}

pub async fn serve(cfg: Config) -> Result<(), DaemonError> {
    // Handlers first: a SIGHUP or SIGTERM sent the moment READY=1 goes out must
    // find them installed, not the default action (which kills the process).
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGHUP handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGINT handler: {e}")))?;
    let store = Store::open(&cfg.state_dir)?;
    let baseline = crate::watch::snapshot(&store);
    let certs = Certs::default();
    let report = certs.reload(&store, &cfg.sites);
    for name in &report.loaded {
        tracing::info!(lineage = %name, "certificate loaded");
    }
    let routes = Routes::build(&cfg.sites).map_err(DaemonError::Config)?;
    let proxy = Arc::new(Proxy::new(routes, cfg.log.access, cfg.limits.clone()));
    let tls_cfg = tls::server_config(&certs)?;

    let https = TcpListener::bind(cfg.listen.https)
        .await
        .map_err(|source| DaemonError::Bind {
            key: "listen.https",
            addr: cfg.listen.https,
            source,
        })?;
    let http = TcpListener::bind(cfg.listen.http)
        .await
        .map_err(|source| DaemonError::Bind {
            key: "listen.http",
            addr: cfg.listen.http,
            source,
        })?;
    let bound = Bound {
        https: https.local_addr().unwrap_or(cfg.listen.https),
        http: http.local_addr().unwrap_or(cfg.listen.http),
    };
    let limits = ListenLimits {
        handshake_timeout: cfg.listen.handshake_timeout,
        limits: cfg.limits.clone(),
    };
    // One budget of connections across both listeners.
    let conns = ConnLimiter::new(
        cfg.limits.max_connections,
        cfg.limits.max_connections_per_ip,
    );
    let redirect = Arc::new(Redirect {
        https_port: bound.https.port(),
        status: StatusCode::from_u16(cfg.listen.redirect).unwrap_or(StatusCode::PERMANENT_REDIRECT),
        access: cfg.log.access,
    });
    let metrics = match cfg.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Bind {
                    key: "metrics.listen",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let control = control::bind(&cfg.state_dir)
        .await
        .map_err(DaemonError::Config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let https_task = tokio::spawn(listener::serve_https(
        https,
        tls_cfg,
        certs.clone(),
        proxy.clone(),
        limits.clone(),
        conns.clone(),
        stop_rx.clone(),
    ));
    let http_task = tokio::spawn(listener::serve_http(
        http,
        redirect,
        limits,
        conns,
        stop_rx.clone(),
    ));

    let shared_cfg = Arc::new(ArcSwap::from_pointee(cfg.clone()));
    let wake = Arc::new(Notify::new());
    let next = Arc::new(ArcSwap::from_pointee(None));
    let renewer = Renewer {
        cfg: shared_cfg.clone(),
        store: store.clone(),
        certs: certs.clone(),
        wake: wake.clone(),
        next: next.clone(),
    };
    let renew_task = tokio::spawn(renewer.run(stop_rx.clone()));
    let ctx = control::Ctx {
        cfg: shared_cfg.clone(),
        store: store.clone(),
        certs: certs.clone(),
        wake: wake.clone(),
    };
    let control_task = tokio::spawn(control::serve(control, ctx, stop_rx.clone()));
    let watch_task = {
        let (st, certs, cfg) = (store.clone(), certs.clone(), shared_cfg.clone());
        let on_change = move || {
            tracing::info!("certificates in live/ changed; reloading");
            certs.reload(&st, &cfg.load().sites);
        };
        tokio::spawn(crate::watch::run(
            store.clone(),
            baseline,
            stop_rx.clone(),
            on_change,
        ))
    };
    if let Some(every) = sdnotify::watchdog_interval() {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                sdnotify::notify("WATCHDOG=1");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = metrics {
        tokio::spawn(crate::metrics::serve(l, stop_rx.clone()));
    }
    tracing::info!(https = %bound.https, http = %bound.http, metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()), sites = cfg.sites.len(), "edge ready");
    sdnotify::notify("READY=1");
    let status = {
        let next = next.clone();
        let sites = cfg.sites.len();
        move || {
            let n = match next.load().as_ref() {
                Some((l, t)) => format!("next renewal {l} at {}", rfc3339(*t)),
                None => "no renewal planned".into(),
            };
            sdnotify::notify(&format!("STATUS=serving {sites} site(s); {n}"));
        }
    };
    let mut status_tick = tokio::time::interval(Duration::from_secs(30));

    let mut current = cfg;
    loop {
        tokio::select! {
            _ = status_tick.tick() => status(),
            _ = hup.recv() => {
                sdnotify::notify("RELOADING=1");
                if let Some(next) = reload(&current.path, &current, &store, &certs, &proxy) {
                    shared_cfg.store(Arc::new(next.clone()));
                    current = next;
                }
                wake.notify_one();
                sdnotify::notify("READY=1");
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    sdnotify::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(control::socket_path(&current.state_dir));
    let _ = tokio::join!(https_task, http_task, renew_task, control_task, watch_task);
    tracing::info!("edge stopped");
    Ok(())
}

/// Applies a re-read config; returns it when it was taken.
fn reload(
    path: &std::path::Path,
    current: &Config,
    store: &Store,
    certs: &Certs,
    proxy: &Proxy,
) -> Option<Config> {
    tracing::info!(config = %path.display(), "SIGHUP: reloading config and certificates");
    let next = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return None;
        }
    };
    let routes = match Routes::build(&next.sites) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return None;
        }
    };
    if next.listen.https != current.listen.https || next.listen.http != current.listen.http {
        tracing::warn!("listen addresses changed; they take effect at the next restart");
    }
    if next.state_dir != current.state_dir {
        tracing::warn!("state_dir changed; it takes effect at the next restart");
    }
    proxy.replace_routes(routes);
    certs.reload(store, &next.sites);
    tracing::info!(sites = next.sites.len(), "reload done");
    Some(next)
}
