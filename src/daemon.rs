//! `edge serve`: binds the listeners, starts the certificate manager, and
//! handles signals.
//!
//! [`start`] brings everything up and returns the addresses it bound and a
//! [`Running`] handle; [`serve`] is that plus the signals. SIGHUP re-reads the
//! config file; a config that does not validate is logged and the running one
//! kept. SIGTERM/SIGINT stop accepting and give in-flight requests a grace
//! period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::certinfo::rfc3339;
use crate::certs::{self, Manager};
use crate::config::{self, Config};
use crate::http3;
use crate::proxy::conn_limit::ConnLimiter;
use crate::proxy::listener::{self, ListenLimits};
use crate::proxy::redirect::Redirect;
use crate::proxy::{Proxy, Routes};
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
    /// HTTP/3's UDP address (the `https` port), when it is on.
    pub http3: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// What the running daemon is asked to do.
enum Command {
    /// Take this config (SIGHUP reads it from the file); answered when applied.
    Reload(Box<Config>, tokio::sync::oneshot::Sender<()>),
}

/// A running daemon: its addresses, and the handle to reload or stop it.
pub struct Running {
    pub bound: Bound,
    pub certs: Manager,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    done: JoinHandle<Config>,
}

impl Running {
    /// Applies a new config, as SIGHUP does with the re-read file: new sites
    /// and upstreams for new requests, open connections kept. Returns once
    /// it is applied.
    pub async fn reload(&self, cfg: Config) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .commands
            .send(Command::Reload(Box::new(cfg), tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Stops accepting, lets in-flight requests finish for `shutdown_grace`,
    /// and returns once everything has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }

    /// Asks it to stop without waiting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until it has stopped; returns the config it last ran.
    pub async fn wait(self) -> Option<Config> {
        self.done.await.ok()
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { key, addr, source })
}

/// Starts the daemon: state, certificates, listeners, the certificate
/// manager. Returns once it is serving.
pub async fn start(cfg: Config) -> Result<Running, DaemonError> {
    let store = Store::open_for(&cfg).await?;
    let certs = Certs::default();
    let manager = Manager::start(cfg.clone(), store, certs.clone()).await;
    let routes = Routes::build(&cfg.sites).map_err(DaemonError::Config)?;
    let tls_cfg = tls::server_config(&certs)?;

    let https = bind("listen.https", cfg.listen.https).await?;
    let http = bind("listen.http", cfg.listen.http).await?;
    let metrics = match cfg.metrics {
        Some(addr) => Some(bind("metrics.listen", addr).await?),
        None => None,
    };
    let metrics_auth = match &cfg.metrics_auth {
        None => None,
        Some(a) => {
            let text = tokio::fs::read_to_string(&a.password_file)
                .await
                .map_err(|e| {
                    DaemonError::Config(format!(
                        "metrics.password_file: cannot read {}: {e}",
                        a.password_file.display()
                    ))
                })?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(DaemonError::Config(format!(
                    "metrics.password_file: {} is empty; put the password on its first line",
                    a.password_file.display()
                )));
            }
            Some(Arc::from(crate::status::listener::basic_auth(
                &a.username,
                password,
            )))
        }
    };
    let https_addr = https.local_addr().unwrap_or(cfg.listen.https);
    let quic_limits = http3::QuicLimits {
        handshake_timeout: cfg.listen.handshake_timeout,
        limits: cfg.limits.clone(),
    };
    // UDP on the port TCP got (a port of 0 in tests becomes the same number).
    let quic = if cfg.listen.http3 {
        let quic_tls = tls::quic_server_config(&certs)?;
        let endpoint = http3::bind(https_addr, quic_tls, &quic_limits).map_err(|e| {
            DaemonError::Config(format!(
                "listen.http3: cannot serve HTTP/3 on UDP {https_addr}: {e}; \
                 set listen.http3 = false to serve HTTP/1.1 and HTTP/2 only"
            ))
        })?;
        Some(endpoint)
    } else {
        None
    };
    let bound = Bound {
        https: https_addr,
        http: http.local_addr().unwrap_or(cfg.listen.http),
        http3: quic.as_ref().and_then(|e| e.local_addr().ok()),
        metrics: metrics.as_ref().and_then(|l| l.local_addr().ok()),
    };
    let proxy = Arc::new(Proxy::new(
        routes,
        cfg.log.access,
        cfg.limits.clone(),
        bound.http3.map(|a| a.port()),
    ));
    let limits = ListenLimits {
        handshake_timeout: cfg.listen.handshake_timeout,
        limits: cfg.limits.clone(),
        proxy_protocol: cfg
            .listen
            .proxy_protocol
            .clone()
            .map(|from| Arc::new(crate::proxy::proxy_protocol::ProxyProtocol { from })),
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
    let control = certs::bind_control(&cfg.state_dir)
        .await
        .map_err(DaemonError::Config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let quic_task = quic.map(|endpoint| {
        tokio::spawn(http3::serve(
            endpoint,
            proxy.clone(),
            certs.clone(),
            quic_limits,
            conns.clone(),
            stop_rx.clone(),
        ))
    });
    // The listeners serve HTTP-01 and TLS-ALPN-01 answers from the moment
    // they are bound (counted here, before the first order can look).
    let https_answers = crate::acme::challenges::CHALLENGES.serving_https();
    let http_answers = crate::acme::challenges::CHALLENGES.serving_http();
    let serve_https = listener::serve_https(
        https,
        tls_cfg,
        certs,
        proxy.clone(),
        limits.clone(),
        conns.clone(),
        stop_rx.clone(),
    );
    let https_task = tokio::spawn(async move {
        let _serving = https_answers;
        serve_https.await
    });
    let serve_http = listener::serve_http(http, redirect, limits, conns, stop_rx.clone());
    let http_task = tokio::spawn(async move {
        let _serving = http_answers;
        serve_http.await
    });
    let certs_task = tokio::spawn(manager.clone().run(control, stop_rx.clone()));
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
    let status = Arc::new(crate::status::Source {
        proxy: proxy.clone(),
        bound,
        started: std::time::Instant::now(),
    });
    manager.set_status(status.clone());
    if let Some(l) = metrics {
        let site = crate::status::listener::Site {
            status,
            manager: manager.clone(),
            auth: metrics_auth,
        };
        tokio::spawn(crate::status::listener::serve(l, site, stop_rx.clone()));
    }
    tracing::info!(https = %bound.https, http = %bound.http, http3 = %bound.http3.map(|a| a.to_string()).unwrap_or_else(|| "off".into()), metrics = %bound.metrics.map(|a| a.to_string()).unwrap_or_else(|| "off".into()), sites = cfg.sites.len(), "edge ready");
    sdnotify::notify("READY=1");

    let (commands, mut inbox) = mpsc::channel::<Command>(4);
    let m = manager.clone();
    let mut stop = stop_rx;
    let done = tokio::spawn(async move {
        let status = || {
            let n = match m.next_renewal() {
                Some((l, t)) => format!("next renewal {l} at {}", rfc3339(t)),
                None => "no renewal planned".into(),
            };
            let sites = m.config().sites.len();
            sdnotify::notify(&format!("STATUS=serving {sites} site(s); {n}"));
        };
        let mut status_tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = status_tick.tick() => status(),
                Some(Command::Reload(next, done)) = inbox.recv() => {
                    apply(&m, &proxy, *next).await;
                    let _ = done.send(());
                }
                _ = stop.changed() => break,
            }
        }
        sdnotify::notify("STOPPING=1");
        let cfg = m.config();
        let _ = tokio::fs::remove_file(certs::socket_path(&cfg.state_dir)).await;
        let quic_done = async {
            if let Some(t) = quic_task {
                let _ = t.await;
            }
        };
        let _ = tokio::join!(https_task, http_task, certs_task, quic_done);
        tracing::info!("edge stopped");
        (*cfg).clone()
    });
    Ok(Running {
        bound,
        certs: manager,
        commands,
        stop: stop_tx,
        done,
    })
}

/// Applies a validated config: routes for new requests, then the manager.
async fn apply(m: &Manager, proxy: &Proxy, next: Config) {
    let current = m.config();
    // Error pages are files: read off the serving threads.
    let sites = next.sites.clone();
    let routes = match tokio::task::spawn_blocking(move || Routes::build(&sites)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("reload refused, keeping the running config: {e}");
            return;
        }
        Err(e) => {
            tracing::error!("reload failed: {e}");
            return;
        }
    };
    if next.listen.https != current.listen.https
        || next.listen.http != current.listen.http
        || next.listen.http3 != current.listen.http3
    {
        tracing::warn!("listen addresses changed; they take effect at the next restart");
    }
    if next.state_dir != current.state_dir {
        tracing::warn!("state_dir changed; it takes effect at the next restart");
    }
    if next.cluster != current.cluster {
        tracing::warn!("[cluster] changed; it takes effect at the next restart");
    }
    proxy.replace_routes(routes);
    let sites = next.sites.len();
    m.reload(next).await;
    tracing::info!(sites, "reload done");
}

/// `edge serve`: [`start`], then SIGHUP reloads the config file and
/// SIGTERM/SIGINT stop.
pub async fn serve(cfg: Config) -> Result<(), DaemonError> {
    // Handlers first: a SIGHUP or SIGTERM sent the moment READY=1 goes out must
    // find them installed, not the default action (which kills the process).
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGHUP handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| DaemonError::Config(format!("cannot install SIGINT handler: {e}")))?;
    let path = cfg.path.clone();
    let running = start(cfg).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sdnotify::notify("RELOADING=1");
                tracing::info!(config = %path.display(), "SIGHUP: reloading config and certificates");
                let read = path.clone();
                match tokio::task::spawn_blocking(move || config::load(&read)).await {
                    Ok(Ok(next)) => running.reload(next).await,
                    Ok(Err(e)) => tracing::error!("reload refused, keeping the running config: {e}"),
                    Err(e) => tracing::error!("reload failed: {e}"),
                }
                sdnotify::notify("READY=1");
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    running.shutdown().await;
    Ok(())
}
