//! The first tier's harness: edge started inside the test (`daemon::start`,
//! its real listeners on loopback), scripted upstreams that record every byte
//! they read, TLS clients, and a scripted ACME CA. No external tool. Tests run
//! under tokio's paused time: a timeout is reached by the clock jumping to it,
//! not by waiting, and every wait in a test has a deadline (`within`).
#![allow(dead_code)]

pub mod acme;
pub mod client;
pub mod h3;
pub mod logs;
pub mod strict;
pub mod upstream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge::daemon::{self, Bound, Running};

pub use client::*;
pub use upstream::*;

/// Fails the test if `f` does not finish within `limit` (of the test's
/// clock: paused time counts, and a deadline far beyond every timeout under
/// test is free).
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

pub const SECOND: Duration = Duration::from_secs(1);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Logs to the test's output when `RUST_LOG` is set (`RUST_LOG=debug cargo test`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A self-signed certificate and key for `names` (PEM), valid for decades.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Writes a certificate pair into `state/live/<name>/` as another tool would.
pub fn put_live(state: &Path, name: &str, chain: &str, key: &str) {
    let dir = state.join("live").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("privkey.pem"), key).unwrap();
    std::fs::write(dir.join("fullchain.pem"), chain).unwrap();
}

/// edge, running in this test's runtime.
pub struct Edge {
    pub bound: Bound,
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    /// The config text it was started with (without the parts the harness adds).
    pub text: String,
}

/// What every test's config has: both listeners on free loopback ports, the
/// state in the test's temporary directory.
fn config_text(dir: &Path, body: &str) -> String {
    let listen = if body.contains("[listen]") {
        String::new()
    } else {
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n".to_string()
    };
    format!(
        "state_dir = {:?}\n{listen}{body}\n",
        dir.join("state").display().to_string()
    )
}

pub fn parse(dir: &Path, body: &str) -> edge::config::Config {
    let path = dir.join("edge.toml");
    let text = config_text(dir, body);
    std::fs::write(&path, &text).unwrap();
    edge::config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

impl Edge {
    /// Starts edge with `body` (sites, limits, ...) and a self-signed
    /// certificate stored for each site's names, so nothing is ordered.
    pub async fn start(body: &str) -> Edge {
        Edge::start_with(body, true).await
    }

    /// As `start`; `certificates`: store a self-signed one per site first.
    pub async fn start_with(body: &str, certificates: bool) -> Edge {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse(dir.path(), body);
        if certificates {
            for site in &cfg.sites {
                let names: Vec<&str> = site.domains.iter().map(String::as_str).collect();
                let (c, k) = self_signed(&names);
                put_live(&dir.path().join("state"), &site.cert_name(), &c, &k);
            }
        }
        let running = within(secs(30), "edge start", daemon::start(cfg))
            .await
            .unwrap_or_else(|e| panic!("edge did not start: {e}"));
        Edge {
            bound: running.bound,
            running: Some(running),
            dir,
            text: body.to_string(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn https(&self) -> std::net::SocketAddr {
        self.bound.https
    }

    pub fn http(&self) -> std::net::SocketAddr {
        self.bound.http
    }

    /// Applies a new config body, as SIGHUP does.
    pub async fn reload(&self, body: &str) {
        let cfg = parse(self.dir.path(), body);
        within(
            secs(30),
            "reload",
            self.running.as_ref().unwrap().reload(cfg),
        )
        .await;
    }

    /// Starts shutting down (SIGTERM) and returns the handle to wait on.
    pub fn stop(&mut self) -> Running {
        let r = self.running.take().expect("already stopped");
        r.stop();
        r
    }

    pub async fn shutdown(mut self) {
        let r = self.stop();
        within(secs(120), "shutdown", r.wait()).await;
    }
}

/// `[[site]]` with these names and upstreams, and more keys.
pub fn site(domains: &[&str], upstreams: &[&str], extra: &str) -> String {
    format!("[[site]]\ndomains = {domains:?}\nupstreams = {upstreams:?}\n{extra}\n")
}
